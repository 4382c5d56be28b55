"""Shared pytest fixtures for the bitnet-obs test-suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import llama_model
from tests._support.llama import LlamaEngine, require_engine
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


# ==================================================================================
# The llama.cpp engine (tools/ensure_llama.py builds it once per machine; tests/_support/llama.py).
# A missing engine skips the test locally and fails it when CI=true.
# ==================================================================================


@pytest.fixture(scope="session")
def llama_engine() -> LlamaEngine:
    """llama-server, llama-quantize, the libraries and the vendored llama.cpp sources.

    ``llama_cpp`` is importable when this fixture is granted (its wheel carries the same
    libraries): ``engine.server``, ``engine.quantize``, ``engine.lib_dir``, ``engine.source``,
    ``engine.converter``, ``engine.gguf_py``, ``engine.vocab("llama-spm")``.
    """
    return require_engine()


@pytest.fixture(scope="session")
def tiny_bitnet(llama_engine: LlamaEngine) -> llama_model.TinyBitnetFiles:
    """The tiny BitNet b1.58 files (tests/_support/llama_model.py), built once per machine.

    ``files.master`` (float master weights, safetensors), ``files.f32`` (llama.cpp's converter),
    ``files.tq1_0`` / ``files.tq2_0`` (llama.cpp's quantizer), ``files.golden`` (crossval golden
    from transformers), ``files.prompts`` (its prompt ids). Run them with
    ``llama_model.llama_greedy(llama_model.load_llama(files.tq2_0))``.
    """
    return llama_model.build(llama_engine)


@pytest.fixture(scope="session")
def broken_bitnet(
    tiny_bitnet: llama_model.TinyBitnetFiles, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """``broken_bitnet(kind, fmt="tq2_0")``: a GGUF with one conversion bug, made once per
    session. Kinds: ``swap``, ``sign``, ``wrong_ffn``, ``constant``
    (``llama_model.BROKEN_TENSORS`` names the tensors each one touches)."""
    out = tmp_path_factory.mktemp("broken-bitnet")
    made: dict[tuple[str, str], Path] = {}

    def make(kind: str, fmt: str = "tq2_0") -> Path:
        if (kind, fmt) not in made:
            made[kind, fmt] = llama_model.break_conversion(tiny_bitnet, kind, out, fmt)
        return made[kind, fmt]

    return make
