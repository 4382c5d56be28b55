"""What an OpenTelemetry metric and its attributes are called in Prometheus.

The rules of the OpenTelemetry specification's Prometheus compatibility section, as the OTel
Prometheus exporter and the Collector apply them (``tests/test_docs.py`` checks ours against the
real exporter): non-alphanumerics become ``_``; the unit becomes a suffix (``s`` -> ``_seconds``,
``By`` -> ``_bytes``, ``{...}`` annotations dropped, ``X/Y`` -> ``X_per_Y``); counters end in
``_total``. Stdlib only: the catalogue, the attribute checks and the exposition renderer share it.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"[^a-zA-Z0-9:]+")
_LABEL = re.compile(r"[^a-zA-Z0-9]+")
_ANNOTATION = re.compile(r"{.*}")
_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month",
              "y": "year"}  # fmt: skip


def sanitize_name(name: str) -> str:
    """A metric name: runs of other characters become ``_``, a leading digit too."""
    if name and name[0].isdigit():
        name = "_" + name[1:]
    return _NAME.sub("_", name)


def label_name(key: str) -> str:
    """The Prometheus label an attribute key becomes."""
    if key and key[0].isdigit():
        key = "_" + key[1:]
    return _LABEL.sub("_", key)


def unit_suffix(unit: str) -> str:
    """The suffix a unit becomes (``""`` for none)."""
    unit = _ANNOTATION.sub("", unit)
    if unit in _UNITS:
        return _UNITS[unit]
    top, sep, bottom = unit.partition("/")
    if sep:
        bottom = _NAME.sub("_", bottom)
        if bottom:
            top = _UNITS.get(_NAME.sub("_", top), _NAME.sub("_", top))
            bottom = _PER_UNITS.get(bottom, bottom)
            return f"{top}_per_{bottom}" if top else f"per_{bottom}"
    return _NAME.sub("_", unit).strip("_")


def family_name(name: str, unit: str) -> str:
    """A metric's family name: sanitised, with its unit suffix (not repeated)."""
    base, suffix = sanitize_name(name), unit_suffix(unit)
    return f"{base}_{suffix}" if suffix and not base.endswith("_" + suffix) else base


def prometheus_name(name: str, unit: str, counter: bool) -> str:
    """The name of a metric's samples (counters: with ``_total``)."""
    family = family_name(name, unit)
    return family + "_total" if counter and not family.endswith("_total") else family
