"""Per-call and per-token cost of @monitored_inference against hand-written bare-SDK code and
the peers (OpenLIT ``@trace``, OpenLLMetry ``@workflow``, prometheus_client), in one run.

Each configuration runs in its own processes (``benchmarks/_percall.py``: ``configure()`` and
the peers set global state; two replicas with different hash seeds, since one process's memory
layout can bias it by several percent), all alive at once; the parent times one batch in each
in turn, round after round, so drift from other load hits every configuration alike. Every
figure is the median over rounds of the overhead over the bare call timed in the same
processes.

Run with ``nox -s bench``. Nothing here asserts on time: the ratios are reported, with the
issue-21 targets beside them (``test_bench_inprocess.py`` measures the same configurations all
in one process). A peer that is not installed skips its row with the reason.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest

from benchmarks._percall import BASELINE_KINDS, KINDS, STREAM_LENGTHS
from benchmarks._worker import Worker, clean_env
from benchmarks.conftest import REPORTERS

# Configurations whose setup may fail or be missing: their rows are skipped with the reason.
OPTIONAL = ("openlit", "traceloop", "prometheus_client", "ours-sampled-nodetect",
            "ours-unsampled-nodetect", "ours-metrics-nodetect", *BASELINE_KINDS)  # fmt: skip
#: Another checkout's ``src`` (e.g. ``git archive main src | tar -x -C /tmp/main``): its
#: bitnet-obs runs the ``base-*`` configurations beside ours, before/after in one run.
BASELINE = os.environ.get("BENCH_BASELINE_SRC")
#: Calls (streams) per timed batch: each batch starts in a process the others just pushed out
#: of the caches, a cost a larger batch spreads thinner (``BENCH_CALL_BATCH`` to try one).
CALL_BATCH = int(os.environ.get("BENCH_CALL_BATCH", "50"))
STREAM_BATCH, ROUNDS = 10, 100
REPLICAS = 2  # processes per configuration: one process's layout and hash seed can bias it
SKIPPED: dict[str, str] = {}
LOADS: dict[str, tuple[float, float, float]] = {}
Workers = dict[str, list[Worker]]  # configuration -> its replica processes


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    """REPLICAS processes per configuration, each with its own fixed hash seed."""
    started: dict[str, list[Worker]] = {}
    try:
        for kind in KINDS:
            if kind in BASELINE_KINDS and not BASELINE:
                SKIPPED[kind] = "set BENCH_BASELINE_SRC to another checkout's src to compare"
                continue
            for replica in range(REPLICAS):
                env = clean_env(PYTHONHASHSEED=str(replica + 1))
                if kind in BASELINE_KINDS:
                    env["PYTHONPATH"] = f"{BASELINE}{os.pathsep}{env.get('PYTHONPATH', '')}"
                try:
                    worker = Worker("benchmarks._percall", kind, env=env)
                except RuntimeError as exc:
                    if kind not in OPTIONAL:
                        raise
                    SKIPPED[kind] = f"setup failed: {str(exc).strip().splitlines()[-1]}"
                    break
                if worker.skipped is not None:
                    SKIPPED[kind] = worker.skipped
                    break
                started.setdefault(kind, []).append(worker)
        yield started
    finally:
        for replicas in started.values():
            for worker in replicas:
                worker.close()


def _interleaved(
    workers: Workers, select: Callable[[str], bool], batch: int, rounds: int
) -> dict[str, float]:
    """Median seconds per call of every selected case, timed round-robin across processes
    (the replicas of a configuration pooled).

    Keys ``KIND/CASE`` hold wall time, ``cpu:KIND/CASE`` the process's CPU time."""
    jobs = [
        (kind, worker, case)
        for kind, replicas in workers.items()
        for case in replicas[0].request("cases")["cases"]
        if select(case)
        for worker in replicas
    ]
    samples: dict[str, list[float]] = defaultdict(list)
    for _kind, worker, case in jobs:  # warm up: caches, first-series allocation
        worker.request("run", case=case, n=batch)
    for i in range(rounds):
        for kind, worker, case in jobs if i % 2 == 0 else reversed(jobs):
            reply = worker.request("run", case=case, n=batch)
            samples[f"{kind}/{case}"].append(reply["s"])
            samples[f"cpu:{kind}/{case}"].append(reply["cpu"])
    return {name: statistics.median(values) for name, values in samples.items()}


def _measure(benchmark, results, workers, tag: str, select, batch: int) -> None:  # type: ignore[no-untyped-def]
    LOADS[f"{tag}/before"] = os.getloadavg()
    measured = benchmark.pedantic(
        _interleaved, args=(workers, select, batch, ROUNDS), rounds=1, iterations=1
    )
    LOADS[f"{tag}/after"] = os.getloadavg()
    results.update({f"percall/{name}": value for name, value in measured.items()})
    benchmark.extra_info.update({name: value * 1e6 for name, value in measured.items()})


def test_call_overhead(benchmark, results: dict[str, float], workers: Workers) -> None:  # type: ignore[no-untyped-def]
    _measure(benchmark, results, workers, "call", lambda c: not c.startswith("stream/"), CALL_BATCH)


def test_stream_overhead(benchmark, results: dict[str, float], workers: Workers) -> None:  # type: ignore[no-untyped-def]
    _measure(benchmark, results, workers, "stream", lambda c: c.startswith("stream/"), STREAM_BATCH)


# --- report ---------------------------------------------------------------------------------

Target = tuple[str, float] | None  # (the hand-written case it is a ratio of, the limit)
CALL_ROWS: tuple[tuple[str, str, str, Target], ...] = (
    ("sdk", "hand/sampled", "hand-written bare SDK: span + 2 histograms + 2 counters", None),
    ("sdk", "hand/unsampled", "hand-written bare SDK, span unsampled", None),
    ("sdk", "hand/metrics", "hand-written bare SDK, no span (metrics only)", None),
    ("ours-sampled", "call", "`@monitored_inference`, span sampled", ("hand/sampled", 0.4)),
    ("ours-unsampled", "call", "`@monitored_inference`, span unsampled", ("hand/unsampled", 0.2)),
    ("ours-metrics", "call", "`@monitored_inference`, traces off (metrics only)", None),
    (
        "ours-api",
        "call",
        "`@monitored_inference` under an application's SDK (API mode)",
        ("hand/sampled", 1.0),
    ),
    (
        "ours-sampled-nodetect",
        "call",
        "… span sampled, degenerate-output detection off",
        ("hand/sampled", 0.4),
    ),
    (
        "ours-unsampled-nodetect",
        "call",
        "… span unsampled, detection off",
        ("hand/unsampled", 0.2),
    ),
    ("ours-metrics-nodetect", "call", "… traces off, detection off", None),
    ("base-sampled", "call", "baseline checkout (BENCH_BASELINE_SRC), span sampled", None),
    ("base-unsampled", "call", "baseline checkout, span unsampled", None),
    ("base-metrics", "call", "baseline checkout, traces off (metrics only)", None),
    ("base-api", "call", "baseline checkout, API mode", None),
    ("openlit", "call", "OpenLIT `@trace` (span only, no metrics)", None),
    ("traceloop", "call", "OpenLLMetry `@workflow` (span only, no metrics)", None),
    ("prometheus_client", "call", "prometheus_client: 2 histograms + 2 counters, pre-bound", None),
)
SAME_MODE = {"ours-sampled": "hand/sampled", "ours-unsampled": "hand/unsampled",
             "ours-metrics": "hand/metrics", "ours-api": "hand/sampled",
             "ours-sampled-nodetect": "hand/sampled", "ours-unsampled-nodetect": "hand/unsampled",
             "ours-metrics-nodetect": "hand/metrics", "base-sampled": "hand/sampled",
             "base-unsampled": "hand/unsampled", "base-metrics": "hand/metrics",
             "base-api": "hand/sampled"}  # fmt: skip
PEER_PACKAGES = ("openlit", "traceloop-sdk", "prometheus_client", "opentelemetry-sdk")


def _overhead(results: dict[str, float], kind: str, case: str, clock: str = "") -> float:
    """Seconds per call over the bare call; ``clock="cpu:"`` for process CPU time."""
    return results[f"percall/{clock}{kind}/{case}"] - results[f"percall/{clock}{kind}/bare"]


def _versions() -> str:
    found = []
    for package in PEER_PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def _load(tag: str) -> str:
    before, after = LOADS.get(f"{tag}/before"), LOADS.get(f"{tag}/after")
    if before is None or after is None:
        return "?"
    return f"{' '.join(f'{x:.2f}' for x in before)} → {' '.join(f'{x:.2f}' for x in after)}"


def _call_row(results: dict[str, float], kind: str, case: str, target: Target) -> str:
    """Wall-clock and CPU-time figures of one case, side by side as ``wall / cpu``."""
    cells: dict[str, list[str]] = defaultdict(list)
    for clock in ("", "cpu:"):
        cost = _overhead(results, kind, case, clock)
        cells["us"].append(f"{cost * 1e6:.1f}")
        cells["sdk"].append(f"{cost / _overhead(results, 'sdk', 'hand/sampled', clock):.2f}")
        if kind in SAME_MODE:
            same = _overhead(results, "sdk", SAME_MODE[kind], clock)
            cells["same"].append(f"{cost / same:.2f}")
        if target is not None:
            cells["goal"].append(f"{cost / _overhead(results, 'sdk', target[0], clock):.2f}")
        elif (
            kind.endswith(("-metrics", "-metrics-nodetect")) and "prometheus_client" not in SKIPPED
        ):
            prom = _overhead(results, "prometheus_client", "call", clock)
            cells["goal"].append(f"{cost / prom:.2f}")
    goal = ""
    if target is not None:
        goal = _goal(cells["goal"], target[1]) + " (same mode)"
    elif cells["goal"]:
        goal = f"{' / '.join(cells['goal'])}× prometheus_client; {_goal(cells['goal'], 1.5)}"
    same = f"{' / '.join(cells['same'])}×" if cells["same"] else ""
    return f"| {' / '.join(cells['us'])} | {' / '.join(cells['sdk'])}× | {same} | {goal} |"


def _goal(ratios: list[str], limit: float) -> str:
    met = [float(r) <= limit for r in ratios]
    verdict = "met" if all(met) else "not met" if not any(met) else "met by CPU time only"
    return f"≤ {limit:g}×: {verdict}"


def report(results: dict[str, float]) -> list[str]:
    import bitnet_obs

    lines = [
        f"{datetime.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, bitnet-obs {bitnet_obs.__version__}, {_versions()}",
        f"load average (1/5/15 min) over the call run: {_load('call')}; over the stream run: "
        f"{_load('stream')}",
        f"Per call: a no-op returning 4 token ids; overhead over the bare call, median of "
        f"{ROUNDS} interleaved rounds of {CALL_BATCH} calls in each of {REPLICAS} processes per "
        "configuration; each cell is wall clock / process CPU time (all threads; the steadier "
        "one when other load preempts the process)",
        "",
        "| case | µs per call | × hand-written bare SDK | × hand-written, same mode | target |",
        "|---|---|---|---|---|",
    ]
    for kind, case, label, target in CALL_ROWS:
        if kind in SKIPPED:
            lines.append(f"| {label} | skipped: {SKIPPED[kind]} | | | |")
        else:
            lines.append(f"| {label} " + _call_row(results, kind, case, target))
    unit = {
        name: f"{_overhead(results, 'sdk', f'unit/{name}') * 1e6:.1f}"
        for name in ("histogram_record", "span_sampled", "span_unsampled")
    }
    lines.append(
        f"SDK unit costs in the same run (wall): histogram record with 5 attributes "
        f"{unit['histogram_record']} µs, span sampled {unit['span_sampled']} µs, span unsampled "
        f"{unit['span_unsampled']} µs"
    )
    with contextlib.suppress(KeyError):  # unless test_stream_overhead was not run
        lines.extend(["", *_stream_report(results)])
    return lines


def _stream_report(results: dict[str, float]) -> list[str]:
    short, long = STREAM_LENGTHS

    def slope(kind: str, who: str, clock: str = "") -> float:
        name = f"percall/{clock}{kind}/stream/{who}"
        return (results[f"{name}/{long}"] - results[f"{name}/{short}"]) / (long - short)

    def fixed(kind: str, who: str) -> float:
        per_token = slope(kind, who) - slope(kind, "bare")
        own = results[f"percall/{kind}/stream/{who}/{short}"]
        return own - results[f"percall/{kind}/stream/bare/{short}"] - short * per_token

    lines = [
        f"Streaming: per-token cost = slope between {short}- and {long}-token streams, over the "
        f"bare generator of the same processes (median of {ROUNDS} rounds of {STREAM_BATCH})",
        "",
        "| generator | bare ns/token | + ns per token (wall / CPU) | + µs per stream (fixed) "
        "| target |",
        "|---|---|---|---|---|",
    ]
    for kind, who, label in (
        ("sdk", "hand", "hand-written bare SDK (span, 2 histograms, 2 counters)"),
        ("ours-sampled", "ours", "`@monitored_inference`, span sampled"),
        ("ours-unsampled", "ours", "`@monitored_inference`, span unsampled"),
        ("ours-metrics", "ours", "`@monitored_inference`, traces off"),
        ("ours-api", "ours", "`@monitored_inference`, API mode"),
        ("ours-sampled-nodetect", "ours", "… span sampled, degenerate-output detection off"),
        ("base-sampled", "ours", "baseline checkout, span sampled"),
        ("base-metrics", "ours", "baseline checkout, traces off"),
    ):
        if kind in SKIPPED:
            lines.append(f"| {label} | skipped: {SKIPPED[kind]} | | | |")
            continue
        per_token = slope(kind, who) - slope(kind, "bare")
        cpu = slope(kind, who, "cpu:") - slope(kind, "bare", "cpu:")
        goal = ""
        if kind != "sdk":
            met = [x <= 0.3e-6 for x in (per_token, cpu)]
            verdict = "met" if all(met) else "not met" if not any(met) else "met by CPU time only"
            goal = f"≤ 0.3 µs: {verdict}"
        lines.append(
            f"| {label} | {slope(kind, 'bare') * 1e9:.0f} | +{per_token * 1e9:.0f} / "
            f"+{cpu * 1e9:.0f} | +{fixed(kind, who) * 1e6:.1f} | {goal} |"
        )
    return lines


REPORTERS.append(report)
