"""The convention names we emit, checked by machine: each ``gen_ai.*``, ``server.*``, ``error.*``
and ``hw.*`` name is one the pinned ``opentelemetry-semantic-conventions`` ships (not deprecated
for a rename or a removal), or one docs/metrics.md lists as coming from a newer convention; kinds
and units agree with the package, attribute value types with the registries
(``tests/_support/conventions.py``); meters and tracers carry the schema URL we claim; the 0.1 names
come back only with ``BITNET_OBS_SEMCONV_STABILITY_OPT_IN=gen_ai_latest/dup``."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import semconv
from opentelemetry.semconv.schemas import Schemas

from bitnet_obs import ConfigError, current_inference, monitored_inference, testing
from bitnet_obs import _semconv as sc
from bitnet_obs._instruments import (
    CATALOGUE,
    DURATION_BUCKETS,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_TOKEN,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    Kind,
)
from bitnet_obs.testing import TelemetryCapture, capture_telemetry
from tests._support.conventions import VALUE_TYPES, wrong_types

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("gen_ai.", "server.", "error.", "hw.")
PACKAGE = Path(semconv.__file__).parent


def _package_names() -> dict[str, str]:
    """Every name constant of the package with the docstring that follows it (a name that is
    also in a stable module: the stable one's)."""
    names: dict[str, str] = {}
    for path in PACKAGE.rglob("*.py"):
        body = ast.parse(path.read_text()).body
        if not body:
            continue
        for node, after in zip(body, [*body[1:], None], strict=True):
            value = getattr(node, "value", None)
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or not isinstance(
                value, ast.Constant
            ):
                continue
            if not isinstance(value.value, str) or not re.fullmatch(r"[a-z0-9_.]+", value.value):
                continue
            doc = ""
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                doc = str(after.value.value)
            # incubating copies of stable names say "deprecated in favor of stable": the
            # stable module's word counts
            if value.value not in names or not doc.strip().startswith("Deprecated"):
                names[value.value] = doc
    return names


PACKAGE_NAMES = _package_names()


def _docs_table() -> dict[str, list[str]]:
    """docs/metrics.md's convention table: our name -> its cells."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    block = re.search(r"<!-- semconv-table:start -->\n(.*?)<!-- semconv-table:end -->", text, re.S)
    assert block, "docs/metrics.md has no convention table"
    rows: dict[str, list[str]] = {}
    for line in block.group(1).splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def _emitted() -> Iterator[str]:
    """Every name bitnet-obs emits by default: instruments, their attributes, span attributes."""
    for inst in CATALOGUE:
        if inst.until:  # a 0.1 name kept for gen_ai_latest/dup only
            continue
        yield inst.name
        yield from inst.attributes
    yield from (row.ours for row in sc.TABLE if row.what == "span attribute")


def test_every_checked_name_is_in_the_package_or_from_a_newer_convention() -> None:
    table = _docs_table()
    for name in sorted(set(_emitted())):
        if not name.startswith(CHECKED):
            continue
        doc = PACKAGE_NAMES.get(name)
        if doc is None:
            assert name in sc.NEWER, f"{name} is in no convention the package knows"
            assert name in table, f"{name} is not in docs/metrics.md's table"
            assert sc.GENAI[:40] in table[name][4], f"{name}: the table names no newer source"
            continue
        deprecated = doc.strip().startswith("Deprecated")
        if name.startswith("gen_ai."):
            # the GenAI names moved to their own repository; a rename or removal is not a move
            assert not deprecated or "Moved to the" in doc, f"{name}: {doc.strip()}"
        else:
            assert not deprecated, f"{name}: {doc.strip()}"


def test_every_convention_name_we_emit_is_in_the_table() -> None:
    table = _docs_table()
    for name in sorted(set(_emitted())):
        if not name.startswith("bitnet."):
            assert name in table, f"{name} is emitted but missing from docs/metrics.md's table"
            status = table[name][3]
            assert status not in ("removed", "not defined"), f"{name} is {status}"


def test_legacy_names_are_listed_with_the_release_that_drops_them() -> None:
    table = _docs_table()
    for old in (sc.LEGACY_CLIENT_TOKEN_USAGE, sc.LEGACY_TOKEN_TYPE, sc.LEGACY_FINISH_REASON):
        assert "until 0.3" in table[old][5], old
    assert {i.name for i in CATALOGUE if i.until} == {sc.LEGACY_CLIENT_TOKEN_USAGE}


_KINDS = {
    Kind.HISTOGRAM: "histogram",
    Kind.COUNTER: "counter",
    Kind.OBSERVABLE_COUNTER: "counter",
    Kind.UPDOWNCOUNTER: "updowncounter",
    Kind.OBSERVABLE_UPDOWNCOUNTER: "updowncounter",
    Kind.GAUGE: "gauge",
    Kind.OBSERVABLE_GAUGE: "gauge",
}
# What semantic-conventions-genai main (sc.GENAI_COMMIT) says of the names the package lacks.
_NEWER = {
    sc.CLIENT_OPERATION_INPUT_TOKENS: ("histogram", "{token}"),
    sc.CLIENT_OPERATION_OUTPUT_TOKENS: ("histogram", "{token}"),
}


def _package_metric(name: str) -> tuple[str, str]:
    """(instrument, unit) of a metric of the package, from its ``create_*`` function."""
    for path in (PACKAGE / "_incubating" / "metrics").glob("*.py"):
        text = path.read_text()
        func = re.search(
            rf"def create_{name.replace('.', '_')}\(.*?meter\.create_(\w+)\(.*?unit=\"([^\"]*)\"",
            text,
            re.S,
        )
        if func:
            kind = {"up_down_counter": "updowncounter", "observable_gauge": "gauge"}.get(
                func.group(1), func.group(1)
            )
            return kind.replace("observable_", ""), func.group(2)
    raise AssertionError(f"{name}: no create_ function in the package")


def test_convention_metrics_have_the_conventions_kind_and_unit() -> None:
    for inst in CATALOGUE:
        if inst.name.startswith("bitnet.") or inst.until:
            continue
        expected = _NEWER.get(inst.name) or _package_metric(inst.name)
        assert (_KINDS[inst.kind], inst.unit) == expected, inst.name


def test_server_buckets_follow_the_advice_and_tpot_documents_its_extra_ones() -> None:
    advised_tpot = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
    assert TIME_TO_FIRST_TOKEN.buckets == TTFT_BUCKETS
    assert TTFT_BUCKETS[0] == 0.001 and TTFT_BUCKETS[-1] == 10.0 and len(TTFT_BUCKETS) == 16
    advised_duration = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24]
    assert list(DURATION_BUCKETS) == [*advised_duration, 20.48, 40.96, 81.92]
    assert TIME_PER_OUTPUT_TOKEN.buckets == TPOT_BUCKETS
    assert set(advised_tpot) <= set(TPOT_BUCKETS), "every advised boundary is kept"
    extra = sorted(set(TPOT_BUCKETS) - set(advised_tpot))
    assert extra == [0.001, 0.0025, 0.005]
    docs = (ROOT / "docs" / "metrics.md").read_text()
    assert "0.001, 0.0025 and 0.005" in docs


def test_the_schema_url_is_the_claimed_release_and_on_meter_and_tracer(
    cap: TelemetryCapture,
) -> None:
    assert sc.SCHEMA_URL == Schemas.V1_44_0.value == "https://opentelemetry.io/schemas/1.44.0"
    for doc in ("docs/metrics.md", "README.md"):
        text = (ROOT / doc).read_text()
        assert sc.SCHEMA_URL in text and sc.GENAI_COMMIT[:10] in text, doc
        assert "v0.1.0" not in text, f"{doc} claims a release that does not exist"

    @monitored_inference(model="m")
    def f() -> list[int]:
        return [1, 2]

    f()
    (span,) = cap.spans()
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.schema_url == sc.SCHEMA_URL
    data = cap.reader.get_metrics_data()
    assert data is not None
    scopes = [s for rm in data.resource_metrics for s in rm.scope_metrics]
    assert scopes and all(s.schema_url == sc.SCHEMA_URL for s in scopes)
    assert all(s.scope.schema_url == sc.SCHEMA_URL for s in scopes)


def _finish(reason: str = "stop") -> Any:
    @monitored_inference(model="m", client_token_usage=True)
    def f() -> dict[str, Any]:
        current_inference().set_finish_reason(reason)
        return {"usage": {"prompt_tokens": 5, "completion_tokens": 8}}

    return f


def test_current_names_only_by_default(cap: TelemetryCapture) -> None:
    _finish()()
    assert cap.value("bitnet.inference.requests", **{sc.FINISH_REASON: "stop"}) == 1
    assert cap.value("bitnet.inference.tokens", **{sc.TOKEN_TYPE: "output"}) == 8
    assert cap.points(sc.CLIENT_OPERATION_INPUT_TOKENS)[0].sum == 5
    assert cap.points(sc.CLIENT_OPERATION_OUTPUT_TOKENS)[0].sum == 8
    assert not cap.points(sc.LEGACY_CLIENT_TOKEN_USAGE)
    for name in ("bitnet.inference.requests", "bitnet.inference.tokens"):
        for point in cap.points(name):
            assert not set(point.attributes) & {sc.LEGACY_FINISH_REASON, sc.LEGACY_TOKEN_TYPE}


def test_dup_emits_the_0_1_names_beside_the_current_ones(cap: TelemetryCapture) -> None:
    with testing.override_settings(semconv_stability_opt_in="gen_ai_latest/dup"):
        _finish("length")()
        both = {sc.FINISH_REASON: "length", sc.LEGACY_FINISH_REASON: "length"}
        assert cap.value("bitnet.inference.requests", **both) == 1
        out = {sc.TOKEN_TYPE: "output", sc.LEGACY_TOKEN_TYPE: "output"}
        assert cap.value("bitnet.inference.tokens", **out) == 8
        legacy = {sc.LEGACY_TOKEN_TYPE: "input"}
        assert cap.points(sc.LEGACY_CLIENT_TOKEN_USAGE, **legacy)[0].sum == 5
        assert cap.points(sc.CLIENT_OPERATION_INPUT_TOKENS)[0].sum == 5
    # one series each: the old label rides on the new series, it does not double the counts
    assert cap.value("bitnet.inference.tokens", **{sc.TOKEN_TYPE: "output"}) == 8


def test_failed_requests_record_their_token_usage_with_error_type(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m", client_token_usage=True)
    def f() -> None:
        current_inference().add_input_tokens(3)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        f()
    (point,) = cap.points(sc.CLIENT_OPERATION_OUTPUT_TOKENS, **{sc.ERROR_TYPE: "KeyError"})
    assert (point.count, point.sum) == (1, 0)
    assert cap.points(sc.CLIENT_OPERATION_INPUT_TOKENS)[0].sum == 3


def test_the_opt_in_setting_is_bounded() -> None:
    with (
        pytest.raises(ConfigError, match="BITNET_OBS_SEMCONV_STABILITY_OPT_IN"),
        testing.override_settings({"BITNET_OBS_SEMCONV_STABILITY_OPT_IN": "http/dup"}),
    ):
        pass


def test_response_model_and_server_endpoint_where_known(cap: TelemetryCapture) -> None:
    @monitored_inference(
        model="bitnet-b1.58-2B-4T",
        response_model="bitnet-b1.58-2B-4T-i2_s",
        server_address="inference.local",
        server_port=8080,
    )
    def f() -> list[int]:
        return [1, 2, 3]

    f()
    (point,) = cap.points(sc.SERVER_REQUEST_DURATION)
    assert point.attributes[sc.RESPONSE_MODEL] == "bitnet-b1.58-2B-4T-i2_s"
    assert point.attributes[sc.SERVER_ADDRESS] == "inference.local"
    assert point.attributes[sc.SERVER_PORT] == 8080


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"server_port": 8080}, "without server_address"),
        ({"server_address": "h", "server_port": 70000}, "server_port=70000"),
        ({"server_address": "h", "server_port": True}, "server_port=True"),
        ({"server_address": "a b"}, "server_address='a b'"),
        ({"response_model": ""}, "response_model=''"),
    ],
)
def test_endpoint_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        monitored_inference(model="m", **options)


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def test_user_attributes_cannot_take_the_0_1_names() -> None:
    for key in (sc.LEGACY_TOKEN_TYPE, sc.LEGACY_FINISH_REASON, sc.SERVER_PORT):
        with pytest.raises(ConfigError, match="collides"):
            monitored_inference(model="m", attributes={key: "x"})


def test_every_convention_attribute_in_the_table_has_its_value_type() -> None:
    attributes = {row.convention for row in sc.TABLE if row.convention and row.what != "metric"}
    assert sorted(attributes - set(VALUE_TYPES)) == []


def test_the_request_paths_attributes_have_the_conventions_value_types(
    cap: TelemetryCapture,
) -> None:
    options: dict[str, Any] = {
        "model": "m",
        "response_model": "m-i2_s",
        "server_address": "inference.local",
        "server_port": 8080,
        "capture_content": True,
        "client_token_usage": True,
    }

    @monitored_inference(**options)
    def call(prompt: str) -> list[int]:
        current_inference().add_input_tokens(3)
        current_inference().set_finish_reason("stop")
        return list(range(40))

    @monitored_inference(**options)
    def stream(prompt: str) -> Iterator[str]:
        yield from ("a", "b")

    @monitored_inference(**options)
    def failing(prompt: str) -> None:
        raise TimeoutError

    call("hi")
    list(stream("hi"))
    with pytest.raises(TimeoutError):
        failing("hi")
    spans = cap.spans()
    assert len(spans) == 3
    emitted = set()
    for span in spans:
        assert wrong_types(span.attributes) == {}, span.name
        emitted |= set(span.attributes or {})
    data = cap.reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    assert wrong_types(point.attributes) == {}, metric.name
    # what the decorator sets itself (the instrumentors' parameters: their own tests)
    assert {
        sc.USAGE_INPUT_TOKENS, sc.USAGE_OUTPUT_TOKENS, sc.RESPONSE_FINISH_REASONS,
        sc.REQUEST_STREAM, sc.RESPONSE_TIME_TO_FIRST_CHUNK, sc.INPUT_MESSAGES,
        sc.OUTPUT_MESSAGES, sc.ERROR_TYPE, sc.SERVER_PORT, sc.RESPONSE_MODEL,
    } <= emitted  # fmt: skip
