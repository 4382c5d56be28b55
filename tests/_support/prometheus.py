"""Run the *real* Prometheus server and ``promtool`` from tests (stdlib only).

Typical use (the ``prometheus_factory`` fixture in ``tests/conftest.py`` wraps this)::

    with MetricsEndpoint(EXPOSITION) as endpoint, PrometheusServer([endpoint.address]) as prom:
        series = prom.wait_for('demo_requests_total{model="m"}', timeout=20)

Timing -- read this before choosing timeouts:

* ``start()`` returns once ``/-/ready`` answers 200 (typically well under a second).
* The generated config uses ``scrape_interval: 1s`` and ``evaluation_interval: 1s``, but the
  **first scrape only happens ~5-7 s after start**: even static targets go through
  Prometheus' service-discovery manager, which publishes target updates on a fixed 5 s tick,
  after which the scrape manager applies them (plus a random offset within the 1 s interval).
  After that, targets are scraped every second.  So poll with ``wait_for(...)`` and give it
  >= 15-20 s; never ``sleep`` a fixed amount.
* Rules are evaluated every second; an alert with ``for: 0s`` fires on the first evaluation
  that sees data, i.e. shortly after the first scrape.
* Instant queries see a series for ``--query.lookback-delta`` (5 m) after its last sample unless
  the target disappears or a scrape fails (staleness marker): on a busy machine a scrape can run
  past the 1 s scrape timeout, and then an instant query at "now" finds nothing for a moment.
* "Now" is a moving target: a scrape that started before it may still be appending. Queries that
  must agree with each other (a rule against the plain expression, a total against another)
  belong at one *settled* instant: ``at, result = prom.query_when(promql, predicate)`` polls
  until ``predicate`` holds at ``settled_instant()``, then evaluate the rest with
  ``prom.query(..., at)``. Never pick an instant from the wall clock (``time.time() - 2``):
  on a loaded machine the samples it assumes may not exist yet.

Everything listens on 127.0.0.1 only, on ports picked from the kernel's ephemeral range.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as _dt
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from .processes import (
    can_die_with_parent,
    die_with_parent,
    free_port,
    http_request,
    log_tail,
    stop,
)
from .tools import find_tool

__all__ = [
    "EXPOSITION_CONTENT_TYPE",
    "MetricsEndpoint",
    "PrometheusAPIError",
    "PrometheusError",
    "PrometheusFactory",
    "PrometheusServer",
    "PrometheusTimeout",
    "ScrapeJob",
    "free_port",
    "promtool",
    "promtool_check_config",
    "promtool_check_metrics",
    "promtool_check_rules",
    "promtool_test_rules",
    "serve_metrics",
]

Sample = dict[str, Any]
"""One element of a query result: ``{"metric": {...}, "value": [ts, "v"]}`` (instant) or
``{"metric": {...}, "values": [[ts, "v"], ...]}`` (range)."""

TimeLike = float | int | str | _dt.datetime

EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_JOB = "test"
STARTUP_TIMEOUT = 30.0
STOP_GRACE = 5.0
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 40

# ----------------------------------------------------------------------------- errors


class PrometheusError(RuntimeError):
    """Prometheus failed to start, died, or could not be reached (message has its log tail)."""


class PrometheusAPIError(PrometheusError):
    """The HTTP API answered with ``status != "success"`` (e.g. a PromQL parse error)."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None,
        error_type: str | None,
        error: str | None,
        endpoint: str,
        params: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_type = error_type
        self.error = error
        self.endpoint = endpoint
        self.params = dict(params or {})


class PrometheusTimeout(PrometheusError, TimeoutError):
    """A ``wait_*`` helper gave up (message has last result, target health and log tail)."""


# ---------------------------------------------------------------------------- helpers


def _format_time(value: TimeLike) -> str:
    if isinstance(value, _dt.datetime):
        return repr(value.timestamp())
    if isinstance(value, (int, float)):
        return repr(float(value))
    return value


_LIVE: weakref.WeakSet[PrometheusServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(grace=1.0)


# ------------------------------------------------------------------------ scrape jobs


@dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_configs`` entry with ``static_configs``."""

    targets: Sequence[str]
    name: str = DEFAULT_JOB
    metrics_path: str = "/metrics"
    scheme: str = "http"
    basic_auth: tuple[str, str] | None = None
    bearer_token: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    scrape_interval: str | None = None
    scrape_timeout: str | None = None
    honor_labels: bool = False
    params: Mapping[str, Sequence[str]] | None = None
    labels: Mapping[str, str] | None = None
    extra: Mapping[str, Any] | None = None
    """Merged verbatim into the job's config (escape hatch)."""

    def to_config(self) -> dict[str, Any]:
        static: dict[str, Any] = {"targets": list(self.targets)}
        if self.labels:
            static["labels"] = dict(self.labels)
        job: dict[str, Any] = {
            "job_name": self.name,
            "metrics_path": self.metrics_path,
            "scheme": self.scheme,
            "honor_labels": self.honor_labels,
            "static_configs": [static],
        }
        if self.scrape_interval:
            job["scrape_interval"] = self.scrape_interval
        if self.scrape_timeout:
            job["scrape_timeout"] = self.scrape_timeout
        if self.basic_auth:
            job["basic_auth"] = {"username": self.basic_auth[0], "password": self.basic_auth[1]}
        if self.bearer_token:
            job["authorization"] = {"type": "Bearer", "credentials": self.bearer_token}
        if self.ca_file or self.insecure_skip_verify:
            tls: dict[str, Any] = {"insecure_skip_verify": self.insecure_skip_verify}
            if self.ca_file:
                tls["ca_file"] = self.ca_file
            job["tls_config"] = tls
        if self.params:
            job["params"] = {k: list(v) for k, v in self.params.items()}
        if self.extra:
            job.update(self.extra)
        return job


# ------------------------------------------------------------------------------ server


class PrometheusServer:
    """A real ``prometheus`` process on ``127.0.0.1:<free port>`` with a generated config.

    ``targets`` is shorthand for one job named ``job_name`` (default ``"test"``) scraping
    ``metrics_path``; pass ``jobs=[ScrapeJob(...), ...]`` for more jobs / auth / TLS.
    ``rule_files`` are referenced by absolute path, ``alertmanagers`` are ``"host:port"``.
    Data, config and ``prometheus.log`` live in ``workdir`` (a temp dir removed on ``stop()``
    when not given).  Not started until ``start()`` or ``with``.
    """

    def __init__(
        self,
        targets: Sequence[str] = (),
        *,
        job_name: str = DEFAULT_JOB,
        metrics_path: str = "/metrics",
        jobs: Sequence[ScrapeJob] = (),
        rule_files: Sequence[str | os.PathLike[str]] = (),
        alertmanagers: Sequence[str] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        external_labels: Mapping[str, str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        workdir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        log_level: str = "warn",
    ) -> None:
        if isinstance(targets, str):
            raise TypeError("targets must be a list of 'host:port' strings, not a str")
        all_jobs = list(jobs)
        if targets:
            all_jobs.insert(0, ScrapeJob(list(targets), name=job_name, metrics_path=metrics_path))
        self.jobs: list[ScrapeJob] = all_jobs
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.alertmanagers = list(alertmanagers)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.external_labels = dict(external_labels or {})
        self.extra_config = dict(extra_config or {})
        self.extra_args = list(extra_args)
        self.log_level = log_level
        self.binary = binary or find_tool("prometheus")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0
        self.cmd: list[str] = []
        self.last_warnings: list[str] = []

    # -- config --------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The Prometheus configuration that ``start()`` writes (JSON is valid YAML)."""
        cfg: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": [job.to_config() for job in self.jobs],
        }
        if self.external_labels:
            cfg["global"]["external_labels"] = self.external_labels
        if self.rule_files:
            cfg["rule_files"] = self.rule_files
        if self.alertmanagers:
            cfg["alerting"] = {
                "alertmanagers": [
                    {"api_version": "v2", "static_configs": [{"targets": self.alertmanagers}]}
                ]
            }
        cfg.update(self.extra_config)
        return cfg

    @property
    def config_path(self) -> Path:
        return self._workdir() / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self._workdir() / "prometheus.log"

    def _workdir(self) -> Path:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        return self.workdir

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>`` (e.g. to let a second Prometheus scrape this one)."""
        return self.url.removeprefix("http://")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, timeout: float = STARTUP_TIMEOUT) -> PrometheusServer:
        """Write the config, launch Prometheus and wait until ``/-/ready``.

        A port clash (another process grabbed the port between picking and binding) is retried
        with a new port, up to ``PORT_ATTEMPTS`` times.
        """
        if self.running:
            return self
        workdir = self._workdir()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n", encoding="utf-8")
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._spawn(attempt)
            try:
                self.wait_ready(timeout)
                return self
            except PrometheusError:
                clash = "address already in use" in self._attempt_log().lower()
                self._terminate()
                if not clash or attempt == PORT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, attempt: int) -> None:
        self.port = free_port()
        data_dir = self._workdir() / "data"
        self.cmd = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Smallest sensible retention: tests only look at the in-memory head block.
            "--storage.tsdb.retention.time=1h",
            "--web.enable-lifecycle",  # POST /-/reload and /-/quit
            f"--log.level={self.log_level}",
            *self.extra_args,
        ]
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_offset = self._log.tell()
        self._log.write(f"--- attempt {attempt}: {' '.join(self.cmd)}\n".encode())
        self._log.flush()
        main_thread = threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._workdir(),
            start_new_session=True,  # Ctrl-C goes to pytest, which then stops us cleanly
            # PDEATHSIG is tied to the forking *thread*, so only use it from the main thread.
            preexec_fn=die_with_parent if (can_die_with_parent() and main_thread) else None,
        )
        _LIVE.add(self)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll ``/-/ready`` until 200; raise ``PrometheusError`` if the process exits."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.process is None:
                raise PrometheusError("Prometheus has not been started")
            code = self.process.poll()
            if code is not None:
                raise PrometheusError(self._describe(f"Prometheus exited with code {code}"))
            try:
                status, body = http_request("GET", f"{self.url}/-/ready", timeout=2.0)
                if status == 200 and self._is_ours():
                    return
                last = f"HTTP {status}: {body.decode(errors='replace').strip()}"
            except OSError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise PrometheusTimeout(
                    self._describe(f"Prometheus not ready after {timeout:.0f}s ({last})")
                )
            time.sleep(0.05)

    def _is_ours(self) -> bool:
        """Whether the server on our port is *this* process (another Prometheus that won a
        port race would also answer /-/ready); it wins if ours has exited meanwhile."""
        try:
            status, body = http_request("GET", f"{self.url}/api/v1/status/flags", timeout=2.0)
            flags = json.loads(body).get("data", {}) if status == 200 else {}
        except (OSError, ValueError):
            return False
        return bool(flags.get("config.file") == str(self.config_path) and self.running)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL.  Idempotent; returns the exit code."""
        code = self._terminate(grace)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return code

    def _terminate(self, grace: float = STOP_GRACE) -> int | None:
        return None if self.process is None else stop(self.process, grace=grace)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PrometheusServer {state} port={self.port} jobs={[j.name for j in self.jobs]}>"

    # -- diagnostics --------------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last ``lines`` lines of Prometheus' combined stdout/stderr."""
        return "" if self.workdir is None else log_tail(self.log_path, lines)

    def _attempt_log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def _describe(self, headline: str) -> str:
        parts = [headline, f"command: {' '.join(self.cmd)}"]
        if self.process is not None and self.process.poll() is not None:
            parts.append(f"exit code: {self.process.returncode}")
        if self.workdir is not None:
            parts.append(f"config: {self.config_path}")
        tail = self.log_tail()
        parts.append("log tail:\n" + (tail or "(empty)"))
        return "\n".join(parts)

    def target_summary(self) -> str:
        """One line per active target: job, URL, health and last error."""
        try:
            targets = self.targets()
        except PrometheusError as exc:
            return f"(targets unavailable: {exc.args[0].splitlines()[0]})"
        if not targets:
            return "(no active targets yet -- the first scrape happens ~5-7 s after start)"
        return "\n".join(
            f"{t.get('labels', {}).get('job')} {t.get('scrapeUrl')} health={t.get('health')} "
            f"lastError={t.get('lastError')!r} lastScrape={t.get('lastScrape')}"
            for t in targets
        )

    # -- HTTP API -----------------------------------------------------------------------

    def api(
        self,
        endpoint: str,
        params: Mapping[str, str] | None = None,
        *,
        method: str = "GET",
        timeout: float = 10.0,
    ) -> Any:
        """Call ``/api/v1/<endpoint>`` and return its ``data``; raise on ``status: error``."""
        path = "/api/v1/" + endpoint.lstrip("/")
        url = self.url + path
        form = None
        if params and method == "GET":
            url += "?" + urllib.parse.urlencode(params)
        elif params:
            form = params
        try:
            status, body = http_request(method, url, form=form, timeout=timeout)
        except OSError as exc:
            raise PrometheusError(self._describe(f"{method} {path} failed: {exc}")) from exc
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            err = doc.get("error") if isinstance(doc, dict) else None
            etype = doc.get("errorType") if isinstance(doc, dict) else None
            detail = err or body.decode(errors="replace").strip()[:500] or "(empty body)"
            query = (params or {}).get("query")
            msg = f"Prometheus API {path} failed (HTTP {status}, {etype or 'no errorType'}): "
            msg += detail + (f"\nquery: {query}" if query else "")
            raise PrometheusAPIError(
                msg,
                http_status=status,
                error_type=etype,
                error=err,
                endpoint=path,
                params=params,
            )
        self.last_warnings = list(doc.get("warnings") or [])
        return doc.get("data")

    @staticmethod
    def _as_samples(data: Mapping[str, Any]) -> list[Sample]:
        result = data.get("result")
        if data.get("resultType") in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result or [])

    def query(
        self, promql: str, time: TimeLike | None = None, *, timeout: float = 10.0
    ) -> list[Sample]:
        """Instant query; returns ``data.result`` (scalar/string results are wrapped as one
        sample with empty labels, so the return type is always a list of dicts)."""
        params = {"query": promql}
        if time is not None:
            params["time"] = _format_time(time)
        data = self.api("query", params, method="POST", timeout=timeout)
        return self._as_samples(data)

    def query_range(
        self,
        promql: str,
        start: TimeLike,
        end: TimeLike | None = None,
        step: str | float = "1s",
        *,
        timeout: float = 10.0,
    ) -> list[Sample]:
        """Range query (``end`` defaults to now); returns ``data.result`` (matrix)."""
        params = {
            "query": promql,
            "start": _format_time(start),
            "end": _format_time(end if end is not None else time.time()),
            "step": str(step),
        }
        data = self.api("query_range", params, method="POST", timeout=timeout)
        return self._as_samples(data)

    def query_value(self, promql: str, time: TimeLike | None = None) -> float | None:
        """Value of a query returning at most one sample (None when empty)."""
        result = self.query(promql, time)
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"{promql!r} returned {len(result)} series, expected one: {result}")
        return float(result[0]["value"][1])

    def settled_instant(self, timeout: float = 30.0) -> float:
        """The latest instant up to which every target's samples are stored for good.

        Prometheus appends a scrape's samples and its ``up`` sample with one appender and
        commits them together, and one target's scrapes run one after another; so at the
        timestamp of a target's newest ``up``, all its samples up to that instant are in, and
        no sample stored later can change a query evaluated there. With several targets, the
        earliest of their newest scrapes, once every active target has been scraped (waits up
        to ``timeout`` for that).
        """
        newest = self.wait_for(
            "timestamp(up)", timeout, lambda r: bool(r) and len(r) >= len(self.targets())
        )
        return min(float(sample["value"][1]) for sample in newest)

    def query_when(
        self,
        promql: str,
        predicate: Callable[[list[Sample]], bool] | None = None,
        timeout: float = 60.0,
        *,
        interval: float = 0.25,
    ) -> tuple[float, list[Sample]]:
        """``(at, result)``: poll until ``predicate(result)`` (default: non-empty) holds for
        ``promql`` evaluated at a :meth:`settled_instant` ``at``.

        Evaluate the queries that must agree with ``result`` at ``at`` too: they then see the
        same samples, however busy the machine. Errors that cannot go away (``bad_data``)
        raise at once; on timeout a ``PrometheusTimeout`` names the last instant and result.
        """
        self.query(promql)  # a PromQL error raises here, before anything is scraped

        def settled(deadline: float) -> float:
            return self.settled_instant(max(1.0, deadline - time.monotonic()))

        at, result = self._poll(promql, settled, predicate, timeout, interval)
        assert at is not None
        return at, result

    def wait_for(
        self,
        promql: str,
        timeout: float = 30.0,
        predicate: Callable[[list[Sample]], bool] | None = None,
        *,
        interval: float = 0.25,
    ) -> list[Sample]:
        """Poll an instant query until ``predicate(result)`` (default: non-empty) holds.

        Errors that cannot go away (``bad_data``, e.g. a PromQL syntax error) are raised at
        once; on timeout a ``PrometheusTimeout`` lists the last result, target health and the
        log tail.  Remember the first scrape only happens ~5-7 s after start.
        """
        return self._poll(promql, lambda deadline: None, predicate, timeout, interval)[1]

    def _poll(
        self,
        promql: str,
        instant: Callable[[float], float | None],
        predicate: Callable[[list[Sample]], bool] | None,
        timeout: float,
        interval: float,
    ) -> tuple[float | None, list[Sample]]:
        """Evaluate ``promql`` at ``instant(deadline)`` (None: now) until ``predicate`` holds."""
        check = predicate or bool
        deadline = time.monotonic() + timeout
        last: list[Sample] | str = "(no successful query)"
        at: float | None = None
        while True:
            try:
                at = instant(deadline)
                result = self.query(promql, at)
                if check(result):
                    return at, result
                last = result
            except PrometheusAPIError as exc:
                if exc.error_type == "bad_data":
                    raise
                last = str(exc)
            except PrometheusTimeout as exc:  # no settled instant yet: nothing scraped
                last = exc.args[0].splitlines()[0]
            if not self.running:
                raise PrometheusError(self._describe("Prometheus died while waiting"))
            if time.monotonic() >= deadline:
                where = "" if at is None else f" at a settled instant (last: {at})"
                raise PrometheusTimeout(
                    self._describe(
                        f"condition on {promql!r} not met{where} within {timeout:.0f}s; "
                        f"last result: {last}\ntargets:\n{self.target_summary()}"
                    )
                )
            time.sleep(interval)

    def targets(self, state: str = "active") -> list[dict[str, Any]]:
        """``/api/v1/targets`` -- ``activeTargets`` (health, lastError, ...) or dropped ones."""
        data = self.api("targets", {"state": state})
        key = "droppedTargets" if state == "dropped" else "activeTargets"
        return list(data.get(key) or [])

    def wait_for_targets(
        self, timeout: float = 30.0, health: str = "up", *, interval: float = 0.25
    ) -> list[dict[str, Any]]:
        """Wait until there are active targets and all have ``health`` (``up``/``down``)."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if targets and all(t.get("health") == health for t in targets):
                return targets
            if time.monotonic() >= deadline:
                raise PrometheusTimeout(
                    self._describe(
                        f"targets not all {health!r} within {timeout:.0f}s:\n"
                        + self.target_summary()
                    )
                )
            time.sleep(interval)

    def alerts(self) -> list[dict[str, Any]]:
        """``/api/v1/alerts`` -- pending and firing alerts."""
        return list(self.api("alerts").get("alerts") or [])

    def rules(self, rule_type: str | None = None) -> list[dict[str, Any]]:
        """``/api/v1/rules`` groups (``rule_type``: ``"alert"`` or ``"record"``)."""
        params = {"type": rule_type} if rule_type else None
        return list(self.api("rules", params).get("groups") or [])

    def metadata(self, metric: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """``/api/v1/metadata`` -- HELP/TYPE/unit as scraped, keyed by metric family."""
        data = self.api("metadata", {"metric": metric} if metric else None)
        return dict(data or {})

    def series(self, *match: str) -> list[dict[str, str]]:
        """``/api/v1/series`` label sets for the given selectors."""
        query = urllib.parse.urlencode([("match[]", m) for m in match])
        return list(self.api("series?" + query) or [])

    def label_values(self, label: str) -> list[str]:
        return list(self.api(f"label/{urllib.parse.quote(label)}/values") or [])

    def reload(self) -> None:
        """Re-read config and rule files (``POST /-/reload``)."""
        status, body = http_request("POST", f"{self.url}/-/reload", timeout=10.0)
        if status != 200:
            raise PrometheusError(
                self._describe(f"reload failed: HTTP {status} {body.decode(errors='replace')}")
            )


class PrometheusFactory(Protocol):
    """Type of the ``prometheus_factory`` fixture: same arguments as ``PrometheusServer``;
    returns a started server (stopped automatically at test teardown)."""

    def __call__(self, targets: Sequence[str] = (), **kwargs: Any) -> PrometheusServer: ...


# ------------------------------------------------------------------------------ promtool


def promtool(
    *args: str,
    stdin: str | None = None,
    timeout: float = 60.0,
    binary: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool <args>``; ``.stdout`` holds stdout and stderr combined."""
    exe = binary or find_tool("promtool")
    return subprocess.run(
        [exe, *args],
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def promtool_check_metrics(text: str, *, binary: str | None = None) -> tuple[int, str]:
    """``promtool check metrics`` on an exposition: (exit code, output).

    Exit codes: 0 clean, 3 lint problems (e.g. counter without ``_total``, no HELP),
    1 parse error.
    """
    proc = promtool("check", "metrics", stdin=text, binary=binary)
    return proc.returncode, proc.stdout


def promtool_check_rules(
    *paths: str | os.PathLike[str], binary: str | None = None
) -> tuple[int, str]:
    proc = promtool("check", "rules", *map(str, paths), binary=binary)
    return proc.returncode, proc.stdout


def promtool_check_config(
    path: str | os.PathLike[str], *, binary: str | None = None
) -> tuple[int, str]:
    proc = promtool("check", "config", str(path), binary=binary)
    return proc.returncode, proc.stdout


def promtool_test_rules(
    *paths: str | os.PathLike[str], binary: str | None = None
) -> tuple[int, str]:
    """``promtool test rules`` (unit tests for alerting/recording rules)."""
    proc = promtool("test", "rules", *map(str, paths), binary=binary)
    return proc.returncode, proc.stdout


# ---------------------------------------------------------------- static metrics endpoint


class MetricsEndpoint:
    """A tiny threaded HTTP server on 127.0.0.1 serving ``text`` at ``path`` for scraping.

    ``text`` may be reassigned at any time; ``requests`` records ``(path, headers)`` of
    every request.  Optional ``basic_auth=(user, password)`` answers 401 without it.
    """

    def __init__(
        self,
        text: str = "",
        *,
        path: str = "/metrics",
        content_type: str = EXPOSITION_CONTENT_TYPE,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.text = text
        self.path = path
        self.content_type = content_type
        self.basic_auth = basic_auth
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MetricsEndpoint not started")
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}{self.path}"

    @property
    def scrape_count(self) -> int:
        return sum(1 for p, _ in self.requests if p.split("?", 1)[0] == self.path)

    def start(self) -> MetricsEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests.append((self.path, dict(self.headers.items())))
                if self.path.split("?", 1)[0] != endpoint.path:
                    self.send_error(404)
                    return
                if endpoint.basic_auth is not None:
                    token = base64.b64encode(":".join(endpoint.basic_auth).encode()).decode()
                    if self.headers.get("Authorization") != f"Basic {token}":
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="metrics"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = endpoint.text.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", endpoint.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-endpoint", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> MetricsEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def serve_metrics(text: str, **kwargs: Any) -> Iterator[MetricsEndpoint]:
    """``with serve_metrics(text) as endpoint:`` -- shorthand for ``MetricsEndpoint``."""
    with MetricsEndpoint(text, **kwargs) as endpoint:
        yield endpoint
