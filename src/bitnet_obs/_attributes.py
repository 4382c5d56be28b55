"""The shared attribute vocabulary: what a metric attribute may be, checked once at definition.

Operations, quantization formats, device names, priorities and ``error.type`` are used by the
inference monitor, model loads and queues alike; user-supplied attribute keys are checked here
against what a Prometheus label can be, so one bad key can never make a whole scrape invalid.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from bitnet_obs import _semconv as sc
from bitnet_obs._errors import ConfigError
from bitnet_obs._names import label_name
from bitnet_obs._tally import AttrValue

OPERATIONS = (
    "chat",
    "text_completion",
    "generate_content",
    "embeddings",
    "invoke_agent",
    "execute_tool",
)
QUANT_FORMATS = (
    "i2_s", "tl1", "tl2", "tq1_0", "tq2_0", "fp32", "fp16", "bf16", "q8_0", "q4_0", "int8", "other"
)  # fmt: skip
PRIORITIES = ("low", "normal", "high", "critical")
#: ``bitnet.response.finish_reason`` on the request counter; anything else counts as "other".
FINISH_REASONS = (
    "stop", "length", "content_filter", "tool_calls", "cancelled", "error", "other"
)  # fmt: skip
KERNEL_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,47}"
_KERNEL = re.compile(KERNEL_PATTERN)
DEVICE_PATTERN = r"[a-z][a-z0-9_.-]{0,31}(:[0-9]{1,3})?"
_DEVICE = re.compile(DEVICE_PATTERN)
_MODEL = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_PROVIDER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# server.address: a DNS name, an IP address (v6 bracketed or not) or a Unix socket path.
_ADDRESS = re.compile(r"[A-Za-z0-9_.:\[\]%/@-]{1,255}")

# Prometheus label names: [a-zA-Z_][a-zA-Z0-9_]*, "__" prefixed ones reserved; ``le`` and
# ``quantile`` carry bucket bounds and quantiles; ``job`` and ``instance`` are set by the scraper
# (a target's own would be renamed exported_*); the exporter adds otel_scope_* and the
# overflow series' label.
_RESERVED_LABELS = frozenset(
    {"le", "quantile", "job", "instance", "otel_scope_name", "otel_scope_version",
     "otel_metric_overflow"}
)  # fmt: skip
MAX_ATTRIBUTE_KEY = 128


def check_label_keys(keys: Iterable[str], ours: Iterable[str], where: str) -> None:
    """Refuse keys that cannot be a Prometheus label or collide after sanitisation.

    ``ours`` are the keys bitnet-obs itself records beside them; a collision with one of those
    (``a.b`` and ``a_b`` are the same label) or between two of ``keys`` would make the series
    ambiguous or the scrape invalid.
    """
    taken = {label_name(k): k for k in ours}
    for key in keys:
        if not isinstance(key, str) or not key or len(key) > MAX_ATTRIBUTE_KEY:
            raise ConfigError(
                f"{where} key {key!r} is not valid; accepted: a non-empty str of at most "
                f"{MAX_ATTRIBUTE_KEY} characters"
            )
        label = label_name(key)
        if key.startswith("__") or label.strip("_") == "" or label in _RESERVED_LABELS:
            raise ConfigError(
                f"{where} key {key!r} cannot be a metric label (it becomes {label!r}); accepted: "
                "a key with letters or digits that is not le, quantile, job, instance, "
                "otel_scope_*, otel_metric_overflow or __*"
            )
        other = taken.get(label)
        if other is not None:
            raise ConfigError(
                f"{where} key {key!r} collides with {other!r}: both become the label {label!r}; "
                "accepted: a key whose label (non-alphanumerics as _) is not already used"
            )
        taken[label] = key


def check_attribute_values(attributes: Mapping[str, object], where: str) -> dict[str, AttrValue]:
    """Values of user attributes: str, bool, int or float (a finite float, a short str)."""
    out: dict[str, AttrValue] = {}
    for key, value in attributes.items():
        if isinstance(value, float) and value != value:  # NaN never equals a series
            raise ConfigError(f"{where}[{key!r}] is NaN; accepted: str, bool, int, finite float")
        if not isinstance(value, (str, bool, int, float)) or (
            isinstance(value, str) and len(value) > 256
        ):
            raise ConfigError(
                f"{where}[{key!r}] of type {type(value).__name__} is not valid; accepted: str "
                "(at most 256 characters), bool, int or float"
            )
        out[key] = value
    return out


def check_model(value: object, name: str = "model") -> str:
    if not isinstance(value, str) or not _MODEL.fullmatch(value):
        raise ConfigError(f"{name}={value!r} is not valid; accepted: 1-128 printable characters")
    return value


def check_provider(value: object) -> str:
    if not isinstance(value, str) or not _PROVIDER.fullmatch(value):
        raise ConfigError(f"provider={value!r} is not valid; accepted: 1-64 of A-Z a-z 0-9 _ . -")
    return value


def endpoint(
    response_model: object = None, server_address: object = None, server_port: object = None
) -> dict[str, AttrValue]:
    """``gen_ai.response.model``, ``server.address`` and ``server.port`` where known (the
    conventions recommend them; ``server.port`` only beside an address)."""
    out: dict[str, AttrValue] = {}
    if response_model is not None:
        out[sc.RESPONSE_MODEL] = check_model(response_model, "response_model")
    if server_address is not None:
        if not isinstance(server_address, str) or not _ADDRESS.fullmatch(server_address):
            raise ConfigError(
                f"server_address={server_address!r} is not valid; accepted: a host name, an IP "
                "address or a socket path (1-255 of A-Z a-z 0-9 _ . : [ ] % / @ -)"
            )
        out[sc.SERVER_ADDRESS] = server_address
    if server_port is not None:
        if (
            isinstance(server_port, bool)
            or not isinstance(server_port, int)
            or not 0 < server_port < 65536
        ):
            raise ConfigError(
                f"server_port={server_port!r} is not valid; accepted: an int in [1, 65535]"
            )
        if server_address is None:
            raise ConfigError(
                f"server_port={server_port!r} without server_address; accepted: a port with "
                "the address it belongs to (the conventions set server.port only beside it)"
            )
        out[sc.SERVER_PORT] = server_port
    return out


def check_operation(value: object) -> str:
    if value not in OPERATIONS:
        raise ConfigError(f"operation={value!r} is not valid; accepted: {', '.join(OPERATIONS)}")
    return str(value)


def check_quant_format(value: object) -> str:
    if value not in QUANT_FORMATS:
        raise ConfigError(
            f"quant_format={value!r} is not valid; accepted: {', '.join(QUANT_FORMATS)}"
        )
    return str(value)


def valid_device(value: object) -> bool:
    return isinstance(value, str) and _DEVICE.fullmatch(value) is not None


def check_device(value: object, name: str = "device") -> str:
    if not valid_device(value):
        raise ConfigError(
            f"{name}={value!r} is not valid; accepted: a lower-case device name such as 'cpu', "
            "'cuda:0', 'gpu', 'npu:1'"
        )
    return str(value)


def valid_kernel(value: object) -> bool:
    return isinstance(value, str) and _KERNEL.fullmatch(value) is not None


def check_kernel(value: object) -> str:
    if not valid_kernel(value):
        raise ConfigError(
            f"kernel={value!r} is not valid; accepted: a lower-case kernel name such as "
            "'i2_s_avx2', 'tl2', 'scalar' (1-48 of a-z 0-9 _ . -)"
        )
    return str(value)


def finish_reason(value: object) -> str:
    """A bounded finish reason: one of :data:`FINISH_REASONS` ("other" for the rest)."""
    return value if isinstance(value, str) and value in FINISH_REASONS else "other"


def check_priority(value: object) -> str:
    if value not in PRIORITIES:
        raise ConfigError(f"priority={value!r} is not valid; accepted: {', '.join(PRIORITIES)}")
    return str(value)


def error_type(exc: BaseException) -> str:
    """Low-cardinality ``error.type``: the exception class, qualified unless builtin."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
