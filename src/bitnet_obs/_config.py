"""Settings: declared once, parsed from the environment or ``configure()`` keywords, in force.

Every setting is one field of :class:`Settings` (or of :class:`OTLPSettings`) declared with
:func:`setting`: its environment variable, the parser and range it accepts, its default and its
doc. That one declaration drives env parsing, keyword-override validation (exactly the same
checks as env values), the generated configuration reference (``tools/gen_docs.py``) and the
limits of :class:`bitnet_obs.sla.Objectives`. Every number has a finite upper bound.

This is the only module that reads ``os.environ``, and it holds the settings in force
(:func:`current`, :func:`use`), so nothing below the pipeline needs the pipeline to know them.
A malformed value raises :class:`ConfigError` naming the variable (or keyword), the value it
got and what is accepted. Standard ``OTEL_*`` variables come first; ``BITNET_OBS_*`` exist only
where OpenTelemetry has no variable for the job.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bitnet_obs import _instruments, _secrets, _state
from bitnet_obs import _otlp as _otlp_rules
from bitnet_obs._errors import ConfigError, invalid
from bitnet_obs._parsers import (
    Choice,
    Flag,
    Integer,
    KeyValues,
    Maybe,
    Names,
    Number,
    Parser,
    Text,
    Url,
    fmt,
)
from bitnet_obs._selfmon import internal_error

if TYPE_CHECKING:
    from bitnet_obs._degenerate import DegenerateThresholds

T = TypeVar("T")

#: DegenerateThresholds' fields, each a ``degenerate_<name>`` setting.
DEGENERATE_FIELDS = (
    "repeat_run",
    "cycle_span",
    "max_period",
    "min_distinct_fraction",
    "window",
    "min_tokens",
)


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One setting's declaration: how it is read and documented."""

    env: str | None
    parser: Parser[Any]
    doc: str
    default_doc: str
    #: OTLP settings: ``env`` is the suffix of OTEL_EXPORTER_OTLP[_METRICS|_TRACES]_<suffix>
    per_signal: bool = False


def setting(
    default: T,
    parser: Parser[Any],
    doc: str,
    *,
    env: str | None = None,
    default_doc: str | None = None,
    per_signal: bool = False,
) -> T:
    """Declare a settings field: its default, parser, doc and environment variable."""
    if default_doc is not None:
        shown = default_doc
    elif isinstance(default, bool):
        shown = f"`{str(default).lower()}`"
    elif isinstance(default, (int, float)):
        shown = f"`{fmt(default)}`"
    else:
        shown = f"`{default}`"
    row = Row(env, parser, doc, shown, per_signal)
    if isinstance(default, Mapping):  # immutable, but unhashable: dataclasses want a factory
        return dataclasses.field(default_factory=lambda: default, metadata={"row": row})
    return dataclasses.field(default=default, metadata={"row": row})


def rows(cls: type[Any]) -> Iterator[tuple[str, Row]]:
    """(field name, row) of a settings class, in declaration order."""
    for f in dataclasses.fields(cls):
        row = f.metadata.get("row")
        if isinstance(row, Row):
            yield f.name, row


_EMPTY: Mapping[str, Any] = types.MappingProxyType({})
_HOST = Text(
    r"(?![.-])[A-Za-z0-9_.:-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]",
    "a host name or IP address (`0.0.0.0` or `::` bind every interface)",
)
_MS = "milliseconds"

#: Exporters by name and the signals each can carry. The pipeline's builders
#: (``bitnet_obs._export``) implement one per (name, signal): adding an exporter is one entry
#: here plus its builder.
EXPORTERS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {"otlp": ("metrics", "traces"), "prometheus": ("metrics",), "console": ("metrics", "traces")}
)
METRIC_EXPORTERS = tuple(n for n, signals in EXPORTERS.items() if "metrics" in signals)
TRACE_EXPORTERS = tuple(n for n, signals in EXPORTERS.items() if "traces" in signals)
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
PROTOCOLS = ("grpc", "http/protobuf")
DEVICE_GROUPS = ("system", "process", "gpu")
SERVER_MODES = ("auto", "on", "off")
TEMPORALITIES = ("cumulative", "delta", "lowmemory")
HISTOGRAM_AGGREGATIONS = ("explicit_bucket_histogram", "base2_exponential_bucket_histogram")


@dataclass(frozen=True)
class OTLPSettings:
    """The OTLP exporter settings of one signal, after per-signal variables were applied."""

    protocol: str = setting(
        "http/protobuf", Choice(*PROTOCOLS), "OTLP transport.", env="PROTOCOL", per_signal=True
    )
    endpoint: str = setting(
        "http://localhost:4318",
        Url(),
        "OTLP collector address. For http/protobuf the base endpoint gets `/v1/metrics` or "
        "`/v1/traces` appended; a per-signal endpoint is used as is.",
        env="ENDPOINT",
        per_signal=True,
        default_doc="`http://localhost:4318` (http/protobuf), `http://localhost:4317` (grpc)",
    )
    endpoint_is_signal_specific: bool = False
    headers: Mapping[str, str] = setting(
        _EMPTY,
        KeyValues(headers=True),
        "Headers sent with every export (e.g. authentication). Names are lower-cased (gRPC "
        "requires it); a control character (CR, LF) is refused.",
        env="HEADERS",
        per_signal=True,
        default_doc="(none)",
    )
    timeout_s: float = setting(
        10.0,
        Number(0.0, 600.0, "seconds", lo_open=True, env_scale=0.001, env_unit=_MS),
        "Time limit for one export request, in milliseconds as the specification says.",
        env="TIMEOUT",
        per_signal=True,
        default_doc="`10000`",
    )
    compression: str = setting(
        "none", Choice("gzip", "none"), "Compression of export requests.", env="COMPRESSION",
        per_signal=True,
    )  # fmt: skip


def _seconds(hi: float) -> Number:
    return Number(0.0, hi, "seconds", lo_open=True)


@dataclass(frozen=True)
class Settings:
    """Everything ``configure()`` decided. Field names are the ``configure()`` keywords."""

    sdk_disabled: bool = setting(
        False, Flag(), "`true` makes `configure()` install nothing: every instrument stays a "
        "no-op.", env="OTEL_SDK_DISABLED",
    )  # fmt: skip
    service_name: str | None = setting(
        None,
        Maybe(Text(r"[^\x00-\x1f\x7f]{1,255}", "a string of 1-255 printable characters")),
        "The `service.name` resource attribute; wins over `OTEL_RESOURCE_ATTRIBUTES`.",
        env="OTEL_SERVICE_NAME",
        default_doc="`unknown_service`",
    )
    resource_attributes: Mapping[str, Any] = setting(
        _EMPTY,
        KeyValues(),
        "Extra resource attributes. A unique `service.instance.id` is added per process "
        "unless set here.",
        env="OTEL_RESOURCE_ATTRIBUTES",
        default_doc="(empty)",
    )
    metrics_exporters: tuple[str, ...] = setting(
        ("prometheus",),
        Names(*METRIC_EXPORTERS),
        "Where metrics go.",
        env="OTEL_METRICS_EXPORTER",
        default_doc="`prometheus`; `otlp` when an OTLP endpoint is set",
    )
    traces_exporters: tuple[str, ...] = setting(
        (),
        Names(*TRACE_EXPORTERS),
        "Where spans go. `prometheus` is not a trace exporter.",
        env="OTEL_TRACES_EXPORTER",
        default_doc="`none`; `otlp` when an OTLP endpoint is set",
    )
    otlp_metrics: OTLPSettings = dataclasses.field(default_factory=OTLPSettings)
    otlp_traces: OTLPSettings = dataclasses.field(default_factory=OTLPSettings)
    otlp_metrics_temporality: str = setting(
        "cumulative",
        Choice(*TEMPORALITIES),
        "Temporality of OTLP metrics: `delta` for counters and histograms (up-down counters "
        "stay cumulative), `lowmemory` delta for synchronous counters and histograms only. "
        "Prometheus is always cumulative.",
        env="OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    )
    otlp_metrics_histogram_aggregation: str = setting(
        "explicit_bucket_histogram",
        Choice(*HISTOGRAM_AGGREGATIONS),
        "Histogram aggregation of OTLP metrics: explicit buckets (the catalogue's) or base-2 "
        "exponential buckets (no bucket choice needed; Prometheus keeps explicit buckets).",
        env="OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
    )
    metrics_exemplar_filter: str = setting(
        "trace_based",
        Choice("trace_based", "always_on", "always_off"),
        "Which histogram records keep an exemplar (the last one per bucket and collection): "
        "those made under a sampled span, all, or none.",
        env="OTEL_METRICS_EXEMPLAR_FILTER",
    )
    prometheus_host: str = setting(
        "127.0.0.1",
        _HOST,
        "Address the `/metrics` and health server binds to. Loopback unless you say otherwise.",
        env="OTEL_EXPORTER_PROMETHEUS_HOST",
    )
    prometheus_port: int = setting(
        9464,
        Integer(0, 65535),
        "Port of the `/metrics` and health server (0 picks a free port).",
        env="OTEL_EXPORTER_PROMETHEUS_PORT",
    )
    metric_export_interval_ms: float = setting(
        60_000.0,
        Number(1.0, 86_400_000.0, _MS),
        "How often pushed metrics (OTLP, console) are exported.",
        env="OTEL_METRIC_EXPORT_INTERVAL",
        default_doc="`60000`",
    )
    metric_export_timeout_ms: float = setting(
        30_000.0,
        Number(0.0, 600_000.0, _MS, lo_open=True),
        "Time limit for one periodic metric export.",
        env="OTEL_METRIC_EXPORT_TIMEOUT",
        default_doc="`30000`",
    )
    traces_sampler: str = setting(
        "parentbased_always_on", Choice(*SAMPLERS), "Which spans are sampled.",
        env="OTEL_TRACES_SAMPLER",
    )  # fmt: skip
    traces_sampler_arg: float = setting(
        1.0,
        Number(0.0, 1.0),
        "The sampling ratio of `traceidratio` and `parentbased_traceidratio`.",
        env="OTEL_TRACES_SAMPLER_ARG",
        default_doc="`1.0` for the ratio samplers",
    )
    server: str = setting(
        "auto",
        Choice(*SERVER_MODES),
        "The one HTTP server (`/metrics`, `/health`, `/health/live`, `/health/ready`). `auto` "
        "runs it when the `prometheus` exporter is chosen; `on` also runs it for health probes "
        "when only OTLP is used.",
        env="BITNET_OBS_SERVER",
    )
    tls_cert_file: str | None = setting(
        None,
        Maybe(Text(r"[^\x00]{1,4096}", "a file path")),
        "Serve the HTTP server over HTTPS with this certificate (a readable PEM certificate "
        "chain; may hold the key too). Checked at `configure()`.",
        env="BITNET_OBS_TLS_CERT_FILE",
        default_doc="(none: plain HTTP)",
    )
    tls_key_file: str | None = setting(
        None,
        Maybe(Text(r"[^\x00]{1,4096}", "a file path")),
        "Private key of `BITNET_OBS_TLS_CERT_FILE` (a readable, unencrypted PEM key); needs "
        "that variable.",
        env="BITNET_OBS_TLS_KEY_FILE",
        default_doc="(none: the key is in the certificate file)",
    )
    basic_auth: tuple[str, str] | None = dataclasses.field(default=None, repr=False)
    capture_content: bool = setting(
        False,
        Flag(),
        "Record prompt and response text on spans (clipped to 8 KiB). Off: no text ever leaves "
        "the process, in telemetry or in logs.",
        env="BITNET_OBS_CAPTURE_CONTENT",
    )
    semconv_stability_opt_in: str = setting(
        "gen_ai_latest",
        Choice("gen_ai_latest", "gen_ai_latest/dup"),
        "Which GenAI semantic-convention names to emit: `gen_ai_latest`, the current ones; "
        "`gen_ai_latest/dup`, also the names 0.1 used (`gen_ai.client.token.usage`, "
        "`gen_ai.token.type`, `gen_ai.response.finish_reason`) beside them, while dashboards "
        "migrate. The 0.1 names go away in 0.3 (docs/metrics.md, Migration).",
        env="BITNET_OBS_SEMCONV_STABILITY_OPT_IN",
    )
    cardinality_limit: int = setting(
        2000,
        Integer(1, 100_000),
        "Most distinct attribute sets per metric; more fold into one "
        "`otel.metric.overflow=true` series.",
        env="BITNET_OBS_CARDINALITY_LIMIT",
    )
    quant_sample_rate: float = setting(
        0.01,
        Number(0.0, 1.0),
        "Fraction of eligible calls whose quantization accuracy is measured.",
        env="BITNET_OBS_QUANT_SAMPLE_RATE",
    )
    quant_budget: float = setting(
        0.01,
        Number(0.0, 1.0, lo_open=True),
        "Most fraction of wall time spent on accuracy statistics; samples over it are skipped "
        "and counted.",
        env="BITNET_OBS_QUANT_BUDGET",
    )
    shutdown_timeout_s: float = setting(
        5.0,
        _seconds(3600.0),
        "Bound on `shutdown()` and on the flush at interpreter exit, even with a dead collector.",
        env="BITNET_OBS_SHUTDOWN_TIMEOUT",
    )
    device_metrics: tuple[str, ...] = setting(
        DEVICE_GROUPS,
        Names(*DEVICE_GROUPS),
        "Which device metrics `configure()` reports: host CPU/memory/disk/network, this "
        "process's CPU/memory, GPUs through NVML (extra `[gpu]`). Read at collection time only.",
        env="BITNET_OBS_DEVICE_METRICS",
        default_doc="`system,process,gpu`",
    )
    sla_latency_s: float | None = setting(
        None,
        Maybe(_seconds(86_400.0)),
        "SLA objective: request duration at `BITNET_OBS_SLA_PERCENTILE` at most this.",
        env="BITNET_OBS_SLA_LATENCY",
        default_doc="(none)",
    )
    sla_ttft_s: float | None = setting(
        None,
        Maybe(_seconds(86_400.0)),
        "SLA objective: time to first token at `BITNET_OBS_SLA_PERCENTILE` at most this.",
        env="BITNET_OBS_SLA_TTFT",
        default_doc="(none)",
    )
    sla_min_tokens_per_s: float | None = setting(
        None,
        Maybe(Number(0.0, 1e9, "tokens/s", lo_open=True)),
        "SLA objective: at least `BITNET_OBS_SLA_PERCENTILE`% of requests produce output "
        "tokens at this rate or faster.",
        env="BITNET_OBS_SLA_MIN_TOKENS_PER_SECOND",
        default_doc="(none)",
    )
    sla_max_error_rate: float | None = setting(
        None,
        Maybe(Number(0.0, 1.0)),
        "SLA objective: most fraction of requests that may fail (cancelled ones do not count).",
        env="BITNET_OBS_SLA_ERROR_RATE",
        default_doc="(none)",
    )
    sla_percentile: float = setting(
        95.0,
        Number(0.0, 100.0, lo_open=True),
        "The percentile of the latency, TTFT and tokens/s objectives.",
        env="BITNET_OBS_SLA_PERCENTILE",
        default_doc="`95`",
    )
    sla_window: int = setting(
        1000,
        Integer(1, 1_000_000),
        "The SLA window: objectives are judged over at most this many recent requests "
        "(10 bytes each).",
        env="BITNET_OBS_SLA_WINDOW",
    )
    sla_window_s: float = setting(
        300.0,
        _seconds(604_800.0),
        "The SLA window: requests older than this leave it.",
        env="BITNET_OBS_SLA_WINDOW_SECONDS",
        default_doc="`300`",
    )

    # Degenerate-output thresholds (bitnet_obs.output.DegenerateThresholds; its docstring has
    # the healthy figures each default keeps away from). Cross-checked together in _checked.
    degenerate_detection: bool = setting(
        True,
        Flag(),
        "Judge the token ids of monitored calls (streamed, returned or `add_output_ids`) for "
        "degenerate output: a few numbers per output are recorded, never the ids.",
        env="BITNET_OBS_DEGENERATE_DETECTION",
    )
    degenerate_repeat_run: int = setting(
        32,
        Integer(0, 1_000_000),
        "A run of one repeated token id this long makes an output degenerate (`repeat_run`); "
        "0: off, else at least 2.",
        env="BITNET_OBS_DEGENERATE_REPEAT_RUN",
    )
    degenerate_cycle_span: int = setting(
        192,
        Integer(0, 1_000_000),
        "A cycle of period 2 to `BITNET_OBS_DEGENERATE_MAX_PERIOD` covering this many tokens "
        "makes an output degenerate (`cycle`); 0: off, else above the max period.",
        env="BITNET_OBS_DEGENERATE_CYCLE_SPAN",
    )
    degenerate_max_period: int = setting(
        8,
        Integer(2, 64),
        "Longest cycle period looked for.",
        env="BITNET_OBS_DEGENERATE_MAX_PERIOD",
    )
    degenerate_min_distinct_fraction: float = setting(
        0.03,
        Number(0.0, 0.99),
        "A window whose fraction of distinct token ids is below this makes an output "
        "degenerate (`low_diversity`); 0: off.",
        env="BITNET_OBS_DEGENERATE_MIN_DISTINCT_FRACTION",
    )
    degenerate_window: int = setting(
        256,
        Integer(8, 65_536),
        "Tokens per distinct-fraction window.",
        env="BITNET_OBS_DEGENERATE_WINDOW",
    )
    degenerate_min_tokens: int = setting(
        32,
        Integer(1, 65_536),
        "Outputs shorter than this are not judged (monitored calls record nothing for them; "
        "at most the window).",
        env="BITNET_OBS_DEGENERATE_MIN_TOKENS",
    )
    # 0.01, the quantization checks' rate, for a reason of its own: one sampled step of a
    # 128k vocabulary costs ~0.45 ms (docs/performance.md) and a report measures up to 64
    # steps, so 1% of calls keeps the mean cost near 0.3 ms per call, within the shared
    # BITNET_OBS_QUANT_BUDGET, while a server at 1 request/s still gets ~2,000 steps an hour.
    logits_sample_rate: float = setting(
        0.01,
        Number(0.0, 1.0),
        "Fraction of monitored calls whose `observe_logits` reports are measured (entropy, "
        "top-1 margin), drawn once per call; the time goes to `BITNET_OBS_QUANT_BUDGET`.",
        env="BITNET_OBS_LOGITS_SAMPLE_RATE",
    )

    @functools.cached_property
    def degenerate_thresholds(self) -> DegenerateThresholds:
        """The ``BITNET_OBS_DEGENERATE_*`` settings as the detector's thresholds."""
        from bitnet_obs._degenerate import DegenerateThresholds

        return DegenerateThresholds(
            **{name: getattr(self, f"degenerate_{name}") for name in DEGENERATE_FIELDS}
        )

    @property
    def semconv_dup(self) -> bool:
        """Emit 0.1's GenAI names beside the current ones (``gen_ai_latest/dup``)."""
        return self.semconv_stability_opt_in == "gen_ai_latest/dup"

    @property
    def server_enabled(self) -> bool:
        if self.server == "auto":
            return "prometheus" in self.metrics_exporters
        return self.server == "on"


def row(field_name: str) -> Row:
    """The declaration of one :class:`Settings` field (``sla.Objectives`` reuses its checks)."""
    for name, found in rows(Settings):
        if name == field_name:
            return found
    raise KeyError(field_name)


# --- variables that are not a field of their own --------------------------------------------


#: Variables read by hand (not one field each): (name, default, accepted, doc).
EXTRA_VARS: tuple[tuple[str, str, str, str], ...] = (
    (
        "BITNET_OBS_BASIC_AUTH",
        "(none: no authentication)",
        "`user:password`, user without `:`, both non-empty",
        "Require HTTP basic auth on `/metrics`, `/` and `/health` (compared in constant time). "
        "`/health/live` and `/health/ready` answer probes without it, status only.",
    ),
    (
        "BITNET_OBS_BASIC_AUTH_FILE",
        "(none)",
        "path of a readable file whose first line is `user:password`",
        "`BITNET_OBS_BASIC_AUTH` read from a file (e.g. a mounted secret); set one of the two.",
    ),
)


def env_rows() -> list[tuple[str, str, str, str]]:
    """(variable, default, accepted, doc) of every variable, in documentation order."""
    out: list[tuple[str, str, str, str]] = []
    for _, r in rows(Settings):
        if r.env is None:
            continue
        out.append((r.env, r.default_doc, _env_accepted(r.parser), r.doc))
        if r.env == "OTEL_TRACES_EXPORTER":  # the OTLP family follows the exporter choice
            for _, o in rows(OTLPSettings):
                base = f"OTEL_EXPORTER_OTLP_{o.env}"
                note = (
                    f"Per-signal variants `OTEL_EXPORTER_OTLP_METRICS_{o.env}` and "
                    f"`OTEL_EXPORTER_OTLP_TRACES_{o.env}` win."
                )
                accepted = _env_accepted(o.parser)
                out.append((base, o.default_doc, accepted, f"{o.doc} {note}"))
                for signal in ("METRICS", "TRACES"):
                    name = f"OTEL_EXPORTER_OTLP_{signal}_{o.env}"
                    out.append((name, f"`{base}`", accepted, f"{o.doc} ({signal.lower()})"))
    out.extend(EXTRA_VARS)
    return out


def _env_accepted(parser: Parser[Any]) -> str:
    return str(getattr(parser, "env_accepted", parser.accepted))


def env_names() -> tuple[str, ...]:
    """Every variable bitnet-obs reads, in documentation order."""
    return tuple(name for name, *_ in env_rows())


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The known variables that are set (and not blank), by name."""
    source = os.environ if environ is None else environ
    found: dict[str, str] = {}
    for name in env_names():
        value = source.get(name)
        if value is not None and value.strip() != "":
            found[name] = value
    return found


# --- parsing --------------------------------------------------------------------------------


def _otlp(env: Mapping[str, str], signal: str) -> OTLPSettings:
    values: dict[str, Any] = {}
    specific_endpoint = False
    for name, r in rows(OTLPSettings):
        for var in (f"OTEL_EXPORTER_OTLP_{signal}_{r.env}", f"OTEL_EXPORTER_OTLP_{r.env}"):
            if var in env:
                values[name] = r.parser.parse(var, env[var])
                if name == "endpoint":
                    specific_endpoint = var.startswith(f"OTEL_EXPORTER_OTLP_{signal}_")
                break
    protocol = values.get("protocol", "http/protobuf")
    values["endpoint"] = _otlp_rules.signal_endpoint(
        protocol, values.get("endpoint"), signal, specific_endpoint
    )
    return OTLPSettings(endpoint_is_signal_specific=specific_endpoint, **values)


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every known variable; raise ConfigError on the first bad one."""
    env = read_env(environ)
    values: dict[str, Any] = {}
    for name, r in rows(Settings):
        if r.env is not None and r.env in env:
            values[name] = r.parser.parse(r.env, env[r.env])
    if any(k.startswith("OTEL_EXPORTER_OTLP") and k.endswith("ENDPOINT") for k in env):
        values.setdefault("metrics_exporters", ("otlp",))
        values.setdefault("traces_exporters", ("otlp",))
    values["otlp_metrics"] = _otlp(env, "METRICS")
    values["otlp_traces"] = _otlp(env, "TRACES")
    values.update(_secrets.credentials_from_env(env))
    return _checked(Settings(**values))


def with_overrides(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    """Apply ``configure(**overrides)`` with exactly the checks env values get."""
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown configure() keyword(s) {', '.join(unknown)}; accepted: "
            + ", ".join(sorted(known))
        )
    declared = dict(rows(Settings))
    values: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in declared:
            values[name] = declared[name].parser.check(name, value)
        elif name in ("otlp_metrics", "otlp_traces"):
            values[name] = _check_otlp(name, value)
        else:
            values[name] = value
    return _checked(dataclasses.replace(base, **values))


def _check_otlp(name: str, value: object) -> OTLPSettings:
    if not isinstance(value, OTLPSettings):
        raise invalid(name, value, "an OTLPSettings")
    for field_name, r in rows(OTLPSettings):
        r.parser.check(f"{name}.{field_name}", getattr(value, field_name))
    return value


def _check_degenerate(settings: Settings) -> None:
    """The thresholds' own cross-checks (cycle span above the max period, min tokens within
    the window, no run of 1), naming the variables; skipped when every one is its default."""
    names = [f"degenerate_{name}" for name in DEGENERATE_FIELDS]
    declared = {f.name: f.default for f in dataclasses.fields(Settings)}
    if all(getattr(settings, n) == declared[n] for n in names):
        return
    from bitnet_obs._degenerate import check_thresholds  # numpy: only for non-default values

    def label(name: str) -> str:
        return f"degenerate thresholds: {row(f'degenerate_{name}').env} (degenerate_{name})"

    check_thresholds({n: getattr(settings, f"degenerate_{n}") for n in DEGENERATE_FIELDS}, label)


def _checked(settings: Settings) -> Settings:
    """Cross-field checks shared by env and overrides."""
    _secrets.check_security(settings.tls_cert_file, settings.tls_key_file, settings.basic_auth)
    _check_degenerate(settings)
    if "prometheus" in settings.metrics_exporters and settings.server == "off":
        raise ConfigError(
            "BITNET_OBS_SERVER='off' but the prometheus exporter needs the HTTP server; "
            "accepted: BITNET_OBS_SERVER=auto or on, or another OTEL_METRICS_EXPORTER"
        )
    return settings


# --- the settings in force ------------------------------------------------------------------

_lock = threading.Lock()
_in_force: Settings | None = None
_from_env: Settings | None = None


def current() -> Settings:
    """The settings in force: ``configure()``'s, else the environment's (parsed once; a bad
    variable is counted as an internal error and the defaults are used)."""
    settings = _in_force
    if settings is not None:
        return settings
    global _from_env
    with _lock:
        if _from_env is None:
            try:
                _from_env = from_env()
            except ConfigError as exc:
                internal_error("config", exc)
                _from_env = Settings()
        return _from_env


def loggable(exc: BaseException) -> BaseException | None:
    """What a log may show of an exception from the caller's code: its traceback when content
    capture is on, else nothing (its message may quote the prompt; the kind is logged)."""
    return exc if current().capture_content else None


# The catalogue sits below this module: it reads the naming mode through this callback.
_instruments.set_dup_reader(lambda: current().semconv_dup)


def in_force() -> Settings | None:
    """What :func:`use` put in force (None: the environment's settings apply)."""
    return _in_force


def use(settings: Settings | None) -> None:
    """Put these settings in force (``configure()``, testing helpers); None: the environment's."""
    global _in_force
    _in_force = settings


@_state.on_reset(phase=_state.CLEAR)
def _reset() -> None:
    global _in_force, _from_env
    _in_force = _from_env = None


@_state.on_fork
def _reinit_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
