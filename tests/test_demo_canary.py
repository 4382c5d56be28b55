"""``bitnet-obs demo --inject-fault``: the whole path of a broken kernel, end to end -- the
canary passes, the kernel breaks, the canary fails, /health/ready answers 503 with the reason
and the crossval metrics say so."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 90.0  # the demo's canary runs every 10 s; CI shares two cores


def _get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def _wait(what: str, condition: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert proc.poll() is None, f"the demo exited ({proc.returncode}) before: {what}"
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE}s: {what}")
        time.sleep(0.2)


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sign", "constant"])
def test_an_injected_fault_fails_the_canary_and_gates_readiness(fault: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitnet_obs", "demo", "--port", "0", "--workers", "1",
         "--inject-fault", fault, "--fault-after", "0.5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        base = ""
        for line in proc.stdout:
            match = re.search(r"metrics: (http://\S+)/metrics", line)
            if match:
                base = match.group(1)
            if "running until Ctrl-C" in line:
                break
        assert base, "the demo printed no metrics URL"

        def gated() -> bool:
            status, body = _get(base + "/health/ready")
            reasons = json.loads(body)["reasons"] if body else []
            return status == 503 and any(r.startswith("canary: case ") for r in reasons)

        # the first run passes (the fault comes 0.5 s after it) ...
        _wait("a first canary pass", lambda: _metric(
            _get(base + "/metrics")[1], "bitnet_crossval_runs_total", bitnet_crossval_outcome="pass"
        ) == 1, proc)  # fmt: skip
        # ... then the broken kernel fails it, and readiness says why
        _wait("503 from the failing canary", gated, proc)
        _, body = _get(base + "/health/ready")
        (reason,) = json.loads(body)["reasons"]
        assert reason.startswith("canary: case ") and "diverges at token" in reason
        _, metrics = _get(base + "/metrics")
        model = {"gen_ai_request_model": "bitnet-demo-tiny"}
        assert _metric(metrics, "bitnet_crossval_passing", **model) == 0
        assert (_metric(metrics, "bitnet_crossval_token_agreement", **model) or 0) < 0.5
        fails = _metric(metrics, "bitnet_crossval_runs_total", bitnet_crossval_outcome="fail")
        assert fails is not None and fails >= 1
        assert _metric(metrics, "bitnet_runtime_info") == 1
        assert _get(base + "/health/live")[0] == 200
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"injected fault: {fault}" in out
    assert "canary FAIL" in out.splitlines()[-1]
    assert "Traceback" not in err
