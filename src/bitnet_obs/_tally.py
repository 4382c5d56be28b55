"""Local running totals read by observable instruments at collection time.

Monotonic counts (requests, tokens, active requests, fallbacks, self-metrics) are kept here
instead of a per-call SDK ``add``: one lock and one dict update per call, exact under threads
and asyncio, and the SDK only sees one observation per series per collection.

A tally holds at most ``limit`` distinct attribute sets; more are folded into one series with
``otel.metric.overflow=true`` (the same convention the SDK uses), and the fold is counted.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Union

from opentelemetry.metrics import CallbackOptions, Observation

from bitnet_obs import _state

AttrValue = Union[str, bool, int, float]  # noqa: UP007 - a runtime alias on 3.10
#: One attribute set as a dict key: a frozenset of (key, value) pairs, which caches its hash
#: (a tuple recomputes it at every lookup: a request's four updates hashed ~40 strings).
AttrKey = frozenset[tuple[str, AttrValue]]

OVERFLOW_KEY: AttrKey = frozenset({("otel.metric.overflow", True)})
_ALL: weakref.WeakSet[Tally] = weakref.WeakSet()

#: The request path's lock: the request tallies and our histogram store share it, so the end
#: of a request takes one lock for all its updates.
REQUEST_LOCK = threading.Lock()


#: Keys are interned, so a lookup with the key a call site holds finds the very object the
#: dict holds: no element-by-element comparison (bounded: past it, keys are just not shared).
_INTERNED: dict[AttrKey, AttrKey] = {}
_MAX_INTERNED = 1 << 16


def key_of(attributes: Mapping[str, AttrValue]) -> AttrKey:
    """A hashable, order-independent key for one attribute set."""
    return _intern(frozenset(attributes.items()))


def _intern(key: AttrKey) -> AttrKey:
    found = _INTERNED.get(key)
    if found is not None:
        return found
    if len(_INTERNED) < _MAX_INTERNED:
        _INTERNED[key] = key
    return key


def _key(key: Iterable[tuple[str, AttrValue]]) -> AttrKey:
    """A key given as pairs (a tuple of them is accepted too) as an :data:`AttrKey`."""
    return key if type(key) is frozenset else _intern(frozenset(key))


class Tally:
    """Totals per attribute set, safe under threads; reset in a forked child."""

    __slots__ = ("__weakref__", "_lock", "limit", "name", "overflowed", "series", "shared")

    def __init__(self, name: str, limit: int = 2000, shared: bool = False) -> None:
        self.name = name
        self.limit = limit
        self.shared = shared  # uses REQUEST_LOCK
        self._lock = REQUEST_LOCK if shared else threading.Lock()
        #: the totals by attribute key; update them with the lock held (``add_new`` for a
        #: key not there yet, which applies the limit)
        self.series: dict[AttrKey, int] = {}
        self.overflowed = 0
        _ALL.add(self)

    def add(self, key: Iterable[tuple[str, AttrValue]], amount: int = 1) -> None:
        if type(key) is not frozenset:
            key = _key(key)
        with self._lock:
            values = self.series
            if key in values:
                values[key] += amount
            else:
                self.add_new(key, amount)

    def declare(self, key: Iterable[tuple[str, AttrValue]]) -> None:
        """Report this series at 0 until its first event (so ``rate()`` sees that event)."""
        key = _key(key)
        with self._lock:
            if key not in self.series and len(self.series) < self.limit:
                self.series[key] = 0

    def add_if_positive(self, key: Iterable[tuple[str, AttrValue]], amount: int) -> bool:
        """Subtract ``-amount`` only while the series stays >= 0 (e.g. unloading a model that
        was never loaded must not go negative); False when refused."""
        key = _key(key)
        with self._lock:
            if self.series.get(key, 0) + amount < 0:
                return False
            self.add_locked(key, amount)
            return True

    def add_locked(self, key: AttrKey, amount: int) -> None:
        """``add`` for a caller that holds this tally's lock (REQUEST_LOCK for a shared one)."""
        values = self.series
        if key in values:
            values[key] += amount
        else:
            self.add_new(key, amount)

    def add_new(self, key: AttrKey, amount: int) -> None:
        """A series not seen yet (call with the lock held): kept, or folded into the overflow
        series past the limit."""
        values = self.series
        if len(values) < self.limit:
            values[key] = amount
        else:
            self.overflowed += 1
            values[OVERFLOW_KEY] = values.get(OVERFLOW_KEY, 0) + amount

    def snapshot(self) -> dict[AttrKey, int]:
        with self._lock:
            return dict(self.series)

    def value(self, **attributes: AttrValue) -> int:
        """Sum of the series whose attributes include the given ones (for tests and the demo)."""
        wanted = attributes.items()
        return sum(
            amount for key, amount in self.snapshot().items() if all(item in key for item in wanted)
        )

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(amount, dict(sorted(key))) for key, amount in self.snapshot().items()]

    def reset(self) -> None:
        with self._lock:
            self.series.clear()
            self.overflowed = 0

    def _after_fork(self) -> None:
        # The parent's lock may have been held by another thread at fork time, and its
        # totals belong to the parent's own series: start clean.
        self._lock = REQUEST_LOCK if self.shared else threading.Lock()
        self.series = {}
        self.overflowed = 0


@_state.on_reset(phase=_state.CLEAR)
def reset_all() -> None:
    for tally in list(_ALL):
        tally.reset()


@_state.on_fork
def _reset_after_fork() -> None:
    global REQUEST_LOCK
    REQUEST_LOCK = threading.Lock()
    for tally in list(_ALL):
        tally._after_fork()
