"""Cost of judging outputs for degeneration: on the request path, and the library itself.

On the request path (what every monitored call pays, ``configure()`` owning the pipeline):
a ``@monitored_inference`` stream of int ids with detection on against the same stream with
``BITNET_OBS_DEGENERATE_DETECTION=false``, as the slope between two stream lengths (the numpy
pass every 4096 ids included; the budget is 0.5 µs per token), and a call returning its ids
(16, 64, 256, 1024 of them) on and off. Then the library: a detector's fixed cost per output,
the whole-sequence API per token and ``logits_stats`` per decoding step of a Llama-3-sized
vocabulary.

Run with ``nox -s bench``. Nothing here asserts on time: the figures are reported.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator

import numpy as np
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import bitnet_obs
from benchmarks._inproc import Case, NullExporter
from benchmarks._inproc import interleaved as _interleaved
from benchmarks.conftest import REPORTERS
from bitnet_obs import _config
from bitnet_obs.output import DegenerateDetector, detect_degenerate, logits_stats

SHORT, LONG = 50, 4146  # the long stream crosses a 4096-id chunk: its numpy pass is counted
IDS = np.random.default_rng(0).integers(0, 128_000, LONG).tolist()
LENGTHS = (16, 64, 256, 1024)
VOCAB = 128_256  # Llama 3's, as BitNet b1.58 2B4T uses


@bitnet_obs.monitored_inference(model="m")
def _stream(n: int) -> Iterator[int]:
    yield from IDS[:n]


@bitnet_obs.monitored_inference(model="m")
def _returned(n: int) -> list[int]:
    return IDS[:n]


def _consume(n: int) -> None:
    for _ in _stream(n):
        pass


def _filled(ids: list[int]) -> DegenerateDetector:
    detector = DegenerateDetector()
    for token in ids:
        detector.add(token)
    return detector


def test_output_detector_cost(benchmark, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    bitnet_obs.configure(
        environ={"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none",
                 "BITNET_OBS_DEVICE_METRICS": "none"},
        metric_readers=[InMemoryMetricReader()], span_exporters=[NullExporter()],
    )  # fmt: skip
    base = _config.current()
    modes: dict[str, Callable[[], None]] = {
        "on": functools.partial(_config.use, base),
        "off": functools.partial(
            _config.use, _config.with_overrides(base, {"degenerate_detection": False})
        ),
    }
    cases: dict[str, Case] = {}
    calls: dict[str, Case] = {}  # short calls: timed in larger batches
    for mode, setup in modes.items():
        for length in (SHORT, LONG):
            cases[f"output/{mode}/{length}"] = (setup, functools.partial(_consume, length))
        for length in LENGTHS:
            calls[f"output/{mode}/returned/{length}"] = (
                setup, functools.partial(_returned, length)
            )  # fmt: skip
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
    try:
        measured = benchmark.pedantic(_interleaved, args=(cases, 5, 30), rounds=1, iterations=1)
        measured.update(_interleaved(calls, 200, 30))
    finally:
        _config.use(base)
        bitnet_obs.shutdown()
    results.update(measured)
    results["output/whole/n"] = float(whole.shape[0])
    results["output/load"] = os.getloadavg()[0]
    benchmark.extra_info.update({k: v * 1e6 for k, v in measured.items()})


def _nothing() -> None:
    pass


def report(results: dict[str, float]) -> list[str]:
    def slope(mode: str) -> float:
        return (results[f"output/{mode}/{LONG}"] - results[f"output/{mode}/{SHORT}"]) / (
            LONG - SHORT
        )

    on, off = slope("on"), slope("off")
    lines = [
        f"load average {results['output/load']:.1f} on {os.cpu_count()} CPUs",
        "| degenerate-output detection | cost |",
        "|---|---|",
        f"| monitored stream of int ids, detection off, per token (slope {SHORT}..{LONG}) "
        f"| {off * 1e9:.0f} ns |",
        f"| + judging every id, the numpy pass every 4096 ids included "
        f"| **{(on - off) * 1e9:+.0f} ns** per token (budget 500 ns with the rest) |",
    ]
    for length in LENGTHS:
        extra = results[f"output/on/returned/{length}"] - results[f"output/off/returned/{length}"]
        lines.append(
            f"| a monitored call returning {length} ids: judging them "
            f"| {extra * 1e6:+.1f} µs per call |"
        )
    for length in LENGTHS:
        fixed = results["output/new"] + results[f"output/result/{length}"]
        lines.append(
            f"| library: `DegenerateDetector()` + `result()` on {length} ids "
            f"| {fixed * 1e6:.1f} µs |"
        )
    n = results["output/whole/n"]
    lines.append(
        f"| library: `detect_degenerate` on a 1-D array, per token (healthy ids / a 3-token "
        f"cycle) | {results['output/whole/100k'] / n * 1e9:.0f} ns / "
        f"{results['output/whole_runs/100k'] / 102_000 * 1e9:.0f} ns |"
    )
    lines.append(
        f"| `logits_stats`, one step of a {VOCAB}-id vocabulary (float32) "
        f"| {results['output/logits/1'] * 1e6:.0f} µs |"
    )
    return lines


REPORTERS.append(report)
