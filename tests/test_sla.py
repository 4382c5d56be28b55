"""SLA objectives over a sliding window: exact compliance and violation counts (bitnet_obs.sla)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import bitnet_obs
from bitnet_obs import ConfigError, sla
from bitnet_obs._config import from_env
from bitnet_obs._instruments import SLA_VIOLATIONS
from bitnet_obs.testing import TelemetryCapture, capture_telemetry

ROOT = Path(__file__).resolve().parent.parent
VIOLATIONS = SLA_VIOLATIONS


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture
    sla.set_objectives(None)


def violations() -> dict[tuple[str, str], int]:
    return {
        (dict(key)["bitnet.sla.objective"], dict(key)["bitnet.sla.severity"]): value  # type: ignore[misc]
        for key, value in VIOLATIONS.tally.snapshot().items()
        if value  # the counters of each configured objective start at 0
    }


def compliance(cap: TelemetryCapture) -> dict[str, float | None]:
    return {
        p.attributes["bitnet.sla.objective"]: p.value for p in cap.points("bitnet.sla.compliance")
    }


def fast(n: int = 1) -> None:
    for _ in range(n):
        sla.record(0.5, output_tokens=10)


def slow(n: int = 1) -> None:
    for _ in range(n):
        sla.record(2.0, output_tokens=10)


def test_known_sequence_gives_exact_compliance_and_violations(cap: TelemetryCapture) -> None:
    sla.set_objectives(
        sla.Objectives(latency_s=1.0, max_error_rate=0.1, percentile=90, window=20,
                       window_s=None, min_samples=10)
    )  # fmt: skip
    fast(9)
    assert compliance(cap) == {}  # fewer than min_samples: no judgement yet
    fast()
    assert compliance(cap) == {"latency": 1.0, "error_rate": 1.0, "overall": 1.0}
    slow()  # 1 of 11 slow: 9.1% <= 10% allowed
    assert sla.snapshot()["latency"].level == "met"
    assert compliance(cap)["latency"] == pytest.approx(10 / 11)
    slow()  # 2 of 12: 16.7% > 10%: warning
    assert violations() == {("latency", "warning"): 1}
    slow()  # 3 of 13: 23.1% > 2 x 10%: critical
    assert violations() == {("latency", "warning"): 1, ("latency", "critical"): 1}
    assert compliance(cap) == {"latency": 10 / 13, "error_rate": 1.0, "overall": 10 / 13}
    fast(7)  # 3 of 20 = 15%: below critical's recovery (16%), above warning's (8%)
    state = sla.snapshot()["latency"]
    assert (state.eligible, state.bad, state.level, state.compliance) == (20, 3, "warning", 0.85)
    fast(20)  # the window slides past the slow ones: met again, nothing new counted
    assert sla.snapshot()["latency"].level == "met"
    assert compliance(cap) == {"latency": 1.0, "error_rate": 1.0, "overall": 1.0}
    for _ in range(3):
        sla.record(0.1, outcome="error")  # 3 of 20 failed: error rate 15% > 10%
    for _ in range(5):
        sla.record(9.9, outcome="cancelled")  # the client went away: not counted at all
    assert compliance(cap) == {"latency": 1.0, "error_rate": 0.85, "overall": 0.85}
    assert sla.snapshot()["latency"].eligible == 17  # failed requests have no latency verdict
    assert violations() == {
        ("latency", "warning"): 1,
        ("latency", "critical"): 1,
        ("error_rate", "warning"): 1,
    }
    assert cap.value("bitnet.sla.violations") == 3


def test_hysteresis_one_violation_for_a_window_hovering_at_the_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run() -> dict[tuple[str, str], int]:
        VIOLATIONS.tally.reset()
        sla.set_objectives(
            sla.Objectives(latency_s=1.0, percentile=90, window=20, window_s=None,
                           min_samples=20)
        )  # fmt: skip
        for i in range(200):  # one slow in 8: the window holds 2 (10%, met) or 3 (15%) slow
            slow() if i % 8 == 0 else fast()
        sla.set_objectives(None)
        return violations()

    assert run() == {("latency", "warning"): 1}
    monkeypatch.setattr(sla, "RECOVERY", 1.0)  # without hysteresis: one per crossing
    assert run()[("latency", "warning")] > 10
    VIOLATIONS.tally.reset()


def test_ttft_and_throughput_objectives(cap: TelemetryCapture) -> None:
    sla.set_objectives(
        sla.Objectives(ttft_s=0.5, min_tokens_per_s=10, percentile=50, min_samples=2,
                       window_s=None)
    )  # fmt: skip
    sla.record(1.0, ttft_s=0.2, output_tokens=20)  # good on both
    sla.record(1.0, ttft_s=0.8, output_tokens=5)  # bad on both
    sla.record(1.0, ttft_s=None, output_tokens=0)  # no first token, no output: no verdict
    sla.record(2.0, ttft_s=0.1, output_tokens=30)  # 15 tokens/s: good
    assert compliance(cap) == {"ttft": 2 / 3, "throughput": 2 / 3, "overall": 0.75}
    assert {name: s.level for name, s in sla.snapshot().items()} == {
        "ttft": "met", "throughput": "met", "overall": "",
    }  # fmt: skip
    assert violations() == {}


def test_time_window_and_an_empty_window_resets_to_met(
    cap: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(sla, "time", SimpleNamespace(monotonic=lambda: now[0]))
    sla.set_objectives(sla.Objectives(latency_s=1.0, window_s=60, min_samples=1))
    slow()
    assert violations() == {("latency", "critical"): 1}
    now[0] += 30
    fast()
    assert compliance(cap)["latency"] == 0.5
    now[0] += 31  # the slow one is older than 60 s
    assert compliance(cap)["latency"] == 1.0
    now[0] += 100  # nothing left: no verdict, and the objective counts as met again
    assert compliance(cap) == {}
    assert sla.snapshot()["latency"].level == "met"
    slow()  # a new incident is a new violation
    assert violations() == {("latency", "critical"): 2}


def test_monitored_inference_feeds_the_window(cap: TelemetryCapture) -> None:
    sla.set_objectives(sla.Objectives(latency_s=10, max_error_rate=0.5, min_samples=1))

    @bitnet_obs.monitored_inference(model="m")
    def generate(fail: bool) -> list[int]:
        if fail:
            raise RuntimeError("boom")
        return [1, 2, 3]

    for fail in (False, False, False, True):
        with contextlib.suppress(RuntimeError):
            generate(fail)
    assert compliance(cap) == {"latency": 1.0, "error_rate": 0.75, "overall": 0.75}
    sla.set_objectives(None)
    generate(False)  # not tracked any more: no observer left on the hot path
    assert sla.snapshot() == {} and compliance(cap) == {}


def test_memory_is_bounded_by_the_window() -> None:
    sla.set_objectives(sla.Objectives(latency_s=1.0, window=100, window_s=None))
    try:
        for i in range(10_000):
            sla.record(0.5 if i % 10 else 2.0)
        tracker = sla._tracker
        assert tracker is not None and len(tracker.flags) == 100 and tracker.size == 100
        assert sla.snapshot()["latency"].eligible == 100
    finally:
        sla.set_objectives(None)


def test_objectives_are_validated_when_defined() -> None:
    for kwargs, field in [
        ({"percentile": 0}, "percentile"),
        ({"percentile": 101}, "percentile"),
        ({"latency_s": -1}, "latency_s"),
        ({"max_error_rate": 2}, "max_error_rate"),
        ({"window": 0}, "window"),
        ({"min_tokens_per_s": 0}, "min_tokens_per_s"),
        ({"critical_factor": 0.5}, "critical_factor"),
    ]:
        with pytest.raises(ConfigError, match=field):
            sla.Objectives(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sla.set_objectives("p95<2s")  # type: ignore[arg-type]


def test_objectives_from_env() -> None:
    assert sla.Objectives.from_settings(from_env({})) is None
    settings = from_env(
        {"BITNET_OBS_SLA_LATENCY": "2", "BITNET_OBS_SLA_ERROR_RATE": "0.01",
         "BITNET_OBS_SLA_PERCENTILE": "99", "BITNET_OBS_SLA_WINDOW": "500",
         "BITNET_OBS_SLA_WINDOW_SECONDS": "120"}
    )  # fmt: skip
    assert sla.Objectives.from_settings(settings) == sla.Objectives(
        latency_s=2.0, max_error_rate=0.01, percentile=99.0, window=500, window_s=120.0
    )


def test_configure_enables_devices_health_and_sla_from_env() -> None:
    code = """
        import json, urllib.request
        import bitnet_obs
        from bitnet_obs import devices, sla
        t = bitnet_obs.configure(prometheus_port=0)
        print(sorted(devices.enabled()), sla.objectives().latency_s)
        print(json.load(urllib.request.urlopen(t.health_url))["checks"]["model"]["status"])
        bitnet_obs.shutdown()
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    env.update({"BITNET_OBS_SLA_LATENCY": "1.5", "BITNET_OBS_DEVICE_METRICS": "process"})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['process'] 1.5", "healthy"]
