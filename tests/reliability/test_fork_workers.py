"""Scenario 3, fork: the parent is configured before fork and forked workers do the work.

Each worker's telemetry arrives over OTLP with its own ``service.instance.id``; the parent's
data is never sent twice (spans per instance id equal the calls made there, exactly); nothing
deadlocks even when a parent thread is mid-call at every fork. Covers ``multiprocessing``
('fork'), bare ``os.fork`` workers that exit through ``sys.exit``, and gunicorn with the
documented ``post_fork``/``worker_exit`` recipe (docs/reliability.md).
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bitnet_obs.testing import OTLPReceiver
from tests._support.prometheus import free_port
from tests.reliability._harness import ROOT, child_env, run_child

TARGET = "tests.reliability.test_fork_workers:"


def forking(children: int, rounds: int) -> dict[str, Any]:
    """In the child: a busy parent thread, and ``rounds`` x ``children`` forked workers."""
    import multiprocessing as mp

    import bitnet_obs

    bitnet_obs.configure()

    @bitnet_obs.monitored_inference(model="fork", operation="chat")
    def call() -> list[int]:
        return [1, 2]

    counts = {"parent": 0}
    stop = threading.Event()

    def background() -> None:  # mid-call (holding our locks) at some fork, most likely
        while not stop.is_set():
            call()
            counts["parent"] += 1

    def work(n: int) -> None:
        for _ in range(n):
            call()

    # Let configure()'s first health checks finish: a parent thread holding a health lock at
    # fork leaves it locked in the child (see test_library_locks_survive_fork). Wait for their
    # threads to end rather than for a time a busy machine can outlast.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        t.name.startswith("bitnet-obs-health-") for t in threading.enumerate()
    ):
        time.sleep(0.01)
    thread = threading.Thread(target=background)
    thread.start()
    ctx = mp.get_context("fork")
    started = time.monotonic()
    exitcodes: list[int | None] = []
    planned: list[int] = []
    for r in range(rounds):
        procs = []
        for idx in range(children):
            planned.append(10 + 5 * idx + r)
            procs.append(ctx.Process(target=work, args=(planned[-1],)))
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)  # a worker's exit flush waits for a busy receiver: generous
            exitcodes.append(proc.exitcode)
            if proc.exitcode is None:  # hung: do not leave it behind
                proc.kill()
    stop.set()
    thread.join(10)
    fork_seconds = time.monotonic() - started
    ok = bitnet_obs.shutdown(5)
    return {
        "parent": counts["parent"],
        "children": planned,
        "exitcodes": exitcodes,
        "fork_seconds": round(fork_seconds, 2),
        "shutdown_ok": ok,
    }


def _per_instance(rx: OTLPReceiver) -> tuple[dict[str, float], dict[str, int]]:
    """Latest request total and span count per service.instance.id."""
    totals: dict[str, float] = {}
    for point in rx.metric_points("bitnet.inference.requests"):
        instance = point.resource["service.instance.id"]
        totals[instance] = max(totals.get(instance, 0), point.value or 0)
    spans = collections.Counter(s.resource["service.instance.id"] for s in rx.spans())
    return totals, dict(spans)


GRPC_FORK = pytest.mark.xfail(
    strict=False,
    reason="grpcio skips its fork handlers while another thread is inside gRPC ('Other threads "
    "are currently calling into gRPC, skipping fork() handlers'); a forked worker's gRPC "
    "export then sometimes never arrives (1 in 6 CI runs). Use http/protobuf for workers.",
)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http/protobuf", pytest.param("grpc", marks=GRPC_FORK)])
def test_multiprocessing_fork_workers(protocol: str, figures: Any) -> None:
    with OTLPReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
            "BITNET_OBS_DEVICE_METRICS": "none",
            # Each worker's last export happens at its exit, while the receiver (in this
            # process) decodes the parent's flood of spans: on a busy machine that can outlast
            # the default 5 s bound, which this test must not depend on. (A worker whose exit
            # flush never finished was a real hang: see test_the_first_export_imports_nothing.)
            "BITNET_OBS_SHUTDOWN_TIMEOUT": "60",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60000",
        }
        child = run_child(TARGET + "forking", env, timeout=600, children=4, rounds=2)
        result = child.result
        assert result["exitcodes"] == [0] * 8, result  # none hung, none crashed
        assert result["shutdown_ok"]
        expected = sorted([result["parent"], *result["children"]])
        rx.wait_for(lambda r: sorted(_per_instance(r)[1].values()) == expected, timeout=60)
        totals, spans = _per_instance(rx)
    # One instance id per process, each with exactly its own calls: the parent's data never
    # arrives a second time from a child.
    assert len(totals) == len(spans) == 9, (totals, spans, expected, child.stderr[-3000:])
    assert sorted(spans.values()) == expected
    assert sorted(totals.values()) == expected
    figures("workers", 8, protocol=protocol, forks_while_parent_thread_busy=True)
    figures("fork_round_trip_s", result["fork_seconds"], protocol=protocol)
    figures("distinct_instance_ids", len(totals), protocol=protocol)


OS_FORK_SCRIPT = """
import os, sys, time
import bitnet_obs

bitnet_obs.configure()

@bitnet_obs.monitored_inference(model="osfork")
def call():
    return [1]

for _ in range(2):
    call()
pids = []
for n in (7, 9):
    pid = os.fork()
    if pid == 0:  # a pre-fork server's worker: work, then sys.exit (atexit flushes)
        for _ in range(n):
            call()
        sys.exit(0)
    pids.append(pid)
codes = [os.waitpid(pid, 0)[1] for pid in pids]
print("CODES", codes, flush=True)
"""


@pytest.mark.slow
def test_os_fork_workers_flush_at_exit() -> None:
    with OTLPReceiver() as rx:
        env = child_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "60000",  # only the exit flush sends
                "BITNET_OBS_DEVICE_METRICS": "none",
            }
        )
        proc = subprocess.run(
            [sys.executable, "-c", OS_FORK_SCRIPT],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "CODES [0, 0]" in proc.stdout
        totals, spans = _per_instance(rx)
    assert sorted(totals.values()) == [2, 7, 9]
    assert sorted(spans.values()) == [2, 7, 9]


APP = """
import bitnet_obs

if PRELOAD:
    bitnet_obs.configure()  # with --preload: once, in the master, before the fork


@bitnet_obs.monitored_inference(model="gunicorn", operation="chat")
def generate(prompt):
    return [1, 2, 3]


def app(environ, start_response):
    generate("hi")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]
"""

# The recipe of docs/reliability.md, verbatim.
GUNICORN_CONF = """
def post_fork(server, worker):
    import bitnet_obs

    bitnet_obs.configure()  # no-op after --preload (the fork hook gave this worker its own)


def worker_exit(server, worker):
    import bitnet_obs

    bitnet_obs.shutdown()  # bounded flush of the worker's last data
"""


GRACEFUL_S = 30  # gunicorn kills a worker still busy after this long: a hang

READY_HOOK = """

def post_worker_init(worker):
    import os

    open(os.path.join({ready!r}, str(os.getpid())), "w").close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_gunicorn_workers_with_the_post_fork_recipe(
    preload: bool, tmp_path: Path, figures: Any
) -> None:
    gunicorn_config = pytest.importorskip("gunicorn.config")
    # Without --preload the app never calls configure(): the recipe's post_fork does, per worker.
    (tmp_path / "app.py").write_text(f"PRELOAD = {preload}\n" + textwrap.dedent(APP))
    # The recipe, plus a test-only hook: a worker still booting ignores SIGTERM (gunicorn
    # installs its handlers late) and is killed at the graceful timeout, so wait for both.
    ready = tmp_path / "ready"
    ready.mkdir()
    (tmp_path / "gunicorn_conf.py").write_text(
        textwrap.dedent(GUNICORN_CONF) + READY_HOOK.format(ready=str(ready))
    )
    port = free_port()
    requests = 40
    with OTLPReceiver() as rx:
        env = child_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "60000",
                "BITNET_OBS_DEVICE_METRICS": "none",
                "PYTHONPATH": str(tmp_path),
            }
        )
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "-c",
            str(tmp_path / "gunicorn_conf.py"),
            "--graceful-timeout",
            str(GRACEFUL_S),
            "app:app",
        ]
        if preload:
            cmd.insert(3, "--preload")
        if "control_socket_disable" in {s.name for s in gunicorn_config.KNOWN_SETTINGS}:
            cmd.append("--no-control-socket")  # gunicorn >= 25 would create ~/.gunicorn/
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            # listening and both workers booted; no HTTP request yet: a slow first answer that
            # a client retried would be counted twice by the app
            deadline = time.monotonic() + 90
            while len(list(ready.iterdir())) < 2 or not _listening(port):
                assert time.monotonic() < deadline, "gunicorn workers not booted"
                time.sleep(0.05)
            for _ in range(requests):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=90).read()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=90)
            stop_seconds = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, out
        # the workers' exit flush is bounded (5 s): no worker waited to be killed at the graceful
        # timeout (the room is for a busy machine)
        assert stop_seconds < GRACEFUL_S - 5, out
        totals, spans = _per_instance(rx)
    workers = {i: v for i, v in totals.items() if v}
    assert sum(workers.values()) == requests, (totals, out[-3000:])
    assert sum(spans.values()) == requests
    assert 1 <= len(workers) <= 2
    figures("gunicorn_stop_s", round(stop_seconds, 2), preload=preload)
    figures(
        "gunicorn_requests_counted",
        f"{int(sum(workers.values()))}/{requests}",
        preload=preload,
        worker_ids=len(workers),
    )


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


LOCKS = (
    "_pipeline._lock",
    "_instruments._lock",
    "_selfmon._logged_lock",
    "health._lock",
    "health entry lock",
    "sla._lock",
    "sla tracker lock",
    "quant budget lock",
    "quant names lock",
    "_health_checks._model_lock",
    "_provenance._lock",
    "devices._lock",
    "gpu sampler lock",
)
_UNSAFE = "not re-created after fork: a parent thread holding it at fork deadlocks the child"


def held_at_fork() -> dict[str, bool]:
    """In the child: for each lock, hold it in a thread, fork, try it in the forked child."""
    import bitnet_obs
    from bitnet_obs import (
        _health_checks,
        _instruments,
        _pipeline,
        _provenance,
        _sampling,
        _selfmon,
        devices,
        health,
        sla,
    )
    from bitnet_obs.quant import _record

    bitnet_obs.configure(prometheus_port=0)
    sla.set_objectives(sla.Objectives(latency_s=1.0))
    getters: dict[str, Any] = {
        "_pipeline._lock": lambda: _pipeline._lock,
        "_instruments._lock": lambda: _instruments._lock,
        "_selfmon._logged_lock": lambda: _selfmon._logged_lock,
        "health._lock": lambda: health._lock,
        "health entry lock": lambda: next(iter(health._registry.values())).lock,
        "sla._lock": lambda: sla._lock,
        "sla tracker lock": lambda: sla._tracker.lock,  # type: ignore[union-attr]
        "quant budget lock": lambda: _sampling.BUDGET._lock,
        "quant names lock": lambda: _record._names_lock,
        "_health_checks._model_lock": lambda: _health_checks._model_lock,
        "_provenance._lock": lambda: _provenance._lock,
        "devices._lock": lambda: devices._lock,
        "gpu sampler lock": lambda: devices._gpu._lock,
    }
    usable: dict[str, bool] = {}
    for name in LOCKS:
        get = getters[name]
        held, release = threading.Event(), threading.Event()

        def hold(lock: Any, held: threading.Event, release: threading.Event) -> None:
            with lock:
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold, args=(get(), held, release))
        holder.start()
        held.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: is the lock usable?
            os._exit(0 if get().acquire(timeout=0.2) else 1)
        usable[name] = os.waitpid(pid, 0)[1] == 0
        release.set()
        holder.join(10)
    bitnet_obs.shutdown(2)
    return usable


@pytest.fixture(scope="module")
def fork_audit() -> dict[str, bool]:
    return run_child(TARGET + "held_at_fork", {"BITNET_OBS_DEVICE_METRICS": "none"}).result


@pytest.mark.parametrize("lock", LOCKS)
def test_library_locks_survive_fork(fork_audit: dict[str, bool], lock: str) -> None:
    """A lock held by another thread at fork must be usable in the child (re-created there)."""
    assert fork_audit[lock], f"{lock}: {_UNSAFE}"


def first_export_imports() -> list[str]:
    """In the child: the modules that the first collection and export import."""
    import bitnet_obs

    bitnet_obs.configure()

    @bitnet_obs.monitored_inference(model="fork", operation="chat")
    def call() -> list[int]:
        return [1, 2]

    call()
    deadline = time.monotonic() + 60  # configure()'s first health checks import, too
    while time.monotonic() < deadline and any(
        t.name.startswith("bitnet-obs-health-") for t in threading.enumerate()
    ):
        time.sleep(0.01)
    before = set(sys.modules)
    assert bitnet_obs.force_flush(60)
    imported = sorted(set(sys.modules) - before)
    bitnet_obs.shutdown(10)
    return imported


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_first_export_imports_nothing(protocol: str) -> None:
    """An exporter thread inside a first-time import when the process forks leaves the module
    half-initialised and its import lock held in the child, whose exports then wait for ever
    (a worker's metrics never arrived, 1 run in 5 under load). configure() does those imports
    up front, so the export path imports nothing and a fork can come at any instant."""
    with OTLPReceiver() as rx:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.grpc_endpoint
            if protocol == "grpc"
            else rx.http_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the force_flush exports
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
            "BITNET_OBS_DEVICE_METRICS": "none",
        }
        imported = run_child(TARGET + "first_export_imports", env).result
        rx.wait_for(lambda r: r.spans() and r.metric_points("bitnet.inference.requests"), 60)
    assert imported == [], f"imported on an exporter thread, unsafe at fork: {imported}"
