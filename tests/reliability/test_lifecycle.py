"""Scenario 7, lifecycle races: concurrent and repeated ``configure()``, a collector that is down
at start-up and comes up later, ``shutdown()`` while requests are in flight, and interpreter exit
with pending data (flushed within the bound, or dropped and counted; never a hang).
"""

from __future__ import annotations

import json
import threading
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
    run_child,
    run_script,
)

OK = {"bitnet.outcome": "ok"}  # (series of other outcomes start at 0)

TARGET = "tests.reliability.test_lifecycle:"


def racing_configure() -> dict[str, Any]:
    """In the child: two threads race configure(), then a third call asks for something else."""
    import logging

    import psutil

    import bitnet_obs

    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("bitnet_obs").addHandler(handler)
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def race() -> None:
        barrier.wait()
        results.append(bitnet_obs.configure(prometheus_port=0))

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    again = bitnet_obs.configure(service_name="different")
    names = [t.name for t in threading.enumerate()]
    listening = [c for c in psutil.Process().net_connections("tcp") if c.status == "LISTEN"]
    bitnet_obs.shutdown(2)
    return {
        "distinct": len({id(r) for r in [*results, again]}),
        "http_threads": names.count("bitnet-obs-http"),
        "listening": len(listening),
        "warned": any("already called" in w for w in warnings),
    }


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_and_repeated_configure_make_one_pipeline(attempt: int) -> None:
    result = run_child(TARGET + "racing_configure").result
    assert result == {"distinct": 1, "http_threads": 1, "listening": 1, "warned": True}


def until_stopped(pause_s: float) -> dict[str, Any]:
    """In the child: calls until a line arrives on stdin; prints CALLING once the first calls
    are made and an export has failed (the collector is down: that is the scenario)."""
    import sys

    import bitnet_obs

    telemetry = bitnet_obs.configure()
    failed_once = threading.Event()

    @bitnet_obs.monitored_inference(model="startup")
    def call() -> list[int]:
        return [1]

    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    durations: list[float] = []
    errors = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            call()
        except Exception:
            errors += 1
        durations.append(time.perf_counter() - started)
        if (
            not failed_once.is_set()
            and len(durations) >= 200
            and any(g.health.consecutive_failures for g in telemetry.guards)
        ):
            failed_once.set()
            print("CALLING", flush=True)
        time.sleep(pause_s)
    ok = bitnet_obs.shutdown(5)
    return {
        "calls": len(durations),
        "errors": errors,
        "latency_ms": latency_ms(durations),
        "shutdown_ok": ok,
    }


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_collector_down_at_start_up_then_up(protocol: str, figures: Any) -> None:
    port = dead_port()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
        "OTEL_METRIC_EXPORT_INTERVAL": "250",
        "BITNET_OBS_DEVICE_METRICS": "none",
    }
    child = Child(TARGET + "until_stopped", env, stdin=True, pause_s=0.002)
    try:
        # CALLING comes once an export has failed against the closed port
        assert child.readline(120).startswith("CALLING")
        grpc_port, http_port = (port, 0) if protocol == "grpc" else (0, port)
        with OTLPReceiver(grpc_port=grpc_port, http_port=http_port) as rx:
            up = time.monotonic()
            assert rx.wait_for_metric("bitnet.inference.requests", timeout=90)
            first_data_s = time.monotonic() - up
            child.send("")
            result = child.finish(90).result
            assert rx.wait_for(
                lambda r: r.latest_value("bitnet.inference.requests", **OK) == result["calls"], 60
            )
    finally:
        child.kill()
    assert result["errors"] == 0 and result["shutdown_ok"]
    figures("first_data_after_collector_up_s", round(first_data_s, 2), protocol=protocol)
    figures(
        "calls_while_down_then_up",
        result["calls"],
        protocol=protocol,
        p99_ms=result["latency_ms"]["p99"],
    )


def shutdown_in_flight(threads: int, before_s: float, after_s: float) -> dict[str, Any]:
    """In the child: ``threads`` callers keep calling across ``shutdown()``."""
    import bitnet_obs
    from bitnet_obs import _selfmon

    bitnet_obs.configure()

    @bitnet_obs.monitored_inference(model="inflight")
    def call() -> list[int]:
        return [1, 2]

    stop = threading.Event()
    phase = {"name": "before"}
    durations: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    errors: list[str] = []

    def caller() -> None:
        while not stop.is_set():
            name = phase["name"]
            started = time.perf_counter()
            try:
                call()
            except Exception as exc:
                errors.append(repr(exc))
            durations[name].append(time.perf_counter() - started)
            time.sleep(0.0005)

    def settle(name: str, seconds: float, calls: int) -> None:
        """Stay in phase ``name`` at least ``seconds`` and until ``calls`` calls began in it
        (a busy machine may give the callers little CPU at first); 60 s more at most."""
        end = time.monotonic() + seconds
        deadline = end + 60
        while time.monotonic() < deadline and (
            time.monotonic() < end or len(durations[name]) < calls
        ):
            time.sleep(0.01)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    settle("before", before_s, 100)
    phase["name"] = "during"
    started = time.perf_counter()
    ok = bitnet_obs.shutdown(2)
    shutdown_s = time.perf_counter() - started
    phase["name"] = "after"
    settle("after", after_s, 100)  # spans that end after shutdown(), to be counted
    stop.set()
    for worker in workers:
        worker.join(10)
    return {
        "errors": errors,
        "calls": sum(len(v) for v in durations.values()),
        "latency_ms": {k: latency_ms(v) for k, v in durations.items()},
        "shutdown_ok": ok,
        "shutdown_s": round(shutdown_s, 3),
        "dropped": {
            r: _selfmon.dropped("traces", r)
            for r in (
                "queue_full",
                "export_failed",
                "shutdown",
                "shutdown_in_flight",
                "after_shutdown",
            )
        },
    }


@pytest.mark.slow
def test_shutdown_while_requests_are_in_flight(figures: Any) -> None:
    with OTLPReceiver() as rx:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "250",
            "BITNET_OBS_DEVICE_METRICS": "none",
        }
        result = run_child(
            TARGET + "shutdown_in_flight", env, threads=4, before_s=1.0, after_s=0.5
        ).result
        received = len(rx.spans())
    assert result["errors"] == []
    # shutdown(2): bounded, with room for the threads to wind down on a busy machine
    assert result["shutdown_ok"] and result["shutdown_s"] < 2 + 2.0
    lat = result["latency_ms"]
    bound = p99_bound_ms(lat["before"]["p99"])
    assert lat["during"]["p99"] <= bound and lat["after"]["p99"] <= bound, lat
    # Every span: exported, or counted (those ended after shutdown: after_shutdown).
    assert received + sum(result["dropped"].values()) == result["calls"], (received, result)
    assert result["dropped"]["after_shutdown"] > 0
    figures("shutdown_s_with_4_threads_calling", result["shutdown_s"])
    figures(
        "call_p99_ms_before_during_after",
        [lat["before"]["p99"], lat["during"]["p99"], lat["after"]["p99"]],
    )
    figures(
        "spans_received_plus_counted",
        f"{received}+{sum(result['dropped'].values())}={result['calls']}",
        after_shutdown=result["dropped"]["after_shutdown"],
    )


EXIT_SCRIPT = """
import atexit, json, time
from bitnet_obs import _selfmon

# Registered before configure(), so it runs after bitnet-obs's own exit flush (LIFO).
atexit.register(lambda: print("AFTER_FLUSH", json.dumps({
    r: _selfmon.dropped("traces", r) for r in
    ("queue_full", "export_failed", "shutdown", "shutdown_in_flight", "after_shutdown")}),
    time.time(), flush=True))

import bitnet_obs
bitnet_obs.configure()

@bitnet_obs.monitored_inference(model="exit")
def call():
    return [1, 2, 3]

for _ in range(CALLS):
    call()
print("EXITING", time.time(), flush=True)  # no shutdown(): atexit must deal with it
"""


@pytest.mark.slow
@pytest.mark.parametrize("collector", ["healthy", "black_hole"])
def test_interpreter_exit_with_pending_data(collector: str, figures: Any) -> None:
    calls = 3000
    bound = 5.0 if collector == "healthy" else 2.0
    with OTLPReceiver() as rx, BlackHole() as hole:
        endpoint = rx.http_endpoint if collector == "healthy" else hole.endpoint
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "60000",
            # an exit flush that ignored the bound would wait this long on the black hole
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60000",
            "BITNET_OBS_SHUTDOWN_TIMEOUT": str(bound),
            "BITNET_OBS_DEVICE_METRICS": "none",
        }
        proc, _ = run_script(EXIT_SCRIPT.replace("CALLS", str(calls)), env, timeout=180)
        ended = time.time()
        assert proc.returncode == 0, proc.stderr
        received = len(rx.spans())
        total = rx.latest_value("bitnet.inference.requests", **OK)
    exiting = float(next(x for x in proc.stdout.splitlines() if x.startswith("EXITING")).split()[1])
    after = next(x for x in proc.stdout.splitlines() if x.startswith("AFTER_FLUSH"))
    dropped = json.loads(after.split(" ", 1)[1].rsplit(" ", 1)[0])
    exit_s = ended - exiting
    # bounded by the shutdown timeout, not the exporter's 60 s; the room is for interpreter
    # teardown on a busy machine
    assert exit_s < bound + 10.0, exit_s
    # Flushed within the bound, or dropped and counted: every span is one or the other.
    assert received + sum(dropped.values()) == calls, (received, dropped)
    if collector == "healthy":
        assert received > 0
        assert total == calls or sum(dropped.values()) > 0  # a flush cut short is counted
    else:
        assert received == 0
    figures("exit_s", round(exit_s, 2), collector=collector, shutdown_bound_s=bound)
    figures(
        "spans_delivered_or_counted",
        f"{received}+{sum(dropped.values())}={calls}",
        collector=collector,
    )
