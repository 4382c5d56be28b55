"""Start clean, and run a block with given settings: the public way for tests to handle state.

bitnet-obs keeps process-wide state (the pipeline, running totals, the health registry, SLA
objectives, the settings in force); every piece registers its reset with one registry, so
:func:`reset` is complete by construction and no test has to patch a private name::

    from bitnet_obs import testing

    def setup_function() -> None:
        testing.reset()

    with testing.override_settings(quant_sample_rate=1.0):
        generate("hello")          # every quantization sample is taken
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from bitnet_obs import _config, _pipeline, _state
from bitnet_obs._config import Settings

__all__ = ["override_settings", "reset"]


def reset() -> None:
    """Back to a freshly imported bitnet-obs: the pipeline stopped (within 2 s) and forgotten
    (a later ``configure()`` sets up anew), running totals zeroed, health checks back to the
    built-ins, SLA tracking and device metrics off, log instrumentation removed, settings from
    the environment again."""
    assert _pipeline  # imported for its reset hook: the pipeline stops first
    _state.reset_all()


@contextlib.contextmanager
def override_settings(
    environ: Mapping[str, str] | None = None, **overrides: Any
) -> Iterator[Settings]:
    """Put these settings in force for the block (the environment's, or ``environ``, plus
    ``configure()``-style keyword overrides, validated the same way); restores the previous ones.

    It changes what code reads at run time (sampling rates, content capture, ...), not the
    exporters of a pipeline already configured.
    """
    previous = _config.in_force()
    settings = _config.with_overrides(_config.from_env(environ), overrides)
    _config.use(settings)
    try:
        yield settings
    finally:
        _config.use(previous)
