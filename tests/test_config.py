"""Every environment variable, its default, and each malformed case (bitnet_obs._config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet_obs import ConfigError
from bitnet_obs._config import Settings, env_names, from_env, with_overrides

FIXTURES = Path(__file__).resolve().parent / "reliability" / "fixtures"


def test_defaults_with_nothing_set() -> None:
    s = from_env({})
    assert s.metrics_exporters == ("prometheus",)
    assert s.traces_exporters == ()
    assert (s.prometheus_host, s.prometheus_port) == ("127.0.0.1", 9464)
    assert s.server_enabled
    assert s.capture_content is False
    assert s.otlp_metrics.protocol == "http/protobuf"
    assert s.otlp_metrics.endpoint == "http://localhost:4318/v1/metrics"
    assert s.otlp_traces.endpoint == "http://localhost:4318/v1/traces"
    assert s.metric_export_interval_ms == 60_000
    assert s.traces_sampler == "parentbased_always_on"
    assert s.sdk_disabled is False


def test_otlp_endpoint_switches_both_signals_to_otlp() -> None:
    s = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert s.metrics_exporters == ("otlp",)
    assert s.traces_exporters == ("otlp",)
    assert not s.server_enabled
    assert s.otlp_metrics.endpoint == "http://collector:4318/v1/metrics"


def test_named_exporters_win_over_endpoint_default() -> None:
    s = from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_METRICS_EXPORTER": "prometheus, console",
            "OTEL_TRACES_EXPORTER": "none",
        }
    )
    assert s.metrics_exporters == ("prometheus", "console")
    assert s.traces_exporters == ()


def test_per_signal_variables_win() -> None:
    s = from_env(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4317",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces:9999/custom/path",
            "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=two%20words",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "m=x",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "500",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "none",
        }
    )
    m, t = s.otlp_metrics, s.otlp_traces
    assert (m.protocol, m.endpoint) == ("grpc", "http://base:4317")
    assert (t.protocol, t.endpoint) == ("http/protobuf", "https://traces:9999/custom/path")
    assert dict(m.headers) == {"m": "x"}
    assert dict(t.headers) == {"a": "1", "b": "two words"}
    assert (m.timeout_s, t.timeout_s) == (2.5, 0.5)
    assert (m.compression, t.compression) == ("none", "gzip")


def test_grpc_default_endpoint() -> None:
    s = from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert s.otlp_metrics.endpoint == "http://localhost:4317"


def test_resource_service_prometheus_interval_sampler_and_bitnet_vars() -> None:
    s = from_env(
        {
            "OTEL_SDK_DISABLED": "true",
            "OTEL_SERVICE_NAME": "svc",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=a%2Cb",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0",
            "OTEL_EXPORTER_PROMETHEUS_PORT": "9000",
            "OTEL_METRIC_EXPORT_INTERVAL": "1500",
            "OTEL_METRIC_EXPORT_TIMEOUT": "700",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "BITNET_OBS_SERVER": "on",
            "BITNET_OBS_CAPTURE_CONTENT": "true",
            "BITNET_OBS_CARDINALITY_LIMIT": "50",
            "BITNET_OBS_QUANT_SAMPLE_RATE": "0.5",
            "BITNET_OBS_QUANT_BUDGET": "0.02",
            "BITNET_OBS_SHUTDOWN_TIMEOUT": "1.5",
        }
    )
    assert s.sdk_disabled and s.service_name == "svc"
    assert dict(s.resource_attributes) == {"deployment.environment": "prod", "team": "a,b"}
    assert (s.prometheus_host, s.prometheus_port) == ("0.0.0.0", 9000)
    assert (s.metric_export_interval_ms, s.metric_export_timeout_ms) == (1500, 700)
    assert (s.traces_sampler, s.traces_sampler_arg) == ("parentbased_traceidratio", 0.25)
    assert s.server == "on" and s.capture_content and s.cardinality_limit == 50
    assert (s.quant_sample_rate, s.quant_budget, s.shutdown_timeout_s) == (0.5, 0.02, 1.5)


def test_blank_values_mean_unset() -> None:
    assert from_env({"OTEL_METRICS_EXPORTER": "  "}) == from_env({})


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("OTEL_SDK_DISABLED", "maybe", "true or false"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue", "key=value"),
        ("OTEL_METRICS_EXPORTER", "otlp,zipkin", "otlp, prometheus, console, none"),
        ("OTEL_METRICS_EXPORTER", "none,otlp", "cannot be combined"),
        ("OTEL_TRACES_EXPORTER", "prometheus", "otlp, console, none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "grpc, http/protobuf"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "udp", "grpc, http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp", "grpc, http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317", "http:// or https:// URL"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "ftp://x", "http:// or https:// URL"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://h:notaport", "valid port"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1", "valid host"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "justtext", "key=value"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "=v", "key=value"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x", "key=value"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten", "milliseconds"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-1", "milliseconds"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0", "milliseconds"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip, none"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "br", "gzip, none"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "lz4", "gzip, none"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "http", "[0, 65535]"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "70000", "[0, 65535]"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "5s", "milliseconds"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "nan", "milliseconds"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "[0, 1]"),
        ("OTEL_TRACES_SAMPLER_ARG", "half", "[0, 1]"),
        ("BITNET_OBS_SERVER", "maybe", "auto, on, off"),
        ("BITNET_OBS_TLS_CERT_FILE", "/nonexistent/cert.pem", "PEM certificate"),
        ("BITNET_OBS_TLS_CERT_FILE", "/dev/null", "regular file"),
        ("BITNET_OBS_TLS_CERT_FILE", str(FIXTURES / "server.crt"), "private key"),
        ("BITNET_OBS_TLS_KEY_FILE", str(FIXTURES / "server.key"), "BITNET_OBS_TLS_CERT_FILE"),
        ("BITNET_OBS_BASIC_AUTH_FILE", "/nonexistent/auth", "user:password"),
        ("BITNET_OBS_BASIC_AUTH_FILE", "/", "regular file"),
        ("BITNET_OBS_BASIC_AUTH_FILE", str(FIXTURES / "README.md"), "user:password"),
        ("BITNET_OBS_CAPTURE_CONTENT", "2", "true or false"),
        ("BITNET_OBS_CARDINALITY_LIMIT", "0", "an integer in [1, 100000]"),
        ("BITNET_OBS_CARDINALITY_LIMIT", "1e3", "an integer in [1, 100000]"),
        ("BITNET_OBS_QUANT_SAMPLE_RATE", "2", "[0, 1]"),
        ("BITNET_OBS_QUANT_BUDGET", "0", "(0, 1]"),
        ("BITNET_OBS_SHUTDOWN_TIMEOUT", "-3", "seconds"),
        ("BITNET_OBS_DEVICE_METRICS", "gpu,tpu", "system, process, gpu"),
        ("BITNET_OBS_DEVICE_METRICS", "none,gpu", "cannot be combined"),
        ("BITNET_OBS_SLA_LATENCY", "2s", "(0, 86400] seconds"),
        ("BITNET_OBS_SLA_LATENCY", "0", "(0, 86400] seconds"),
        ("BITNET_OBS_SLA_TTFT", "-0.5", "(0, 86400] seconds"),
        ("BITNET_OBS_SLA_MIN_TOKENS_PER_SECOND", "fast", "(0, 1_000_000_000] tokens/s"),
        ("BITNET_OBS_SLA_ERROR_RATE", "1%", "[0, 1]"),
        ("BITNET_OBS_SLA_ERROR_RATE", "1.5", "[0, 1]"),
        ("BITNET_OBS_SLA_PERCENTILE", "0", "(0, 100]"),
        ("BITNET_OBS_SLA_PERCENTILE", "p99", "(0, 100]"),
        ("BITNET_OBS_SLA_WINDOW", "0", "an integer in [1, 1_000_000]"),
        ("BITNET_OBS_SLA_WINDOW", "1e3", "an integer in [1, 1_000_000]"),
        ("BITNET_OBS_SLA_WINDOW_SECONDS", "5m", "(0, 604800] seconds"),
    ],
)
def test_malformed_values_name_variable_value_and_accepted(
    name: str, value: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({name: value})
    message = str(info.value)
    assert name in message
    assert repr(value) in message
    assert accepted in message


def test_server_off_with_prometheus_is_an_error() -> None:
    with pytest.raises(ConfigError, match="BITNET_OBS_SERVER"):
        from_env({"BITNET_OBS_SERVER": "off"})
    assert not from_env(
        {"BITNET_OBS_SERVER": "off", "OTEL_METRICS_EXPORTER": "otlp"}
    ).server_enabled


def test_every_documented_variable_is_parsed(tmp_path: Path) -> None:
    """A variable in the table that from_env ignores would be a lie in the docs."""
    auth_file = tmp_path / "auth"
    auth_file.write_text("scraper:s3cret\n")
    sample = {
        "OTEL_SDK_DISABLED": "true",
        "OTEL_SERVICE_NAME": "x",
        "OTEL_RESOURCE_ATTRIBUTES": "k=v",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        "OTEL_METRICS_EXEMPLAR_FILTER": "always_off",
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": (
            "base2_exponential_bucket_histogram"
        ),
        "OTEL_EXPORTER_PROMETHEUS_HOST": "::1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "1",
        "OTEL_METRIC_EXPORT_INTERVAL": "1",
        "OTEL_METRIC_EXPORT_TIMEOUT": "1",
        "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
        "BITNET_OBS_SERVER": "on",
        "BITNET_OBS_CAPTURE_CONTENT": "true",
        "BITNET_OBS_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest/dup",
        "BITNET_OBS_CARDINALITY_LIMIT": "3",
        "BITNET_OBS_QUANT_SAMPLE_RATE": "0.3",
        "BITNET_OBS_QUANT_BUDGET": "0.3",
        "BITNET_OBS_SHUTDOWN_TIMEOUT": "3",
        "BITNET_OBS_DEVICE_METRICS": "gpu",
        "BITNET_OBS_SLA_LATENCY": "2",
        "BITNET_OBS_SLA_TTFT": "0.5",
        "BITNET_OBS_SLA_MIN_TOKENS_PER_SECOND": "20",
        "BITNET_OBS_SLA_ERROR_RATE": "0.01",
        "BITNET_OBS_SLA_PERCENTILE": "99",
        "BITNET_OBS_SLA_WINDOW": "50",
        "BITNET_OBS_SLA_WINDOW_SECONDS": "60",
        "BITNET_OBS_TLS_CERT_FILE": str(FIXTURES / "combined.pem"),
        "BITNET_OBS_TLS_KEY_FILE": str(FIXTURES / "server.key"),
        "BITNET_OBS_BASIC_AUTH": "scraper:s3cret",
        "BITNET_OBS_BASIC_AUTH_FILE": str(auth_file),
        "BITNET_OBS_DEGENERATE_DETECTION": "false",
        "BITNET_OBS_DEGENERATE_REPEAT_RUN": "40",
        "BITNET_OBS_DEGENERATE_CYCLE_SPAN": "70",
        "BITNET_OBS_DEGENERATE_MAX_PERIOD": "6",
        "BITNET_OBS_DEGENERATE_MIN_DISTINCT_FRACTION": "0.1",
        "BITNET_OBS_DEGENERATE_WINDOW": "512",
        "BITNET_OBS_DEGENERATE_MIN_TOKENS": "16",
        "BITNET_OBS_LOGITS_SAMPLE_RATE": "0.5",
    }
    # A variable that only means something next to another one is checked with it.
    companions = {
        "BITNET_OBS_TLS_KEY_FILE": {"BITNET_OBS_TLS_CERT_FILE": str(FIXTURES / "combined.pem")}
    }
    otlp = {
        "PROTOCOL": "grpc",
        "ENDPOINT": "http://h:1",
        "HEADERS": "a=b",
        "TIMEOUT": "1",
        "COMPRESSION": "gzip",
    }
    for suffix, value in otlp.items():
        for signal in ("", "METRICS_", "TRACES_"):
            sample[f"OTEL_EXPORTER_OTLP_{signal}{suffix}"] = value
    assert set(sample) == set(env_names())
    default = from_env({})
    for name, value in sample.items():
        companion = companions.get(name)
        if companion is None:
            assert from_env({name: value}) != default, f"{name} has no effect"
        else:
            assert from_env({**companion, name: value}) != from_env(companion), name


def test_security_settings_from_env_and_overrides(tmp_path: Path) -> None:
    cert, key = str(FIXTURES / "server.crt"), str(FIXTURES / "server.key")
    s = from_env({"BITNET_OBS_TLS_CERT_FILE": cert, "BITNET_OBS_TLS_KEY_FILE": key})
    assert (s.tls_cert_file, s.tls_key_file) == (cert, key)
    auth_file = tmp_path / "auth"
    auth_file.write_text("scraper:pa:ss word\nignored second line\n")
    s = from_env({"BITNET_OBS_BASIC_AUTH_FILE": str(auth_file)})
    assert s.basic_auth == ("scraper", "pa:ss word")
    assert "pa:ss" not in repr(s)
    combined = str(FIXTURES / "combined.pem")
    s = with_overrides(from_env({}), {"basic_auth": ("u", "p"), "tls_cert_file": combined})
    assert s.basic_auth == ("u", "p")
    with pytest.raises(ConfigError, match="tls_key_file"):
        with_overrides(from_env({}), {"tls_key_file": key})
    with pytest.raises(ConfigError, match="basic_auth"):
        with_overrides(from_env({}), {"basic_auth": "u:p"})
    with pytest.raises(ConfigError, match="could not be loaded"):
        from_env(
            {
                "BITNET_OBS_TLS_CERT_FILE": cert,
                "BITNET_OBS_TLS_KEY_FILE": str(FIXTURES / "encrypted.key"),
            }
        )
    with pytest.raises(ConfigError, match="one of the two"):
        from_env({"BITNET_OBS_BASIC_AUTH": "u:p", "BITNET_OBS_BASIC_AUTH_FILE": str(auth_file)})


@pytest.mark.parametrize("secret", ["nocolon-s3cret", ":s3cret", "user:", "us\x00er:s3cret"])
def test_a_malformed_secret_is_never_repeated_in_the_error(tmp_path: Path, secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({"BITNET_OBS_BASIC_AUTH": secret})
    assert "BITNET_OBS_BASIC_AUTH" in str(info.value) and "user:password" in str(info.value)
    assert "s3cret" not in str(info.value)
    auth_file = tmp_path / "auth"
    auth_file.write_text(secret + "\n")
    with pytest.raises(ConfigError) as info:
        from_env({"BITNET_OBS_BASIC_AUTH_FILE": str(auth_file)})
    assert str(auth_file) in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        with_overrides(from_env({}), {"basic_auth": (*secret.split(":", 1), "")[:2]})
    assert "s3cret" not in str(info.value)


def test_overrides_are_validated_like_env() -> None:
    base = from_env({})
    s = with_overrides(base, {"metrics_exporters": "otlp", "prometheus_port": 0})
    assert s.metrics_exporters == ("otlp",) and s.prometheus_port == 0
    assert with_overrides(base, {"metrics_exporters": []}).metrics_exporters == ()
    with pytest.raises(ConfigError, match="unknown configure"):
        with_overrides(base, {"prometheus_prot": 1})
    with pytest.raises(ConfigError, match="prometheus_port"):
        with_overrides(base, {"prometheus_port": "9464"})
    with pytest.raises(ConfigError, match="zipkin"):
        with_overrides(base, {"traces_exporters": ["zipkin"]})
    with pytest.raises(ConfigError, match="quant_budget"):
        with_overrides(base, {"quant_budget": 0.0})


def test_settings_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().prometheus_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BITNET_OBS_SHUTDOWN_TIMEOUT", "inf"),  # shutdown() raised OverflowError
        ("BITNET_OBS_SHUTDOWN_TIMEOUT", "3601"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "inf"),  # exported nothing, silently
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1e15"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "inf"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "1e9"),
        ("BITNET_OBS_SLA_WINDOW", "100000000"),  # took about 1 GB
        ("BITNET_OBS_SLA_LATENCY", "inf"),
        ("BITNET_OBS_SLA_WINDOW_SECONDS", "1e300"),
        ("BITNET_OBS_CARDINALITY_LIMIT", "²"),  # a bare ValueError from int()
        ("BITNET_OBS_CARDINALITY_LIMIT", "1000000"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=b%0D%0AInjected: 1"),  # CR LF in a header
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "bad host!"),
    ],
)
def test_every_number_is_bounded_and_every_value_checked(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({name: value})
    assert name in str(info.value)


def test_keyword_overrides_get_exactly_the_checks_env_values_get() -> None:
    base = from_env({})
    for overrides in (
        {"prometheus_host": ""},  # bound 0.0.0.0 before
        {"shutdown_timeout_s": float("inf")},
        {"sla_window": 100_000_000},
        {"cardinality_limit": True},
        {"otlp_metrics_temporality": "sometimes"},
        {"resource_attributes": {"k": object()}},
    ):
        with pytest.raises(ConfigError, match=next(iter(overrides))):
            with_overrides(base, overrides)


def test_header_names_are_lower_cased_for_grpc() -> None:
    s = from_env({"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,X-Team=a"})
    assert dict(s.otlp_metrics.headers) == {"authorization": "Bearer abc", "x-team": "a"}


def test_every_numeric_setting_states_a_finite_upper_bound_in_the_docs() -> None:
    from bitnet_obs._config import env_rows

    for name, _default, accepted, _doc in env_rows():
        if "number" in accepted or "integer" in accepted:
            assert "]" in accepted and "inf" not in accepted, (name, accepted)
