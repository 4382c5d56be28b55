"""Cost of judging outputs for degeneration (bitnet_obs.output), as the hot path will pay it.

Per token: a ``@monitored_inference`` stream consumed with ``DegenerateDetector.add`` (or the
raw ``append`` with a ``pump()`` every 4096 ids) called on every int id, as a streaming hook
does, against the same stream without it, as the slope between two stream lengths; the budget
is 0.5 µs per token. Per request: constructing the
detector and ``result()`` at the end, for typical output lengths. Also the whole-sequence API
per token and ``logits_stats`` per decoding step of a Llama-3-sized vocabulary.

Run with ``nox -s bench``. Nothing here asserts on time: the figures are reported.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import numpy as np

import bitnet_obs
from benchmarks._inproc import Case
from benchmarks._inproc import interleaved as _interleaved
from benchmarks._inproc import providers as _providers
from benchmarks.conftest import REPORTERS
from bitnet_obs import _instruments
from bitnet_obs.output import DegenerateDetector, detect_degenerate, logits_stats

SHORT, LONG = 50, 4146  # the long stream crosses a 4096-id chunk: its numpy pass is counted
IDS = np.random.default_rng(0).integers(0, 128_000, LONG).tolist()
LENGTHS = (16, 64, 256, 1024)
VOCAB = 128_256  # Llama 3's, as BitNet b1.58 2B4T uses


@bitnet_obs.monitored_inference(model="m")
def _stream(n: int) -> Iterator[int]:
    yield from IDS[:n]


def _plain(n: int) -> None:
    for _ in _stream(n):
        pass


def _judged(n: int) -> None:
    detector = DegenerateDetector()
    add = detector.add
    for token in _stream(n):
        if type(token) is int:
            add(token)
    detector.result()


def _appended(n: int) -> None:
    """The cheapest hook: the buffer's own append, pumped from the token counter."""
    detector = DegenerateDetector()
    append, pump = detector.append, detector.pump
    count = 0
    for token in _stream(n):
        if type(token) is int:
            append(token)
            count += 1
            if not count & 4095:
                pump()
    detector.result()


def _filled(ids: list[int]) -> DegenerateDetector:
    detector = DegenerateDetector()
    for token in ids:
        detector.add(token)
    return detector


def test_output_detector_cost(benchmark, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    mp, tp = _providers(False)
    bind = functools.partial(_instruments.bind, mp, tp)
    cases: dict[str, Case] = {}
    for length in (SHORT, LONG):
        cases[f"output/plain/{length}"] = (bind, functools.partial(_plain, length))
        cases[f"output/judged/{length}"] = (bind, functools.partial(_judged, length))
        cases[f"output/appended/{length}"] = (bind, functools.partial(_appended, length))
    cases["output/new"] = (_nothing, DegenerateDetector)
    for length in LENGTHS:  # result() does not consume: the same detector serves every round
        cases[f"output/result/{length}"] = (_nothing, _filled(IDS[:length]).result)
    whole = np.array(IDS * 25, np.int64)  # ~100k ids
    cases["output/whole/100k"] = (_nothing, functools.partial(detect_degenerate, whole))
    cases["output/whole_runs/100k"] = (
        _nothing,
        functools.partial(detect_degenerate, np.tile(np.array([5, 5, 6], np.int64), 34_000)),
    )
    logits = np.random.default_rng(1).standard_normal((1, VOCAB)).astype(np.float32)
    cases["output/logits/1"] = (_nothing, functools.partial(logits_stats, logits))
    measured = benchmark.pedantic(_interleaved, args=(cases, 5, 30), rounds=1, iterations=1)
    results.update(measured)
    results["output/whole/n"] = float(whole.shape[0])
    results["output/load"] = os.getloadavg()[0]
    benchmark.extra_info.update({k: v * 1e6 for k, v in measured.items()})
    tp.shutdown()


def _nothing() -> None:
    pass


def report(results: dict[str, float]) -> list[str]:
    def slope(who: str) -> float:
        return (results[f"output/{who}/{LONG}"] - results[f"output/{who}/{SHORT}"]) / (LONG - SHORT)

    plain, judged, appended = slope("plain"), slope("judged"), slope("appended")
    lines = [
        f"load average {results['output/load']:.1f} on {os.cpu_count()} CPUs",
        "| degenerate-output detection (bitnet_obs.output) | cost |",
        "|---|---|",
        f"| monitored stream today, per token (slope {SHORT}..{LONG}) | {plain * 1e9:.0f} ns |",
        f"| + `DegenerateDetector.add` per int id, incl. the numpy pass every 4096 ids "
        f"| **+{(judged - plain) * 1e9:.0f} ns** (budget 500 ns) |",
        f"| + `DegenerateDetector.append` per int id, `pump()` every 4096 "
        f"| **+{(appended - plain) * 1e9:.0f} ns** |",
    ]
    for length in LENGTHS:
        fixed = results["output/new"] + results[f"output/result/{length}"]
        lines.append(
            f"| per request, {length}-token output: constructor + `result()` "
            f"| {fixed * 1e6:.1f} µs |"
        )
    n = results["output/whole/n"]
    lines.append(
        f"| `detect_degenerate` on a 1-D array, per token (healthy ids / a 3-token cycle) "
        f"| {results['output/whole/100k'] / n * 1e9:.0f} ns / "
        f"{results['output/whole_runs/100k'] / 102_000 * 1e9:.0f} ns |"
    )
    lines.append(
        f"| `logits_stats`, one step of a {VOCAB}-id vocabulary (float32) "
        f"| {results['output/logits/1'] * 1e6:.0f} µs |"
    )
    return lines


REPORTERS.append(report)
