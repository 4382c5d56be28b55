"""Cost of the llama.cpp instrumentor over plain llama-cpp-python, in one run.

The fixture model of the tests (the tiny BitNet b1.58 of tests/_support/llama_model.py,
quantized to TQ2_0 by llama.cpp), greedy, one thread, in worker processes in which
``configure()`` owns the pipeline: traces sampled, unsampled, or off (metrics only). In each
process the same calls run plain (every ``Llama`` attribute the original), instrumented, plain
again (the A/A pair) and inside a hand-written ``monitor_inference`` (``core``: the request record
and span any monitored call pays), interleaved round by round; the parent times one batch of each
case in turn (``benchmarks/_llama.py``).

1. **Our own work**, on the stand-in engine: the real ``Llama`` object and every line of
   llama-cpp-python's Python, with llama.cpp's decode, sampling and detokenizing replaced by
   Python stand-ins, so the difference is ours alone: per call, a 1-token call's difference; per
   generated token, the slope of the difference between 32 and 256 tokens (both long enough to
   be judged for degenerate output, so its fixed cost stays out of the slope). Targets (issue
   20): at most 50 µs per call and 1 µs per token. Beside them: a whole 32-token call (its
   output judged), and ``span``, the same plain call inside a hand-written SDK span with the
   attributes the instrumentor's span carries: what the SDK alone costs a traced call.
2. **On the real engine**, the tiny model decoding 1, 32 and 96 tokens: the same figures, in
   context, with the A/A pair's spread beside them, and ``relay``: plain llama-cpp-python with
   ``Llama.generate`` wrapped by the least a per-token hook can be (a generator relay that reads
   the clock and keeps the id), what any hook costs beside the engine on this machine.

Nothing here asserts on time: the figures are reported (wall clock and process CPU time).
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._llama import REAL_LENGTHS, STANDIN_LENGTHS
from benchmarks._worker import Worker, clean_env
from benchmarks.conftest import REPORTERS

MODES = ("sampled", "unsampled", "metrics")
ROUNDS = 20
#: calls per timed batch: about 5-20 ms each on these machines
BATCH = {
    ("standin", 1): 100,
    ("standin", 32): 20,
    ("standin", 256): 4,
    ("real", 1): 20,
    ("real", 32): 4,
    ("real", 96): 1,
}
LOADS: dict[str, tuple[float, float, float]] = {}
SKIPPED: dict[str, str] = {}


def _model() -> Path:
    """The TQ2_0 file of the tests' fixture model (built once per machine), or a skip.
    ``BITNET_OBS_BENCH_GGUF=path`` measures another GGUF file instead (a real model)."""
    chosen = os.environ.get("BITNET_OBS_BENCH_GGUF")
    if chosen:
        return Path(chosen)
    try:
        from tests._support.llama import locate_engine
        from tests._support.llama_model import build
    except ImportError as exc:  # pragma: no cover - a checkout without the engine's fixtures
        pytest.skip(f"the llama.cpp engine's test fixtures are missing ({exc})")
    engine, reason = locate_engine()
    if engine is None:
        pytest.skip(reason)
    return Path(build(engine).tq2_0)


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, Worker]]:
    path = str(_model())
    started: dict[str, Worker] = {}
    try:
        for mode in MODES:
            started[mode] = Worker("benchmarks._llama", mode, path, env=clean_env())
        yield started
    finally:
        for worker in started.values():
            worker.close()


def _wanted(mode: str, case: str) -> bool:
    """Stand-in cases in every mode; the real engine's in the sampled one (the heaviest)."""
    return "/standin/" in case or mode == "sampled"


def _interleaved(workers: dict[str, Worker]) -> dict[str, float]:
    jobs = [
        (mode, worker, case)
        for mode, worker in workers.items()
        for case in worker.request("cases")["cases"]
        if _wanted(mode, case)
    ]

    def batch(case: str) -> int:
        _, engine, _, n = case.split("/")
        return BATCH[engine, int(n)]

    for _mode, worker, case in jobs:  # warm up
        worker.request("run", case=case, n=1)
    samples: dict[str, list[float]] = defaultdict(list)
    for i in range(ROUNDS):
        for mode, worker, case in jobs if i % 2 == 0 else reversed(jobs):
            reply = worker.request("run", case=case, n=batch(case))
            samples[f"llama/{mode}/{case}"].append(reply["s"])
            samples[f"llama/cpu/{mode}/{case}"].append(reply["cpu"])
    return {name: statistics.median(values) for name, values in samples.items()}


def test_llama_cpp_overhead(benchmark, results: dict[str, float], workers) -> None:  # type: ignore[no-untyped-def]
    LOADS["before"] = os.getloadavg()
    measured = benchmark.pedantic(_interleaved, args=(workers,), rounds=1, iterations=1)
    LOADS["after"] = os.getloadavg()
    results.update(measured)
    results["llama/version"] = 1.0  # marks the run as complete for the report
    benchmark.extra_info.update({name: value * 1e6 for name, value in measured.items()})


# --- report ---------------------------------------------------------------------------------


def _fit(
    results: dict[str, float], key: str, side: str, engine: str, shape: str
) -> tuple[float, float]:
    """(seconds per call, seconds per token) of ``side`` over plain: a 1-token call's
    difference, and the slope of the difference between the two longer calls."""
    lengths = STANDIN_LENGTHS if engine == "standin" else REAL_LENGTHS
    one, mid, hi = lengths
    d = {
        n: results[f"{key}/{side}/{engine}/{shape}/{n}"]
        - results[f"{key}/plain/{engine}/{shape}/{n}"]
        for n in lengths
    }
    return d[one], (d[hi] - d[mid]) / (hi - mid)


def _verdict(value: float, limit: float) -> str:
    return f"≤ {limit:g}: {'met' if value <= limit else '**not met**'}"


def report(results: dict[str, float]) -> list[str]:
    results["llama/version"]
    lines = [
        "llama-cpp-python, tiny BitNet b1.58 TQ2_0 (the tests' fixture), greedy, one thread; "
        "`configure()` owns the pipeline. Our own work, on the stand-in engine (llama-cpp-python's "
        "Python, native decode/sample/detokenize stubbed); process CPU time (wall clock):",
        "| traces | shape | plain, 1 / 256 tokens | + per call (1 token) | + per token "
        "| + a 32-token call (judged) | the SDK's span alone, per call "
        "| a hand-written `monitor_inference`, per call | A/A per call, per token |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        for shape in ("call", "stream"):
            cpu, wall = f"llama/cpu/{mode}", f"llama/{mode}"
            call, token = _fit(results, cpu, "ours", "standin", shape)
            wall_call, wall_token = _fit(results, wall, "ours", "standin", shape)
            core, _ = _fit(results, cpu, "core", "standin", shape)
            span, _ = _fit(results, cpu, "span", "standin", shape)
            aa_call, aa_token = _fit(results, cpu, "aa", "standin", shape)
            plain = [results[f"{cpu}/plain/standin/{shape}/{n}"] for n in STANDIN_LENGTHS]
            mid = STANDIN_LENGTHS[1]
            judged = (
                results[f"{cpu}/ours/standin/{shape}/{mid}"]
                - results[f"{cpu}/plain/standin/{shape}/{mid}"]
            )
            floor = "none (traces off)" if mode == "metrics" else f"{span * 1e6:+.1f} µs"
            lines.append(
                f"| {mode} | {shape} | {plain[0] * 1e6:.0f} µs / {plain[2] * 1e3:.2f} ms "
                f"| **{call * 1e6:+.1f} µs** ({wall_call * 1e6:+.1f}; {_verdict(call * 1e6, 50)}) "
                f"| **{token * 1e9:+.0f} ns** ({wall_token * 1e9:+.0f}; "
                f"{_verdict(token * 1e9, 1000)}) | {judged * 1e6:+.0f} µs "
                f"| {floor} | {core * 1e6:+.1f} µs "
                f"| {aa_call * 1e6:+.1f} µs, {aa_token * 1e9:+.0f} ns |"
            )
    lines += [
        "",
        "On the real engine (traces sampled; its decode included; CPU time), beside the least a "
        "per-token hook costs there (`relay`: a generator relay that reads the clock and keeps "
        "the id, no bitnet-obs):",
        "| shape | plain, 1 / 32 / 96 tokens | instrumented | + per call | + per token "
        "| `relay` per token | A/A |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape in ("call", "stream"):
        key = "llama/cpu/sampled"
        plain = [results[f"{key}/plain/real/{shape}/{n}"] for n in REAL_LENGTHS]
        ours = [results[f"{key}/ours/real/{shape}/{n}"] for n in REAL_LENGTHS]
        aa = [results[f"{key}/aa/real/{shape}/{n}"] for n in REAL_LENGTHS]
        call, token = _fit(results, key, "ours", "real", shape)
        _, relay = _fit(results, key, "relay", "real", shape)
        ratio = " / ".join(f"{o / p - 1:+.1%}" for o, p in zip(ours, plain, strict=True))
        aa_ratio = " / ".join(f"{a / p - 1:+.1%}" for a, p in zip(aa, plain, strict=True))
        lines.append(
            f"| {shape} | {' / '.join(f'{p * 1e3:.2f}' for p in plain)} ms | {ratio} "
            f"| {call * 1e6:+.0f} µs | {token * 1e6:+.2f} µs | {relay * 1e6:+.2f} µs "
            f"| {aa_ratio} |"
        )
    _, relay = _fit(results, "llama/cpu/sampled", "relay", "standin", "call")
    lines.append(f"(`relay` on the stand-in: {relay * 1e9:+.0f} ns a token)")
    before, after = LOADS.get("before"), LOADS.get("after")
    if before and after:
        lines.append(f"(load average {before[0]:.1f} before, {after[0]:.1f} after)")
    return lines


REPORTERS.append(report)
