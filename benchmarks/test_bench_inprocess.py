"""Per-call and per-token cost with every configuration in ONE process, rounds interleaved
batch by batch (``benchmarks/_onebox.py``): the second of the two ways issue 21 asks for,
beside ``test_bench_inference.py``'s one process per configuration.

Each round times one batch of every case in turn (alternating the order), with the case's
binding restored before its batch; the figure of a case is the median over rounds of its
overhead over the bare call (or the bare generator) timed in the same rounds. Cells are wall
clock / process CPU time. Nothing asserts on time: the ratios are reported beside the targets.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict

from benchmarks import _onebox
from benchmarks._percall import STREAM_LENGTHS
from benchmarks.conftest import REPORTERS

CALL_BATCH, STREAM_BATCH, ROUNDS = 50, 10, 100
LOADS: dict[str, tuple[float, float, float]] = {}


def _interleaved(cases: dict[str, _onebox.Case], batch: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of every case (``cpu:NAME``: process CPU time)."""
    samples: dict[str, list[float]] = defaultdict(list)
    names = list(cases)
    for name in names:  # warm up: caches, first-series allocation, variants
        setup, fn = cases[name]
        setup()
        for _ in range(batch):
            fn()
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            setup, fn = cases[name]
            setup()
            cpu = time.process_time()
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            samples[name].append((time.perf_counter() - start) / batch)
            samples[f"cpu:{name}"].append((time.process_time() - cpu) / batch)
    return {name: statistics.median(values) for name, values in samples.items()}


def test_inprocess_call_and_stream(benchmark, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    cases = _onebox.build()
    calls = {k: v for k, v in cases.items() if "/stream/" not in k and "/unit/" not in k}
    streams = {k: v for k, v in cases.items() if "/stream/" in k}

    def measure() -> dict[str, float]:
        LOADS["before"] = os.getloadavg()
        out = _interleaved(calls, CALL_BATCH, ROUNDS)
        out.update(_interleaved(streams, STREAM_BATCH, ROUNDS))
        LOADS["after"] = os.getloadavg()
        return out

    measured = benchmark.pedantic(measure, rounds=1, iterations=1)
    results.update({f"onebox/{name}": value for name, value in measured.items()})


# --- report ---------------------------------------------------------------------------------

Target = tuple[str, float] | None
ROWS: tuple[tuple[str, str, Target], ...] = (
    ("sdk/hand/sampled", "hand-written bare SDK: span + 2 histograms + 2 counters", None),
    ("sdk/hand/unsampled", "hand-written bare SDK, span unsampled", None),
    ("sdk/hand/metrics", "hand-written bare SDK, no span (metrics only)", None),
    ("ours-sampled/call", "`@monitored_inference`, span sampled", ("sdk/hand/sampled", 0.4)),
    ("ours-unsampled/call", "`@monitored_inference`, span unsampled",
     ("sdk/hand/unsampled", 0.2)),
    ("ours-metrics/call", "`@monitored_inference`, traces off (metrics only)",
     ("prometheus_client/call", 1.5)),
    ("ours-api/call", "`@monitored_inference` under an application's SDK (API mode)",
     ("sdk/hand/sampled", 1.0)),
    ("openlit/call", "OpenLIT `@trace` (span only, no metrics)", None),
    ("traceloop/call", "OpenLLMetry `@workflow` (span only, no metrics)", None),
    ("prometheus_client/call", "prometheus_client: 2 histograms + 2 counters, pre-bound", None),
)  # fmt: skip


def _cost(results: dict[str, float], name: str, clock: str = "") -> float:
    return results[f"onebox/{clock}{name}"] - results[f"onebox/{clock}sdk/bare"]


def _row(results: dict[str, float], name: str, label: str, target: Target) -> str:
    us, sdk, goal = [], [], []
    for clock in ("", "cpu:"):
        cost = _cost(results, name, clock)
        us.append(f"{cost * 1e6:.1f}")
        sdk.append(f"{cost / _cost(results, 'sdk/hand/sampled', clock):.2f}")
        if target is not None:
            goal.append(cost / _cost(results, target[0], clock))
    cell = ""
    if target is not None:
        met = [g <= target[1] for g in goal]
        verdict = "met" if all(met) else "not met" if not any(met) else "met by CPU time only"
        base = target[0].split("/")[0] if target[0].startswith("prom") else target[0][4:]
        cell = f"{' / '.join(f'{g:.2f}' for g in goal)}× {base}: ≤ {target[1]:g}×, {verdict}"
    return f"| {label} | {' / '.join(us)} | {' / '.join(sdk)}× | {cell} |"


def report(results: dict[str, float]) -> list[str]:
    load = " → ".join(" ".join(f"{x:.2f}" for x in LOADS[k]) for k in ("before", "after"))
    lines = [
        f"All configurations in one process (benchmarks/_onebox.py), median of {ROUNDS} "
        f"interleaved rounds of {CALL_BATCH} calls / {STREAM_BATCH} streams; load average "
        f"{load}; wall clock / process CPU time",
        "",
        "| case | µs per call | × hand-written bare SDK | target (issue 21) |",
        "|---|---|---|---|",
    ]
    for name, label, target in ROWS:
        if f"onebox/{name}" not in results:
            who = name.split("/")[0]
            lines.append(f"| {label} | skipped: {_onebox.SKIPPED.get(who, 'not run')} | | |")
            continue
        lines.append(_row(results, name, label, target))
    short, long = STREAM_LENGTHS
    lines += [
        "",
        f"Streaming, same process: per-token cost = slope between {short}- and {long}-token "
        "streams, over the bare generator",
        "",
        "| generator | + ns per token (wall / CPU) | + µs per stream, fixed (wall) | target |",
        "|---|---|---|---|",
    ]
    for who, label in (("sdk/stream/hand", "hand-written bare SDK"),
                       ("ours-sampled/stream/ours", "`@monitored_inference`, span sampled"),
                       ("ours-unsampled/stream/ours", "… span unsampled"),
                       ("ours-metrics/stream/ours", "… traces off"),
                       ("ours-api/stream/ours", "… API mode")):  # fmt: skip
        per, fixed = [], 0.0
        for clock in ("", "cpu:"):

            def at(name: str, n: int, c: str = clock) -> float:
                return results[f"onebox/{c}{name}/{n}"]

            slope = (at(who, long) - at(who, short)) / (long - short)
            bare = (at("sdk/stream/bare", long) - at("sdk/stream/bare", short)) / (long - short)
            per.append((slope - bare) * 1e9)
            if not clock:
                fixed = at(who, short) - at("sdk/stream/bare", short) - short * (slope - bare)
        goal = ""
        if who.startswith("ours"):
            goal = f"≤ 300 ns: {'met' if min(per) <= 300 else 'not met'}"
        lines.append(f"| {label} | +{per[0]:.0f} / +{per[1]:.0f} | +{fixed * 1e6:.1f} | {goal} |")
    return lines


REPORTERS.append(report)
