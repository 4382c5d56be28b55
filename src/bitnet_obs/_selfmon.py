"""Self-telemetry: what bitnet-obs swallowed, dropped or failed to send.

Every failure inside the library ends here: counted in ``bitnet.obs.internal_errors`` by kind
and logged once per kind (with its traceback), so a broken token counter cannot flood logs.
Telemetry given up is counted in ``bitnet.obs.dropped``, every export attempt in
``bitnet.obs.exports``, and each push exporter's last outcome is kept in :data:`EXPORTERS` for
the ``exporters`` health check.

Messages never quote a caller's value: :func:`describe` gives its type and size instead (a
token count passed as text may be a patient's letter).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from bitnet_obs import _state
from bitnet_obs._instruments import DROPPED, EXPORTS, INTERNAL_ERRORS

logger = logging.getLogger("bitnet_obs")

_MAX_ERROR_TEXT = 300
_logged: set[str] = set()
_logged_lock = threading.Lock()


def describe(value: object) -> str:
    """A caller's value without its content: ``str of length 34``, ``int``, ``NoneType``."""
    kind = type(value).__name__
    try:
        size = len(value)  # type: ignore[arg-type]
    except Exception:
        return kind
    return f"{kind} of length {size}"


def internal_error(kind: str, exc: BaseException | None = None, detail: str = "") -> None:
    """Count and (once per kind) log a failure that was kept away from the caller.

    ``detail`` must not contain caller data (use :func:`describe`); the traceback of ``exc``
    is logged once per kind.
    """
    try:
        INTERNAL_ERRORS.add((("bitnet.obs.error.kind", kind),))
        with _logged_lock:
            first = kind not in _logged
            _logged.add(kind)
        if first:
            message = "bitnet-obs swallowed an internal error of kind %r%s (logged once per kind)"
            logger.warning(message, kind, f": {detail}" if detail else "", exc_info=exc)
    except Exception:  # pragma: no cover - logging itself failed; nothing more we can do
        pass


def errors(kind: str | None = None) -> int:
    """How many internal errors were counted (of one kind, or all)."""
    return INTERNAL_ERRORS.value(**({"bitnet.obs.error.kind": kind} if kind else {}))


def count_dropped(signal: str, reason: str, n: int = 1) -> None:
    """Count telemetry given up (``bitnet.obs.dropped``); never raises."""
    if n > 0:
        DROPPED.add((("bitnet.obs.drop_reason", reason), ("bitnet.obs.signal", signal)), n)


def dropped(signal: str | None = None, reason: str | None = None) -> int:
    """How many items were counted as dropped (of one signal and/or reason)."""
    wanted: dict[str, str] = {}
    if signal is not None:
        wanted["bitnet.obs.signal"] = signal
    if reason is not None:
        wanted["bitnet.obs.drop_reason"] = reason
    return DROPPED.value(**wanted)


@dataclass
class ExporterHealth:
    """Last outcome of one push exporter, for the health check and ``bitnet.obs.exports``."""

    name: str
    last_success: float | None = None
    last_failure: float | None = None
    consecutive_failures: int = 0
    last_error: str = ""

    def record(self, ok: bool, error: str = "") -> None:
        now = time.time()
        if ok:
            self.last_success, self.consecutive_failures = now, 0
        else:
            self.last_failure, self.last_error = now, error[:_MAX_ERROR_TEXT]
            self.consecutive_failures += 1
        EXPORTS.add(
            (("bitnet.obs.exporter", self.name), ("bitnet.outcome", "ok" if ok else "error"))
        )


#: Push exporters by name (``otlp_http_metrics``, ``console_traces``, ...).
EXPORTERS: dict[str, ExporterHealth] = {}


def exporter_health(name: str) -> ExporterHealth:
    """The health record of one exporter, created on first use (its export counts at 0)."""
    health = EXPORTERS.get(name)
    if health is None:
        health = EXPORTERS.setdefault(name, ExporterHealth(name))
        for outcome in ("ok", "error"):
            EXPORTS.tally.declare((("bitnet.obs.exporter", name), ("bitnet.outcome", outcome)))
    return health


#: The kinds of internal error and drop that dashboards and alerts watch: reported at 0 from
#: ``configure()`` on, so ``rate()`` sees the first one.
WATCHED_ERRORS = (
    "begin",
    "finish",
    "token_counter",
    "bad_token_count",
    "quant_record",
    "devices",
    "health",
    "sla",
    "shutdown_timeout",
)
WATCHED_DROPS = {
    "traces": ("queue_full", "export_failed", "shutdown", "shutdown_in_flight", "after_shutdown"),
    "metrics": ("export_failed", "shutdown", "shutdown_in_flight"),
    "http": ("connection_limit",),
}


def declare_watched() -> None:
    """Report the watched internal errors and drops at 0 (``configure()`` calls this)."""
    for kind in WATCHED_ERRORS:
        INTERNAL_ERRORS.tally.declare((("bitnet.obs.error.kind", kind),))
    for signal, reasons in WATCHED_DROPS.items():
        for reason in reasons:
            DROPPED.tally.declare(
                (("bitnet.obs.drop_reason", reason), ("bitnet.obs.signal", signal))
            )


@_state.on_reset(phase=_state.CLEAR)
def _reset() -> None:
    with _logged_lock:
        _logged.clear()
    EXPORTERS.clear()


@_state.on_fork
def _reinit_after_fork() -> None:
    global _logged_lock
    _logged_lock = threading.Lock()
