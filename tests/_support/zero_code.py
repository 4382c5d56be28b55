"""An instrumentor as an application meets it with no code change, for the tests of each one:
a script under ``opentelemetry-instrument`` with only ``OTEL_*`` variables, sending to a real
OTLP receiver; the error when the library it instruments is missing; its options refused.

::

    with OTLPReceiver() as rx:
        done = run_instrumented(APP, tmp_path, rx, "zero-code-app")
    assert done.returncode == 0, done.stderr[-4000:]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

import bitnet_obs
from bitnet_obs.testing import OTLPReceiver

__all__ = ["assert_refused", "missing_library", "opentelemetry_instrument", "run_instrumented"]


def opentelemetry_instrument() -> str:
    """The ``opentelemetry-instrument`` launcher of this environment."""
    here = Path(sys.executable).parent / "opentelemetry-instrument"
    found = str(here) if here.exists() else shutil.which("opentelemetry-instrument")
    if found is None:
        pytest.fail("opentelemetry-instrument is missing: install the [hf] extra")
    return found


def run_instrumented(
    app: str, workdir: Path, receiver: OTLPReceiver, service: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``opentelemetry-instrument python app.py`` in ``workdir``: this environment less its
    ``OTEL_*``/``BITNET_OBS_*`` variables, plus traces and metrics over gRPC to ``receiver``
    as ``service``, and ``env``."""
    script = workdir / "app.py"
    script.write_text(app)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_OBS_"))}
    clean.update(
        OTEL_SERVICE_NAME=service,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_EXPORTER_OTLP_INSECURE="true",
        **env,
    )
    return subprocess.run(
        [opentelemetry_instrument(), sys.executable, str(script)],
        env=clean,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=240,
    )


def missing_library(library: str, instrumentor: str) -> str:
    """What ``instrument()`` of ``instrumentor`` (``module:Class``) says when ``library``
    cannot be imported (made unimportable in a fresh interpreter): the ModuleNotFoundError's
    message, which the opentelemetry-instrument loader reads as "library absent: skip"."""
    module, _, cls = instrumentor.partition(":")
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{library!r}] = None  # as if it were not installed
        from {module} import {cls}
        try:
            {cls}().instrument(skip_dep_check=True)
        except ModuleNotFoundError as exc:
            print("MISSING:", exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "MISSING:" in done.stdout, done.stdout
    return done.stdout


#: Options every instrumentor checks alike (instrumentation/_options.py).
COMMON_BAD_OPTIONS: tuple[Mapping[str, Any], ...] = (
    {"tracer_provider": object()},
    {"server_port": 8080},  # a port needs its address
    {"server_address": "h", "server_port": "80"},
)


def assert_refused(instrumentor: Any, options: Iterable[Mapping[str, Any]]) -> None:
    """Each of ``options`` makes ``instrument()`` raise ConfigError saying what is accepted,
    and leaves nothing instrumented."""
    for bad in (*options, *COMMON_BAD_OPTIONS):
        with pytest.raises(bitnet_obs.ConfigError) as raised:
            instrumentor.instrument(**bad)
        assert not instrumentor.is_instrumented_by_opentelemetry, bad
        assert "accepted" in str(raised.value), bad
