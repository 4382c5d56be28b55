"""Helpers for the live tests of the operations kit (tests/ops/test_live_*.py,
test_llama_server_stack.py): a webhook that records what Alertmanager delivers, a real
Alertmanager with our routing, the demo as a process, and the dashboard's queries as Grafana
would send them, each waited for until it has data."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests._support.processes import free_port, stop, wait_ready
from tests._support.prometheus import PrometheusServer
from tests._support.tools import find_tool
from tests.ops._kit import MONITORING, ROOT, load_yaml

RATE_INTERVAL = "1m"  # what Grafana would put for $__rate_interval


class Webhook:
    """Records the JSON bodies POSTed to it, by path (each receiver has its own path)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook._cond:
                    hook.received.append((self.path, json.loads(body)))
                    hook._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def alerts(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """(receiver path, alert) of every delivery of alert ``name`` so far."""
        with self._cond:
            return [
                (path, alert)
                for path, body in self.received
                for alert in body["alerts"]
                if alert["labels"]["alertname"] == name
            ]

    def wait_for_alert(self, name: str, timeout: float) -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for path, body in self.received:
                    for alert in body["alerts"]:
                        if alert["labels"]["alertname"] == name:
                            return path, alert
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{name} never reached the webhook: {self.received}")
                self._cond.wait(left)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """prometheus-alertmanager on loopback with our alertmanager.yml, webhooks redirected."""

    def __init__(self, workdir: Path, webhook: Webhook) -> None:
        config = load_yaml(MONITORING / "alertmanager.yml")
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = hook["url"].replace("http://127.0.0.1:5001", webhook.url)
        for route in [config["route"], *config["route"]["routes"]]:
            route["group_wait"] = "1s"  # the tests' only change to the routing
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = open(workdir / "alertmanager.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                find_tool("prometheus-alertmanager", "alertmanager"),
                f"--config.file={workdir / 'alertmanager.yml'}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_ready(f"http://{self.address}/-/ready", self.proc, workdir / "alertmanager.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


def start_demo(
    cleanup: contextlib.ExitStack,
    log_path: Path,
    args: Sequence[str],
    env: Mapping[str, str],
) -> tuple[int, subprocess.Popen[bytes]]:
    """``bitnet-obs demo *args`` on a free port, in this process's environment less its
    ``OTEL_*``/``BITNET_*`` variables plus ``env``, its output in ``log_path``; stopped by
    ``cleanup`` as by Ctrl-C. Returns its port and process at once (wait for it with
    :func:`~tests._support.processes.wait_ready`)."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    log = cleanup.enter_context(open(log_path, "wb"))  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitnet_obs", "demo", "--port", str(port), *args],
        cwd=ROOT,
        env={**clean, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    cleanup.callback(stop, proc, signal.SIGINT)
    return port, proc


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.25)


def firing(prom: PrometheusServer) -> set[str]:
    return {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}


def regex_value(value: str) -> str:
    """A variable's value as Grafana writes it into a =~ matcher: regex-escaped, in a PromQL
    string (so each backslash doubled)."""
    return re.escape(value).replace("\\", "\\\\")


def grafana_substitute(expr: str, model: str, instance: str) -> str:
    """A panel's PromQL with the template variables filled in as Grafana does: ``model`` and
    ``instance`` are regex-escaped values, or ``.*`` for All."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$model", model)
        .replace("$instance", instance)
    )


def has_data(result: list[dict[str, Any]]) -> bool:
    values = [s["value"][1] for s in result]
    return any(v not in ("NaN", "+Inf", "-Inf") for v in values)


@dataclass
class PanelCheck:
    """What :func:`check_panels` found: queries that never had data (``title: query ->
    result``), how many were waited for, and the excused panels that had data all the same."""

    without_data: list[str]
    checked: int
    excused_with_data: list[str]


def check_panels(
    prom: PrometheusServer,
    panels: Sequence[Mapping[str, Any]],
    substitute: Callable[[str], str],
    timeout: float,
    excused: Collection[str] = (),
) -> PanelCheck:
    """Every query of ``panels``, its template variables filled in by ``substitute``, against
    ``prom``, each waited for until it has data; one deadline for all (panels fill as the data
    flows: only one that never does is reported). A PromQL error raises, excused panel or
    not; an ``excused`` panel (no data expected) is queried once."""
    deadline = time.monotonic() + timeout
    found = PanelCheck([], 0, [])
    for panel in panels:
        for target in panel["targets"]:
            query = substitute(target["expr"])
            assert "$" not in query, query
            result = prom.query(query)
            if panel["title"] in excused:
                if has_data(result):
                    found.excused_with_data.append(f"{panel['title']}: {query} -> {result}")
                continue
            while not has_data(result) and time.monotonic() < deadline:
                time.sleep(0.5)
                result = prom.query(query)
            found.checked += 1
            if not has_data(result):
                found.without_data.append(f"{panel['title']}: {query} -> {result}")
    return found
