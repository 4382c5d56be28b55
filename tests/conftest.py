"""Shared pytest fixtures for the bitnet-obs test-suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support.prometheus import PrometheusFactory, PrometheusServer
from tests._support.tools import find_tool

# ==================================================================================
# Real Prometheus harness (tests/_support/prometheus.py, tests/_support/tools.py).
# A missing binary skips the test locally and fails it when CI=true.
# ==================================================================================


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the ``prometheus`` binary."""
    return find_tool("prometheus")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    """Path of the ``promtool`` binary."""
    return find_tool("promtool")


@pytest.fixture
def prometheus_factory(prometheus_bin: str, tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start real Prometheus servers: ``prom = prometheus_factory(["127.0.0.1:PORT"], ...)``.

    Accepts ``PrometheusServer``'s arguments, returns it started and ready (the first scrape
    comes ~5-7 s later; use ``prom.wait_for(...)``).  Config and ``prometheus.log`` are kept in
    ``tmp_path/prometheus-N``; every server is stopped at teardown.
    """
    servers: list[PrometheusServer] = []

    def start(targets: Any = (), **kwargs: Any) -> PrometheusServer:
        kwargs.setdefault("workdir", tmp_path / f"prometheus-{len(servers)}")
        kwargs.setdefault("binary", prometheus_bin)
        server = PrometheusServer(targets, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in reversed(servers):
        server.stop()


# ============================== end of Prometheus harness ==============================
