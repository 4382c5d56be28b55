"""The request in flight: its public reporting interface, the ContextVar that holds it, and
who listens when a request ends.

Nested code reports what only it knows through :func:`bitnet_obs.current_inference`, which
returns an :class:`InferenceContext`. The monitor's private call object implements it inside a
monitored call; outside one, the base class below is the stand-in: every method is safe to call
and does nothing, every property answers "no call" (``None``/``False``), so library code calls
it unconditionally. Logs and quantization recording read the ContextVar from here, without
importing the hot path.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from bitnet_obs._tally import AttrValue


class InferenceContext:
    """What ``current_inference()`` returns: report what only nested code knows.

    Every method is safe to call anywhere and never raises; a bad value is counted in
    ``bitnet.obs.internal_errors`` and ignored::

        inf = bitnet_obs.current_inference()
        inf.add_output_tokens(len(new_ids))
        inf.set_device("cuda:0")

    Outside a monitored call this is a stand-in: token and device reports go nowhere, while
    device fallbacks, quantization samples and cache counts (which need no call) are still
    recorded.
    """

    __slots__ = ()

    # ----- what the call is (None / False outside a call) -----
    @property
    def recording(self) -> bool:
        """True inside a monitored call."""
        return False

    @property
    def model(self) -> str | None:
        """The call's ``gen_ai.request.model``."""
        return None

    @property
    def operation(self) -> str | None:
        """The call's ``gen_ai.operation.name``."""
        return None

    @property
    def device(self) -> str | None:
        """The device the call runs on (after any ``set_device``/``fallback``)."""
        return None

    @property
    def span_context(self) -> SpanContext | None:
        """The call's span context (None when not traced)."""
        return None

    # ----- reports -----
    def add_input_tokens(self, n: int) -> None:
        """Report prompt tokens (turns off automatic input counting for this call)."""

    def add_output_tokens(self, n: int) -> None:
        """Report generated tokens (turns off automatic output counting for this call)."""

    def add_output_ids(self, ids: Any) -> None:
        """Report generated token ids: counted as output tokens (like ``add_output_tokens``:
        use one of the two) and judged for degenerate output (``bitnet.output.*``; the ids
        never leave the process). One sequence (a list of ints, a 1-D integer array or
        tensor) continues this call's output; a batch (2-D, or a list of lists) is one
        output per row."""

    def observe_logits(self, logits: Any) -> None:
        """Next-token logits of decoding steps, ``(steps, vocab)`` or ``(vocab,)``: drawn once
        per call at ``BITNET_OBS_LOGITS_SAMPLE_RATE`` and time-budgeted with the quantization
        samples (``BITNET_OBS_QUANT_BUDGET``), their entropy and top-1 margin are recorded.
        Pass a zero-argument callable to build them only when the sample is taken."""

    def first_token(self) -> None:
        """Mark the first output token now (for code that knows the moment)."""

    def mark_token(self) -> None:
        """A decoding step produced output now, for engines that stream through callbacks
        rather than a generator: the first mark is the first token, the gaps between marks go
        to ``bitnet.inference.inter_token_latency`` and the call counts as a stream. Counts no
        tokens (report those with ``add_output_tokens``/``add_output_ids``); ignored in a
        monitored generator, whose items are stamped already."""

    def set_stream(self, streamed: bool) -> None:
        """Whether the caller asked for a streamed response (``gen_ai.request.stream``). By
        default a monitored generator, or a call that marks tokens, is a stream; an engine that
        marks every decoding step of a call answered in one piece says ``False`` here, and its
        inter-token gaps are still recorded."""

    def set_device(self, name: str) -> None:
        """The device this call runs on, e.g. after choosing one (``cuda:0``, ``cpu``)."""

    def fallback(self, from_device: str, to_device: str, reason: str) -> None:
        """Record a device fallback (counter and span event) and switch the call's device."""

    def set_kernel(self, name: str) -> None:
        """The kernel path this call actually took (``i2_s_avx2``, ``tl2``, ``scalar``): a span
        attribute, and a ``bitnet.kernel.fallbacks`` count when it is not the one declared on
        the decorator (``kernel=``)."""

    def set_finish_reason(self, reason: str) -> None:
        """Why generation stopped: ``stop``, ``length``, ``content_filter``, ``tool_calls``,
        ``cancelled``, ``error`` (anything else counts as ``other``). On the span
        (``gen_ai.response.finish_reasons``) and the request counter."""

    def set_attribute(self, key: str, value: AttrValue) -> None:
        """A span attribute only: metric attributes stay fixed to bound cardinality."""

    def record_quantization(
        self,
        name: str,
        reference: Any,
        candidate: Any,
        *,
        format: str | None = None,
        reference_kind: str = "quantized",
        kind: str = "output",
        activations: Any = None,
        codes: Any = None,
    ) -> None:
        """Compare a tensor with its reference as a sampled, budgeted quantization sample.

        Defaults to kernel fidelity (against the quantized reference) in the call's format.
        ``reference``/``candidate`` may be zero-argument callables: they run only when the
        sample is taken. With the layer's ``activations`` and ternary ``codes``, an I2_S sample
        also counts where bitnet.cpp's AVX2 kernel wraps (``bitnet.quant.kernel_overflows``).
        Bad input is a counted skip.
        """

    def record_cache(self, hits: int = 0, misses: int = 0, *, cache: str = "kv") -> None:
        """Count KV/prefix cache hits and misses for this request's model."""


#: The call being monitored in this context (None outside any).
current: contextvars.ContextVar[InferenceContext | None] = contextvars.ContextVar(
    "bitnet_obs_inference", default=None
)


def in_call() -> bool:
    return current.get() is not None


# Called at the end of every request with (duration_s, ttft_s or None, output_tokens, outcome);
# each must be O(1) and never raise (the SLA tracker is one). Features register here, so the
# hot path does not import them.
RequestObserver = Callable[[float, "float | None", int, str], None]
observers: list[RequestObserver] = []


def add_request_observer(observer: RequestObserver) -> None:
    if observer not in observers:
        observers.append(observer)


def remove_request_observer(observer: RequestObserver) -> None:
    if observer in observers:
        observers.remove(observer)
