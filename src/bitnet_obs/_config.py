"""Settings from the environment plus ``configure()`` overrides, validated once.

A malformed value raises :class:`ConfigError` at ``configure()`` time, naming the variable,
the value it got and what is accepted. Nothing downstream re-reads or re-validates.
"""

from __future__ import annotations

import dataclasses
import math
import os
import ssl
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bitnet_obs import _env

METRIC_EXPORTERS = ("otlp", "prometheus", "console", "none")
TRACE_EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
COMPRESSIONS = ("gzip", "none")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
SERVER_MODES = ("auto", "on", "off")
DEVICE_GROUPS = ("system", "process", "gpu")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A configuration value is malformed; the message says which, what it was, what works."""


@dataclass(frozen=True)
class OTLPSettings:
    """The OTLP exporter settings of one signal, after per-signal variables were applied."""

    protocol: str = "http/protobuf"
    endpoint: str = "http://localhost:4318"
    endpoint_is_signal_specific: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    compression: str = "none"


@dataclass(frozen=True)
class Settings:
    """Everything ``configure()`` decided. Field names are the ``configure()`` keywords."""

    sdk_disabled: bool = False
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    metrics_exporters: tuple[str, ...] = ("prometheus",)
    traces_exporters: tuple[str, ...] = ()
    otlp_metrics: OTLPSettings = field(default_factory=OTLPSettings)
    otlp_traces: OTLPSettings = field(default_factory=OTLPSettings)
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 9464
    metric_export_interval_ms: float = 60_000.0
    metric_export_timeout_ms: float = 30_000.0
    traces_sampler: str = "parentbased_always_on"
    traces_sampler_arg: float = 1.0
    server: str = "auto"
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)  # (user, password)
    capture_content: bool = False
    cardinality_limit: int = 2000
    quant_sample_rate: float = 0.01
    quant_budget: float = 0.01
    shutdown_timeout_s: float = 5.0
    device_metrics: tuple[str, ...] = DEVICE_GROUPS
    sla_latency_s: float | None = None
    sla_ttft_s: float | None = None
    sla_min_tokens_per_s: float | None = None
    sla_max_error_rate: float | None = None
    sla_percentile: float = 95.0
    sla_window: int = 1000
    sla_window_s: float = 300.0

    @property
    def server_enabled(self) -> bool:
        if self.server == "auto":
            return "prometheus" in self.metrics_exporters
        return self.server == "on"


def _bad(name: str, value: object, accepted: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is not valid; accepted: {accepted}")


def _bool(name: str, raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _bad(name, raw, "true or false")


def _number(name: str, raw: str, accepted: str, lo: float, hi: float, lo_open: bool) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _bad(name, raw, accepted) from None
    if math.isnan(value) or value > hi or value < lo or (lo_open and value == lo):
        raise _bad(name, raw, accepted)
    return value


def _positive_ms(name: str, raw: str) -> float:
    return _number(name, raw, "a positive number of milliseconds", 0.0, math.inf, True)


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    low = raw.strip().lower()
    if low not in choices:
        raise _bad(name, raw, ", ".join(choices))
    return low


def _exporter_list(name: str, raw: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    items = [item.strip().lower() for item in raw.split(",") if item.strip()]
    if not items:
        raise _bad(name, raw, "a comma list of " + ", ".join(choices))
    for item in items:
        if item not in choices:
            raise ConfigError(
                f"{name}={raw!r}: unknown exporter {item!r}; accepted: comma list of "
                + ", ".join(choices)
            )
    if "none" in items:
        if len(items) > 1:
            raise ConfigError(f"{name}={raw!r}: 'none' cannot be combined with other exporters")
        return ()
    return tuple(dict.fromkeys(items))


def _key_values(name: str, raw: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _bad(name, raw, "key=value pairs separated by ','")
        result[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return result


def _url(name: str, raw: str) -> str:
    try:
        parsed = urllib.parse.urlparse(raw)
        hostname = parsed.hostname
    except ValueError:  # e.g. "http://[::1": an unclosed IPv6 literal
        raise _bad(name, raw, "an http:// or https:// URL with a valid host") from None
    if parsed.scheme not in ("http", "https") or not hostname:
        raise _bad(name, raw, "an http:// or https:// URL with a host, e.g. http://localhost:4318")
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise _bad(name, raw, "an http:// or https:// URL with a valid port") from None
    return raw


def _port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise _bad(name, raw, "an integer 0-65535") from None
    if not 0 <= port <= 65535:
        raise _bad(name, raw, "an integer 0-65535")
    return port


_MAX_SECRET_FILE = 64 * 1024
_CREDENTIALS = "user:password, user without ':', both non-empty"
_TLS_ACCEPTED = "a PEM certificate (chain) and its unencrypted PEM private key, both readable files"


def _read_regular_file(name: str, path: str, accepted: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file; never blocks on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        raise _bad(name, path, accepted) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _bad(name, path, accepted + " (a regular file)")
        data = os.read(fd, limit + 1)
    except OSError:
        raise _bad(name, path, accepted) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _bad(name, path, f"{accepted} (at most {limit} bytes)")
    return data


def _credentials(name: str, raw: str, shown: str | None = None) -> tuple[str, str]:
    """``user:password``; the message never repeats a secret (``shown`` replaces it)."""
    user, sep, password = raw.partition(":")
    if not sep or not user or not password or any(c in raw for c in "\r\n\x00"):
        what = shown if shown is not None else f"<{len(raw)} characters, not shown>"
        raise ConfigError(f"{name}={what} is not valid; accepted: {_CREDENTIALS}")
    return user, password


def _credentials_file(name: str, path: str) -> tuple[str, str]:
    accepted = "a readable file whose first line is " + _CREDENTIALS
    data = _read_regular_file(name, path, accepted, _MAX_SECRET_FILE)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise _bad(name, path, accepted + " (UTF-8)") from None
    first = lines[0].strip() if lines else ""
    return _credentials(name, first, shown=f"{path!r} (content not shown)")


def _no_password() -> bytes:
    return b""  # an encrypted key then fails to load instead of prompting on a terminal


def check_tls_files(cert: str, key: str | None, cert_name: str, key_name: str) -> None:
    """Load the pair once, so a wrong path or key fails at ``configure()``, not at a scrape."""
    for name, path in ((cert_name, cert), (key_name, key)):
        if path is not None:
            _read_regular_file(name, path, _TLS_ACCEPTED, 16 * 1024 * 1024)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise ConfigError(
            f"{cert_name}={cert!r} with {key_name}={key!r} could not be loaded ({reason}); "
            f"accepted: {_TLS_ACCEPTED}"
        ) from None


def _security(env: Mapping[str, str]) -> dict[str, Any]:
    """TLS files and basic-auth credentials of the HTTP server."""
    values: dict[str, Any] = {}
    cert, key = env.get("BITNET_OBS_TLS_CERT_FILE"), env.get("BITNET_OBS_TLS_KEY_FILE")
    if key is not None and cert is None:
        raise ConfigError(
            f"BITNET_OBS_TLS_KEY_FILE={key!r} is set without BITNET_OBS_TLS_CERT_FILE; "
            "accepted: both, or the certificate file alone when it also holds the key"
        )
    if cert is not None:
        check_tls_files(cert, key, "BITNET_OBS_TLS_CERT_FILE", "BITNET_OBS_TLS_KEY_FILE")
        values["tls_cert_file"], values["tls_key_file"] = cert, key
    inline, path = env.get("BITNET_OBS_BASIC_AUTH"), env.get("BITNET_OBS_BASIC_AUTH_FILE")
    if inline is not None and path is not None:
        raise ConfigError(
            f"BITNET_OBS_BASIC_AUTH and BITNET_OBS_BASIC_AUTH_FILE={path!r} are both set; "
            "accepted: one of the two"
        )
    if inline is not None:
        values["basic_auth"] = _credentials("BITNET_OBS_BASIC_AUTH", inline)
    elif path is not None:
        values["basic_auth"] = _credentials_file("BITNET_OBS_BASIC_AUTH_FILE", path)
    return values


def _otlp(env: Mapping[str, str], signal: str) -> OTLPSettings:
    def pick(suffix: str) -> tuple[str, str] | None:
        for key in (f"OTEL_EXPORTER_OTLP_{signal}_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"):
            if key in env:
                return key, env[key]
        return None

    protocol = "http/protobuf"
    if (found := pick("PROTOCOL")) is not None:
        protocol = _choice(found[0], found[1], PROTOCOLS)
    specific = f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
    path = "/v1/" + signal.lower()
    if specific in env:
        endpoint, is_specific = _url(specific, env[specific]), True
    elif "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        endpoint = _url("OTEL_EXPORTER_OTLP_ENDPOINT", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        is_specific = False
    else:
        port = 4317 if protocol == "grpc" else 4318
        endpoint, is_specific = f"http://localhost:{port}", False
    if protocol == "http/protobuf" and not is_specific:
        endpoint = endpoint.rstrip("/") + path
    headers: dict[str, str] = {}
    if (found := pick("HEADERS")) is not None:
        headers = _key_values(*found)
    timeout_s = 10.0
    if (found := pick("TIMEOUT")) is not None:
        timeout_s = _positive_ms(*found) / 1000.0
    compression = "none"
    if (found := pick("COMPRESSION")) is not None:
        compression = _choice(found[0], found[1], COMPRESSIONS)
    return OTLPSettings(protocol, endpoint, is_specific, headers, timeout_s, compression)


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every known variable; raise ConfigError on the first bad one."""
    env = _env.read(environ)
    endpoint_set = any(
        key in env
        for key in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        )
    )
    values: dict[str, Any] = {}
    if "OTEL_SDK_DISABLED" in env:
        values["sdk_disabled"] = _bool("OTEL_SDK_DISABLED", env["OTEL_SDK_DISABLED"])
    if "OTEL_SERVICE_NAME" in env:
        values["service_name"] = env["OTEL_SERVICE_NAME"]
    if "OTEL_RESOURCE_ATTRIBUTES" in env:
        values["resource_attributes"] = _key_values(
            "OTEL_RESOURCE_ATTRIBUTES", env["OTEL_RESOURCE_ATTRIBUTES"]
        )
    if "OTEL_METRICS_EXPORTER" in env:
        values["metrics_exporters"] = _exporter_list(
            "OTEL_METRICS_EXPORTER", env["OTEL_METRICS_EXPORTER"], METRIC_EXPORTERS
        )
    elif endpoint_set:
        values["metrics_exporters"] = ("otlp",)
    if "OTEL_TRACES_EXPORTER" in env:
        values["traces_exporters"] = _exporter_list(
            "OTEL_TRACES_EXPORTER", env["OTEL_TRACES_EXPORTER"], TRACE_EXPORTERS
        )
    elif endpoint_set:
        values["traces_exporters"] = ("otlp",)
    values["otlp_metrics"] = _otlp(env, "METRICS")
    values["otlp_traces"] = _otlp(env, "TRACES")
    if "OTEL_EXPORTER_PROMETHEUS_HOST" in env:
        values["prometheus_host"] = env["OTEL_EXPORTER_PROMETHEUS_HOST"]
    if "OTEL_EXPORTER_PROMETHEUS_PORT" in env:
        values["prometheus_port"] = _port(
            "OTEL_EXPORTER_PROMETHEUS_PORT", env["OTEL_EXPORTER_PROMETHEUS_PORT"]
        )
    for var, key in (
        ("OTEL_METRIC_EXPORT_INTERVAL", "metric_export_interval_ms"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "metric_export_timeout_ms"),
    ):
        if var in env:
            values[key] = _positive_ms(var, env[var])
    if "OTEL_TRACES_SAMPLER" in env:
        values["traces_sampler"] = _choice(
            "OTEL_TRACES_SAMPLER", env["OTEL_TRACES_SAMPLER"], SAMPLERS
        )
    if "OTEL_TRACES_SAMPLER_ARG" in env:
        values["traces_sampler_arg"] = _number(
            "OTEL_TRACES_SAMPLER_ARG",
            env["OTEL_TRACES_SAMPLER_ARG"],
            "a number in [0, 1]",
            0.0,
            1.0,
            False,
        )
    if "BITNET_OBS_SERVER" in env:
        values["server"] = _choice("BITNET_OBS_SERVER", env["BITNET_OBS_SERVER"], SERVER_MODES)
    if "BITNET_OBS_CAPTURE_CONTENT" in env:
        values["capture_content"] = _bool(
            "BITNET_OBS_CAPTURE_CONTENT", env["BITNET_OBS_CAPTURE_CONTENT"]
        )
    if "BITNET_OBS_CARDINALITY_LIMIT" in env:
        raw = env["BITNET_OBS_CARDINALITY_LIMIT"]
        if not raw.isdigit() or int(raw) < 1:
            raise _bad("BITNET_OBS_CARDINALITY_LIMIT", raw, "an integer >= 1")
        values["cardinality_limit"] = int(raw)
    if "BITNET_OBS_QUANT_SAMPLE_RATE" in env:
        values["quant_sample_rate"] = _number(
            "BITNET_OBS_QUANT_SAMPLE_RATE",
            env["BITNET_OBS_QUANT_SAMPLE_RATE"],
            "a number in [0, 1]",
            0.0,
            1.0,
            False,
        )
    if "BITNET_OBS_QUANT_BUDGET" in env:
        values["quant_budget"] = _number(
            "BITNET_OBS_QUANT_BUDGET",
            env["BITNET_OBS_QUANT_BUDGET"],
            "a number in (0, 1]",
            0.0,
            1.0,
            True,
        )
    if "BITNET_OBS_SHUTDOWN_TIMEOUT" in env:
        values["shutdown_timeout_s"] = _number(
            "BITNET_OBS_SHUTDOWN_TIMEOUT",
            env["BITNET_OBS_SHUTDOWN_TIMEOUT"],
            "a positive number of seconds",
            0.0,
            math.inf,
            True,
        )
    values.update(_security(env))
    values.update(_devices_and_sla(env))
    return _checked(Settings(**values))


def _devices_and_sla(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "BITNET_OBS_DEVICE_METRICS" in env:
        raw = env["BITNET_OBS_DEVICE_METRICS"]
        accepted = "a comma list of " + ", ".join(DEVICE_GROUPS) + ", or none"
        items = [item.strip().lower() for item in raw.split(",") if item.strip()]
        if not items or any(i not in (*DEVICE_GROUPS, "none") for i in items):
            raise _bad("BITNET_OBS_DEVICE_METRICS", raw, accepted)
        if "none" in items and len(items) > 1:
            raise _bad("BITNET_OBS_DEVICE_METRICS", raw, accepted + " (alone)")
        values["device_metrics"] = tuple(g for g in DEVICE_GROUPS if g in items)
    seconds = "a positive number of seconds"
    for var, key, accepted, lo, hi, lo_open in (
        ("BITNET_OBS_SLA_LATENCY", "sla_latency_s", seconds, 0.0, math.inf, True),
        ("BITNET_OBS_SLA_TTFT", "sla_ttft_s", seconds, 0.0, math.inf, True),
        ("BITNET_OBS_SLA_MIN_TOKENS_PER_SECOND", "sla_min_tokens_per_s", "a positive number",
         0.0, math.inf, True),
        ("BITNET_OBS_SLA_ERROR_RATE", "sla_max_error_rate", "a number in [0, 1]", 0.0, 1.0, False),
        ("BITNET_OBS_SLA_PERCENTILE", "sla_percentile", "a number in (0, 100]", 0.0, 100.0, True),
        ("BITNET_OBS_SLA_WINDOW_SECONDS", "sla_window_s", seconds, 0.0, math.inf, True),
    ):  # fmt: skip
        if var in env:
            values[key] = _number(var, env[var], accepted, lo, hi, lo_open)
    if "BITNET_OBS_SLA_WINDOW" in env:
        raw = env["BITNET_OBS_SLA_WINDOW"]
        if not raw.isdigit() or int(raw) < 1:
            raise _bad("BITNET_OBS_SLA_WINDOW", raw, "an integer >= 1")
        values["sla_window"] = int(raw)
    return values


def with_overrides(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    """Apply ``configure(**overrides)``; unknown keywords and wrong values raise ConfigError."""
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown configure() keyword(s) {', '.join(unknown)}; accepted: "
            + ", ".join(sorted(known))
        )
    values = dict(overrides)
    for key in ("metrics_exporters", "traces_exporters"):
        if key in values:
            items = _str_items(key, values[key], "a name or a list of names")
            choices = METRIC_EXPORTERS if key == "metrics_exporters" else TRACE_EXPORTERS
            values[key] = _exporter_list(key, ",".join(items) or "none", choices)
    if "device_metrics" in values and not isinstance(values["device_metrics"], tuple):
        raw = values["device_metrics"]
        accepted = "a comma list or a list of " + ", ".join(DEVICE_GROUPS)
        groups = (
            raw.split(",") if isinstance(raw, str) else _str_items("device_metrics", raw, accepted)
        )
        values["device_metrics"] = tuple(g.strip() for g in groups if g.strip() not in ("", "none"))
    return _checked(dataclasses.replace(base, **values))


def _str_items(name: str, raw: object, accepted: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, (list, tuple, set, frozenset)) and all(isinstance(x, str) for x in raw):
        return tuple(raw)
    raise _bad(name, raw, accepted)


def _checked(settings: Settings) -> Settings:
    """Cross-field and type checks shared by env and overrides."""
    checks: list[tuple[str, bool, str]] = [
        (
            "service_name",
            settings.service_name is None or isinstance(settings.service_name, str),
            "a str or None",
        ),
        (
            "resource_attributes",
            _attribute_map(settings.resource_attributes),
            "a mapping of str to str, bool, int or float",
        ),
        ("otlp_metrics", isinstance(settings.otlp_metrics, OTLPSettings), "OTLPSettings"),
        ("otlp_traces", isinstance(settings.otlp_traces, OTLPSettings), "OTLPSettings"),
        (
            "metrics_exporters",
            _names_in(settings.metrics_exporters, METRIC_EXPORTERS),
            "a tuple of " + ", ".join(METRIC_EXPORTERS[:-1]),
        ),
        (
            "traces_exporters",
            _names_in(settings.traces_exporters, TRACE_EXPORTERS),
            "a tuple of " + ", ".join(TRACE_EXPORTERS[:-1]),
        ),
        ("prometheus_port", _is_int(settings.prometheus_port, 0, 65535), "an integer 0-65535"),
        ("cardinality_limit", _is_int(settings.cardinality_limit, 1, 2**31), "an integer >= 1"),
        ("server", settings.server in SERVER_MODES, ", ".join(SERVER_MODES)),
        ("traces_sampler", settings.traces_sampler in SAMPLERS, ", ".join(SAMPLERS)),
        ("traces_sampler_arg", _in(settings.traces_sampler_arg, 0, 1), "a number in [0, 1]"),
        ("quant_sample_rate", _in(settings.quant_sample_rate, 0, 1), "a number in [0, 1]"),
        ("quant_budget", _in(settings.quant_budget, 1e-12, 1), "a number in (0, 1]"),
        ("shutdown_timeout_s", _in(settings.shutdown_timeout_s, 1e-9, math.inf), "seconds > 0"),
        (
            "metric_export_interval_ms",
            _in(settings.metric_export_interval_ms, 1e-9, math.inf),
            "milliseconds > 0",
        ),
        (
            "metric_export_timeout_ms",
            _in(settings.metric_export_timeout_ms, 1e-9, math.inf),
            "milliseconds > 0",
        ),
        ("prometheus_host", isinstance(settings.prometheus_host, str), "a host name or IP"),
        ("capture_content", isinstance(settings.capture_content, bool), "True or False"),
        ("sdk_disabled", isinstance(settings.sdk_disabled, bool), "True or False"),
        (
            "device_metrics",
            isinstance(settings.device_metrics, tuple)
            and all(g in DEVICE_GROUPS for g in settings.device_metrics),
            "a tuple of " + ", ".join(DEVICE_GROUPS),
        ),
        ("sla_latency_s", _optional(settings.sla_latency_s, 1e-12, math.inf), "seconds > 0"),
        ("sla_ttft_s", _optional(settings.sla_ttft_s, 1e-12, math.inf), "seconds > 0"),
        (
            "sla_min_tokens_per_s",
            _optional(settings.sla_min_tokens_per_s, 1e-12, math.inf),
            "a number > 0",
        ),
        ("sla_max_error_rate", _optional(settings.sla_max_error_rate, 0, 1), "a number in [0, 1]"),
        ("sla_percentile", _in(settings.sla_percentile, 1e-12, 100), "a number in (0, 100]"),
        ("sla_window", _is_int(settings.sla_window, 1, 2**31), "an integer >= 1"),
        ("sla_window_s", _in(settings.sla_window_s, 1e-12, math.inf), "seconds > 0"),
    ]
    for name, ok, accepted in checks:
        if not ok:
            raise _bad(name, getattr(settings, name), accepted)
    _check_security(settings)
    if "prometheus" in settings.metrics_exporters and settings.server == "off":
        raise ConfigError(
            "BITNET_OBS_SERVER='off' but the prometheus exporter needs the HTTP server; "
            "accepted: BITNET_OBS_SERVER=auto or on, or another OTEL_METRICS_EXPORTER"
        )
    return settings


def _check_security(settings: Settings) -> None:
    """``configure(tls_cert_file=..., basic_auth=(user, password))`` as strictly as the env."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    for name, value in (("tls_cert_file", cert), ("tls_key_file", key)):
        if value is not None and not isinstance(value, str):
            raise _bad(name, value, "a file path (str) or None")
    if key is not None and cert is None:
        raise _bad("tls_key_file", key, "a key file together with tls_cert_file")
    if cert is not None:
        check_tls_files(cert, key, "tls_cert_file", "tls_key_file")
    auth = settings.basic_auth
    if auth is not None:
        if not (
            isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(x, str) for x in auth)
        ):
            raise ConfigError(f"basic_auth of type {type(auth).__name__} is not valid; accepted: "
                              "a (user, password) tuple of str, or None")  # fmt: skip
        user, password = auth
        if ":" in user:
            raise ConfigError("basic_auth=(<not shown>) is not valid; accepted: " + _CREDENTIALS)
        _credentials("basic_auth", f"{user}:{password}", shown="(<not shown>)")


def _attribute_map(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, (str, bool, int, float)) for k, v in value.items()
    )


def _names_in(value: object, choices: tuple[str, ...]) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, str) and v in choices for v in value)


def _is_int(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _optional(value: object, lo: float, hi: float) -> bool:
    return value is None or _in(value, lo, hi)


def _in(value: object, lo: float, hi: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not math.isnan(value)
        and lo <= value <= hi
    )
