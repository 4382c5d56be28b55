"""One monitored request in flight: :class:`Call`, what ``current_inference()`` returns inside
a monitored call.

A call writes what it learns into its :class:`~bitnet_obs._facts.RequestFacts`; a stream's
timing goes through its :class:`~bitnet_obs._stream.StreamMeter`; output health through the
output room (:func:`outputs`). At its end the recorder in force records the facts
(:meth:`~bitnet_obs._recorder.Recorder.finish`), the span is annotated and ended, and the
active-request count is given back, exactly once, however the end went.

Nothing here raises into the caller: every failure is counted in ``bitnet.obs.internal_errors``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind

from bitnet_obs import _config, _instruments, _queue, _tally
from bitnet_obs import _semconv as sc
from bitnet_obs._attributes import FINISH_REASONS, finish_reason, valid_device, valid_kernel
from bitnet_obs._cache import record_cache as _record_cache
from bitnet_obs._context import InferenceContext
from bitnet_obs._facts import OK, RequestFacts, outcome_of
from bitnet_obs._placement import Placement
from bitnet_obs._selfmon import describe, internal_error
from bitnet_obs._site import Site
from bitnet_obs._span import CONTENT_LIMIT, annotate, clip, prompt_text
from bitnet_obs._stream import StreamMeter
from bitnet_obs._tally import AttrKey, AttrValue, key_of
from bitnet_obs._tokens import (
    as_count,
    default_input_count,
    default_item_count,
    default_output_count,
    sequence_count,
)

if TYPE_CHECKING:
    from bitnet_obs._outputs import OutputHealth, OutputWatch

__all__ = ["CONTENT_LIMIT", "OUTSIDE", "Call", "outputs", "record_fallback"]

_ACTIVE = _instruments.ACTIVE_REQUESTS.tally
_INTERNAL = SpanKind.INTERNAL
_room: OutputHealth | None = None


def outputs() -> OutputHealth:
    """The output-health room (:mod:`bitnet_obs._outputs`, which needs numpy): imported by
    ``configure()``, at decoration once numpy is loaded, else on the first ids or logits."""
    global _room
    room = _room
    if room is None:
        from bitnet_obs._outputs import ROOM

        room = _room = ROOM
    return room


def preload_outputs() -> None:
    """Import the output room now, off the request path: a first import on it could be
    interrupted by a fork in another thread, leaving the module lock held in the child."""
    if "numpy" in sys.modules:
        outputs()


class Reporter(InferenceContext):
    """The reports that need no call (fallbacks, quantization samples, cache counts), written
    once for a call and for the stand-in outside one."""

    __slots__ = ()

    def _quant_format(self) -> str:
        return "i2_s"

    def _span(self) -> Span | None:
        return None

    def fallback(self, from_device: str, to_device: str, reason: str) -> None:
        record_fallback(from_device, to_device, reason, model=self.model or "", span=self._span())

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
        from bitnet_obs.quant import _record  # numpy: loaded only by code that compares tensors

        try:
            _record.compare_outputs(
                name, reference, candidate, format=format or self._quant_format(),
                reference_kind=reference_kind, kind=kind, activations=activations, codes=codes,
            )  # fmt: skip
        except Exception as exc:  # bad input inside inference: counted, never raised
            _record.skip(kind if kind in _record.KINDS else "output", "bad_input")
            if not isinstance(exc, ValueError):
                internal_error("quant_sample", exc)

    def record_cache(self, hits: int = 0, misses: int = 0, *, cache: str = "kv") -> None:
        _record_cache(hits, misses, cache=cache, model=self.model or "")


class Outside(Reporter):
    """``current_inference()`` outside a monitored call: reports go nowhere, except those that
    need no call (fallbacks, quantization samples, cache counts)."""

    __slots__ = ()


OUTSIDE = Outside()


class Call(Placement, Reporter):
    """One request in flight; built when its monitored call starts (span started, counted
    active), ended once by :meth:`end`. Where it is current is :class:`Placement`'s job."""

    __slots__ = (
        "_counted",
        "context",
        "facts",
        "logits",
        "meter",
        "pending",
        "recorder",
        "site",
        "watch",
    )

    def __init__(
        self, site: Site, args: tuple[Any, ...], kwargs: Mapping[str, Any], attach: bool
    ) -> None:
        self._counted: AttrKey | None = None  # the active-requests series, while counted
        self._done = False
        self.site = site
        #: the recorder in force when the call started: the call records there
        recorder = self.recorder = _instruments.RECORDER or _instruments.recorder()
        facts = self.facts = RequestFacts(time.perf_counter(), site.device, site.priority)
        self.span = None
        self.context: SpanContext | None = None  # the span's, while the call runs
        self.meter: StreamMeter | None = None
        self.watch: OutputWatch | None = None  # output measures, from the first ids or logits
        self.logits: bool | None = None  # the call's logits draw, at its first observe_logits
        #: set_attribute()'s values for a recording span, put on it with ours at the end (one
        #: SDK call, one lock, instead of one each)
        self.pending: dict[str, AttrValue] | None = None
        self.parent = None
        self._otel_token = None
        self.otel_before = None
        self.otel_ctx = None
        try:
            handed = _queue.pending.get()  # this request just left a RequestQueue
            if handed is not None:
                _queue.pending.set(None)
                facts.queue_wait, facts.priority = handed
            spans = recorder.spans
            if spans is not None:
                span = spans.start_span(site.span_name, kind=_INTERNAL, attributes=site.attrs)
                context = span.get_span_context()
                if recorder.valid_spans or context.is_valid:
                    self.span, self.context = span, context
                    if handed is not None and span.is_recording():
                        wait, priority = handed
                        span.set_attributes(
                            {
                                "bitnet.queue.wait_duration": wait,
                                "bitnet.request.priority": priority,
                            }
                        )
                    if attach:
                        self._otel_token = otel_context.attach(trace.set_span_in_context(span))
            if (args or kwargs) and site.capture():
                facts.prompt = prompt_text(args, kwargs)
            key = site.active_key if handed is None else site.active_key_of(
                facts.device, facts.priority
            )  # fmt: skip
            with _tally.REQUEST_LOCK:  # ACTIVE's lock; its add() inline
                series = _ACTIVE.series
                if key in series:
                    series[key] += 1
                else:
                    _ACTIVE.add_new(key, 1)
            self._counted = key  # uncounted from this series, whatever set_device() does
        except Exception as exc:
            internal_error("begin", exc)

    # ----- InferenceContext: what the call is -----
    @property
    def recording(self) -> bool:
        return not self._done

    @property
    def model(self) -> str | None:
        return str(self.site.attrs.get(sc.REQUEST_MODEL, ""))

    @property
    def operation(self) -> str | None:
        return str(self.site.attrs.get(sc.OPERATION_NAME, ""))

    @property
    def device(self) -> str | None:
        return self.facts.device

    @property
    def span_context(self) -> SpanContext | None:
        return self.context

    def _span(self) -> Span | None:
        return self.span

    def _quant_format(self) -> str:
        declared = self.site.attrs.get("bitnet.quant.format")
        return str(declared) if declared in ("i2_s", "tl1", "tl2") else "i2_s"

    # ----- InferenceContext: reports -----
    def add_input_tokens(self, n: int) -> None:
        count = as_count(n)
        if count is None:
            internal_error("bad_token_count", detail=f"add_input_tokens({describe(n)})")
            return
        self.facts.input_tokens += count
        self.facts.explicit_input = True

    def add_output_tokens(self, n: int) -> None:
        count = as_count(n)
        if count is None:
            internal_error("bad_token_count", detail=f"add_output_tokens({describe(n)})")
            return
        self._output(count)

    def add_output_ids(self, ids: Any) -> None:
        count = outputs().add_ids(self.output_watch(), ids)
        if count is not None:
            self._output(count)

    def _output(self, count: int) -> None:
        facts = self.facts
        if count > 0:
            facts.first_token(time.perf_counter())
        facts.output_tokens += count
        facts.explicit_output = True

    def observe_logits(self, logits: Any) -> None:
        room = _room or outputs()
        admitted = self.logits
        if admitted is None:
            admitted = self.logits = room.draw_logits()
            if admitted:
                room.observe_logits(self.output_watch(), logits, first=True)
        elif admitted:
            room.observe_logits(self.output_watch(), logits, first=False)

    def first_token(self) -> None:
        self.facts.first_token(time.perf_counter())

    def mark_token(self) -> None:
        meter = self.meter
        if meter is None:
            if self._done:
                return  # a mark after the end: nothing is recorded any more
            meter = self.meter = StreamMeter(
                self.facts, self._gaps, self._ids, counts_items=False, marks=True
            )
        elif not meter.marks:
            return  # a generator's items are stamped by its loop
        meter.item(time.perf_counter())

    def set_stream(self, streamed: bool) -> None:
        if not isinstance(streamed, bool):
            internal_error("bad_stream_flag", detail=f"set_stream({describe(streamed)})")
            return
        self.facts.stream_declared = streamed

    def set_device(self, name: str) -> None:
        if not valid_device(name):
            internal_error("bad_device", detail=f"set_device({describe(name)})")
            return
        self.facts.device = name
        if self.span is not None:
            self.span.set_attribute("bitnet.device", name)

    def fallback(self, from_device: str, to_device: str, reason: str) -> None:
        super().fallback(from_device, to_device, reason)
        self.set_device(to_device)

    def set_kernel(self, name: str) -> None:
        if not valid_kernel(name):
            internal_error("bad_kernel", detail=f"set_kernel({describe(name)})")
            return
        facts = self.facts
        first, facts.kernel = facts.kernel is None, name
        if self.span is not None:
            self.span.set_attribute("bitnet.kernel", name)
        declared = self.site.kernel
        if first and declared is not None and name != declared:
            _count_kernel_fallback(self.model or "", declared, name)

    def set_finish_reason(self, reason: str) -> None:
        if type(reason) is str and reason in FINISH_REASONS:
            self.facts.finish_reason = reason
            return
        self.facts.finish_reason = finish_reason(reason)
        if reason != "other":
            internal_error("bad_finish_reason", detail=f"set_finish_reason({describe(reason)})")

    def set_attribute(self, key: str, value: AttrValue) -> None:
        if not isinstance(key, str) or not isinstance(value, (str, bool, int, float)):
            internal_error("bad_attribute", detail=f"set_attribute({describe(key)}, ...)")
            return
        self._span_attributes({key: clip(value) if isinstance(value, str) else value})

    # ----- what the call shapes feed -----
    def start_stream(self, fast_loop: bool) -> StreamMeter:
        """The call is a stream: its meter. On a ``fast_loop`` (a sync generator's) items are
        its tokens, unless a counter or content capture looks at each one: then, as on any
        other loop, :meth:`count_item` counts them."""
        site = self.site
        if site.capture():
            self.facts.response = []
        fast = fast_loop and site.count_item is None and self.facts.response is None
        meter = self.meter = StreamMeter(self.facts, self._gaps, self._ids, counts_items=fast)
        return meter

    # ----- what a library instrumentor reports (llama.cpp), each in one call -----
    def requested(self, streamed: bool, attributes: Mapping[str, AttrValue]) -> None:
        """What the call asked for, read from its arguments: a stream or not, and its own
        parameters for the span (checked by the caller)."""
        self.facts.stream_declared = streamed
        if attributes:
            self._span_attributes(attributes)

    def decode(
        self, input_tokens: int, parameters: Mapping[str, AttrValue] | None
    ) -> StreamMeter | None:
        """An engine's decoding loop starts: its prompt's tokens, its sampling parameters for
        the span, and the meter it feeds inline as the generator wrapper's fast loop does (a
        stamp and an id per sampled token, see :mod:`bitnet_obs._stream`): its stamps are the
        call's output tokens, its ids the output judged at the end. None once the call ended."""
        if self._done:
            return None
        facts = self.facts
        facts.input_tokens += input_tokens
        facts.explicit_input = True
        if parameters and self.span is not None:
            self._span_attributes(parameters)
        meter = self.meter
        if meter is None:
            meter = self.meter = StreamMeter(
                facts, self._gaps, self._ids, counts_items=True, marks=True
            )
        else:
            meter.counts_items = True  # a meter mark_token() opened: its stamps are tokens now
        return meter

    def _span_attributes(self, attributes: Mapping[str, AttrValue]) -> None:
        """Attributes for a recording span, put on it with ours at the end."""
        span = self.span
        if span is not None:
            pending = self.pending
            if pending is None:
                if not span.is_recording():
                    return
                pending = self.pending = {}
            pending.update(attributes)

    def count_item(self, item: Any) -> None:
        """One streamed item the fast loop leaves to us (a counter, content capture)."""
        meter = self.meter
        if meter is None:
            return
        meter.item(time.perf_counter())
        if type(item) is int:
            meter.ids(item)
        elif may_hold_ids(item):
            meter.id_chunk(item)
        facts = self.facts
        try:
            counter = self.site.count_item
            if counter is not None:
                _add_counted(self.facts, "count_stream_item", counter(item), output=True)
            elif not facts.explicit_output:
                facts.output_tokens += default_item_count(item)
            response = facts.response
            if response is not None and facts.response_chars <= CONTENT_LIMIT:
                text = str(item)
                response.append(text)
                facts.response_chars += len(text)
        except Exception as exc:
            internal_error("token_counter", _config.loggable(exc), f"{describe(item)} item")

    def chunk_item(self, item: Any) -> None:
        """A streamed chunk (ids or an object) on the fast loop: counted, its ids judged."""
        meter = self.meter
        if meter is not None:
            meter.chunk(item)
            if may_hold_ids(item):
                meter.id_chunk(item)

    def output_watch(self) -> OutputWatch:
        watch = self.watch
        if watch is None:
            watch = self.watch = outputs().watch()
        return watch

    def _gaps(self, stamps: list[float]) -> None:
        """A meter's chunk of stamps: the inter-token gaps recorded."""
        try:
            if len(stamps) >= 2:
                recorder = self.recorder
                # the gaps carry the attributes of every outcome: any variant's handle will do
                variant = self.site.variant_of(recorder, self.facts, OK)
                recorder.gaps(variant.handles.inter_token, stamps, self.context)
        except Exception as exc:
            internal_error("inter_token_latency", exc)

    def _ids(self, ids: Any, whole: bool) -> None:
        """A meter's streamed ids (a buffer of ints, or a chunk item; ``whole``: the entire
        output): judged in the room (not at interpreter exit, when a stream left open is
        finalised: nothing can be imported, and nothing would be exported)."""
        if _room is None and sys.is_finalizing():
            return
        outputs().stream_ids(self.output_watch(), ids, whole)

    # ----- the end (never raises) -----
    def end(self, exc: BaseException | None, result: Any = None, counted: bool = False) -> None:
        """Finish the call once; ``counted``: the result's tokens were counted already. The
        recorder records the facts, the span is annotated and ended, active uncounted."""
        if self._done:
            return
        try:
            if exc is None and not counted:
                count_result(self, result)
            end = time.perf_counter()
            outcome = OK if exc is None else outcome_of(exc)
            facts, site, span, recorder = self.facts, self.site, self.span, self.recorder
            meter = self.meter
            if meter is not None:
                # dropped: its callbacks are this call's methods, a reference cycle that only
                # the garbage collector would break, keeping the call, its span and its
                # buffers alive until then
                self.meter = None
                meter.close()
            variant = site.variant_of(recorder, facts, outcome)
            watch = self.watch
            records = None
            if watch is not None:
                records = outputs().records(variant, watch, outcome.kind == "ok")
            active, self._counted = self._counted, None
            recorder.finish(variant, facts, outcome, end, self.context, active, records)
            if span is not None:
                if span.is_recording():
                    shown = None if records is None else records.span_attributes
                    reported, self.pending = self.pending, None
                    annotate(span, facts, outcome, site.capture, shown, reported)
                else:  # an unsampled span: its end() does nothing, so it is not called
                    self.span = None
        except Exception as error:  # e.g. RecursionError at the bottom of a deep recursion
            with contextlib.suppress(Exception):
                internal_error("finish", error)
        finally:
            self._release()

    def _release(self) -> None:
        """Uncount active and end the span exactly once, whatever happened before."""
        self._done = True
        key, self._counted = self._counted, None
        if key is not None:
            try:
                _ACTIVE.add(key, -1)
            except Exception:
                self._counted = key  # the next _release (GC) retries
        token, self._otel_token = self._otel_token, None
        if token is not None:
            try:  # noqa: SIM105 (Placement.detach, inline: once per traced request)
                otel_context.detach(token)  # type: ignore[arg-type]
            except Exception:  # from another context: the SDK logs it
                pass
        span, self.span, self.context = self.span, None, None
        if span is not None:
            try:
                if self.pending:  # the end did not annotate it: the call's own values still go
                    span.set_attributes(self.pending)
                span.end()
            except Exception as exc:
                internal_error("end_span", exc)

    def __del__(self) -> None:
        # A call whose end never ran (its frame was torn down mid-way): never leave it active.
        if self._counted is not None:
            self._release()


def count_result(call: Call, result: Any) -> None:
    """A returned result's tokens by the site's counters, else by default (ids, counts,
    ``usage``); its ids judged as the call's whole output; a str kept when capturing."""
    site, facts = call.site, call.facts
    kind = type(result)
    if (kind is list or kind is tuple) and site.counts_by_default:
        # ids, or a batch of them: the common answer, with no usage to read
        first = type(result[0]) if result else None
        if first is int:
            n = len(result)
            if n >= _config.current().degenerate_min_tokens:
                outputs().judge_result(call.output_watch(), result)
        else:
            n = sequence_count(result)
            if first is list or first is tuple:
                outputs().judge_result(call.output_watch(), result)
        if not facts.explicit_output:
            facts.output_tokens += n
        return
    try:
        if site.count_output is not None:
            _add_counted(call.facts, "count_output", site.count_output(result), output=True)
        elif not facts.explicit_output:
            facts.output_tokens += default_output_count(result) or 0
        if site.count_input is not None:
            _add_counted(call.facts, "count_input", site.count_input(result), output=False)
        elif not facts.explicit_input:
            facts.input_tokens += default_input_count(result) or 0
        if facts.response is None and isinstance(result, str) and site.capture():
            facts.response = [clip(result)]
    except Exception as exc:
        internal_error("token_counter", _config.loggable(exc), f"{describe(result)} result")
    if may_hold_ids(result) and not _short_ids(result):
        outputs().judge_result(call.output_watch(), result)


def _add_counted(facts: RequestFacts, where: str, value: object, output: bool) -> None:
    """A counter's answer, checked: a bad one is counted and left out."""
    count = as_count(value)
    if count is None:
        internal_error("bad_token_count", detail=f"{where} returned {describe(value)}")
    elif output:
        facts.output_tokens += count
    else:
        facts.input_tokens += count


def _count_kernel_fallback(model: str, declared: str, actual: str) -> None:
    """A call took another kernel than the one its decorator declared."""
    attrs: dict[str, AttrValue] = {
        sc.REQUEST_MODEL: model,
        "bitnet.kernel.declared": declared,
        "bitnet.kernel.actual": actual,
    }
    _instruments.KERNEL_FALLBACKS.add(key_of(attrs), 1)


def may_hold_ids(value: Any) -> bool:
    """A cheap first look (no import): a non-empty list/tuple of ints or of sequences, or an
    array-like; only those are looked at for token ids."""
    kind = type(value)
    if kind is list or kind is tuple:
        return bool(value) and type(value[0]) in (int, list, tuple)
    return hasattr(value, "dtype") and hasattr(value, "shape")


def _short_ids(value: Any) -> bool:
    """A list/tuple of ids too short to be judged (the common short answer: no room at all)."""
    kind = type(value)
    return (
        (kind is list or kind is tuple)
        and type(value[0]) is int
        and len(value) < _config.current().degenerate_min_tokens
    )


def record_fallback(
    from_device: str, to_device: str, reason: str, *, model: str = "", span: Span | None = None
) -> None:
    """Count a device fallback; usable outside monitored calls too. Never raises."""
    try:
        devices = (str(from_device)[:64], str(to_device)[:64])
        if not all(valid_device(d) for d in devices):
            internal_error("bad_device", detail=f"fallback({describe(from_device)}, ...)")
            return
        attrs: dict[str, AttrValue] = {
            "bitnet.device.from": devices[0],
            "bitnet.device.to": devices[1],
            "bitnet.fallback.reason": str(reason)[:64] or "unknown",
        }
        if model:
            attrs[sc.REQUEST_MODEL] = model
        _instruments.FALLBACKS.add(key_of(attrs), 1)
        target = span if span is not None else trace.get_current_span()
        if target.is_recording():
            target.add_event("bitnet.device.fallback", attrs)
    except Exception as exc:
        internal_error("fallback", exc)
