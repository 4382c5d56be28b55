"""Where a monitored call is current: its span in the OpenTelemetry context and the call in
``current_inference()``, put there and taken off in any order.

A generator's call lives in a context of its own; a ``with`` block's shares its context with
whatever else runs there, and blocks of interleaved generators end in any order. A token reset
would then bring back a span whose block ended meanwhile, so :meth:`Placement.leave_shared`
makes the nearest still-open enclosing call current instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace

from bitnet_obs import _context
from bitnet_obs._context import InferenceContext

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class Placement(InferenceContext):
    """The part of a call that places it in contexts (its slots; the call sets them)."""

    __slots__ = ("_done", "_otel_token", "otel_before", "otel_ctx", "parent", "span")

    _done: bool  # the call ended: skipped when looking for the nearest open one
    _otel_token: object  # the token of the span's attach, while attached
    otel_before: otel_context.Context | None  # what was current before a with block
    otel_ctx: otel_context.Context | None  # the with block's context with the span
    parent: InferenceContext | None  # the call current before this one
    span: Span | None

    def detach(self) -> None:
        """Take the span off the context it was attached to (the call goes on elsewhere)."""
        token, self._otel_token = self._otel_token, None
        if token is not None:
            # a try, not contextlib.suppress: this runs once per traced request
            try:  # noqa: SIM105
                otel_context.detach(token)  # type: ignore[arg-type]
            except Exception:  # from another context: the SDK logs it
                pass

    def enter(self) -> None:
        """Make this the current call (a stream's own context, a ``with`` block)."""
        self.parent = _context.current.get()
        _context.current.set(self)

    def leave(self) -> None:
        """Stop being the current call, even when calls ended out of order (interleaved
        generators): the current call becomes the nearest one still open."""
        if _context.current.get() is self:
            parent = self.parent
            while isinstance(parent, Placement) and parent._done:
                parent = parent.parent
            _context.current.set(parent)

    def enter_shared(self) -> None:
        """Make this the current call and span in a context other calls share (``with``
        blocks, which generators may interleave): see :meth:`leave_shared`."""
        self.enter()
        before = otel_context.get_current()
        self.otel_before = before
        if self.span is not None:
            self.otel_ctx = trace.set_span_in_context(self.span, before)
            otel_context.attach(self.otel_ctx)

    def leave_shared(self) -> None:
        """Undo :meth:`enter_shared` in any order: a token reset would bring back whatever span
        was current at enter, even one whose block ended meanwhile; instead the nearest open
        enclosing call's span (else what was current before the first of them) becomes
        current, and only when this call's is current now."""
        self.leave()
        if self.otel_ctx is None or otel_context.get_current() is not self.otel_ctx:
            return
        target, parent = self.otel_before, self.parent
        while isinstance(parent, Placement) and parent._done:
            target, parent = parent.otel_before, parent.parent
        if target is not None:
            otel_context.attach(target)
