"""Locate external binaries (prometheus, promtool, alertmanager) needed by some tests.

A missing tool skips the test locally but *fails* it in CI (``CI=true`` or ``CI=1``), so a
broken CI image cannot silently turn the integration tests into skips.
"""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL_HINT = (
    "install it with `python tools/ensure_tools.py` (as root, or with --sudo) or "
    "`apt-get install --no-install-recommends prometheus prometheus-alertmanager` on "
    "Debian/Ubuntu, or download it from https://prometheus.io/download/ and put it on PATH "
    "(or point ${env} at the binary)"
)


def in_ci() -> bool:
    """True when the ``CI`` environment variable is "true" or "1" (case-insensitive)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def env_override_name(name: str) -> str:
    """Environment variable that may point at a binary: ``promtool`` -> ``PROMTOOL_BIN``."""
    return name.upper().replace("-", "_").replace(".", "_") + "_BIN"


def which_tool(name: str, *alternatives: str) -> str | None:
    """Path of the first of ``name``/``alternatives`` found, or None (no pytest side effects).

    ``$<NAME>_BIN`` (e.g. ``PROMETHEUS_BIN``) wins over ``PATH`` when it names an executable.
    """
    override = os.environ.get(env_override_name(name))
    if override:
        found = shutil.which(override)
        if found:
            return found
    for candidate in (name, *alternatives):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def find_tool(name: str, *alternatives: str) -> str:
    """Return the path of ``name`` (or the first available alternative name).

    If none is found: ``pytest.fail`` when running in CI, otherwise ``pytest.skip``; the
    message says how to install it.
    """
    found = which_tool(name, *alternatives)
    if found:
        return found
    names = " / ".join(repr(n) for n in (name, *alternatives))
    msg = f"required tool {names} not found; " + INSTALL_HINT.replace(
        "${env}", f"${env_override_name(name)}"
    )
    if in_ci():
        pytest.fail(msg + " [CI is set, so this is an error rather than a skip]", pytrace=False)
    pytest.skip(msg)
