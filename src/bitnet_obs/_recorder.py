"""Where a request's measurements go: one recorder, chosen once when instruments are bound.

:func:`bitnet_obs._instruments.bind` picks the recorder for the providers in force:

- :class:`OwnRecorder` when ``configure()`` owns the pipeline and its readers can take our
  own aggregation (:mod:`bitnet_obs._aggregate`): a handle is a store cell, and the end of a
  request is one lock for every count and record;
- :class:`SdkRecorder` otherwise (an application's own ``MeterProvider``, delta temporality,
  exponential histograms): a handle is the SDK instrument with its attributes, and histograms
  go through the OpenTelemetry API after the counts.

Either way the request path calls the same three methods (:meth:`Recorder.handle`,
:meth:`~Recorder.finish`, :meth:`~Recorder.gaps`) and never asks which it has. Handles are
built once per call site and outcome (:class:`Variant`) and named (:class:`RequestHandles`).

This module knows the catalogue only through what :func:`~bitnet_obs._instruments.bind`
hands it (the request tallies, the opt-in token-usage records), so the catalogue can build it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Tracer

from bitnet_obs import _context, _tally
from bitnet_obs import _semconv as sc
from bitnet_obs._aggregate import Cell, SpanIds, Store
from bitnet_obs._facts import Outcome, RequestFacts
from bitnet_obs._tally import AttrKey, AttrValue, Tally

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram as SdkHistogram

#: A histogram bound to one attribute set by the recorder in force (a store cell, or an
#: :class:`SdkHandle`); only that recorder reads it.
Handle = Any
Records = Sequence[tuple[Handle, float]]


class HistogramSpec(Protocol):
    """What a recorder needs of a catalogue histogram."""

    name: str

    @property
    def bounds(self) -> tuple[float, ...]: ...

    @property
    def sdk(self) -> SdkHistogram: ...


class SdkHandle(NamedTuple):
    """An SDK histogram and the attribute set it records with."""

    instrument: SdkHistogram
    attributes: Mapping[str, AttrValue]


class RequestHandles:
    """The request histograms of one variant (the inter-token gaps carry the attributes of
    every outcome: a stream's gaps are recorded while it runs)."""

    __slots__ = (
        "decode",
        "duration",
        "inter_token",
        "prefill",
        "throughput",
        "time_per_output_token",
        "time_to_first_token",
    )

    def __init__(
        self,
        duration: Handle,
        throughput: Handle,
        time_to_first_token: Handle,
        time_per_output_token: Handle,
        prefill: Handle,
        decode: Handle,
        inter_token: Handle,
    ) -> None:
        self.duration = duration
        self.throughput = throughput
        self.time_to_first_token = time_to_first_token
        self.time_per_output_token = time_per_output_token
        self.prefill = prefill
        self.decode = decode
        self.inter_token = inter_token


class Variant:
    """Everything recorded for one outcome of a call site, built once per recorder and
    reused: attribute sets, tally keys and handles."""

    __slots__ = (
        "active_key",
        "attrs",
        "base_attrs",
        "handles",
        "in_key",
        "out_key",
        "outputs",
        "recorder",
        "req_key",
        "usage",
    )

    def __init__(
        self,
        recorder: Recorder,
        base: dict[str, AttrValue],
        req: dict[str, AttrValue],
        err: str,
        handles: RequestHandles,
        usage: bool,
    ) -> None:
        self.recorder = recorder
        self.base_attrs = base  # site, device and priority: the attributes of every outcome
        self.attrs = dict(base, **{sc.ERROR_TYPE: err}) if err else base
        self.req_key: AttrKey = _tally.key_of(req)
        self.in_key: AttrKey = _tally.key_of(dict(base, **{sc.TOKEN_TYPE: "input"}))
        self.out_key: AttrKey = _tally.key_of(dict(base, **{sc.TOKEN_TYPE: "output"}))
        self.active_key: AttrKey = _tally.key_of(base)
        self.handles = handles
        self.usage = usage  # the opt-in gen_ai.client.inference.operation.*_tokens histograms
        #: the output-health handles, built by the output room on the first judged output
        self.outputs: Any = None


class RequestTallies(NamedTuple):
    """The request path's counters (they share :data:`~bitnet_obs._tally.REQUEST_LOCK`)."""

    requests: Tally
    tokens: Tally
    active: Tally
    degenerate: Tally


class OutputRecords(NamedTuple):
    """What output health adds to a request's end: histogram records, counter adds and the
    span's attributes."""

    records: list[tuple[Handle, float]]
    counts: list[tuple[AttrKey, int]]
    span_attributes: dict[str, AttrValue]


#: Records the opt-in per-request token histograms: (input, output, attributes, span).
TokenUsage = Callable[[int, int, Mapping[str, AttrValue], "SpanContext | None"], None]


class Recorder:
    """Records requests and histograms for one binding of the instruments; ``spans`` is the
    binding's tracer when it can make spans at all (None: no span work on the path)."""

    def __init__(
        self, tallies: RequestTallies, token_usage: TokenUsage, spans: Tracer | None = None
    ) -> None:
        self.tallies = tallies
        self.token_usage = token_usage
        self.spans = spans
        #: the SDK's tracer makes valid spans only (a proxy or another API implementation
        #: may hand out the invalid span: those are checked per call)
        self.valid_spans = type(spans).__module__.startswith("opentelemetry.sdk.")

    # ----- what differs between the two -----
    def handle(self, instrument: HistogramSpec, attributes: Mapping[str, AttrValue]) -> Handle:
        """``instrument`` bound to one attribute set, for later records."""
        raise NotImplementedError

    def record(
        self,
        instrument: HistogramSpec,
        value: float,
        attributes: Mapping[str, AttrValue],
        span: SpanContext | None = None,
    ) -> None:
        """One record off the request path (quantization, health checks, model loads)."""
        raise NotImplementedError

    def finish(
        self,
        variant: Variant,
        facts: RequestFacts,
        outcome: Outcome,
        end: float,
        span: SpanContext | None,
        active: AttrKey | None,
        outputs: OutputRecords | None,
    ) -> None:
        """The end of a request: its counts (and ``active`` uncounted), its histograms, the
        request observers and, when asked for, the client token usage."""
        raise NotImplementedError

    def gaps(self, handle: Handle, stamps: list[float], span: SpanContext | None) -> None:
        """The gaps between consecutive ``stamps`` into the inter-token histogram."""
        raise NotImplementedError

    # ----- shared -----
    def request_handles(
        self, histograms: Sequence[HistogramSpec], attrs: Mapping[str, AttrValue],
        base_attrs: Mapping[str, AttrValue],
    ) -> RequestHandles:  # fmt: skip
        """The seven request histograms (duration, throughput, time to first token, time per
        output token, prefill, decode, inter-token gaps) bound for one variant."""
        duration, throughput, ttft, tpot, prefill, decode, gaps = histograms
        return RequestHandles(
            duration=self.handle(duration, attrs),
            throughput=self.handle(throughput, attrs),
            time_to_first_token=self.handle(ttft, attrs),
            time_per_output_token=self.handle(tpot, attrs),
            prefill=self.handle(prefill, attrs),
            decode=self.handle(decode, attrs),
            inter_token=self.handle(gaps, base_attrs),
        )

    def _count(
        self,
        variant: Variant,
        facts: RequestFacts,
        active: AttrKey | None,
        outputs: OutputRecords | None,
    ) -> None:
        """The request's counts; call with REQUEST_LOCK held (the series are updated in place:
        a method call per update cost a tenth of a request)."""
        requests, tokens, active_tally, degenerate = self.tallies
        try:
            requests.series[variant.req_key] += 1
        except KeyError:
            requests.add_new(variant.req_key, 1)
        n = facts.output_tokens
        if n:
            try:
                tokens.series[variant.out_key] += n
            except KeyError:
                tokens.add_new(variant.out_key, n)
        n = facts.input_tokens
        if n:
            try:
                tokens.series[variant.in_key] += n
            except KeyError:
                tokens.add_new(variant.in_key, n)
        if active is not None:
            try:
                active_tally.series[active] -= 1
            except KeyError:
                active_tally.add_new(active, -1)
        if outputs is not None:
            for key, count in outputs.counts:
                degenerate.add_locked(key, count)

    def _after(
        self,
        variant: Variant,
        facts: RequestFacts,
        outcome: Outcome,
        end: float,
        span: SpanContext | None,
    ) -> None:
        """Request observers (SLA) and the opt-in client token usage."""
        if _context.observers:
            arrival = facts.arrival
            first = facts.first_token_at
            ttft = None if first is None else first - arrival
            for observer in _context.observers:
                observer(end - arrival, ttft, facts.output_tokens, outcome.kind)
        if variant.usage:
            self.token_usage(facts.input_tokens, facts.output_tokens, variant.attrs, span)


def timings(
    handles: RequestHandles, facts: RequestFacts, outcome: Outcome, end: float
) -> list[tuple[Handle, float]]:
    """A request's histogram records: its duration (from its arrival, a RequestQueue's wait
    included); for a successful one with output, throughput, time to first token, prefill,
    decode and time per output token."""
    start = facts.start
    arrival = start - facts.queue_wait
    records = [(handles.duration, end - arrival)]
    n_out = facts.output_tokens
    if n_out and outcome.kind == "ok":
        served = end - start
        if served > 0:
            records.append((handles.throughput, n_out / served))
        first = facts.first_token_at
        if first is not None:
            records.append((handles.time_to_first_token, first - arrival))
            records.append((handles.prefill, first - start))
            records.append((handles.decode, end - first))
            if n_out > 1:
                records.append((handles.time_per_output_token, (end - first) / (n_out - 1)))
    return records


def span_ids(span: SpanContext | None) -> SpanIds:
    """(span_id, trace_id) of a sampled span, for an exemplar (the SDK's trace-based filter);
    None for no span or an unsampled one."""
    if span is not None and span.trace_flags.sampled:
        return span.span_id, span.trace_id
    return None


def current_span_ids(span: SpanContext | None) -> SpanIds:
    """:func:`span_ids` of ``span``, else of the current span (records off the request path)."""
    context = span if span is not None else trace.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        return context.span_id, context.trace_id
    return None


class OwnRecorder(Recorder):
    """Our own aggregation: a handle is a store cell; a request's counts and records are
    made under one lock."""

    def __init__(
        self,
        store: Store,
        tallies: RequestTallies,
        token_usage: TokenUsage,
        spans: Tracer | None = None,
    ) -> None:
        super().__init__(tallies, token_usage, spans)
        self.store = store

    def handle(self, instrument: HistogramSpec, attributes: Mapping[str, AttrValue]) -> Cell:
        return self.store.cell(instrument.name, instrument.bounds, attributes)

    def record(
        self,
        instrument: HistogramSpec,
        value: float,
        attributes: Mapping[str, AttrValue],
        span: SpanContext | None = None,
    ) -> None:
        store = self.store
        store.record(store.cell(instrument.name, instrument.bounds, attributes), value,
                     current_span_ids(span))  # fmt: skip

    def finish(
        self,
        variant: Variant,
        facts: RequestFacts,
        outcome: Outcome,
        end: float,
        span: SpanContext | None,
        active: AttrKey | None,
        outputs: OutputRecords | None,
    ) -> None:
        records = timings(variant.handles, facts, outcome, end)
        ids = (
            None if span is None or not span.trace_flags.sampled else (span.span_id, span.trace_id)
        )
        if outputs is not None:
            records.extend(outputs.records)
        with _tally.REQUEST_LOCK:
            self._count(variant, facts, active, outputs)
            self.store.add_many_locked(records, ids)
        if variant.usage or _context.observers:
            self._after(variant, facts, outcome, end, span)

    def gaps(self, handle: Cell, stamps: list[float], span: SpanContext | None) -> None:
        self.store.add_gaps(handle, stamps, span_ids(span))


_NO_SPAN = otel_context.Context()  # a record without a span of ours: no exemplar, as ours


class SdkRecorder(Recorder):
    """The OpenTelemetry API of the providers in force: a handle is the SDK histogram and its
    attributes; records are made after the counts, outside their lock."""

    def handle(self, instrument: HistogramSpec, attributes: Mapping[str, AttrValue]) -> SdkHandle:
        return SdkHandle(instrument.sdk, dict(attributes))

    def record(
        self,
        instrument: HistogramSpec,
        value: float,
        attributes: Mapping[str, AttrValue],
        span: SpanContext | None = None,
    ) -> None:
        if span is not None:
            context = trace.set_span_in_context(NonRecordingSpan(span))
            instrument.sdk.record(value, attributes, context=context)
        else:
            instrument.sdk.record(value, attributes)

    def finish(
        self,
        variant: Variant,
        facts: RequestFacts,
        outcome: Outcome,
        end: float,
        span: SpanContext | None,
        active: AttrKey | None,
        outputs: OutputRecords | None,
    ) -> None:
        records = timings(variant.handles, facts, outcome, end)
        if outputs is not None:
            records.extend(outputs.records)
        with _tally.REQUEST_LOCK:
            self._count(variant, facts, active, outputs)
        _record_sdk(records, span)
        if variant.usage or _context.observers:
            self._after(variant, facts, outcome, end, span)

    def gaps(self, handle: SdkHandle, stamps: list[float], span: SpanContext | None) -> None:
        _record_sdk([(handle, b - a) for a, b in pairwise(stamps)], span)


def _record_sdk(records: Sequence[tuple[SdkHandle, float]], span: SpanContext | None) -> None:
    """Records through the SDK; exemplars link to ``span`` only (the request's own), as ours."""
    context = trace.set_span_in_context(NonRecordingSpan(span)) if span is not None else _NO_SPAN
    for handle, value in records:
        handle.instrument.record(value, handle.attributes, context=context)
