"""Cache hit/miss counters and the usage gauge (bitnet_obs._cache)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import bitnet_obs
from bitnet_obs import ConfigError
from bitnet_obs.testing import TelemetryCapture, capture_telemetry, reset


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def test_counters_inside_and_outside_requests(cap: TelemetryCapture) -> None:
    @bitnet_obs.monitored_inference(model="m")
    def generate() -> int:
        bitnet_obs.current_inference().record_cache(hits=12, misses=3)
        return 1

    generate()
    generate()
    bitnet_obs.record_cache(hits=1, cache="prefix")
    bitnet_obs.current_inference().record_cache(misses=2)
    kv = {"bitnet.cache.name": "kv"}
    assert cap.value("bitnet.cache.hits", **kv, **{"gen_ai.request.model": "m"}) == 24
    assert cap.value("bitnet.cache.misses", **kv) == 6 + 2
    assert cap.value("bitnet.cache.hits", **{"bitnet.cache.name": "prefix"}) == 1
    bitnet_obs.record_cache(hits=-1)  # counted as an internal error, never raised
    bitnet_obs.record_cache(hits="3")  # type: ignore[arg-type]
    assert cap.value("bitnet.cache.hits") == 25


def test_usage_gauge(cap: TelemetryCapture) -> None:
    try:
        bitnet_obs.observe_cache_usage("kv", lambda: 4096)
        bitnet_obs.observe_cache_usage("broken", lambda: 1 / 0)
        (point,) = cap.points("bitnet.cache.usage")
        assert point.attributes == {"bitnet.cache.name": "kv"} and point.value == 4096
    finally:
        reset()
    with pytest.raises(ConfigError):
        bitnet_obs.observe_cache_usage("bad name", lambda: 1)
