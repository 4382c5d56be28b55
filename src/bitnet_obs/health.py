"""Health checks behind ``/health``, ``/health/live`` and ``/health/ready`` (same port as /metrics).

Kubernetes needs a readiness probe that fails while the model loads and a liveness probe that
fails only when a restart would help. A check is a sync or async callable returning a
:class:`CheckResult`, a :class:`HealthStatus` or a bool::

    from bitnet_obs import health

    health.mark_not_ready("loading weights")  # opt in to readiness tracking at start-up
    model = load_model()
    health.mark_ready()

    def kv_cache() -> health.CheckResult:
        free = cache.free_fraction()
        if free < 0.05:
            return health.CheckResult(health.HealthStatus.DEGRADED, f"{free:.0%} free")
        return health.CheckResult(health.HealthStatus.HEALTHY)

    health.register("kv_cache", kv_cache, critical=False)

Decisions, for operators:

- **Readiness starts ready** unless the application opts in: ``mark_not_ready()`` (call it
  before the model loads; it works before ``configure()``) makes ``/health/ready`` answer 503
  until ``mark_ready()``. A library that made every service that never heard of it "not ready"
  would break deployments that use ``/health`` as a liveness probe.
- **Status codes**: 503 when a *critical* check in scope is unhealthy; otherwise 200, also for
  degraded (still serving: pulling the pod from load balancing would make things worse).
  A non-critical unhealthy check makes the overall status "degraded".
- **Scopes**: ``/health/live`` runs liveness checks only (none built in: the server answering
  is the liveness signal); ``/health/ready`` and ``/health`` run every check. ``/health`` adds
  the version.
- **Built-ins**: ``model`` (critical, readiness), and non-critical ``devices``, ``exporters``
  and ``memory``: reported in the JSON and in ``bitnet.health.status`` for alerting, never
  flipping a probe (a dead collector is not fixed by restarting inference, and memory pressure
  on a node would make every pod unready at once). Register them again with
  ``critical=True`` to change that.
- **Timeouts**: each check runs on its own daemon thread (at most one run per check in flight)
  with a timeout (default 0.5 s, under Kubernetes' 1 s probe default). A check that is too slow
  is reported unhealthy "timed out" at once; a hanging check is not started again while it
  hangs, so the endpoint never waits on it twice and never hangs. A raising check is unhealthy
  with the exception type. Results are cached for ``CACHE_TTL_S`` (2 s), so a probe storm runs
  each check at most once per TTL.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.metrics import CallbackOptions, Observation

from bitnet_obs import _semconv as sc
from bitnet_obs import _server, _state
from bitnet_obs._errors import ConfigError
from bitnet_obs._health_checks import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    CheckResult,
    HealthStatus,
    devices_check,
    exporters_check,
    memory_check,
    model_check,
    set_model_state,
)
from bitnet_obs._instruments import HEALTH_CHECK_DURATION, HEALTH_CHECK_FAILURES, HEALTH_STATUS
from bitnet_obs._parsers import Number
from bitnet_obs._selfmon import internal_error, logger
from bitnet_obs._version import __version__

__all__ = [
    "CheckResult",
    "ComponentReport",
    "HealthReport",
    "HealthStatus",
    "devices_check",
    "enable",
    "evaluate",
    "exporters_check",
    "mark_not_ready",
    "mark_ready",
    "memory_check",
    "register",
    "unregister",
]

Probe = Literal["liveness", "readiness"]
Scope = Literal["all", "liveness", "readiness"]
CheckFn = Callable[[], "CheckResult | HealthStatus | bool | Awaitable[Any]"]

CACHE_TTL_S = 2.0
DEFAULT_TIMEOUT_S = 0.5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_TIMEOUT_S = 60.0
_TIMEOUT = Number(0.0, MAX_TIMEOUT_S, "seconds", lo_open=True)
_FAILURES = HEALTH_CHECK_FAILURES
_FAILURE_KINDS = ("unhealthy", "timeout")


@dataclass(frozen=True)
class ComponentReport:
    """One check's answer in a report; ``age_s`` is how old the (possibly cached) result is."""

    name: str
    status: HealthStatus
    detail: str
    critical: bool
    probe: Probe
    age_s: float


@dataclass(frozen=True)
class HealthReport:
    """The answer of one probe: ``report.http_status`` is 200 or 503."""

    scope: Scope
    status: HealthStatus
    reasons: tuple[str, ...]
    components: tuple[ComponentReport, ...]

    @property
    def http_status(self) -> int:
        return 503 if self.status is UNHEALTHY else 200

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "probe": self.scope,
            "reasons": list(self.reasons),
            "checks": {
                c.name: {
                    "status": c.status.value,
                    "detail": c.detail,
                    "critical": c.critical,
                    "probe": c.probe,
                    "age_s": round(c.age_s, 3),
                }
                for c in self.components
            },
        }


class _Run:
    __slots__ = ("done", "result", "started", "timed_out")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: CheckResult | None = None
        self.timed_out = False


class _Entry:
    """One registered check, its cached result and its run in flight (if any)."""

    def __init__(self, name: str, fn: CheckFn, critical: bool, probe: Probe, timeout: float):
        self.name, self.fn, self.critical, self.probe = name, fn, critical, probe
        self.timeout = timeout
        self.attrs = {"bitnet.health.component": name}
        self.lock = threading.Lock()
        self.result: CheckResult | None = None  # the cache
        self.result_at = 0.0
        self.running: _Run | None = None
        self.last: CheckResult | None = None  # what was last reported (the gauge)

    def cached(self, now: float) -> CheckResult | None:
        if self.result is not None and now - self.result_at < CACHE_TTL_S:
            return self.result
        return None

    def start(self) -> _Run:
        """The run in flight, or a new one on a daemon thread. Call with ``lock`` held."""
        if self.running is None:
            run = self.running = _Run()
            name = f"bitnet-obs-health-{self.name}"
            threading.Thread(target=self._execute, args=(run,), name=name, daemon=True).start()
        return self.running

    def _execute(self, run: _Run) -> None:
        error_type = ""
        try:
            value = self.fn()
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            result = _coerce(value)
            if result.status is UNHEALTHY:
                error_type = "unhealthy"
        except BaseException as exc:  # a check must not kill its thread silently
            error_type = type(exc).__name__
            result = CheckResult(UNHEALTHY, f"check raised {error_type}")
            _log_once(self.name, exc)
        duration = time.monotonic() - run.started
        try:
            HEALTH_CHECK_DURATION.record(duration, self.attrs)
        except Exception as exc:
            internal_error("health", exc, "recording check duration")
        with self.lock:
            if error_type and not run.timed_out:  # a timeout was counted already
                _FAILURES.add(_failure_key(self.name, error_type))
            run.result = result
            self.result, self.result_at, self.last = result, time.monotonic(), result
            if self.running is run:
                self.running = None
        run.done.set()

    def wait(self, run: _Run) -> CheckResult:
        """The run's result, or unhealthy "timed out" once its time is up (at once if it is)."""
        run.done.wait(max(0.0, run.started + self.timeout - time.monotonic()))
        with self.lock:
            if run.result is not None:
                return run.result
            if not run.timed_out:
                run.timed_out = True
                _FAILURES.add(_failure_key(self.name, "timeout"))
            running_for = time.monotonic() - run.started
            result = CheckResult(
                UNHEALTHY, f"timed out after {self.timeout:g}s (running for {running_for:.1f}s)"
            )
            self.last = result
            return result


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _coerce(value: object) -> CheckResult:
    if isinstance(value, CheckResult):
        return value
    if isinstance(value, bool):
        return CheckResult(HEALTHY if value else UNHEALTHY)
    if isinstance(value, HealthStatus):
        return CheckResult(value)
    if isinstance(value, str) and value in HealthStatus._value2member_map_:
        return CheckResult(HealthStatus(value))
    return CheckResult(UNHEALTHY, f"check returned {type(value).__name__}, not a CheckResult")


def _failure_key(name: str, error_type: str) -> tuple[tuple[str, str], ...]:
    return (("bitnet.health.component", name), (sc.ERROR_TYPE, error_type))


_logged: set[str] = set()


def _log_once(name: str, exc: BaseException) -> None:
    if name not in _logged:
        _logged.add(name)
        logger.warning("health check %r raised (logged once per check)", name, exc_info=exc)


_lock = threading.Lock()
_registry: dict[str, _Entry] = {}


def register(
    name: str,
    check: CheckFn,
    *,
    critical: bool = True,
    probe: Probe = "readiness",
    timeout: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Add (or replace) a check. Wrong arguments raise ConfigError here, never at probe time;
    the timeout is at most 60 s (a probe must answer; Kubernetes' default is 1 s). An async
    check runs on a private event loop in its worker thread (to look at your own loop's
    objects, use a sync check with ``asyncio.run_coroutine_threadsafe``)::

        health.register("db", lambda: db.ping(), critical=True, probe="readiness", timeout=0.3)
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"health check name={name!r} is not valid; accepted: 1-64 of "
                          "A-Z a-z 0-9 _ . : - (starting with a letter or digit)")  # fmt: skip
    if not callable(check):
        raise ConfigError(f"health check {name!r}: check of type {type(check).__name__} is not "
                          "valid; accepted: a callable")  # fmt: skip
    if probe not in ("liveness", "readiness"):
        raise ConfigError(f"probe={probe!r} is not valid; accepted: 'liveness', 'readiness'")
    if not isinstance(critical, bool):
        raise ConfigError(f"critical={critical!r} is not valid; accepted: True or False")
    seconds = _TIMEOUT.check("timeout", timeout)
    with _lock:
        _registry[name] = _Entry(name, check, critical, probe, seconds)
    for kind in _FAILURE_KINDS:  # start the failure counters at 0
        _FAILURES.tally.declare(_failure_key(name, kind))


def unregister(name: str) -> None:
    """Remove a check (built-ins too); unknown names are ignored."""
    with _lock:
        _registry.pop(name, None)


def mark_ready() -> None:
    """The model is loaded: ``/health/ready`` answers 200 (if nothing else critical fails)."""
    set_model_state(True, "")
    _refresh("model")


def mark_not_ready(reason: str = "not ready") -> None:
    """``/health/ready`` answers 503 with ``reason`` until :func:`mark_ready` (e.g. loading,
    draining before shutdown)::

        health.mark_not_ready("draining")
    """
    set_model_state(False, str(reason))
    _refresh("model")


def _refresh(name: str) -> None:
    entry = _registry.get(name)
    if entry is not None:
        with entry.lock:
            entry.result = None
            if entry.fn is model_check:
                entry.last = model_check()


def evaluate(scope: Scope = "all") -> HealthReport:
    """Run (or reuse cached) checks in scope and combine them.

    For your own web framework::

        report = health.evaluate("readiness")
        return JSONResponse(report.to_dict(), status_code=report.http_status)
    """
    if scope not in ("all", "liveness", "readiness"):
        raise ValueError(f"scope={scope!r}; accepted: 'all', 'liveness', 'readiness'")
    with _lock:
        entries = [e for e in _registry.values() if scope != "liveness" or e.probe == "liveness"]
    now = time.monotonic()
    pending: list[tuple[_Entry, _Run]] = []
    answers: dict[str, tuple[CheckResult, float]] = {}
    for entry in entries:
        with entry.lock:
            cached = entry.cached(now)
            if cached is not None:
                entry.last = cached
                answers[entry.name] = (cached, now - entry.result_at)
            else:
                pending.append((entry, entry.start()))
    for entry, run in pending:  # all run in parallel; each waits only for its own time left
        answers[entry.name] = (entry.wait(run), 0.0)
    return _combine(scope, entries, answers)


def _combine(
    scope: Scope, entries: list[_Entry], answers: dict[str, tuple[CheckResult, float]]
) -> HealthReport:
    status, reasons, components = HEALTHY, [], []
    for entry in entries:
        result, age = answers[entry.name]
        components.append(
            ComponentReport(entry.name, result.status, result.detail, entry.critical,
                            entry.probe, age)
        )  # fmt: skip
        if result.status is UNHEALTHY and entry.critical:
            status = UNHEALTHY
            reasons.append(f"{entry.name}: {result.detail}" if result.detail else entry.name)
        elif result.status is not HEALTHY and status is HEALTHY:
            status = DEGRADED
    return HealthReport(scope, status, tuple(reasons), tuple(components))


_SCOPES: dict[str, Scope] = {
    "/health": "all",
    "/health/live": "liveness",
    "/health/ready": "readiness",
}


def render(path: str) -> tuple[int, str, bytes]:
    """The HTTP server's renderer: (status, content type, JSON body). Never raises."""
    try:
        report = evaluate(_SCOPES.get(path, "all"))
        body = report.to_dict()
        if path == "/health":
            body["version"] = __version__
        return report.http_status, "application/json", json.dumps(body).encode()
    except Exception as exc:
        internal_error("health", exc, f"rendering {path}")
        body = {"status": "unhealthy", "reasons": ["health evaluation failed"]}
        return 503, "application/json", json.dumps(body).encode()


def _observe_status(_options: CallbackOptions | None = None) -> Iterable[Observation]:
    """``bitnet.health.status`` from the last results; stale checks are re-run in the background
    (never waited for), so the gauge stays current even when nothing probes."""
    try:
        out: list[Observation] = []
        now = time.monotonic()
        for entry in list(_registry.values()):
            with entry.lock:
                if entry.cached(now) is None:
                    entry.start()
                last = entry.last
            if last is not None:
                out.append(Observation(last.status.score, entry.attrs))
        return out
    except Exception as exc:
        internal_error("health", exc, "observing bitnet.health.status")
        return []


_enabled = False


def _install_builtins() -> None:
    register("model", model_check, critical=True, probe="readiness")
    register("devices", devices_check, critical=False, probe="readiness")
    register("exporters", exporters_check(), critical=False, probe="readiness")
    register("memory", memory_check(), critical=False, probe="readiness")


def enable() -> None:
    """Serve the probes from our HTTP server and report ``bitnet.health.status``; ``configure()``
    calls this. Idempotent; re-installs nothing that was unregistered."""
    global _enabled
    with _lock:
        if _enabled:
            return
        _enabled = True
    _server.set_health_renderer(render)
    HEALTH_STATUS.register(_observe_status)
    _observe_status()  # first runs in the background, not waited for


@_state.on_reset
def _reset() -> None:
    """Built-ins only, model state untracked, gauge callback removed, nothing cached."""
    global _enabled
    with _lock:
        _enabled = False
        _registry.clear()
    HEALTH_STATUS.unregister(_observe_status)
    set_model_state(None, "")
    _install_builtins()
    _logged.clear()


_install_builtins()
_server.set_health_renderer(render)


@_state.on_fork
def _reinit_after_fork() -> None:
    # A parent thread may have held these at fork time; the child's copies would stay locked.
    global _lock
    _lock = threading.Lock()
    for entry in _registry.values():
        entry.lock = threading.Lock()
        entry.running = None  # the thread running it did not survive the fork
