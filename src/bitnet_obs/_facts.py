"""What one request learned while it ran, and how it ended: plain records, no behaviour.

A monitored call fills one :class:`RequestFacts` (its reports write to it, its stream meter
stamps it) and, at its end, the recorder reads it. Nothing else holds a request's state, so
"where does the time to first token come from?" has one answer: ``first_token_at`` here.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from bitnet_obs._attributes import error_type


class RequestFacts:
    """Counts, times, device, kernel and finish reason of one request (perf_counter seconds)."""

    __slots__ = (
        "device",
        "explicit_input",
        "explicit_output",
        "finish_reason",
        "first_token_at",
        "input_tokens",
        "kernel",
        "output_tokens",
        "priority",
        "prompt",
        "queue_wait",
        "response",
        "response_chars",
        "start",
        "stream_declared",
        "streamed",
    )

    def __init__(self, start: float, device: str, priority: str | None) -> None:
        self.start = start
        #: seconds the request waited in a RequestQueue before the call (0.0: none)
        self.queue_wait = 0.0
        self.device = device
        self.priority = priority
        self.kernel: str | None = None
        self.finish_reason: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        #: an add_*_tokens report turned the default counter off for this side
        self.explicit_input = False
        self.explicit_output = False
        self.first_token_at: float | None = None
        #: the call is a stream (a generator, or an engine marking its decoding steps)
        self.streamed = False
        #: what the caller asked for (set_stream()); None: a stream if it is one
        self.stream_declared: bool | None = None
        #: captured content (opt-in), clipped: the prompt, and the response's parts
        self.prompt: str | None = None
        self.response: list[str] | None = None
        self.response_chars = 0

    @property
    def arrival(self) -> float:
        """When the request arrived: the call's start less its wait in a RequestQueue."""
        return self.start - self.queue_wait

    def first_token(self, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now


class Outcome(NamedTuple):
    """How a request ended: ``ok``, ``error`` (with its ``error.type``) or ``cancelled``."""

    kind: str
    error_type: str
    exception: BaseException | None


OK = Outcome("ok", "", None)


def outcome_of(exc: BaseException | None) -> Outcome:
    """The outcome of a call that raised ``exc`` (None: it returned)."""
    if exc is None:
        return OK
    if cancelled(exc):
        return Outcome("cancelled", "", exc)
    return Outcome("error", error_type(exc), exc)


def cancelled(exc: BaseException) -> bool:
    """A call that ended because its consumer went away (closed generator, cancelled task)."""
    if isinstance(exc, GeneratorExit):
        return True
    asyncio = sys.modules.get("asyncio")  # never imported here: exiting interpreters can't
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)
