"""The llama.cpp engine the tests run: what ``tools/ensure_llama.py`` built once per machine.

``llama-server`` and ``llama-quantize``, the shared libraries, and the llama.cpp sources vendored
in llama-cpp-python's source distribution (``convert_hf_to_gguf.py``, ``gguf-py``, the
``models/ggml-vocab-*.gguf`` vocabularies). ``llama_cpp`` itself is installed into the nox
environment from the wheel the tool made (its ``llama_cpp/lib`` holds these libraries).

A test asks for the ``llama_engine`` fixture (tests/conftest.py). When the engine is missing, a
test skips saying how to build it; under ``CI=true`` it fails instead, so a broken CI image can
never turn these tests into skips.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from tests._support.tools import in_ci

TOOL = Path(__file__).resolve().parents[2] / "tools" / "ensure_llama.py"
BUILD_HINT = (
    "build it once per machine with `python tools/ensure_llama.py` (tens of minutes on 2 cores; "
    "`nox -s tests` runs it), then `pip install $(python tools/ensure_llama.py --print wheel)`"
)


@dataclass(frozen=True)
class LlamaEngine:
    """Paths of one built engine (all absolute)."""

    root: Path
    version: str  #: llama-cpp-python's version, whose vendored llama.cpp was built
    server: Path  #: llama-server
    quantize: Path  #: llama-quantize
    lib_dir: Path  #: libllama.so, libggml*.so, libmtmd.so
    wheel: Path  #: llama-cpp-python's wheel with those libraries in llama_cpp/lib
    source: Path  #: the vendored llama.cpp tree
    build_seconds: float  #: what the one-time build took on this machine

    @property
    def converter(self) -> Path:
        """``convert_hf_to_gguf.py`` (run it with ``gguf_py`` first on ``sys.path``)."""
        return self.source / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        """The ``gguf`` package of this very llama.cpp (the converter's own writer)."""
        return self.source / "gguf-py"

    def vocab(self, name: str) -> Path:
        """A vocabulary-only GGUF shipped with llama.cpp: ``vocab("llama-spm")``."""
        path = self.source / "models" / f"ggml-vocab-{name}.gguf"
        if not path.exists():
            known = sorted(p.name[len("ggml-vocab-") : -5] for p in self.vocabularies())
            raise ValueError(f"no vocabulary {name!r}; llama.cpp ships: {', '.join(known)}")
        return path

    def vocabularies(self) -> list[Path]:
        return sorted((self.source / "models").glob("ggml-vocab-*.gguf"))


@cache
def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_ensure_llama", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_ensure_llama", module)
    spec.loader.exec_module(module)
    return module


def locate_engine() -> tuple[LlamaEngine | None, str]:
    """The built engine and ``""``, or ``None`` and why not (no pytest side effects)."""
    tool = _tool()
    cache_dir = tool.cache_root()
    manifest = tool.ensure(cache_dir, build=False)
    if manifest is None:
        return None, f"the llama.cpp engine is not built in {cache_dir}; " + BUILD_HINT
    paths = manifest["paths"]
    engine = LlamaEngine(
        root=Path(manifest["root"]),
        version=str(manifest["version"]),
        server=Path(paths["server"]),
        quantize=Path(paths["quantize"]),
        lib_dir=Path(paths["lib"]),
        wheel=Path(paths["wheel"]),
        source=Path(paths["source"]),
        build_seconds=float(manifest["build_seconds"]),
    )
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None, "llama_cpp is not installed in this environment; " + BUILD_HINT
    lib_dir = Path(spec.origin).parent / "lib"
    if not any(lib_dir.glob("libllama.*")):
        return (
            None,
            f"llama_cpp is installed without its libraries (none in {lib_dir}); " + BUILD_HINT,
        )
    return engine, ""


@cache
def _located() -> tuple[LlamaEngine | None, str]:
    return locate_engine()


def require_engine() -> LlamaEngine:
    """The engine, else ``pytest.fail`` under CI and ``pytest.skip`` elsewhere, saying why."""
    engine, reason = _located()
    if engine is not None:
        return engine
    if in_ci():
        pytest.fail(reason + " [CI is set, so this is an error rather than a skip]", pytrace=False)
    pytest.skip(reason)
