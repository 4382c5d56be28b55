"""Self-telemetry: what bitnet-obs swallowed to keep inference safe.

Every failure inside the library ends here: counted in ``bitnet.obs.internal_errors`` by kind
and logged once per kind (with its traceback), so a broken token counter cannot flood logs.
"""

from __future__ import annotations

import logging
import os
import threading

from bitnet_obs._instruments import TALLIES

logger = logging.getLogger("bitnet_obs")

_ERRORS = TALLIES["bitnet.obs.internal_errors"]
_EXPORTS = TALLIES["bitnet.obs.exports"]
_logged: set[str] = set()
_logged_lock = threading.Lock()


def internal_error(kind: str, exc: BaseException | None = None, detail: str = "") -> None:
    """Count and (once per kind) log a failure that was kept away from the caller."""
    try:
        _ERRORS.add((("bitnet.obs.error.kind", kind),))
        with _logged_lock:
            first = kind not in _logged
            _logged.add(kind)
        if first:
            message = "bitnet-obs swallowed an internal error of kind %r%s (logged once per kind)"
            logger.warning(message, kind, f": {detail}" if detail else "", exc_info=exc)
    except Exception:  # pragma: no cover - logging itself failed; nothing more we can do
        pass


def export_result(exporter: str, ok: bool) -> None:
    _EXPORTS.add((("bitnet.obs.exporter", exporter), ("bitnet.outcome", "ok" if ok else "error")))


def errors(kind: str | None = None) -> int:
    """How many internal errors were counted (of one kind, or all)."""
    return _ERRORS.value(**({"bitnet.obs.error.kind": kind} if kind else {}))


def _reset_logged() -> None:
    with _logged_lock:
        _logged.clear()


def _reinit_after_fork() -> None:
    global _logged_lock
    _logged_lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_after_fork)
