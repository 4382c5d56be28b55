"""Health registry, probes over a real socket, built-in checks and metrics (bitnet_obs.health)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bitnet_obs import ConfigError, _server, health
from bitnet_obs._selfmon import exporter_health
from bitnet_obs.health import CheckResult, HealthStatus
from bitnet_obs.testing import TelemetryCapture, capture_telemetry, reset

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """No built-ins (their answers depend on the machine) unless a test adds them back."""
    reset()
    for name in ("model", "devices", "exporters", "memory"):
        health.unregister(name)
    yield
    reset()


@pytest.fixture(scope="module")
def server() -> Iterator[_server.MetricsServer]:
    def metrics(accept: str) -> _server.Response:
        return 200, "text/plain; version=0.0.4", b"# a scrape\nup 1\n"

    srv = _server.MetricsServer("127.0.0.1", 0, metrics)
    yield srv
    srv.stop()


def get(srv: _server.MetricsServer, path: str, timeout: float = 10) -> tuple[int, Any, float]:
    """(status, parsed JSON body or text, seconds taken) of one GET over a real socket."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(srv.url + path, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    elapsed = time.monotonic() - started
    text = raw.decode()
    return status, json.loads(text) if text.startswith("{") else text, elapsed


def _raise() -> CheckResult:
    raise ValueError("secret connection string")


async def _async_degraded() -> CheckResult:
    await asyncio.sleep(0.01)
    return CheckResult(D, "async and slow-ish")


@pytest.mark.parametrize(
    ("check", "critical", "code", "status", "detail"),
    [
        (lambda: CheckResult(H, "fine"), True, 200, "healthy", "fine"),
        (lambda: CheckResult(D, "kv cache 97% full"), True, 200, "degraded", "kv cache 97% full"),
        (lambda: CheckResult(U, "db down"), True, 503, "unhealthy", "db down"),
        (lambda: CheckResult(U, "db down"), False, 200, "degraded", "db down"),
        (lambda: False, True, 503, "unhealthy", ""),
        (lambda: HealthStatus.DEGRADED, True, 200, "degraded", ""),
        (_raise, True, 503, "unhealthy", "check raised ValueError"),
        (_async_degraded, True, 200, "degraded", "async and slow-ish"),
        (lambda: 42, True, 503, "unhealthy", "check returned int, not a CheckResult"),
    ],
    ids=["healthy", "degraded", "unhealthy", "noncritical", "bool", "status", "raises",
         "async", "garbage"],
)  # fmt: skip
def test_probe_answers(
    server: _server.MetricsServer,
    check: Callable[[], Any],
    critical: bool,
    code: int,
    status: str,
    detail: str,
) -> None:
    health.register("dep", check, critical=critical)
    for path in ("/health", "/health/ready"):
        got, body, _ = get(server, path)
        assert got == code, body
        assert body["status"] == status
        assert body["checks"]["dep"]["detail"] == detail
        assert body["checks"]["dep"]["critical"] is critical
        assert body["reasons"] == ([f"dep: {detail}" if detail else "dep"] if code == 503 else [])
    assert "secret" not in json.dumps(body)  # exception messages stay in the log
    got, body, _ = get(server, "/health/live")
    assert (got, body["checks"]) == (200, {})  # a readiness check is not in liveness


def test_liveness_checks_are_in_every_probe(server: _server.MetricsServer) -> None:
    health.register("deadlock", lambda: CheckResult(U, "worker stuck"), probe="liveness")
    health.register("warm", lambda: True)
    for path in ("/health/live", "/health/ready", "/health"):
        got, body, _ = get(server, path)
        assert got == 503 and body["reasons"] == ["deadlock: worker stuck"], path
    assert set(get(server, "/health/live")[1]["checks"]) == {"deadlock"}
    assert get(server, "/health")[1]["version"]


def test_timing_out_check_fails_fast_and_a_hanging_one_is_not_waited_for_twice(
    server: _server.MetricsServer,
) -> None:
    release = threading.Event()
    started: list[float] = []

    def hangs() -> bool:
        started.append(time.monotonic())
        release.wait(30)
        return True

    health.register("hangs", hangs, timeout=0.3)
    health.register("ok", lambda: True)
    try:
        # answered while the check still hangs (it waits 30 s for `release`): after its own
        # 0.3 s timeout, never after the hang
        got, body, took = get(server, "/health/ready")
        assert got == 503 and took >= 0.3
        assert body["checks"]["hangs"]["detail"].startswith("timed out after 0.3s")
        assert body["checks"]["ok"]["status"] == "healthy"
        got, body, _ = get(server, "/health/ready")  # still hanging: the same run, timed out
        assert got == 503
        assert body["checks"]["hangs"]["detail"].startswith("timed out after 0.3s")
        assert len(started) == 1  # not started a second time while it hangs
    finally:
        release.set()
    # its late result counts once it comes
    _wait_for(lambda: get(server, "/health/ready")[0] == 200)


def test_a_slow_check_does_not_block_a_concurrent_scrape(server: _server.MetricsServer) -> None:
    running, release = threading.Event(), threading.Event()

    def slow() -> bool:
        running.set()
        return release.wait(60)

    health.register("slow", slow, timeout=60)
    probe: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: probe.update(r=get(server, "/health/ready", 90)))
    thread.start()
    try:
        assert running.wait(30)  # the probe is now waiting on the slow check
        # the scrape is answered while the check still runs: it is released only afterwards
        got, text, _ = get(server, "/metrics")
        assert (got, text) == (200, "# a scrape\nup 1\n")
        assert thread.is_alive() and "r" not in probe
    finally:
        release.set()
    thread.join(90)
    assert probe["r"][0] == 200


def test_results_are_cached_for_a_short_ttl(
    server: _server.MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counted() -> bool:
        calls.append(1)
        return True

    health.register("counted", counted)
    monkeypatch.setattr(health, "CACHE_TTL_S", 3600.0)  # however slow the five probes are
    for _ in range(5):
        assert get(server, "/health/ready")[0] == 200
    assert len(calls) == 1
    assert get(server, "/health")[1]["checks"]["counted"]["age_s"] > 0
    monkeypatch.setattr(health, "CACHE_TTL_S", 0.0)
    get(server, "/health/ready")
    assert len(calls) == 2


def test_mark_not_ready_and_ready(server: _server.MetricsServer) -> None:
    reset()  # with the built-in model check
    for name in ("devices", "exporters", "memory"):
        health.unregister(name)
    got, body, _ = get(server, "/health/ready")
    assert got == 200 and body["checks"]["model"]["detail"].startswith("not tracked")
    health.mark_not_ready("loading weights")
    got, body, _ = get(server, "/health/ready")
    assert (got, body["reasons"]) == (503, ["model: loading weights"])
    health.mark_ready()  # takes effect at once, not after the cache TTL
    got, body, _ = get(server, "/health/ready")
    assert (got, body["checks"]["model"]["detail"]) == (200, "ready")
    assert get(server, "/health/live")[0] == 200  # never restarted for loading


def test_register_validates_at_definition_time() -> None:
    with pytest.raises(ValueError, match="name"):
        health.register("has space", lambda: True)
    with pytest.raises(ConfigError, match="callable"):
        health.register("x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timeout"):
        health.register("x", lambda: True, timeout=1e10)  # at most 60 s: a probe must answer
    with pytest.raises(ConfigError, match="critical"):
        health.register("x", lambda: True, critical="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe"):
        health.register("x", lambda: True, probe="startup")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        health.register("x", lambda: True, timeout=0)
    with pytest.raises(ValueError, match="scope"):
        health.evaluate("everything")  # type: ignore[arg-type]
    health.unregister("never-registered")


def test_metrics_status_duration_and_failures() -> None:
    release = threading.Event()
    with capture_telemetry() as cap:
        health.register("good", lambda: True)
        health.register("meh", lambda: CheckResult(D, "slow disk"), critical=False)
        health.register("bad", lambda: CheckResult(U, "down"))
        health.register("boom", _raise)
        health.register("stuck", lambda: release.wait(60), timeout=0.1)
        report = health.evaluate()
        release.set()
        assert report.http_status == 503
        health.enable()
        status = _values(cap, "bitnet.health.status")
        assert status == {"good": 1.0, "meh": 0.5, "bad": 0.0, "boom": 0.0, "stuck": 0.0}
        failures = {
            (p.attributes["bitnet.health.component"], p.attributes["error.type"]): p.value
            for p in cap.points("bitnet.health.check.failures")
            if p.value  # every registered check starts its failure counters at 0
        }
        assert failures == {("bad", "unhealthy"): 1, ("boom", "ValueError"): 1,
                            ("stuck", "timeout"): 1}  # fmt: skip

        def durations() -> dict[str, int]:
            return {
                p.attributes["bitnet.health.component"]: p.count  # type: ignore[misc]
                for p in cap.points("bitnet.health.check.duration")
            }

        # "stuck" finishes after its timeout, once released: its duration is recorded too
        expected = dict.fromkeys(("good", "meh", "bad", "boom", "stuck"), 1)
        _wait_for(lambda: durations() == expected)


def test_status_gauge_refreshes_stale_checks_in_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = {"ok": True}
    with capture_telemetry() as cap:
        health.register("flips", lambda: state["ok"])
        health.enable()  # first run starts in the background
        _wait_for(lambda: _values(cap, "bitnet.health.status") == {"flips": 1.0})
        monkeypatch.setattr(health, "CACHE_TTL_S", 0.0)
        state["ok"] = False
        _wait_for(lambda: _values(cap, "bitnet.health.status") == {"flips": 0.0})


def _values(cap: TelemetryCapture, name: str) -> dict[str, float | None]:
    return {p.attributes["bitnet.health.component"]: p.value for p in cap.points(name)}


def _wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- built-in checks -----------------------------------------------------------------------


def test_exporters_check() -> None:
    check = health.exporters_check(unhealthy_after=5, stale_after_s=600)
    assert check() == CheckResult(H, "no push exporters")
    otlp = exporter_health("otlp_http_metrics")
    otlp.record(True)
    assert check().status is H
    otlp.record(False, "ConnectionRefused")
    otlp.record(False, "ConnectionRefused")
    result = check()
    assert result.status is D
    assert "otlp_http_metrics: 2 consecutive failure(s), last success 0s ago" in result.detail
    assert "ConnectionRefused" in result.detail
    for _ in range(3):
        otlp.record(False, "ConnectionRefused")
    assert check().status is U
    otlp.record(True)
    otlp.record(False)
    assert otlp.last_success is not None
    otlp.last_success -= 601  # still failing ten minutes after the last success
    assert check().status is U


def _cgroup_v2(root: Path, limit: int, current: int, inactive: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.max").write_text(f"{limit}\n")
    (root / "memory.current").write_text(f"{current}\n")
    (root / "memory.stat").write_text(f"anon 1\ninactive_file {inactive}\nactive_file 2\n")
    return root


def test_memory_check_uses_the_container_limit(tmp_path: Path) -> None:
    mib = 2**20
    root = _cgroup_v2(tmp_path / "v2", 1000 * mib, 980 * mib, 0)
    result = health.memory_check(cgroup_root=root)()
    assert result.status is U and "2% headroom (cgroup: 0.0 GiB of 1.0 GiB limit free)" in (
        result.detail
    )
    _cgroup_v2(root, 1000 * mib, 980 * mib, 60 * mib)  # page cache the kernel can drop
    assert health.memory_check(cgroup_root=root)().status is D
    _cgroup_v2(root, 1000 * mib, 980 * mib, 300 * mib)
    assert health.memory_check(cgroup_root=root)().status is H
    (root / "memory.max").write_text("max\n")  # no limit: the host's headroom
    assert "host:" in health.memory_check(cgroup_root=root)().detail
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{1000 * mib}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{990 * mib}\n")
    (v1 / "memory.stat").write_text("cache 5\ntotal_inactive_file 0\n")
    assert health.memory_check(cgroup_root=tmp_path / "v1")().status is U
    with pytest.raises(ValueError, match="unhealthy_below"):
        health.memory_check(degraded_below=0.01, unhealthy_below=0.5)


def test_builtins_are_registered_and_non_critical_except_the_model() -> None:
    reset()
    report = health.evaluate()
    assert {c.name: c.critical for c in report.components} == {
        "model": True, "devices": False, "exporters": False, "memory": False,
    }  # fmt: skip
    assert report.http_status == 200  # a CPU-only box without GPUs is healthy
    devices = next(c for c in report.components if c.name == "devices")
    assert devices.status is H and devices.detail.startswith("gpu:")
