"""Provenance at load: monitor_model_load(path=...) (bitnet_obs._provenance)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bitnet_obs
from bitnet_obs import ConfigError, health
from bitnet_obs.testing import CapturedPoint, TelemetryCapture, capture_telemetry
from tests._support import checkpoints as cp

pytest.importorskip("gguf")

MODEL = {"gen_ai.request.model": "m", "bitnet.quant.format": "i2_s", "bitnet.device": "cpu"}


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    health.mark_ready()
    with capture_telemetry() as capture:
        yield capture
    bitnet_obs.unload_model(model="m")
    health.mark_ready()


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("prov")
    return cp.convert_to_gguf(d / "ggml-model-i2_s.gguf", cp.master_weights(2))


def _info(cap: TelemetryCapture, deadline: float = 60.0) -> CapturedPoint:
    """The info series, once it is there (the hash runs in a background thread)."""
    end = time.monotonic() + deadline
    while True:
        points = cap.points("bitnet.model.info", **MODEL)
        if points or time.monotonic() > end:
            assert len(points) == 1, points
            return points[0]
        time.sleep(0.05)


def test_a_gguf_load_records_what_was_loaded(cap: TelemetryCapture, gguf_file: Path) -> None:
    with bitnet_obs.monitor_model_load(model="m", path=gguf_file):
        data = gguf_file.read_bytes()  # the application's own loading
    point = _info(cap)
    assert point.value == 1
    attrs: dict[str, Any] = point.attributes
    assert attrs["bitnet.model.file.format"] == "gguf"
    assert attrs["bitnet.model.file.name"] == "ggml-model-i2_s.gguf"
    assert attrs["bitnet.model.file.quant_types"] == "I2_S=14,F32=5,F16=1"
    assert attrs["bitnet.model.file.size"] == len(data)
    assert attrs["bitnet.model.file.sha256"] == hashlib.sha256(data).hexdigest()
    assert attrs["bitnet.model.architecture"] == "bitnet"  # general.architecture
    master = cp.master_weights(2)  # every weight is in the file, whatever its stored type
    assert attrs["bitnet.model.parameters"] == sum(w.size for w in master.values())
    (load,) = cap.spans("load_model m")
    assert load.attributes is not None
    assert load.attributes["bitnet.model.file.format"] == "gguf"
    assert load.attributes["bitnet.model.file.quant_types"] == "I2_S=14,F32=5,F16=1"
    (hashed,) = cap.spans("hash_model_file")
    assert hashed.attributes is not None
    assert hashed.attributes["bitnet.model.file.sha256"] == attrs["bitnet.model.file.sha256"]
    assert [link.context.span_id for link in hashed.links] == [load.context.span_id]
    bitnet_obs.unload_model(model="m")
    assert cap.points("bitnet.model.info", **MODEL) == []


def test_hash_content_false_publishes_at_once_without_a_hash(
    cap: TelemetryCapture, gguf_file: Path
) -> None:
    @bitnet_obs.monitor_model_load(model="m", path=str(gguf_file), hash_content=False)
    def load() -> None:
        return None

    load()
    (point,) = cap.points("bitnet.model.info", **MODEL)  # no waiting: nothing to wait for
    assert "bitnet.model.file.sha256" not in point.attributes
    assert point.attributes["bitnet.model.file.size"] == gguf_file.stat().st_size
    assert cap.spans("hash_model_file") == []


def test_a_checkpoint_directory_with_packed_weights(cap: TelemetryCapture, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    directory = cp.packed_checkpoint(tmp_path / "ckpt", cp.master_weights(1))
    with bitnet_obs.monitor_model_load(model="m", path=directory):
        pass
    attrs = _info(cap).attributes
    assert attrs["bitnet.model.file.format"] == "safetensors"
    assert attrs["bitnet.model.file.quant_types"] == "U8 (HF packed)=7,BF16=4"
    assert "bitnet.model.architecture" not in attrs  # safetensors declares neither
    assert "bitnet.model.parameters" not in attrs
    shard = (directory / "model.safetensors").read_bytes()
    assert attrs["bitnet.model.file.sha256"] == hashlib.sha256(shard).hexdigest()


def test_a_failed_load_publishes_nothing(cap: TelemetryCapture, gguf_file: Path) -> None:
    with (
        pytest.raises(OSError, match="disk"),
        bitnet_obs.monitor_model_load(model="m", path=gguf_file, mark_ready=False),
    ):
        raise OSError("disk on fire")
    time.sleep(0.2)
    assert cap.points("bitnet.model.info", **MODEL) == []


def test_an_unreadable_path_is_counted_not_raised(cap: TelemetryCapture, tmp_path: Path) -> None:
    before = cap.value(
        "bitnet.obs.internal_errors", **{"bitnet.obs.error.kind": "model_provenance"}
    )
    with bitnet_obs.monitor_model_load(model="m", path=tmp_path / "missing.gguf"):
        pass
    assert cap.value("bitnet.model.loads", **MODEL, **{"bitnet.outcome": "ok"}) == 1
    end = time.monotonic() + 60
    while time.monotonic() < end:  # the header read (at once) and the hash (in its thread)
        after = cap.value(
            "bitnet.obs.internal_errors", **{"bitnet.obs.error.kind": "model_provenance"}
        )
        if after >= before + 2:
            break
        time.sleep(0.05)
    assert after == before + 2
    assert cap.points("bitnet.model.info", **MODEL) == []


def test_a_bad_path_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="path="):
        bitnet_obs.monitor_model_load(model="m", path=42)  # type: ignore[arg-type]


def test_the_info_series_is_an_observable_gauge() -> None:
    """The catalogue entry: an observable gauge whose name Prometheus accepts."""
    from bitnet_obs._instruments import BY_NAME, Kind, prometheus_name

    spec = BY_NAME["bitnet.model.info"]  # the catalogue entry (read, not patched)
    assert spec.kind is Kind.OBSERVABLE_GAUGE and prometheus_name(spec) == "bitnet_model_info"
