"""Amortized cost of sampled quantization tracking in the demo, as a fraction of its wall time.

The demo runs in a child process with the default sampling (BITNET_OBS_QUANT_SAMPLE_RATE)
and budget; at the end we read ``bitnet_quant_duration_seconds_sum`` of the runtime samples
(not the load-time weight report) from its /metrics and divide by the run's wall time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests._support.prometheus import free_port

from benchmarks.conftest import REPORTERS

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 12.0


def _runtime_quant_seconds(text: str) -> tuple[float, float]:
    total = count = 0.0
    for line in text.splitlines():
        if 'bitnet_quant_kind="weight"' in line:
            continue
        match = re.match(r"bitnet_quant_duration_seconds_(sum|count)\{.*\} ([0-9.e+-]+)$", line)
        if match:
            if match.group(1) == "sum":
                total += float(match.group(2))
            else:
                count += float(match.group(2))
    return total, count


def test_demo_quant_tracking_share(benchmark, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    def run() -> tuple[float, float, float]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bitnet_obs",
                "demo",
                "--duration",
                str(SECONDS + 5),
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2.0)  # start-up, model load and weight report are not the steady state
            url = f"http://127.0.0.1:{port}/metrics"
            start_sum, _ = _runtime_quant_seconds(urllib.request.urlopen(url).read().decode())
            started = time.monotonic()
            time.sleep(SECONDS)
            text = urllib.request.urlopen(url).read().decode()
            elapsed = time.monotonic() - started
            end_sum, count = _runtime_quant_seconds(text)
        finally:
            proc.terminate()
            proc.wait(30)
        return end_sum - start_sum, elapsed, count

    spent, elapsed, count = benchmark.pedantic(run, rounds=1, iterations=1)
    results["demo/quant_share"] = spent / elapsed
    results["demo/quant_samples"] = count
    benchmark.extra_info.update({"share": spent / elapsed, "samples": count})


def report(results: dict[str, float]) -> list[str]:
    return [
        f"demo, sampled quantization tracking: {results['demo/quant_share']:.3%} of wall time "
        f"({int(results['demo/quant_samples'])} runtime samples, default sample rate and budget)"
    ]


REPORTERS.append(report)
