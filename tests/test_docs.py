"""The generated docs match the code, and the catalogue's Prometheus names match the exporter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry, generate_latest

from bitnet_obs import _instruments
from bitnet_obs._instruments import CATALOGUE, Kind, prometheus_name
from bitnet_obs.testing import reset

ROOT = Path(__file__).resolve().parent.parent


def test_generated_docs_are_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, "tools/gen_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"run `nox -s docs`: {proc.stdout}{proc.stderr}"


def test_catalogue_prometheus_names_match_the_real_exporter() -> None:
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    previous = _instruments.binding()
    _instruments.bind(provider, NoOpTracerProvider())

    def one(_options: CallbackOptions) -> list[Observation]:
        return [Observation(1.0, {"k": "v"})]

    try:
        for inst in CATALOGUE:
            if isinstance(inst, _instruments.Histogram):
                inst.record(1.0, {"k": "v"})
            elif isinstance(inst, _instruments.Gauge):
                inst.set(1.0, {"k": "v"})
            elif isinstance(inst, _instruments.ObservedCounter):
                inst.add((("k", "v"),), 1)
            elif isinstance(inst, _instruments.ObservedGauge):
                inst.register(one)
        text = generate_latest(registry).decode()
    finally:
        for inst in CATALOGUE:
            if isinstance(inst, _instruments.ObservedGauge):
                inst.unregister(one)
        _instruments.restore(previous)
        provider.shutdown()
        reset()
    for inst in CATALOGUE:
        assert f"# TYPE {prometheus_name(inst)} " in text, inst.name


def test_every_instrument_has_description_and_unit() -> None:
    for spec in CATALOGUE:
        assert spec.description.endswith((".", ")")), spec.name
        assert spec.unit, spec.name
        if spec.kind is Kind.HISTOGRAM:
            assert spec.buckets, f"{spec.name} needs advisory buckets fitting its unit"


@pytest.mark.slow  # a whole Sphinx build: the full suite runs it, not the fast lane
def test_the_api_reference_builds_without_a_warning(tmp_path: Path) -> None:
    """What ``nox -s docs`` builds; docutils warnings (a broken literal block, an undefined
    substitution) fail it."""
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "docs/api", str(tmp_path / "api")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
