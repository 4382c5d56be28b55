"""Our own aggregation of the request path's histograms: a bucket lookup and a few increments.

Why: an SDK histogram record re-cleans and re-hashes its attribute dict, matches views and offers
an exemplar every time (~9 µs with five attributes on these machines), and the request path
records four or five of them per call and one per streamed token. Here a cell per (histogram,
attribute set) is resolved once (the hot path caches it per call site and outcome) and a record
is one ``bisect`` and a few additions under one lock; the export side turns each cell into one
point per collection (:mod:`bitnet_obs._export` merges them into what every reader collects).

What is produced is what the SDK would produce for the same records: explicit-bucket histograms
with the catalogue's boundaries, cumulative temporality, ``sum``/``count``/``min``/``max``,
start time at the first record of an attribute set, at most ``limit`` attribute sets per
histogram and then one ``otel.metric.overflow=true`` set, and per bucket the last exemplar
offered since the reader's previous collection (trace-based filter by default: only records
made under a sampled span; ``always_on``/``always_off`` as ``OTEL_METRICS_EXEMPLAR_FILTER``).
It is used only when ``configure()`` owns the pipeline and every reader wants cumulative
explicit-bucket histograms (Prometheus, OTLP and console by default); delta temporality and
exponential histograms keep the SDK's instruments. ``tests/test_aggregate.py`` checks that both
paths export identical data for the same workload.

This module knows no SDK type: :func:`snapshot` returns plain tuples.
"""

from __future__ import annotations

import math
import struct
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from bitnet_obs import _state, _tally
from bitnet_obs._tally import OVERFLOW_KEY, AttrKey, AttrValue, key_of

#: (span_id, trace_id) of the sampled span a record was made under, or None.
SpanIds = tuple[int, int] | None


_VECTOR_GAPS = 1024  # stamps from which numpy beats a Python loop right after a decode (measured)
_ZIPPED_GAPS = 64  # stamps up to which a dict finds each bucket's last gap fastest
_np: Any = None


def _numpy() -> Any:
    """numpy, imported by the first stream that needs it (this module loads without it)."""
    global _np
    if _np is None:
        import numpy

        _np = numpy
    return _np


_BOUNDS: dict[tuple[float, ...], Any] = {}  # bucket bounds as numpy arrays


class Exemplar(NamedTuple):
    seq: int  # global order of offers: a reader reports those after its last collection
    value: float
    time_unix_nano: int
    span_id: int | None
    trace_id: int | None


#: An exemplar offered on the request path (seq, value, time_unix_nano, span ids).
Offer = tuple[int, float, int, SpanIds]


class Cell:
    """One attribute set of one histogram: bucket counts, sum, min, max, exemplars.

    A cell handed out for an attribute set not yet recorded is *pending*: it takes its place
    (or, past the cardinality limit, forwards to the overflow cell) at its first record, as the
    SDK creates an aggregation at an attribute set's first measurement.
    """

    __slots__ = (
        "attributes",
        "bounds",
        "counts",
        "exemplars",
        "forward",
        "key",
        "live",
        "max",
        "min",
        "name",
        "start_ns",
        "sum",
    )

    def __init__(
        self, name: str, key: AttrKey, attributes: dict[str, AttrValue], bounds: tuple[float, ...]
    ) -> None:
        self.name = name
        self.key = key
        self.attributes = attributes
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum: float = 0
        self.min = float("inf")
        self.max = float("-inf")
        self.start_ns = 0
        #: per bucket, the last offer: (seq, value, time_unix_nano, SpanIds), a plain tuple
        #: on the request path, an :class:`Exemplar` at collection
        self.exemplars: list[Offer | None] = [None] * (len(bounds) + 1)
        self.live = False
        self.forward: Cell | None = None


@dataclass(frozen=True)
class Point:
    """One cell at a collection (what the export side turns into a HistogramDataPoint)."""

    attributes: dict[str, AttrValue]
    start_time_unix_nano: int
    count: int
    sum: float
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    min: float
    max: float
    exemplars: tuple[Exemplar, ...]


class Store:
    """The cells of every own-aggregated histogram of one binding, behind one lock."""

    def __init__(self, limit: int, exemplar_filter: str = "trace_based") -> None:
        self.limit = limit
        self.exemplars_on = exemplar_filter != "always_off"
        self.always = exemplar_filter == "always_on"
        self.lock = _tally.REQUEST_LOCK  # shared with the request tallies: one lock per call
        self.cells: dict[str, dict[AttrKey, Cell]] = {}
        self.seq = 0
        _STORES.add(self)

    def cell(self, name: str, bounds: tuple[float, ...], attrs: Mapping[str, AttrValue]) -> Cell:
        """The cell of this histogram and attribute set: the recorded one, or a pending one."""
        key = key_of(dict(attrs))
        found = self.cells.get(name, {}).get(key)
        return found if found is not None else Cell(name, key, dict(attrs), bounds)

    def _admit(self, cell: Cell) -> Cell:
        """Where a pending cell's records go (call with the lock held)."""
        if cell.forward is not None:
            return cell.forward
        cells = self.cells.setdefault(cell.name, {})
        target = cells.get(cell.key)
        if target is None and len(cells) >= self.limit:  # the limit's worth, then overflow
            target = cells.get(OVERFLOW_KEY)
            if target is None:
                overflow: dict[str, AttrValue] = {"otel.metric.overflow": True}
                target = Cell(cell.name, OVERFLOW_KEY, overflow, cell.bounds)
                target.live, target.start_ns = True, time.time_ns()
                cells[OVERFLOW_KEY] = target
        if target is None:
            cell.live, cell.start_ns = True, time.time_ns()
            cells[cell.key] = cell
            return cell
        cell.forward = target
        return target

    def record(self, cell: Cell, value: float, span: SpanIds) -> None:
        with self.lock:
            self.add_locked(cell, value, span)

    def add_gaps(self, cell: Cell, stamps: Sequence[float], span: SpanIds) -> None:
        """The gaps between consecutive ``stamps`` (monotonic clock reads) as records of
        ``cell``, a stream's inter-token latency: a Python loop for a few, numpy from
        :data:`_VECTOR_GAPS` stamps on (a few µs, then about 10 ns a gap). As the SDK's
        reservoir keeps the last exemplar offered per bucket, only those are offered, at one
        clock read."""
        n = len(stamps)
        if n < 2:
            return
        offer = self.exemplars_on and (span is not None or self.always)
        last: dict[int, float] = {}
        if n < _VECTOR_GAPS:
            bounds = cell.bounds
            batch = [0] * (len(bounds) + 1)
            total, low, high = 0.0, math.inf, -math.inf
            previous = stamps[0]
            for i in range(1, n):
                stamp = stamps[i]
                gap = stamp - previous
                previous = stamp
                batch[bisect_left(bounds, gap)] += 1
                total += gap
                if gap < low:
                    low = gap
                if gap > high:
                    high = gap
            if offer:  # the last gap of each bucket hit, found from the end
                hit = len(batch) - batch.count(0)
                for i in range(n - 1, 0, -1):
                    gap = stamps[i] - stamps[i - 1]
                    last.setdefault(bisect_left(bounds, gap), gap)
                    if len(last) == hit:
                        break
            with self.lock:
                if not cell.live:
                    cell = self._admit(cell)
                self._merge(cell, batch, total, low, high)
                if offer:
                    self._offer(cell, last, span)
            return
        np = _numpy()
        packed = np.frombuffer(struct.pack(f"{n}d", *stamps), np.float64)
        values = packed[1:] - packed[:-1]
        edges = _BOUNDS.get(cell.bounds)
        if edges is None:
            edges = _BOUNDS[cell.bounds] = np.asarray(cell.bounds, dtype=np.float64)
        index = np.searchsorted(edges, values, side="left")
        counts = np.bincount(index, minlength=len(cell.bounds) + 1).tolist()
        total, low, high = float(values.sum()), float(values.min()), float(values.max())
        if offer:  # the last gap of each bucket
            if n <= _ZIPPED_GAPS:
                last = dict(zip(index.tolist(), values.tolist(), strict=True))
            else:
                buckets, at = np.unique(index[::-1], return_index=True)
                last = dict(zip(buckets.tolist(), values[::-1][at].tolist(), strict=True))
        with self.lock:
            if not cell.live:
                cell = self._admit(cell)
            self._merge(cell, counts, total, low, high)
            if offer:
                self._offer(cell, last, span)

    @staticmethod
    def _merge(cell: Cell, counts: list[int], total: float, low: float, high: float) -> None:
        """Several records' bucket counts, sum, min and max into ``cell`` (lock held)."""
        into = cell.counts
        for i, k in enumerate(counts):
            if k:
                into[i] += k
        cell.sum += total
        if low < cell.min:
            cell.min = low
        if high > cell.max:
            cell.max = high

    def _offer(self, cell: Cell, last: Mapping[int, float], span: SpanIds) -> None:
        """Exemplars of several records made at once: per bucket, the last (lock held)."""
        now = time.time_ns()
        for i, value in last.items():
            self.seq += 1
            cell.exemplars[i] = (self.seq, value, now, span)

    def add_locked(self, cell: Cell, value: float, span: SpanIds) -> None:
        """One record by a caller that holds :data:`~bitnet_obs._tally.REQUEST_LOCK`."""
        self.add_many_locked(((cell, value),), span)

    def add_many_locked(self, records: Iterable[tuple[Cell, float]], span: SpanIds) -> None:
        """Records of one request by a caller that holds the lock. Negative values are
        dropped, as the SDK drops them."""
        offer = self.exemplars_on and (span is not None or self.always)
        now = time.time_ns() if offer else 0  # one instant: the records of one request
        for cell, value in records:
            if value < 0:
                continue
            if not cell.live:
                cell = self._admit(cell)
            i = bisect_left(cell.bounds, value)
            cell.counts[i] += 1
            cell.sum += value
            if value < cell.min:
                cell.min = value
            if value > cell.max:
                cell.max = value
            if offer:
                self.seq += 1
                cell.exemplars[i] = (self.seq, value, now, span)

    def snapshot(self, since_seq: int) -> tuple[dict[str, list[Point]], int]:
        """Every cell as a point (exemplars offered after ``since_seq`` only), and the sequence
        number to pass next time.

        The request path's lock is held only to copy a batch of cells' numbers at a time
        (each cell's figures consistent with each other), never while points are built: at
        the cardinality limit that took long enough to stall every request thread."""
        with self.lock:
            groups = [(name, list(cells.values())) for name, cells in self.cells.items()]
            seq = self.seq
        out: dict[str, list[Point]] = {}
        for name, cells in groups:
            points = out[name] = []
            for start in range(0, len(cells), _SNAPSHOT_BATCH):
                with self.lock:
                    raw = [
                        (c, tuple(c.counts), c.sum, c.min, c.max, tuple(c.exemplars))
                        for c in cells[start : start + _SNAPSHOT_BATCH]
                    ]
                for cell, counts, total, low, high, offered in raw:
                    exemplars = tuple(
                        Exemplar(e[0], e[1], e[2], *(e[3] or (None, None)))
                        for e in offered
                        if e is not None and since_seq < e[0] <= seq
                    )
                    points.append(
                        Point(
                            dict(cell.attributes),
                            cell.start_ns,
                            sum(counts),
                            total,
                            counts,
                            cell.bounds,
                            low,
                            high,
                            exemplars,
                        )
                    )
        return out, seq

    def reset_after_fork(self) -> None:
        self.lock = _tally.REQUEST_LOCK
        self.cells = {}


#: Cells copied per hold of the request path's lock during a snapshot.
_SNAPSHOT_BATCH = 256
_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


@_state.on_fork
def _after_fork() -> None:
    # A parent thread may have held a lock at fork time, and the parent's totals are its own.
    for store in list(_STORES):
        store.reset_after_fork()
