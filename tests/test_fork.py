"""Configured before fork: each forked worker reports with its own service.instance.id and
never re-sends the parent's data (bitnet_obs._pipeline._after_fork_in_child)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bitnet_obs.testing import OTLPReceiver

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import multiprocessing as mp
import bitnet_obs

@bitnet_obs.monitored_inference(model="forked")
def call():
    return [1, 2]

def worker(n):
    for _ in range(n):
        call()

if __name__ == "__main__":
    bitnet_obs.configure()
    for _ in range(3):
        call()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=worker, args=(5 + i,)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0, p.exitcode
    assert bitnet_obs.shutdown(5)
    print("DONE")
"""


def _run(rx: OTLPReceiver, **extra_env: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            "OTEL_TRACES_EXPORTER": "none",
            "BITNET_OBS_DEVICE_METRICS": "none",
            **extra_env,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DONE" in proc.stdout


@pytest.mark.slow
def test_forked_workers_get_their_own_instance_id_and_no_parent_data() -> None:
    with OTLPReceiver() as rx:
        _run(rx)
        latest: dict[str, float] = {}
        for point in rx.metric_points("bitnet.inference.requests"):
            instance = point.resource["service.instance.id"]
            latest[instance] = max(latest.get(instance, 0), point.value or 0)
    assert sorted(latest.values()) == [3, 5, 6], latest


@pytest.mark.slow
def test_an_explicit_instance_id_is_made_unique_per_forked_worker() -> None:
    with OTLPReceiver() as rx:
        _run(rx, OTEL_RESOURCE_ATTRIBUTES="service.instance.id=pod-1")
        ids = {p.resource["service.instance.id"] for p in rx.metric_points()}
    assert "pod-1" in ids
    children = ids - {"pod-1"}
    assert len(children) == 2 and all(i.startswith("pod-1-") for i in children), ids
