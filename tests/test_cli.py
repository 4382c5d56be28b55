"""The bitnet-obs command: demo (bitnet_obs.cli); quant-report is in test_quant_report.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests._support.prometheus import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_serves_metrics_and_stops_cleanly() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    env["BITNET_OBS_QUANT_SAMPLE_RATE"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitnet_obs", "demo", "--duration", "8", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wanted = (
            "bitnet_inference_requests_total",
            "gen_ai_server_time_to_first_token",
            "bitnet_device_fallbacks_total",
            'bitnet_quant_reference="quantized"',
            'bitnet_quant_kind="weight"',
            "bitnet_model_loads_total",
            "bitnet_queue_wait_duration_seconds_count",
            "bitnet_batch_size_count",
            "bitnet_cache_hits_total",
            "bitnet_cache_usage_bytes",
            "bitnet_sla_compliance",
        )
        text = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                text = text.decode()
            except OSError:
                pass
            if all(w in text for w in wanted):
                break
            time.sleep(0.5)
        missing = [w for w in wanted if w not in text]
        assert not missing, missing
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"metrics: http://127.0.0.1:{port}/metrics" in out
    assert "final: requests" in out


@pytest.mark.slow
def test_demo_stops_cleanly_on_ctrl_c() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitnet_obs", "demo", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "running until Ctrl-C" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "interrupted" in out and "final: requests" in out
    assert "Traceback" not in err
