"""``/metrics``: our pull reader and the Prometheus text it renders (0.0.4 and OpenMetrics 1.0).

Why not the OTel Prometheus exporter: it turns every collection into prometheus_client objects
and re-validates and re-escapes every label of every sample. At the cardinality limit (2,000
models x every instrument) that took seconds and tens of MB per scrape, longer than Prometheus'
scrape timeout on a busy machine. Here the label text of each attribute set is built once and
cached, a sample is one string concatenation, and concurrent scrapes share one render.

The exposition is the one the OTel exporter (with prometheus_client) writes for the same data:
same family and sample names (:mod:`bitnet_obs._names`), label keys sorted and backfilled with
``""`` within a family, non-string attribute values as JSON, ``target_info`` from the resource,
no scope labels, counter and histogram layout, Go-style numbers. ``tests/test_exposition.py``
parses both with Prometheus' own parser and compares them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    MetricReader,
    MetricsData,
    Sum,
)

from bitnet_obs import _state
from bitnet_obs._names import family_name, label_name, unit_suffix

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_LABEL_CACHE_MAX = 200_000  # label texts kept between renders (bounded by the cardinality limit)


def go_float(value: float) -> str:
    """A number as Prometheus' Go parser writes it (``1.0``, ``+Inf``, ``1.5e+06``)."""
    if isinstance(value, int) and -1_000_000 < value < 1_000_000:
        return f"{value}.0"
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_value(value: Any) -> str:
    return _escape_value(value if isinstance(value, str) else json.dumps(value, default=str))


class Renderer:
    """Renders collections; keeps the label text of every attribute set between renders."""

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, ...], tuple[tuple[str, Any], ...]], str] = {}
        self._le: dict[tuple[float, ...], list[str]] = {}
        self._names: dict[str, str] = {}  # attribute key -> label name

    def render(self, data: MetricsData | None, openmetrics: bool) -> tuple[bytes, ...]:
        """The page, as one encoded part per metric family: joining and encoding all of it at
        once (80 MB at the cardinality limit) would hold the GIL for ~100 ms in two C calls;
        the server writes (or compresses) the parts one by one."""
        parts: list[bytes] = []
        out: list[str] = []
        if data is not None:
            for rm in data.resource_metrics:
                if not parts and not out:
                    self._target_info(out, rm.resource.attributes, openmetrics)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        self._metric(out, metric, openmetrics)
                        parts.append("".join(out).encode())
                        out.clear()
        if openmetrics:
            out.append("# EOF\n")
        parts.append("".join(out).encode())
        if len(self._labels) > _LABEL_CACHE_MAX:
            self._labels.clear()
        return tuple(part for part in parts if part)

    def _target_info(
        self, out: list[str], attributes: Mapping[str, Any], openmetrics: bool
    ) -> None:
        labels = ",".join(
            f'{label_name(k)}="{_label_value(v)}"' for k, v in sorted(attributes.items())
        )
        if openmetrics:
            out.append("# HELP target Target metadata\n# TYPE target info\n")
        else:
            out.append("# HELP target_info Target metadata\n# TYPE target_info gauge\n")
        out.append(f"target_info{{{labels}}} 1.0\n")

    def _metric(self, out: list[str], metric: Any, openmetrics: bool) -> None:
        data = metric.data
        points = data.data_points
        if not points:
            return
        name = family_name(metric.name, metric.unit or "")
        help_text = (metric.description or "").replace("\\", r"\\").replace("\n", r"\n")
        cumulative = AggregationTemporality.CUMULATIVE
        if isinstance(data, Sum) and (
            data.is_monotonic or data.aggregation_temporality is not cumulative
        ):  # the exporter's rule: only cumulative non-monotonic sums are gauges
            kind = "counter"
        elif isinstance(data, (Sum, Gauge)):
            kind = "gauge"
        elif isinstance(data, Histogram):
            kind = "histogram"
        else:  # an exponential histogram: not in the text formats
            return
        base = name.removesuffix("_total") if kind == "counter" else name
        names = self._names
        keys = tuple(sorted({names.get(k) or self._name(k) for p in points for k in p.attributes}))
        if openmetrics:
            help_text = help_text.replace('"', r"\"")
            out.append(f"# HELP {base} {help_text}\n# TYPE {base} {kind}\n")
            unit = unit_suffix(metric.unit or "")
            if unit:
                out.append(f"# UNIT {base} {unit}\n")
        else:
            shown = base + "_total" if kind == "counter" else base
            out.append(f"# HELP {shown} {help_text}\n# TYPE {shown} {kind}\n")
        if kind == "histogram":
            for p in points:
                self._histogram(out, base, self._label_text(keys, p.attributes), p)
            return
        sample = base + "_total" if kind == "counter" else base
        for p in points:
            labels = self._label_text(keys, p.attributes)
            out.append(f"{sample}{{{labels}}} {go_float(p.value)}\n" if labels else
                       f"{sample} {go_float(p.value)}\n")  # fmt: skip

    def _histogram(self, out: list[str], name: str, labels: str, p: Any) -> None:
        bounds = tuple(p.explicit_bounds)
        les = self._le.get(bounds)
        if les is None:
            les = self._le[bounds] = [f"{b}" for b in bounds] + ["+Inf"]
        prefix = f'{name}_bucket{{{labels},le="' if labels else f'{name}_bucket{{le="'
        total = 0
        for le, count in zip(les, p.bucket_counts, strict=False):
            total += count
            out.append(f'{prefix}{le}"}} {go_float(total)}\n')
        suffix = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_count{suffix} {go_float(total)}\n")
        out.append(f"{name}_sum{suffix} {go_float(p.sum)}\n")

    def _name(self, key: str) -> str:
        name = self._names[key] = label_name(key)
        return name

    def _label_text(self, keys: tuple[str, ...], attributes: Mapping[str, Any]) -> str:
        cache_key = (keys, tuple(attributes.items()))
        text = self._labels.get(cache_key)
        if text is None:
            values = {label_name(k): v for k, v in attributes.items()}
            text = ",".join(
                f'{k}="{_label_value(values[k])}"' if k in values else f'{k}=""' for k in keys
            )
            self._labels[cache_key] = text
        return text


class PullReader(MetricReader):
    """A reader that Prometheus pulls: each scrape collects once and renders the result.

    Concurrent scrapes of the same format share one collection and render. ``force_flush``
    collects nothing (a pull reader has nowhere to push to).
    """

    def __init__(self, cardinality_limits: Mapping[type, int] | None = None) -> None:
        super().__init__(cardinality_limits=dict(cardinality_limits or {}))
        self._renderer = Renderer()
        self._data: MetricsData | None = None
        self._lock = threading.Lock()
        self._flights: dict[bool, _Flight] = {}

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._data = metrics_data

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._data = None

    def render(self, accept: str) -> tuple[str, bytes]:
        """(content type, body) for a scrape with this Accept header."""
        content_type, parts = self.render_parts(accept)
        return content_type, b"".join(parts)

    def render_parts(self, accept: str) -> tuple[str, tuple[bytes, ...]]:
        """(content type, the body in parts) for a scrape with this Accept header."""
        openmetrics = "application/openmetrics-text" in accept
        with self._lock:
            flight = self._flights.get(openmetrics)
            leader = flight is None
            if flight is None:
                flight = self._flights[openmetrics] = _Flight()
        if leader:
            try:
                with _no_gc_pause():
                    self.collect()
                    data, self._data = self._data, None  # kept only for this render
                    flight.body = self._renderer.render(data, openmetrics)
                    del data  # freed here, by reference counting, before collection resumes
            finally:
                with self._lock:
                    del self._flights[openmetrics]
                flight.done.set()
        else:
            flight.done.wait()
        if flight.body is None:
            raise RuntimeError("the shared render failed")
        return (OPENMETRICS if openmetrics else TEXT), flight.body


@contextlib.contextmanager
def _no_gc_pause() -> Iterator[None]:
    """Collection and render allocate a container per data point (hundreds of thousands at
    the cardinality limit): enough to trigger full garbage-collector passes, each of which
    holds the GIL for the whole heap (150 ms in a process with torch loaded) and stalls every
    request thread. Automatic collection waits until the render is done; its objects are
    freed by reference counting, so no collection is owed afterwards."""
    global _paused, _resume
    with _gc_lock:  # concurrent renders (text and OpenMetrics): the last one out resumes
        if _paused == 0:
            _resume = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _gc_lock:
            _paused -= 1
            if _paused == 0 and _resume:
                gc.enable()


_gc_lock = threading.Lock()
_paused = 0  # renders in progress
_resume = False  # whether collection was on when the first of them started


@_state.on_fork
def _after_fork() -> None:
    """A child forked mid-render renders nothing: collection resumes as it was."""
    global _gc_lock, _paused
    _gc_lock = threading.Lock()
    if _paused and _resume:
        gc.enable()
    _paused = 0


class _Flight:
    """One render in progress that later scrapes wait for."""

    __slots__ = ("body", "done")

    def __init__(self) -> None:
        self.body: tuple[bytes, ...] | None = None
        self.done = threading.Event()
