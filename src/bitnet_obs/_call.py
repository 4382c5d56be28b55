"""One monitored request in flight: what it learns while running, and what it records at its end.

A :class:`Site` is what one decorated function (or monitor object) resolved once: attributes,
counters, span name. A :class:`Call` is one request of that site; it implements the public
:class:`~bitnet_obs._context.InferenceContext` and keeps its lifecycle private. At its end it
does one locked tally update per counter and one record per histogram, with attribute sets and
tally keys that were built once per (device, outcome, error) and reused.

Nothing here raises into the caller: every failure is counted in ``bitnet.obs.internal_errors``.
The active-request count pairs begin and end by construction: a call is counted active only
once its begin completed, and it is uncounted exactly once, however its end went.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
import traceback
from array import array
from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode

from bitnet_obs import _config, _context, _instruments, _tally
from bitnet_obs import _semconv as sc
from bitnet_obs._aggregate import Cell
from bitnet_obs._attributes import error_type, finish_reason, valid_device, valid_kernel
from bitnet_obs._cache import record_cache as _record_cache
from bitnet_obs._context import InferenceContext
from bitnet_obs._instruments import Bound
from bitnet_obs._queue import take_pending
from bitnet_obs._selfmon import describe, internal_error
from bitnet_obs._tally import AttrKey, AttrValue, key_of
from bitnet_obs._tokens import (
    as_count,
    default_input_count,
    default_item_count,
    default_output_count,
)

if TYPE_CHECKING:
    from types import ModuleType

    from bitnet_obs._degenerate import OutputVerdict
    from bitnet_obs._outputs import Bounds, OutputWatch

TokenCounter = Callable[[Any], int]

_REQUESTS = _instruments.REQUESTS.tally
_TOKENS = _instruments.TOKENS.tally
_ACTIVE = _instruments.ACTIVE_REQUESTS.tally
_DEGENERATE = _instruments.DEGENERATE_OUTPUTS.tally  # shares the request lock

#: Most characters of prompt, response or exception text put on a span (content capture on).
CONTENT_LIMIT = 8192
_MAX_VARIANTS = 256  # (device, outcome, error, priority) combinations cached per site


def clip(text: str) -> str:
    return text if len(text) <= CONTENT_LIMIT else text[:CONTENT_LIMIT] + "…"


def cancelled(exc: BaseException) -> bool:
    """A call that ended because its consumer went away (closed generator, cancelled task)."""
    if isinstance(exc, GeneratorExit):
        return True
    asyncio = sys.modules.get("asyncio")  # never imported here: exiting interpreters can't
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


class Variant:
    """Everything recorded for one outcome of a site, built once and reused by later calls."""

    __slots__ = (
        "_bound",
        "_outputs",
        "attrs",
        "base_attrs",
        "base_key",
        "in_key",
        "out_key",
        "req_key",
    )

    def __init__(
        self,
        site_attrs: Mapping[str, AttrValue],
        device: str,
        outcome: str,
        err: str,
        priority: str | None,
        finish: str | None = None,
    ) -> None:
        base = dict(site_attrs)
        base["bitnet.device"] = device
        if priority is not None:
            base["bitnet.request.priority"] = priority
        self.attrs = dict(base)
        self.base_attrs = dict(base)  # without error.type: streams' gaps, of every outcome
        req = dict(base, **{"bitnet.outcome": outcome})
        if finish is not None:
            req[sc.FINISH_REASON] = finish
        if err:
            req[sc.ERROR_TYPE] = err
            self.attrs[sc.ERROR_TYPE] = err
        self.req_key: AttrKey = key_of(req)
        self.in_key: AttrKey = key_of(dict(base, **{sc.TOKEN_TYPE: "input"}))
        self.out_key: AttrKey = key_of(dict(base, **{sc.TOKEN_TYPE: "output"}))
        self.base_key: AttrKey = key_of(base)
        self._bound: tuple[int, tuple[Bound, ...]] | None = None
        self._outputs: tuple[int, Bounds] | None = None

    def bound(self) -> tuple[Bound, ...]:
        """The request histograms bound to this outcome's attributes in the binding in force:
        duration, throughput, time to first token, time per output token, prefill, decode,
        and the inter-token gaps (with the attributes of every outcome)."""
        cached, generation = self._bound, _instruments.generation()
        if cached is not None and cached[0] == generation:
            return cached[1]
        attrs = self.attrs
        bound = (
            *(h.bound(attrs) for h in _REQUEST_HISTOGRAMS),
            _instruments.INTER_TOKEN_LATENCY.bound(self.base_attrs),
        )
        self._bound = (generation, bound)
        return bound

    def output_bounds(self) -> Bounds:
        """The output-health instruments bound to this variant's attributes of every outcome
        (built on the first request with ids or logits)."""
        cached, generation = self._outputs, _instruments.generation()
        if cached is not None and cached[0] == generation:
            return cached[1]
        bounds: Bounds = _outputs().Bounds(self.base_attrs)
        self._outputs = (generation, bounds)
        return bounds


_REQUEST_HISTOGRAMS = (
    _instruments.REQUEST_DURATION,
    _instruments.THROUGHPUT,
    _instruments.TIME_TO_FIRST_TOKEN,
    _instruments.TIME_PER_OUTPUT_TOKEN,
    _instruments.PREFILL_DURATION,
    _instruments.DECODE_DURATION,
)


class Site:
    """What one decorated function (or monitor object) resolved once."""

    __slots__ = (
        "attrs",
        "capture_content",
        "client_token_usage",
        "count_input",
        "count_item",
        "count_output",
        "kernel",
        "span_name",
        "variants",
    )

    def __init__(
        self,
        attrs: dict[str, AttrValue],
        span_name: str,
        count_input: TokenCounter | None,
        count_output: TokenCounter | None,
        count_item: TokenCounter | None,
        capture_content: bool | None,
        client_token_usage: bool,
        kernel: str | None = None,
    ) -> None:
        self.attrs = attrs
        self.kernel = kernel  # declared: a call that reports another one fell back
        self.span_name = span_name
        self.count_input = count_input
        self.count_output = count_output
        self.count_item = count_item
        self.capture_content = capture_content
        self.client_token_usage = client_token_usage
        self.variants: dict[tuple[str, str, str, str | None, str | None], Variant] = {}
        preload_outputs()

    def variant(
        self,
        device: str,
        outcome: str,
        err: str,
        priority: str | None,
        finish: str | None = None,
    ) -> Variant:
        key = (device, outcome, err, priority, finish)
        variant = self.variants.get(key)
        if variant is None:
            variant = Variant(self.attrs, device, outcome, err, priority, finish)
            if len(self.variants) < _MAX_VARIANTS:
                self.variants[key] = variant
        return variant

    def declare(self) -> None:
        """Start the site's request counters at 0, so ``rate()`` sees its first error."""
        device = cast(str, self.attrs["bitnet.device"])
        priority = cast("str | None", self.attrs.get("bitnet.request.priority"))
        for outcome in ("ok", "error", "cancelled"):
            _instruments.REQUESTS.tally.declare(self.variant(device, outcome, "", priority).req_key)
        _instruments.ACTIVE_REQUESTS.tally.declare(
            self.variant(device, "ok", "", priority).base_key
        )

    def capture(self) -> bool:
        flag = self.capture_content
        return _config.current().capture_content if flag is None else flag


class Call(InferenceContext):
    """One request in flight (``current_inference()`` inside a monitored call)."""

    __slots__ = (
        "_counted",
        "_done",
        "_otel_token",
        "content_in",
        "content_len",
        "content_out",
        "device_name",
        "explicit_input",
        "explicit_output",
        "finish_reason",
        "first_token_at",
        "gap_last",
        "ids_reported",
        "input_tokens",
        "kernel",
        "logits_admitted",
        "marks",
        "otel_before",
        "otel_ctx",
        "output_tokens",
        "parent",
        "priority",
        "queue_wait",
        "site",
        "span",
        "stamped",
        "stamps",
        "start",
        "streamed",
        "watch",
    )

    def __init__(self, site: Site) -> None:
        self.site = site
        self.device_name = cast(str, site.attrs["bitnet.device"])
        self.input_tokens = 0
        self.output_tokens = 0
        self.explicit_input = False
        self.explicit_output = False
        self.first_token_at: float | None = None
        self.content_in: str | None = None
        self.content_out: list[str] | None = None
        self.content_len = 0
        self.span: Span | None = None
        self.parent: InferenceContext | None = None
        self._otel_token: object = None
        self.otel_before: otel_context.Context | None = None
        self.otel_ctx: otel_context.Context | None = None
        self._counted: AttrKey | None = None  # the active-requests series, while counted
        self._done = False
        self.queue_wait: float | None = None
        self.priority = cast("str | None", site.attrs.get("bitnet.request.priority"))
        self.finish_reason: str | None = None
        self.kernel: str | None = None
        self.stamps: array[float] | None = None  # a stream's item times, flushed as gaps
        self.stamped = 0  # stamps flushed so far
        self.gap_last: float | None = None
        self.marks = False  # stamps come from mark_token(), not a generator's items
        self.watch: OutputWatch | None = None  # output measures, from the first ids or logits
        self.ids_reported = False
        self.logits_admitted: bool | None = None  # drawn at the first observe_logits
        self.streamed: bool | None = None  # set_stream(); None: a stream if it has stamps
        self.start = time.perf_counter()

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
        return self.device_name

    @property
    def span_context(self) -> SpanContext | None:
        return self.span.get_span_context() if self.span is not None else None

    # ----- InferenceContext: reports -----
    def add_input_tokens(self, n: int) -> None:
        count = as_count(n)
        if count is None:
            internal_error("bad_token_count", detail=f"add_input_tokens({describe(n)})")
            return
        self.input_tokens += count
        self.explicit_input = True

    def add_output_tokens(self, n: int) -> None:
        count = as_count(n)
        if count is None:
            internal_error("bad_token_count", detail=f"add_output_tokens({describe(n)})")
            return
        if self.first_token_at is None and count > 0:
            self.first_token_at = time.perf_counter()
        self.output_tokens += count
        self.explicit_output = True

    def add_output_ids(self, ids: Any) -> None:
        try:
            found = _outputs().ids_of(ids)
            if found is None:
                internal_error("bad_output_ids", detail=f"add_output_ids({describe(ids)})")
                return
            rows, batch = found
            count = sum(len(row) for row in rows)
            if self.first_token_at is None and count > 0:
                self.first_token_at = time.perf_counter()
            self.output_tokens += count
            self.explicit_output = True
            self.ids_reported = True
            self.output_watch().add(rows, batch)
        except Exception as exc:
            internal_error("bad_output_ids", exc)

    def observe_logits(self, logits: Any) -> None:
        try:
            from bitnet_obs.quant import _record

            if self.logits_admitted is None:
                self.logits_admitted = _record.admit_runtime_sample("logits")
            elif self.logits_admitted and not _record.admit_runtime_sample("logits", rate=1.0):
                return  # an admitted call over the time budget: this step is skipped, counted
            if not self.logits_admitted:
                return
            if callable(logits):
                logits = logits()
            _record.spend(self.output_watch().add_logits(logits))
        except Exception as exc:
            internal_error("bad_logits", _private(exc), f"observe_logits({describe(logits)})")

    def output_watch(self) -> OutputWatch:
        watch = self.watch
        if watch is None:
            watch = self.watch = _outputs().OutputWatch()
        return watch

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def mark_token(self) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        stamps = self.stamps
        if stamps is None:
            stamps = self.stamps = array("d")
            self.marks = True
        elif not self.marks:
            return  # a generator's items are stamped by its loop
        stamps.append(now)
        if len(stamps) >= GAP_CHUNK:
            self.flush_gaps()

    def set_stream(self, streamed: bool) -> None:
        if not isinstance(streamed, bool):
            internal_error("bad_stream_flag", detail=f"set_stream({describe(streamed)})")
            return
        self.streamed = streamed

    def set_device(self, name: str) -> None:
        if not valid_device(name):
            internal_error("bad_device", detail=f"set_device({describe(name)})")
            return
        self.device_name = name
        if self.span is not None:
            self.span.set_attribute("bitnet.device", name)

    def fallback(self, from_device: str, to_device: str, reason: str) -> None:
        record_fallback(from_device, to_device, reason, model=self.model or "", span=self.span)
        self.set_device(to_device)

    def set_kernel(self, name: str) -> None:
        if not valid_kernel(name):
            internal_error("bad_kernel", detail=f"set_kernel({describe(name)})")
            return
        first = self.kernel is None
        self.kernel = name
        if self.span is not None:
            self.span.set_attribute("bitnet.kernel", name)
        declared = self.site.kernel
        if first and declared is not None and name != declared:
            attrs: dict[str, AttrValue] = {
                sc.REQUEST_MODEL: self.model or "",
                "bitnet.kernel.declared": declared,
                "bitnet.kernel.actual": name,
            }
            _instruments.KERNEL_FALLBACKS.add(key_of(attrs), 1)

    def set_finish_reason(self, reason: str) -> None:
        self.finish_reason = finish_reason(reason)
        if self.finish_reason == "other" and reason != "other":
            internal_error("bad_finish_reason", detail=f"set_finish_reason({describe(reason)})")

    def set_attribute(self, key: str, value: AttrValue) -> None:
        if not isinstance(key, str) or not isinstance(value, (str, bool, int, float)):
            internal_error("bad_attribute", detail=f"set_attribute({describe(key)}, ...)")
            return
        if self.span is not None:
            self.span.set_attribute(key, clip(value) if isinstance(value, str) else value)

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
        if format is None:
            site_format = self.site.attrs.get("bitnet.quant.format")
            format = str(site_format) if site_format in ("i2_s", "tl1", "tl2") else "i2_s"
        record_quantization(
            name, reference, candidate, format, reference_kind, kind, activations, codes
        )

    def record_cache(self, hits: int = 0, misses: int = 0, *, cache: str = "kv") -> None:
        _record_cache(hits, misses, cache=cache, model=self.model or "")

    # ----- lifecycle (never raises) -----
    def begin(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], attach: bool) -> None:
        """Start the span (attached to the current context when ``attach``), count active."""
        try:
            pending = take_pending()
            if pending is not None:  # this request just left a RequestQueue in this context
                self.queue_wait, self.priority = pending
            site = self.site
            span = _instruments.tracer().start_span(
                site.span_name, kind=SpanKind.INTERNAL, attributes=site.attrs
            )
            if span.get_span_context().is_valid:
                self.span = span
                if self.queue_wait is not None and span.is_recording():
                    span.set_attributes(
                        {
                            "bitnet.queue.wait_duration": self.queue_wait,
                            "bitnet.request.priority": str(self.priority),
                        }
                    )
                if attach:
                    self._otel_token = otel_context.attach(trace.set_span_in_context(span))
            if (args or kwargs) and site.capture():
                self.content_in = _prompt_text(args, kwargs)
            key = site.variant(self.device_name, "ok", "", self.priority).base_key
            _instruments.ACTIVE_REQUESTS.add(key, 1)
            self._counted = key  # uncounted from this series, whatever set_device() does
        except Exception as exc:
            internal_error("begin", exc)

    def detach(self) -> None:
        """Take the span off the context it was attached to (the call goes on elsewhere)."""
        token, self._otel_token = self._otel_token, None
        if token is not None:
            with contextlib.suppress(Exception):  # from another context: the SDK logs it
                otel_context.detach(token)  # type: ignore[arg-type]

    def enter(self) -> None:
        """Make this the current call (a stream's own context, a ``with`` block)."""
        self.parent = _context.current.get()
        _context.current.set(self)

    def leave(self) -> None:
        """Stop being the current call, even when calls ended out of order (interleaved
        generators): the current call becomes the nearest one still open."""
        if _context.current.get() is self:
            parent = self.parent
            while isinstance(parent, Call) and parent._done:
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
        while isinstance(parent, Call) and parent._done:
            target, parent = parent.otel_before, parent.parent
        if target is not None:
            otel_context.attach(target)

    def count_result(self, result: Any) -> None:
        site = self.site
        try:
            if site.count_output is not None:
                self._add_counted("count_output", site.count_output(result), output=True)
            elif not self.explicit_output:
                self.output_tokens += default_output_count(result) or 0
            if site.count_input is not None:
                self._add_counted("count_input", site.count_input(result), output=False)
            elif not self.explicit_input:
                self.input_tokens += default_input_count(result) or 0
            if self.content_out is None and isinstance(result, str) and site.capture():
                self.content_out = [clip(result)]
        except Exception as exc:
            internal_error("token_counter", _private(exc), f"{describe(result)} result")
        if not self.ids_reported and may_hold_ids(result) and not _short_ids(result):
            try:  # the returned ids are the whole output: judged now, row by row
                found = _outputs().ids_of(result)
                if found is not None:
                    self.output_watch().add(found[0], found[1], whole=True)
            except Exception as exc:
                internal_error("output_health", exc, f"{describe(result)} result")

    def _add_counted(self, where: str, value: object, output: bool) -> None:
        count = as_count(value)
        if count is None:
            internal_error("bad_token_count", detail=f"{where} returned {describe(value)}")
        elif output:
            self.output_tokens += count
        else:
            self.input_tokens += count

    def count_item(self, item: Any) -> None:
        """One streamed item (the slow path: a counter, content capture or an odd shape)."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        stamps = self.stamps
        if stamps is not None:
            stamps.append(now)
            if len(stamps) >= GAP_CHUNK:
                self.flush_gaps()
        counter = self.site.count_item
        if not self.ids_reported and (type(item) is int or may_hold_ids(item)):
            self.stream_ids(item)
        try:
            if counter is not None:
                self._add_counted("count_stream_item", counter(item), output=True)
            elif not self.explicit_output:
                self.output_tokens += default_item_count(item)
            if self.content_out is not None and self.content_len <= CONTENT_LIMIT:
                text = str(item)
                self.content_out.append(text)
                self.content_len += len(text)
        except Exception as exc:
            internal_error("token_counter", _private(exc), f"{describe(item)} item")

    def stream_ids(self, item: Any) -> None:
        """A streamed item that may be ids: one id continues the output, a chunk (a list or
        1-D array of ids) extends it. Never raises."""
        if type(item) is int:
            try:
                self.output_watch().sink()(item)
            except Exception as exc:  # an id beyond int64: counted, the stream goes on
                internal_error("bad_output_ids", exc, "a streamed id")
            return
        try:
            found = _outputs().ids_of(item)
            if found is not None:
                rows, batch = found
                watch = self.output_watch()
                if batch:
                    for row in rows:  # a 2-D item: consecutive steps of this output
                        watch.add([row], False)
                else:
                    watch.add(rows, False)
        except Exception as exc:
            internal_error("output_health", exc, f"{describe(item)} item")

    def chunk_item(self, item: Any) -> int:
        """Tokens of a streamed item the fast loop does not count itself (a chunk of ids, an
        object); judges ids. Never raises."""
        if not self.ids_reported and may_hold_ids(item):
            self.stream_ids(item)
        try:
            return default_item_count(item)
        except Exception as exc:
            internal_error("token_counter", exc)
            return 0

    def id_sink(self) -> Callable[[int], None]:
        """Where the fast loop appends streamed int ids (a no-op when detection is off or the
        call reports its ids itself)."""
        if self.ids_reported:
            return _discard
        try:
            return self.output_watch().sink()
        except Exception as exc:
            internal_error("output_health", exc)
            return _discard

    def id_sink_failed(self) -> Callable[[int], None]:
        """A streamed int the ids buffer refused (beyond int64): counted; the rest of the
        stream is not judged."""
        internal_error("bad_output_ids", detail="a streamed id beyond int64")
        self.ids_reported = True  # what came before is judged; nothing after
        return _discard

    def start_stream(self) -> None:
        self.stamps = array("d")
        if self.site.capture():
            self.content_out = []

    def flush_gaps(self) -> None:
        """Record the gaps between the items stamped so far (the stream loop calls this every
        :data:`GAP_CHUNK` items, the end of the call for the rest). Never raises."""
        stamps = self.stamps
        if not stamps:
            return
        self.stamped += len(stamps)  # the stream loop's item count
        try:
            previous, self.gap_last = self.gap_last, stamps[-1]
            if previous is not None:
                stamps.insert(0, previous)
            if len(stamps) >= 2:
                variant = self.site.variant(self.device_name, "ok", "", self.priority)
                _record_gaps(variant.bound()[6], stamps, self.span)
        except Exception as exc:
            internal_error("inter_token_latency", exc)
        finally:
            del stamps[:]
        watch = self.watch
        if watch is not None:  # the streamed ids' buffer: judged a whole chunk at a time
            try:
                watch.pump()
            except Exception as exc:
                internal_error("output_health", exc)

    def end(self, exc: BaseException | None, result: Any = None, counted: bool = False) -> None:
        """Finish the call once; ``counted``: the result's tokens were counted already."""
        if self._done:
            return
        try:
            if exc is None and not counted:
                self.count_result(result)
            self._finish(exc)
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
                _instruments.ACTIVE_REQUESTS.add(key, -1)
            except Exception:
                self._counted = key  # the next _release (GC) retries
        self.detach()
        span, self.span = self.span, None
        if span is not None:
            try:
                span.end()
            except Exception as exc:
                internal_error("end_span", exc)

    def __del__(self) -> None:
        # A call whose end never ran (its frame was torn down mid-way): never leave it active.
        if self._counted is not None:
            self._release()

    def _finish(self, exc: BaseException | None) -> None:
        end = time.perf_counter()
        if exc is None:
            outcome, err = "ok", ""
        elif cancelled(exc):
            outcome, err = "cancelled", ""
        else:
            outcome, err = "error", error_type(exc)
        if self.stamps:
            self.flush_gaps()
        variant = self.site.variant(
            self.device_name, outcome, err, self.priority, self.finish_reason
        )
        n_in, n_out = self.input_tokens, self.output_tokens
        served = end - self.start
        arrival = self.start - (self.queue_wait or 0.0)  # a RequestQueue's wait counts too
        elapsed = end - arrival
        attrs = variant.attrs
        duration, throughput, ttft_hist, tpot_hist, prefill, decode, _ = variant.bound()
        records = [(duration, elapsed)]
        first = self.first_token_at
        if outcome == "ok" and n_out:
            if served > 0:
                records.append((throughput, n_out / served))
            if first is not None:
                records.append((ttft_hist, first - arrival))
                records.append((prefill, first - self.start))
                records.append((decode, end - first))
                if n_out > 1:
                    records.append((tpot_hist, (end - first) / (n_out - 1)))
        watch = self.watch
        counts: list[tuple[AttrKey, int]] = []
        verdicts: list[OutputVerdict] = []
        if watch is not None:
            try:
                verdicts = watch.outputs() if outcome == "ok" else []
                if verdicts or watch.entropy:
                    pairs, counts = variant.output_bounds().records(watch, verdicts)
                    records.extend(pairs)
            except Exception as error:
                internal_error("output_health", error)
        span = self.span
        span_context = span.get_span_context() if span is not None else None
        # Ours (bound cells): recorded under the tallies' lock; else through the SDK after it.
        store = _instruments.store() if duration.cell is not None else None
        ids = None
        if store is not None and span_context is not None and span_context.trace_flags.sampled:
            ids = (span_context.span_id, span_context.trace_id)
        active, self._counted = self._counted, None
        with _tally.REQUEST_LOCK:  # one lock for every count and record of the request
            _REQUESTS.add_locked(variant.req_key, 1)
            if n_in:
                _TOKENS.add_locked(variant.in_key, n_in)
            if n_out:
                _TOKENS.add_locked(variant.out_key, n_out)
            if active is not None:
                _ACTIVE.add_locked(active, -1)
            for key, n in counts:
                _DEGENERATE.add_locked(key, n)
            if store is not None:
                for bound, value in records:
                    store.add_locked(cast(Cell, bound.cell), value, ids)
        if store is None:
            _instruments.record_bound(records, span_context)
        if _context.observers:
            ttft = None if first is None else first - arrival
            for observer in _context.observers:
                observer(elapsed, ttft, n_out, outcome)
        if self.site.client_token_usage:
            _instruments.record_token_usage(n_in, n_out, attrs, span_context)
        if span is not None and span.is_recording():
            self._annotate(span, outcome, err, exc, n_in, n_out)
            if verdicts:
                span.set_attributes(_outputs().span_attributes(verdicts))

    def _annotate(
        self,
        span: Span,
        outcome: str,
        err: str,
        exc: BaseException | None,
        n_in: int,
        n_out: int,
    ) -> None:
        extra: dict[str, AttrValue] = {}
        if n_in:
            extra[sc.USAGE_INPUT_TOKENS] = n_in
        if n_out:
            extra[sc.USAGE_OUTPUT_TOKENS] = n_out
        if outcome != "ok":
            extra["bitnet.outcome"] = outcome
        if self.finish_reason is not None:
            span.set_attribute(sc.RESPONSE_FINISH_REASONS, [self.finish_reason])
        streamed = self.stamps is not None if self.streamed is None else self.streamed
        if streamed:
            extra[sc.REQUEST_STREAM] = True
            if self.first_token_at is not None:
                arrival = self.start - (self.queue_wait or 0.0)
                extra[sc.RESPONSE_TIME_TO_FIRST_CHUNK] = self.first_token_at - arrival
        else:
            extra[sc.REQUEST_STREAM] = False
        if err:
            extra[sc.ERROR_TYPE] = err
        if self.content_in is not None:
            extra[sc.INPUT_MESSAGES] = _messages("user", self.content_in)
        if self.content_out:
            extra[sc.OUTPUT_MESSAGES] = _messages("assistant", "".join(self.content_out))
        if extra:
            span.set_attributes(extra)
        if exc is not None and outcome == "error":
            event: dict[str, AttrValue] = {"exception.type": err}
            if self.site.capture():  # messages and stacks may quote the prompt: opt-in, clipped
                event["exception.message"] = clip(str(exc))
                stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                event["exception.stacktrace"] = clip(stack)
            span.add_event("exception", event)
            span.set_status(Status(StatusCode.ERROR, err))


#: Stream items stamped before their gaps are recorded (8 bytes each: bounded memory); also
#: how often streamed ids are judged (a numpy pass per chunk).
GAP_CHUNK = 4096


def may_hold_ids(value: Any) -> bool:
    """A cheap first look (no import): a non-empty list/tuple of ints or of sequences, or an
    array-like; only those are looked at for token ids."""
    kind = type(value)
    if kind is list or kind is tuple:
        return bool(value) and type(value[0]) in (int, list, tuple)
    return hasattr(value, "dtype") and hasattr(value, "shape")


def _outputs() -> ModuleType:
    """The output-health glue (it needs numpy): imported by ``configure()`` or at decoration
    when numpy is loaded already, else on the first ids or logits."""
    module = sys.modules.get("bitnet_obs._outputs")
    if module is None:
        importlib.import_module("bitnet_obs._outputs")
        module = sys.modules["bitnet_obs._outputs"]
    return module


def _short_ids(value: Any) -> bool:
    """A list/tuple of ids too short to be judged (the common short answer: no glue at all)."""
    kind = type(value)
    return (
        (kind is list or kind is tuple)
        and type(value[0]) is int
        and len(value) < _config.current().degenerate_min_tokens
    )


def preload_outputs() -> None:
    """Import the output-health glue now, off the request path: a first import on it could
    be interrupted by a fork in another thread, leaving the module lock held in the child."""
    if "numpy" in sys.modules:
        _outputs()


def _discard(_: int) -> None:
    pass


def _record_gaps(bound: Bound, stamps: array[float], span: Span | None) -> None:
    """The gaps between consecutive stamps into the inter-token histogram (one lock)."""
    context = span.get_span_context() if span is not None else None
    store = _instruments.store()
    if bound.cell is None or store is None:  # the SDK's instrument: one record per gap
        gaps = [b - a for a, b in pairwise(stamps)]
        _instruments.record_bound([(bound, gap) for gap in gaps], context)
        return
    ids = None
    if context is not None and context.trace_flags.sampled:
        ids = (context.span_id, context.trace_id)
    store.add_gaps(bound.cell, stamps, ids)


def _private(exc: BaseException) -> BaseException | None:
    """What a log may show of an exception from the caller's code: its traceback when content
    capture is on, else nothing (its message may quote the prompt; the kind is logged)."""
    return exc if _config.current().capture_content else None


def _prompt_text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    for name in ("prompt", "messages", "text", "input"):
        if name in kwargs:
            return clip(str(kwargs[name]))
    for arg in args:
        if isinstance(arg, str):
            return clip(arg)
    return None


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": clip(text)}]}])


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


def record_quantization(
    name: str,
    reference: Any,
    candidate: Any,
    fmt: str | None,
    reference_kind: str,
    kind: str,
    activations: Any = None,
    codes: Any = None,
) -> None:
    """``record_quantization`` of a call or of the stand-in: a sample, never raising."""
    from bitnet_obs.quant import _record  # numpy: loaded only by code that compares tensors

    try:
        _record.compare_outputs(
            name, reference, candidate, format=fmt or "i2_s", reference_kind=reference_kind,
            kind=kind, activations=activations, codes=codes,
        )  # fmt: skip
    except Exception as exc:  # bad input inside inference: counted, never raised
        _record.skip(kind if kind in _record.KINDS else "output", "bad_input")
        if not isinstance(exc, ValueError):
            internal_error("quant_sample", exc)


class Outside(InferenceContext):
    """``current_inference()`` outside a monitored call: reports go nowhere, except those that
    need no call (fallbacks, quantization samples, cache counts)."""

    __slots__ = ()

    def fallback(self, from_device: str, to_device: str, reason: str) -> None:
        record_fallback(from_device, to_device, reason)

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
        record_quantization(
            name, reference, candidate, format, reference_kind, kind, activations, codes
        )

    def record_cache(self, hits: int = 0, misses: int = 0, *, cache: str = "kv") -> None:
        _record_cache(hits, misses, cache=cache)


OUTSIDE = Outside()
