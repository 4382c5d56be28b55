"""The exception every bad setting or argument raises, in a stdlib-only leaf module.

Kept apart from :mod:`bitnet_obs._config` so numpy-only modules (``quant``, ``output``) can raise
it without importing the settings machinery and, through it, the OpenTelemetry API.
"""

from __future__ import annotations

__all__ = ["ConfigError", "invalid"]


class ConfigError(ValueError):
    """A configuration value is malformed; the message says which, what it was, what works."""


def invalid(name: str, value: object, accepted: str) -> ConfigError:
    """The one wording of a bad value: ``NAME=value is not valid; accepted: ...`` (a long
    text is cut at 200 characters)."""
    shown = value[:200] + "…" if isinstance(value, str) and len(value) > 200 else value
    return ConfigError(f"{name}={shown!r} is not valid; accepted: {accepted}")
