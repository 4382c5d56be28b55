"""The kinds of instrument the catalogue (:mod:`bitnet_obs._instruments`) is made of.

Three kinds of handle, chosen by cost:

- :class:`ObservedCounter` / :class:`ObservedUpDownCounter`: a local
  :class:`~bitnet_obs._tally.Tally` (one lock and one dict update), read by an *observable*
  instrument at collection time; exact under threads and asyncio, and the SDK sees one
  observation per series per collection. (The OpenTelemetry kind is an observable counter,
  hence the name, whatever the code calls to add.)
- :class:`Histogram` / :class:`Gauge`: recorded per event, a histogram through the recorder
  of the binding in force (:mod:`bitnet_obs._recorder`: our own aggregation or the SDK's
  instrument), a gauge through the SDK instrument of the meter in force.
- :class:`ObservedGauge` (and callbacks added to an observed counter): read from registered
  callbacks at collection time only (devices, health, SLA).

Every instrument is created unbound; :func:`bitnet_obs._instruments.bind` gives each its SDK
instrument (and each histogram the recorder) of the providers in force.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import SpanContext

from bitnet_obs import _names
from bitnet_obs._recorder import Handle, Recorder
from bitnet_obs._semconv import RENAMED_ATTRIBUTES
from bitnet_obs._tally import AttrValue, Tally

Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Kind(enum.Enum):
    COUNTER = "counter"
    UPDOWNCOUNTER = "updowncounter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"
    OBSERVABLE_COUNTER = "observable counter"
    OBSERVABLE_UPDOWNCOUNTER = "observable updowncounter"
    OBSERVABLE_GAUGE = "observable gauge"


#: Every instrument created, in order (the catalogue is this list, frozen).
CREATED: list[Instrument] = []


def _not_yet() -> None:
    pass


#: Binds the catalogue to the global API providers; called by the first use before any bind
#: (the catalogue sets it).
bind_default: Callable[[], None] = _not_yet


def _latest_only() -> bool:
    return False


#: Whether 0.1's GenAI names are emitted beside the current ones; read at collection and at
#: the end of an opted-in request only.
dup_names: Callable[[], bool] = _latest_only


def set_dup_reader(reader: Callable[[], bool]) -> None:
    """How the catalogue learns the naming mode (``BITNET_OBS_SEMCONV_STABILITY_OPT_IN``):
    ``_config``, which imports this module, registers a reader of the settings in force."""
    global dup_names
    dup_names = reader


class Instrument:
    """One instrument of the catalogue: its name, unit, description, attribute keys and
    buckets, and the SDK instrument it is bound to. ``until`` marks a 0.1 name kept only for
    ``gen_ai_latest/dup`` (the release that drops it); :attr:`renamed` maps each renamed
    attribute to the 0.1 name emitted beside it then."""

    kind: ClassVar[Kind]

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        attributes: tuple[str, ...] = (),
        *,
        buckets: tuple[float, ...] | None = None,
        until: str = "",
    ) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.attributes = attributes
        self.buckets = buckets
        self.until = until
        self.renamed = {k: v for k, v in RENAMED_ATTRIBUTES.items() if k in attributes}
        self._sdk: Any = None
        CREATED.append(self)

    @property
    def sdk(self) -> Any:
        """The SDK (or API) instrument of the binding in force."""
        if self._sdk is None:
            bind_default()
        return self._sdk

    @property
    def prometheus_name(self) -> str:
        """The name the OTel Prometheus exporter gives this instrument (checked by a test)."""
        counter = self.kind in (Kind.COUNTER, Kind.OBSERVABLE_COUNTER)
        return _names.prometheus_name(self.name, self.unit, counter)

    def create(self, meter: Meter) -> Any:
        """This instrument's SDK instrument on ``meter``."""
        raise NotImplementedError

    def bind(self, sdk: Any, recorder: Recorder | None) -> None:
        self._sdk = sdk

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Histogram(Instrument):
    """A distribution recorded per event (durations, sizes, accuracy figures), through the
    recorder of the binding in force."""

    kind = Kind.HISTOGRAM
    _recorder: Recorder | None = None

    def record(
        self, value: float, attributes: Mapping[str, AttrValue], span: SpanContext | None = None
    ) -> None:
        """One value; ``span``: the request's span (for exemplars) when it is not the current
        one."""
        self.recorder.record(self, value, attributes, span)

    def handle(self, attributes: Mapping[str, AttrValue]) -> Handle:
        """This histogram bound to one attribute set by the recorder in force."""
        return self.recorder.handle(self, attributes)

    @property
    def recorder(self) -> Recorder:
        recorder = self._recorder
        if recorder is None:
            bind_default()
            recorder = self._recorder
            assert recorder is not None
        return recorder

    @property
    def bounds(self) -> tuple[float, ...]:
        return self.buckets or ()

    def bind(self, sdk: Any, recorder: Recorder | None) -> None:
        self._sdk = sdk
        self._recorder = recorder

    def create(self, meter: Meter) -> Any:
        return meter.create_histogram(
            self.name,
            unit=self.unit,
            description=self.description,
            explicit_bucket_boundaries_advisory=list(self.bounds),
        )


class Gauge(Instrument):
    """The last value set per attribute set (a synchronous gauge)."""

    kind = Kind.GAUGE

    def set(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        self.sdk.set(value, attributes)

    def create(self, meter: Meter) -> Any:
        return meter.create_gauge(self.name, unit=self.unit, description=self.description)


class _Observed(Instrument):
    """An observable instrument fed by callbacks registered at run time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._callbacks: list[Callback] = []

    def register(self, callback: Callback) -> None:
        """Feed this instrument from ``callback`` at every collection (idempotent)."""
        if callback not in self._callbacks:
            self._callbacks.append(callback)

    def unregister(self, callback: Callback) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        out: list[Observation] = []
        for callback in list(self._callbacks):
            out.extend(callback(options))
        return out


class ObservedGauge(_Observed):
    """A value read at collection time from registered callbacks (devices, health, SLA)."""

    kind = Kind.OBSERVABLE_GAUGE

    def create(self, meter: Meter) -> Any:
        return meter.create_observable_gauge(
            self.name, callbacks=[self._observe], unit=self.unit, description=self.description
        )


class ObservedCounter(_Observed):
    """A monotonic total kept in a local tally (plus any callbacks of cumulative values, such
    as psutil's disk bytes), observed at collection time."""

    kind = Kind.OBSERVABLE_COUNTER

    def __init__(self, *args: Any, shared: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tally = Tally(self.name, shared=shared)  # shared: the request path's lock

    def add(self, key: Iterable[tuple[str, AttrValue]], amount: int = 1) -> None:
        """Add to the series of this attribute key (see :func:`~bitnet_obs._tally.key_of`)."""
        self.tally.add(key, amount)

    def value(self, **attributes: AttrValue) -> int:
        """Sum of the series whose attributes include the given ones."""
        return self.tally.value(**attributes)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        out = list(self.tally.observe(options))
        renamed = self.renamed
        if renamed and dup_names():  # 0.1's attribute names beside the current ones
            out = [_with_legacy(o, renamed) for o in out]
        out.extend(super()._observe(options))
        return out

    def create(self, meter: Meter) -> Any:
        return meter.create_observable_counter(
            self.name, callbacks=[self._observe], unit=self.unit, description=self.description
        )


def _with_legacy(observation: Observation, renamed: Mapping[str, str]) -> Observation:
    attributes = observation.attributes
    if not attributes or not any(k in attributes for k in renamed):
        return observation
    extra = {renamed[k]: v for k, v in attributes.items() if k in renamed}
    return Observation(observation.value, {**attributes, **extra})


class ObservedUpDownCounter(ObservedCounter):
    """A total that goes up and down (requests in progress, queue depth), kept in a tally."""

    kind = Kind.OBSERVABLE_UPDOWNCOUNTER

    def create(self, meter: Meter) -> Any:
        return meter.create_observable_up_down_counter(
            self.name, callbacks=[self._observe], unit=self.unit, description=self.description
        )
