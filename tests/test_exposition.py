"""Our /metrics renderer writes what the OTel Prometheus exporter writes for the same
collection, in both formats, only faster (bitnet_obs._exposition)."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from bitnet_obs._exposition import OPENMETRICS, TEXT, PullReader, go_float
from tests._support.prometheus import promtool_check_metrics

ACCEPT = {TEXT: "text/plain", OPENMETRICS: "application/openmetrics-text; version=1.0.0"}


def _families(text: str, openmetrics: bool) -> dict[str, Any]:
    parse = parse_openmetrics if openmetrics else parse_text
    return {
        f.name: (
            f.type,
            f.unit if openmetrics else "",
            f.documentation,
            sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples),
        )
        for f in parse(text)
    }


@pytest.fixture
def provider() -> Any:
    ours = PullReader()
    registry = CollectorRegistry()
    theirs = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    resource = Resource({"service.name": 'svc "a" \\ b', "n": 3, "flag": True})
    mp = MeterProvider(metric_readers=[ours, theirs], resource=resource, shutdown_on_exit=False)
    meter = mp.get_meter("t")
    bounds = [0.1, 1.0, 1234567.0]
    h = meter.create_histogram(
        "req.duration", unit="s", description="A \\ help\nline",
        explicit_bucket_boundaries_advisory=bounds,
    )  # fmt: skip
    for v in (0.05, 0.5, 5.0, 2e6):
        h.record(v, {"model": 'm"x\\y\nz', "n": 1})
    h.record(0.2, {"other.key": "only here"})
    meter.create_counter("tokens", unit="{token}", description="t").add(
        7, {"a.b": "c", "flag": False, "f": 0.5}
    )
    meter.create_up_down_counter("active", unit="{request}", description="a").add(-2, {"a": "b"})
    meter.create_gauge("temp", unit="Cel", description="c").set(21.5)
    meter.create_counter("bytes", unit="By", description="b").add(10**7)

    def observe(_: CallbackOptions) -> list[Observation]:
        return [Observation(1.0, {"1bad-key": "v"}), Observation(float("inf"), {"x": "y"})]

    meter.create_observable_gauge("ratio", [observe], unit="1", description="r")
    meter.create_counter("tput", unit="{token}/s", description="p").add(3)
    yield ours, registry
    mp.shutdown()


@pytest.mark.parametrize("content_type", [TEXT, OPENMETRICS])
def test_the_same_exposition_as_the_otel_exporter(provider: Any, content_type: str) -> None:
    ours, registry = provider
    openmetrics = content_type == OPENMETRICS
    got_type, body = ours.render(ACCEPT[content_type])
    assert got_type == content_type
    encoder, _ = choose_encoder(ACCEPT[content_type])
    expected = encoder(registry).decode()
    assert _families(body.decode(), openmetrics) == _families(expected, openmetrics)
    if not openmetrics:
        assert promtool_check_metrics(body.decode()) == (0, "")


def test_concurrent_scrapes_share_one_render(provider: Any) -> None:
    ours, _ = provider
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(ours.render("text/plain")[1]))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 8


@pytest.mark.parametrize(
    ("value", "text"),
    [(1, "1.0"), (0.5, "0.5"), (1234567.0, "1.234567e+06"), (float("inf"), "+Inf"),
     (float("-inf"), "-Inf"), (float("nan"), "NaN"), (10**7, "1e+07"), (-3, "-3.0")],
)  # fmt: skip
def test_numbers_as_go_writes_them(value: float, text: str) -> None:
    assert go_float(value) == text


@pytest.mark.parametrize("collecting", [True, False])
def test_no_garbage_collector_pass_during_a_render_and_the_state_restored(
    collecting: bool,
) -> None:
    """A full collection pass holds the GIL for the whole heap: none starts while the page is
    collected and rendered; the application's own choice (on or off) is kept."""
    seen: list[bool] = []

    def observe(_: CallbackOptions) -> list[Observation]:
        seen.append(gc.isenabled())  # runs inside the collection
        return [Observation(1.0, {"k": "v"})]

    reader = PullReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    mp.get_meter("t").create_observable_gauge("g", [observe])
    (gc.enable if collecting else gc.disable)()
    try:
        threads = [threading.Thread(target=reader.render, args=(a,)) for a in ACCEPT.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen and not any(seen)
        assert gc.isenabled() is collecting
    finally:
        gc.enable()
        mp.shutdown()
