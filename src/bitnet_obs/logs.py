"""Trace-correlated logs: stdlib ``logging`` records that can be joined with our spans.

Opt-in. :func:`instrument_logging` makes every ``LogRecord`` carry ``trace_id``, ``span_id``,
``trace_sampled`` and, inside a monitored inference call, ``model``, ``operation`` and
``device``; :class:`JsonFormatter` writes them as one JSON object per line::

    import logging, bitnet_obs.logs

    bitnet_obs.logs.instrument_logging()
    handler = logging.StreamHandler()
    handler.setFormatter(bitnet_obs.logs.JsonFormatter())
    logging.getLogger().addHandler(handler)

We add identifiers only, never prompt or response text: what a log line says is the caller's.
``opentelemetry-instrumentation-logging`` does the id part too, but it also rewrites the root
logger's format and knows nothing of the model; twenty lines here avoid both and a dependency.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace

from bitnet_obs import _context, _state

__all__ = ["FIELDS", "JsonFormatter", "instrument_logging", "uninstrument_logging"]

#: Attributes added to every record (empty strings outside a span / monitored call).
FIELDS = ("trace_id", "span_id", "trace_sampled", "model", "operation", "device")

_lock = threading.Lock()
_previous: Callable[..., logging.LogRecord] | None = None


def _annotate(record: logging.LogRecord) -> None:
    ctx = trace.get_current_span().get_span_context()
    call = _context.current.get()
    if not ctx.is_valid and call is not None:
        ctx = call.span_context or ctx  # a generator's consumer between items
    if ctx.is_valid:
        record.trace_id = format(ctx.trace_id, "032x")
        record.span_id = format(ctx.span_id, "016x")
        record.trace_sampled = ctx.trace_flags.sampled
    else:
        record.trace_id = record.span_id = ""
        record.trace_sampled = False
    if call is not None:
        record.model = call.model or ""
        record.operation = call.operation or ""
        record.device = call.device or ""
    else:
        record.model = record.operation = record.device = ""


def instrument_logging() -> None:
    """Install the record factory (idempotent). Never raises from inside ``logging``."""
    global _previous
    with _lock:
        if _previous is not None:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                _annotate(record)
            except Exception:  # a log call must never fail because of us
                for name in FIELDS:
                    setattr(record, name, "")
            return record

        _previous = previous
        logging.setLogRecordFactory(factory)


@_state.on_reset
def uninstrument_logging() -> None:
    global _previous
    with _lock:
        if _previous is not None:
            logging.setLogRecordFactory(_previous)
            _previous = None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the trace fields and, for
    ``extra_fields``, those attributes from ``logger.info(..., extra={...})``."""

    def __init__(self, extra_fields: Sequence[str] = ()) -> None:
        super().__init__()
        self.extra_fields = tuple(extra_fields)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*FIELDS, *self.extra_fields):
            value = getattr(record, name, None)
            if value not in (None, ""):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
