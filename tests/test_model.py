"""monitor_model_load / unload_model (bitnet_obs._model)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

import bitnet_obs
from bitnet_obs import ConfigError, health
from bitnet_obs._selfmon import errors as internal_errors
from bitnet_obs.testing import TelemetryCapture, capture_telemetry

OK = {"bitnet.outcome": "ok"}
ERR = {"bitnet.outcome": "error"}


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    health.mark_ready()
    with capture_telemetry() as capture:
        yield capture
    health.mark_ready()


def _ready() -> tuple[int, dict[str, object]]:
    report = health.evaluate("readiness")
    return report.http_status, report.to_dict()


def test_successful_load_records_and_marks_ready(cap: TelemetryCapture) -> None:
    @bitnet_obs.monitor_model_load(model="m", quant_format="tl2", device="cpu")
    def load() -> dict[str, np.ndarray]:
        assert _ready()[0] == 503  # nothing loaded yet: not ready while loading
        return {"a": np.zeros((4, 8), np.float32), "b": np.zeros(16, np.int8)}

    weights = load()
    assert set(weights) == {"a", "b"}
    attrs = {"gen_ai.request.model": "m", "bitnet.quant.format": "tl2", "bitnet.device": "cpu"}
    assert cap.value("bitnet.model.loads", **OK, **attrs) == 1
    assert cap.value("bitnet.model.loaded", **attrs) == 1
    assert cap.points("bitnet.model.size", **attrs)[0].value == 4 * 8 * 4 + 16
    assert cap.points("bitnet.model.load.duration", **attrs)[0].count == 1
    (span,) = cap.spans("load_model m")
    assert span.attributes is not None and span.attributes["bitnet.model.size"] == 144
    assert _ready()[0] == 200
    bitnet_obs.unload_model(model="m", quant_format="tl2", device="cpu")
    assert cap.value("bitnet.model.loaded", **attrs) == 0


def test_failing_load_is_counted_not_ready_and_propagates(cap: TelemetryCapture) -> None:
    class CorruptCheckpointError(Exception):
        pass

    original = CorruptCheckpointError("bad header")

    @bitnet_obs.monitor_model_load(model="broken")
    def load() -> None:
        raise original

    with pytest.raises(CorruptCheckpointError) as info:
        load()
    assert info.value is original
    err = f"{__name__}.{CorruptCheckpointError.__qualname__}"
    assert cap.value("bitnet.model.loads", **ERR, **{"error.type": err}) == 1
    assert cap.value("bitnet.model.loaded") == 0
    status, body = _ready()
    assert status == 503
    assert "broken" in json.dumps(body) and "CorruptCheckpointError" in json.dumps(body)
    (span,) = cap.spans("load_model broken")
    assert span.status.status_code.name == "ERROR"


def test_context_manager_with_tensors_and_explicit_size(cap: TelemetryCapture) -> None:
    with bitnet_obs.monitor_model_load(model="ctx", mark_ready=False) as loading:
        loading.add_tensors([np.ones(10, np.float32), np.ones(6, np.float64)])
    assert cap.points("bitnet.model.size", **{"gen_ai.request.model": "ctx"})[0].value == 88
    with bitnet_obs.monitor_model_load(model="sized", size_bytes=1234, mark_ready=False):
        pass
    assert cap.points("bitnet.model.size", **{"gen_ai.request.model": "sized"})[0].value == 1234


async def test_async_loader(cap: TelemetryCapture) -> None:
    @bitnet_obs.monitor_model_load(model="async-m", mark_ready=False)
    async def load() -> list[np.ndarray]:
        return [np.zeros(3, np.float32)]

    await load()
    assert cap.value("bitnet.model.loads", **OK) == 1
    assert cap.points("bitnet.model.size")[0].value == 12


def test_a_loaded_process_stays_ready_while_loading_another(cap: TelemetryCapture) -> None:
    with bitnet_obs.monitor_model_load(model="first"):
        pass
    with bitnet_obs.monitor_model_load(model="second"):
        assert _ready()[0] == 200


@pytest.mark.parametrize(
    "kwargs",
    [{"model": ""}, {"model": "m", "quant_format": "q9"}, {"model": "m", "size_bytes": -1}],
)
def test_bad_arguments_raise_at_decoration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="accepted"):
        bitnet_obs.monitor_model_load(**kwargs)  # type: ignore[arg-type]


def test_a_failed_hot_swap_keeps_the_process_ready(cap: TelemetryCapture) -> None:
    with bitnet_obs.monitor_model_load(model="serving"):
        pass
    with pytest.raises(OSError, match="disk"), bitnet_obs.monitor_model_load(model="swap"):
        raise OSError("disk")
    assert _ready()[0] == 200
    assert cap.value("bitnet.model.loads", **ERR) == 1


def test_unloading_a_model_that_was_never_loaded_stays_at_zero(cap: TelemetryCapture) -> None:
    before = internal_errors("unload_not_loaded")
    bitnet_obs.unload_model(model="never-loaded")
    assert cap.value("bitnet.model.loaded", **{"gen_ai.request.model": "never-loaded"}) == 0
    assert internal_errors("unload_not_loaded") == before + 1
    with bitnet_obs.monitor_model_load(model="once", mark_ready=False):
        pass
    bitnet_obs.unload_model(model="once")
    bitnet_obs.unload_model(model="once")  # a second unload: refused, not -1
    assert cap.value("bitnet.model.loaded", **{"gen_ai.request.model": "once"}) == 0
