"""KV and prefix cache telemetry: hit and miss counters, and an optional usage gauge.

Dashboards compute the hit rate as ``rate(hits) / (rate(hits) + rate(misses))``::

    bitnet_obs.current_inference().record_cache(hits=12, misses=3)      # inside a request
    bitnet_obs.record_cache(hits=1, cache="prefix", model="m")          # anywhere
    bitnet_obs.observe_cache_usage("kv", lambda: allocator.bytes_in_use())
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from bitnet_obs import _semconv as sc
from bitnet_obs import _state
from bitnet_obs._errors import ConfigError
from bitnet_obs._instruments import CACHE_HITS, CACHE_MISSES, CACHE_USAGE
from bitnet_obs._selfmon import describe, internal_error
from bitnet_obs._tally import AttrValue, key_of
from bitnet_obs._tokens import as_count

_HITS = CACHE_HITS
_MISSES = CACHE_MISSES
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def record_cache(hits: int = 0, misses: int = 0, *, cache: str = "kv", model: str = "") -> None:
    """Count cache hits and misses (both series exist from the first report, so a hit ratio
    never lacks its other half). Never raises: a bad value is a counted internal error."""
    try:
        n_hits, n_misses = as_count(hits), as_count(misses)
        if n_hits is None or n_misses is None:
            detail = f"record_cache({describe(hits)}, {describe(misses)})"
            internal_error("bad_cache_count", detail=detail)
            return
        attrs: dict[str, AttrValue] = {"bitnet.cache.name": str(cache)[:64]}
        if model:
            attrs[sc.REQUEST_MODEL] = str(model)[:128]
        key = key_of(attrs)
        _HITS.add(key, n_hits)
        _MISSES.add(key, n_misses)
    except Exception as exc:
        internal_error("cache", exc)


def observe_cache_usage(cache: str, read_bytes: Callable[[], float]) -> None:
    """Report ``bitnet.cache.usage`` (bytes) for a cache, read at collection time only."""
    if not isinstance(cache, str) or not _NAME.match(cache):
        raise ConfigError(f"cache={cache!r} is not valid; accepted: a short identifier")
    if not callable(read_bytes):
        raise ConfigError(f"read_bytes={read_bytes!r} is not valid; accepted: a callable")
    attrs = {"bitnet.cache.name": cache}

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(float(read_bytes()), attrs)]
        except Exception as exc:
            internal_error("cache_usage", exc)
            return []

    CACHE_USAGE.register(observe)
    _observers.append(observe)


_observers: list[Callable[[CallbackOptions], Iterable[Observation]]] = []


@_state.on_reset
def _reset() -> None:
    for observe in _observers:
        CACHE_USAGE.unregister(observe)
    _observers.clear()
