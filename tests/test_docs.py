"""The generated docs match the code, and the catalogue's Prometheus names match the exporter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

import bitnet_obs
from bitnet_obs import _instruments, _tally
from bitnet_obs._instruments import CATALOGUE, Kind, prometheus_name

ROOT = Path(__file__).resolve().parent.parent


def test_generated_docs_are_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, "tools/gen_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"run `nox -s docs`: {proc.stdout}{proc.stderr}"


def test_catalogue_prometheus_names_match_the_real_exporter(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", w=np.ones((2, 2), np.float32))
    with bitnet_obs.monitor_model_load(  # feeds bitnet.model.info
        model="docs", path=tmp_path / "m.npz", hash_content=False, mark_ready=False
    ):
        pass
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    instruments = _instruments.Instruments(provider, _noop_tracer_provider())
    for spec in CATALOGUE:
        instrument = instruments.by_name[spec.name]
        if spec.kind in (Kind.HISTOGRAM,):
            instrument.record(1.0, {"k": "v"})
        elif spec.kind in (Kind.COUNTER, Kind.UPDOWNCOUNTER):
            instrument.add(1, {"k": "v"})
        elif spec.kind is Kind.GAUGE:
            instrument.set(1.0, {"k": "v"})
    for tally in _instruments.TALLIES.values():
        tally.add((("k", "v"),), 1)
    text = generate_latest(registry).decode()
    for spec in CATALOGUE:
        if spec.kind is Kind.OBSERVABLE_GAUGE and not _instruments._gauge_callbacks.get(spec.name):
            continue  # nothing feeds it in this test
        assert f"# TYPE {prometheus_name(spec)} " in text, spec.name
    provider.shutdown()
    bitnet_obs.unload_model(model="docs")
    _tally.reset_all()


def test_every_instrument_has_description_and_unit() -> None:
    for spec in CATALOGUE:
        assert spec.description.endswith((".", ")")), spec.name
        assert spec.unit, spec.name
        if spec.kind is Kind.HISTOGRAM:
            assert spec.buckets, f"{spec.name} needs advisory buckets fitting its unit"


def _noop_tracer_provider():  # type: ignore[no-untyped-def]
    from opentelemetry.trace import NoOpTracerProvider

    return NoOpTracerProvider()
