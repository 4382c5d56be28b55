"""Self-tests of tools/ensure_llama.py and of the engine it built (tests/_support/llama.py)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests._support.llama import TOOL, LlamaEngine, _tool

# ------------------------------------------------------------------ the tool, no engine needed


def _fake_builder(calls: list[str], release: threading.Event | None = None) -> Any:
    """Makes an engine directory as build_engine lays it out, with empty stand-in files."""

    def build(cache: Path, final: Path, key: str, material: dict[str, Any], jobs: int) -> None:
        calls.append(key)
        if release is not None:
            assert release.wait(60), "the test never released the builder"
        partial = cache / f".{final.name}.partial-fake"
        for rel in ("bin/llama-server", "bin/llama-quantize", "wheel/x.whl", "src/convert.py"):
            (partial / rel).parent.mkdir(parents=True, exist_ok=True)
            (partial / rel).write_bytes(b"")
        for rel in ("bin/llama-server", "bin/llama-quantize"):
            (partial / rel).chmod(0o755)
        (partial / "lib").mkdir()
        paths = {
            "server": "bin/llama-server",
            "quantize": "bin/llama-quantize",
            "lib": "lib",
            "wheel": "wheel/x.whl",
            "source": "src",
        }
        manifest = {
            "key": key,
            "version": "0",
            "build_seconds": 1.0,
            "paths": paths,
            "libraries": [],
        }
        (partial / "manifest.json").write_text(json.dumps(manifest))
        os.replace(partial, final)

    return build


def test_key_follows_everything_the_binaries_depend_on() -> None:
    tool = _tool()
    material = tool.key_material()
    key = tool.engine_key(material)
    assert key == tool.engine_key(tool.key_material())  # stable from run to run
    for field, other in [
        ("cpu_isa", [*material["cpu_isa"], "avx512_fake"]),
        ("cmake_flags", [*material["cmake_flags"], "-DGGML_AVX2=OFF"]),
        ("compiler", "c++ (GCC) 99.0"),
        ("sdist_sha256", "0" * 64),
        ("machine", "riscv64"),
    ]:
        assert tool.engine_key({**material, field: other}) != key, field


def test_cpu_isa_keeps_instruction_sets_only() -> None:
    tool = _tool()
    isa = tool.cpu_isa()
    assert all(tool.ISA_FLAG.match(flag) for flag in isa)
    assert not {"hypervisor", "ht", "tsc", "constant_tsc"} & set(isa)
    if Path("/proc/cpuinfo").exists() and os.uname().machine == "x86_64":
        assert "sse2" in isa


def test_a_missing_or_foreign_engine_is_not_found(tmp_path: Path) -> None:
    tool = _tool()
    assert tool.ensure(tmp_path, build=False) is None
    calls: list[str] = []
    manifest = tool.ensure(tmp_path, builder=_fake_builder(calls))
    assert manifest is not None
    assert calls == [manifest["key"]]
    root = Path(manifest["root"])
    assert Path(manifest["paths"]["server"]) == root / "bin" / "llama-server"
    assert tool.ensure(tmp_path, builder=_fake_builder(calls)) == manifest  # cached
    assert len(calls) == 1
    assert tool.load_manifest(root, "another-key") is None
    (root / "bin" / "llama-quantize").unlink()  # an incomplete engine is rebuilt
    assert tool.load_manifest(root, manifest["key"]) is None
    assert tool.ensure(tmp_path, builder=_fake_builder(calls)) == manifest
    assert len(calls) == 2


def test_two_runs_at_once_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = _tool()
    said: list[str] = []
    monkeypatch.setattr(tool, "say", said.append)
    calls: list[str] = []
    release = threading.Event()
    builder = _fake_builder(calls, release)
    results: list[Any] = []
    runs = [
        threading.Thread(target=lambda: results.append(tool.ensure(tmp_path, builder=builder)))
        for _ in range(2)
    ]
    for run in runs:
        run.start()
    deadline = time.monotonic() + 60
    while not any("waiting" in line for line in said):  # the second run waits on the lock
        assert time.monotonic() < deadline, said
        time.sleep(0.01)
    release.set()
    for run in runs:
        run.join(60)
    assert len(calls) == 1
    assert len(results) == 2
    assert results[0] == results[1] is not None


def test_a_build_killed_halfway_leaves_nothing_that_looks_built(tmp_path: Path) -> None:
    tool = _tool()

    def dies(cache: Path, final: Path, key: str, material: Any, jobs: int) -> None:
        (cache / f".{final.name}.partial-1").mkdir()
        raise tool.BuildError("the compiler was killed")

    with pytest.raises(tool.BuildError):
        tool.ensure(tmp_path, builder=dies)
    assert tool.ensure(tmp_path, build=False) is None


def test_libraries_join_the_wheel_with_a_valid_record(tmp_path: Path) -> None:
    tool = _tool()
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("pkg/__init__.py", "x = 1\n")
        whl.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\nVersion: 1.0\n")
        whl.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,,\n")
    lib = tmp_path / "libllama.so"
    lib.write_bytes(b"\x7fELF not really")
    out = tool.add_libraries(wheel, [lib], tmp_path / "out.whl")
    with zipfile.ZipFile(out) as whl:
        names = set(whl.namelist())
        record = list(csv.reader(io.StringIO(whl.read("pkg-1.0.dist-info/RECORD").decode())))
        assert {row[0] for row in record} == names
        for name, digest, size in record:
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = whl.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode()
            assert int(size) == len(data)
        assert whl.read("llama_cpp/lib/libllama.so") == lib.read_bytes()
        assert whl.getinfo("llama_cpp/lib/libllama.so").external_attr >> 16 & 0o111


# ------------------------------------------------------------------------- the built engine


def _loaded(binary: Path) -> dict[str, str]:
    """What the dynamic loader resolves for ``binary``: library name -> path (or "not found")."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        name, arrow, where = line.strip().partition(" => ")
        if arrow:
            found[name] = where.split(" (")[0].strip()
    return found


@pytest.mark.slow
def test_the_engine_is_the_pinned_llama_cpp_trimmed(llama_engine: LlamaEngine) -> None:
    tool = _tool()
    assert llama_engine.version == tool.VERSION
    version = subprocess.run(
        [str(llama_engine.server), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert "version" in (version.stdout + version.stderr)
    for binary in (llama_engine.server, llama_engine.quantize):
        loaded = _loaded(binary)
        assert "not found" not in loaded.values(), loaded
        # llama.cpp's libraries from the engine's own directory, found through $ORIGIN
        assert Path(loaded["libllama.so"]).parent.resolve() == llama_engine.lib_dir.resolve()
        # nothing of the network: no curl, no OpenSSL
        assert not [n for n in loaded if "curl" in n or "ssl" in n or "crypto" in n], loaded
    for name in tool.LIBRARIES:
        assert (llama_engine.lib_dir / f"lib{name}.so").is_file()
    assert llama_engine.converter.is_file()
    assert (llama_engine.gguf_py / "gguf" / "__init__.py").is_file()
    assert (llama_engine.source / "conversion" / "bitnet.py").is_file()
    assert llama_engine.vocab("llama-spm").is_file()
    with pytest.raises(ValueError, match="llama-spm"):
        llama_engine.vocab("no-such-vocabulary")


@pytest.mark.slow
def test_llama_cpp_loads_the_engine_libraries_in_any_process(
    llama_engine: LlamaEngine, tmp_path: Path
) -> None:
    """A fresh interpreter (as opentelemetry-instrument starts one) needs no variable set."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "LD_LIBRARY_PATH")
    }
    code = (
        "import json, llama_cpp, pathlib\n"
        "lib = pathlib.Path(llama_cpp.llama_cpp._lib._name)\n"
        "info = llama_cpp.llama_print_system_info().decode()\n"
        "print(json.dumps({'lib': str(lib), 'version': llama_cpp.__version__, 'info': info}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["version"] == llama_engine.version
    lib = Path(got["lib"])
    assert lib.parent.parent.name == "llama_cpp"
    # the very build of the engine, not another llama.cpp
    assert lib.read_bytes() == (llama_engine.lib_dir / "libllama.so").read_bytes()
    assert "CPU" in got["info"]


def test_the_tool_answers_a_lookup_without_building(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--check", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "not built" in proc.stderr
    assert list(tmp_path.iterdir()) == []
