"""Scenario 1, collector faults: nothing listening, a black hole, a collector that answers after
5 s, one that answers UNAVAILABLE/503 for a while and then recovers; gRPC and HTTP.

User side: every call succeeds, call-site p99 within noise of the no-exporter case, memory flat,
``shutdown()`` within its bound. Telemetry side: spans delivered plus spans counted in
``bitnet.obs.dropped`` add up to the spans made; the span queue never exceeds its cap.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bitnet_obs.testing import OTLPReceiver
from tests.reliability._harness import (
    BlackHole,
    Child,
    dead_port,
    latency_ms,
    p99_bound_ms,
    rss_mb,
    run_child,
)

CALLS = 3000
PAUSE_S = 0.0005
SHUTDOWN_BOUND_S = 2.0
# Room after the bound for the threads to wind down on a busy machine; an unbounded shutdown
# would wait for the exporter's own 10 s timeout (OTEL_EXPORTER_OTLP_TIMEOUT's default).
SHUTDOWN_SLACK_S = 2.0
QUEUE_CAP = 2048  # the SDK BatchSpanProcessor's default max_queue_size
TARGET = "tests.reliability.test_collector_faults:workload"
PROTOCOLS = ("grpc", "http/protobuf")


def workload(calls: int, pause_s: float, wait_success_s: float = 0.0) -> dict[str, Any]:
    """In the child: monitored calls against whatever collector the environment names."""
    import bitnet_obs
    from bitnet_obs import _selfmon

    telemetry = bitnet_obs.configure()

    @bitnet_obs.monitored_inference(model="faults", operation="chat")
    def call(i: int) -> list[int]:
        return [i, i + 1, i + 2]

    for i in range(200):  # warm-up: imports, first spans, first allocations
        call(i)
    rss_before = rss_mb()
    durations: list[float] = []
    errors = wrong = max_queue = 0
    for i in range(calls):
        started = time.perf_counter()
        try:
            wrong += call(i) != [i, i + 1, i + 2]
        except Exception:
            errors += 1
        durations.append(time.perf_counter() - started)
        if i % 50 == 0:
            max_queue = max(max_queue, _queued(telemetry))
        time.sleep(pause_s)
    rss_after = rss_mb()
    deadline = time.monotonic() + wait_success_s
    while time.monotonic() < deadline and not _all_succeeded(telemetry):
        time.sleep(0.05)
    recovered = _all_succeeded(telemetry)
    started = time.perf_counter()
    ok = bitnet_obs.shutdown(SHUTDOWN_BOUND_S)
    shutdown_s = time.perf_counter() - started
    reasons = ("queue_full", "export_failed", "shutdown", "shutdown_in_flight", "after_shutdown")
    return {
        "latency_ms": latency_ms(durations),
        "errors": errors,
        "wrong_results": wrong,
        "spans": calls + 200,
        "max_queue": max_queue,
        "rss_growth_mb": round(rss_after - rss_before, 2),
        "recovered": recovered,
        "shutdown_ok": ok,
        "shutdown_s": round(shutdown_s, 3),
        "dropped": {
            signal: {r: _selfmon.dropped(signal, r) for r in reasons}
            for signal in ("traces", "metrics")
        },
        "exports": {g.health.name: g.health.consecutive_failures for g in telemetry.guards},
    }


def _queued(telemetry: Any) -> int:
    return sum(len(p._batch_processor._queue) for p in telemetry.span_processors)


def _all_succeeded(telemetry: Any) -> bool:
    return bool(telemetry.guards) and all(
        g.health.last_success is not None and g.health.consecutive_failures == 0
        for g in telemetry.guards
    )


def _env(endpoint: str, protocol: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_METRIC_EXPORT_INTERVAL": "250",
        "BITNET_OBS_DEVICE_METRICS": "none",
    }


@pytest.fixture(scope="module")
def baseline() -> dict[str, Any]:
    """The no-exporter case: same calls, nothing exported."""
    env = {
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_TRACES_EXPORTER": "none",
        "BITNET_OBS_DEVICE_METRICS": "none",
    }
    return run_child(TARGET, env, calls=CALLS, pause_s=PAUSE_S).result


def _check_user_side(case: str, result: dict[str, Any], baseline: dict[str, Any]) -> None:
    assert result["errors"] == 0 and result["wrong_results"] == 0, result
    bound = p99_bound_ms(baseline["latency_ms"]["p99"])
    assert result["latency_ms"]["p99"] <= bound, (case, result["latency_ms"], bound)
    assert result["rss_growth_mb"] < 25, (case, result["rss_growth_mb"])
    assert result["shutdown_s"] <= SHUTDOWN_BOUND_S + SHUTDOWN_SLACK_S, (case, result["shutdown_s"])
    assert result["max_queue"] <= QUEUE_CAP


def _spans_accounted(result: dict[str, Any], received: int) -> tuple[int, int]:
    """Every span is delivered or counted as dropped; an abandoned in-flight batch may arrive."""
    drops = result["dropped"]["traces"]
    in_flight = drops["shutdown_in_flight"]
    queued = sum(drops.values()) - in_flight
    assert result["spans"] - queued - in_flight <= received <= result["spans"] - queued, (
        result["spans"],
        received,
        drops,
    )
    return queued, in_flight


def _record(figures: Any, fault: str, protocol: str, result: dict[str, Any], **extra: Any) -> None:
    figures("call_p99_ms", result["latency_ms"]["p99"], case=fault, protocol=protocol)
    figures("shutdown_s", result["shutdown_s"], case=fault, protocol=protocol)
    figures("rss_growth_mb", result["rss_growth_mb"], case=fault, protocol=protocol)
    figures("max_span_queue", result["max_queue"], case=fault, protocol=protocol)
    drops = {k: v for k, v in result["dropped"]["traces"].items() if v}
    figures("spans_dropped", drops, case=fault, protocol=protocol, spans=result["spans"])
    for key, value in extra.items():
        figures(key, value, case=fault, protocol=protocol)


def test_no_exporter_baseline(baseline: dict[str, Any], figures: Any) -> None:
    assert baseline["errors"] == 0
    figures("call_p99_ms", baseline["latency_ms"]["p99"], case="no_exporter")
    figures("call_p50_ms", baseline["latency_ms"]["p50"], case="no_exporter")


@pytest.mark.slow
def test_healthy_collector_gets_everything(baseline: dict[str, Any], figures: Any) -> None:
    with OTLPReceiver() as grpc_rx, OTLPReceiver() as http_rx:
        receivers = {"grpc": grpc_rx, "http/protobuf": http_rx}
        children = {
            p: Child(TARGET, _env(_endpoint(rx, p), p), calls=CALLS, pause_s=PAUSE_S)
            for p, rx in receivers.items()
        }
        results = {p: c.finish(180).result for p, c in children.items()}
        for protocol, result in results.items():
            rx = receivers[protocol]
            _check_user_side("healthy", result, baseline)
            assert result["shutdown_ok"], result
            assert len(rx.spans()) == result["spans"]
            assert sum(result["dropped"]["traces"].values()) == 0
            total = rx.latest_value("bitnet.inference.requests", **{"bitnet.outcome": "ok"})
            assert total == result["spans"]
            _record(figures, "healthy", protocol, result)


@pytest.mark.slow
def test_nothing_listening(baseline: dict[str, Any], figures: Any) -> None:
    endpoints = {p: f"http://127.0.0.1:{dead_port()}" for p in PROTOCOLS}
    children = {
        p: Child(TARGET, _env(endpoints[p], p), calls=CALLS, pause_s=PAUSE_S) for p in PROTOCOLS
    }
    for protocol, child in children.items():
        result = child.finish(180).result
        _check_user_side("dead", result, baseline)
        assert not result["shutdown_ok"]
        queued, in_flight = _spans_accounted(result, received=0)
        assert queued + in_flight == result["spans"]
        assert sum(result["dropped"]["metrics"].values()) > 0
        _record(figures, "dead", protocol, result)


@pytest.mark.slow
def test_black_hole(baseline: dict[str, Any], figures: Any) -> None:
    with BlackHole() as grpc_hole, BlackHole() as http_hole:
        holes = {"grpc": grpc_hole, "http/protobuf": http_hole}
        children = {
            p: Child(TARGET, _env(h.endpoint, p), calls=CALLS, pause_s=PAUSE_S)
            for p, h in holes.items()
        }
        for protocol, child in children.items():
            result = child.finish(180).result
            _check_user_side("black_hole", result, baseline)
            assert holes[protocol].accepted >= 1  # the exporter did connect
            queued, in_flight = _spans_accounted(result, received=0)
            assert queued + in_flight == result["spans"]
            # The exporter is stuck on its first batch, so the queue filled and dropped.
            assert result["dropped"]["traces"]["queue_full"] > 0
            assert result["max_queue"] == QUEUE_CAP
            _record(figures, "black_hole", protocol, result)


@pytest.mark.slow
def test_slow_collector_answering_after_5s(baseline: dict[str, Any], figures: Any) -> None:
    with OTLPReceiver() as grpc_rx, OTLPReceiver() as http_rx:
        receivers = {"grpc": grpc_rx, "http/protobuf": http_rx}
        for rx in receivers.values():
            rx.set_delay(5.0)
        children = {
            p: Child(
                TARGET, _env(_endpoint(rx, p), p), calls=CALLS, pause_s=PAUSE_S, wait_success_s=12.0
            )
            for p, rx in receivers.items()
        }
        results = {p: c.finish(180).result for p, c in children.items()}
        for protocol, result in results.items():
            rx = receivers[protocol]
            _check_user_side("slow", result, baseline)
            assert result["recovered"], result  # answers came, late
            drops = result["dropped"]["traces"]
            expected: int = result["spans"] - sum(drops.values())

            def arrived(r: OTLPReceiver, n: int = expected) -> bool:
                return len(r.spans()) >= n

            assert rx.wait_for(arrived, timeout=60)
            _spans_accounted(result, received=len(rx.spans()))
            assert rx.metric_points("bitnet.inference.requests")
            _record(figures, "slow_5s", protocol, result)


@pytest.mark.slow
def test_unavailable_then_recovers(baseline: dict[str, Any], figures: Any) -> None:
    with OTLPReceiver() as grpc_rx, OTLPReceiver() as http_rx:
        receivers = {"grpc": grpc_rx, "http/protobuf": http_rx}
        for rx in receivers.values():
            rx.fail_next(10, retry_after=0.25)  # UNAVAILABLE (gRPC) / 503 (HTTP), then healthy
        children = {
            p: Child(
                TARGET, _env(_endpoint(rx, p), p), calls=CALLS, pause_s=PAUSE_S, wait_success_s=15.0
            )
            for p, rx in receivers.items()
        }
        results = {p: c.finish(180).result for p, c in children.items()}
        for protocol, result in results.items():
            rx = receivers[protocol]
            _check_user_side("unavailable", result, baseline)
            assert rx.rejected_count() == 10
            assert result["recovered"] and result["shutdown_ok"], result
            _spans_accounted(result, received=len(rx.spans()))
            total = rx.latest_value("bitnet.inference.requests", **{"bitnet.outcome": "ok"})
            assert total == result["spans"]  # after recovery the totals are exact
            _record(
                figures, "unavailable_then_ok", protocol, result, spans_received=len(rx.spans())
            )


def _endpoint(rx: OTLPReceiver, protocol: str) -> str:
    return rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
