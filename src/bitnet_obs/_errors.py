"""The exception every bad setting or argument raises, in a stdlib-only leaf module.

Kept apart from :mod:`bitnet_obs._config` so numpy-only modules (``quant``, ``output``) can raise
it without importing the settings machinery and, through it, the OpenTelemetry API.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is malformed; the message says which, what it was, what works."""
