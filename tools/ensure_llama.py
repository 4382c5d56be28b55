#!/usr/bin/env python3
"""Build the llama.cpp engine the test-suite runs, once per machine, from the package index only.

Run by the nox ``tests`` and ``bench`` sessions before pytest (stdlib only, any Python >= 3.10)::

    python tools/ensure_llama.py                 # build if missing (minutes, once), else a lookup
    python tools/ensure_llama.py --check         # only report; exit 1 when the engine is missing
    python tools/ensure_llama.py --print wheel   # one path on stdout: wheel, python-wheel,
                                                 # server, quantize, lib, source, root; or json
    python tools/ensure_llama.py --python-only   # only the llama_cpp wheel without libraries
                                                 # (what mypy needs: no compiler involved)

What it does:

* ``pip download --no-deps --no-binary :all: llama-cpp-python==VERSION`` (the one pinned version;
  its SHA-256 is checked against the pin) into the cache; nothing is fetched from anywhere else.
* Needs cmake >= 3.21 (from PATH, else the ``cmake`` wheel installed into the running virtual
  environment) and a C/C++ compiler (as root on Debian/Ubuntu, ``apt-get install g++ make``).
* Configures the llama.cpp vendored in that source distribution with cmake and builds only the
  targets the tests use: ``llama-server`` and ``llama-quantize``, which pull in the shared
  libraries ``llama-cpp-python`` loads (``libllama``, ``libggml``, ``libggml-base``,
  ``libggml-cpu``, ``libmtmd``). No curl, no OpenSSL, no web UI (neither built with npm nor
  downloaded prebuilt), no tests or examples. The libraries get plain sonames
  (``libllama.so``, no version suffix: a wheel cannot hold symlinks) and the run path
  ``$ORIGIN:$ORIGIN/../lib``, so they resolve each other wherever the directory is moved.
* Builds the ``llama_cpp`` package with its own build backend and ``-DLLAMA_BUILD=OFF`` (Python
  files only, no second compilation of llama.cpp) and adds the libraries above to the wheel's
  ``llama_cpp/lib``, where ``llama_cpp`` loads them by default: installed with
  ``pip install WHEEL``, it works in any process of that environment -- ``opentelemetry-instrument``
  and other subprocesses too -- with no ``LLAMA_CPP_LIB_PATH`` to carry along.

The cache is ``$BITNET_OBS_LLAMA_CACHE``, else ``$XDG_CACHE_HOME/bitnet-obs/llama-cpp``, else
``~/.cache/bitnet-obs/llama-cpp``; one directory per key: the version and checksum of the
source distribution, the cmake flags and targets, the machine, C library and C++ compiler, and
the CPU's instruction-set extensions. ``GGML_NATIVE=ON`` compiles the CPU backend with
``-march=native`` (the kernels people actually run, and what ``llama_print_system_info()``
reports); keying on the CPU's extensions makes a cache copied to, or shared with, a machine whose
CPU lacks one of them build its own engine instead of dying of an illegal instruction.

A build happens in a private directory renamed into place only once complete (its manifest is
written last), under an exclusive lock: a second run waits for the first and then reuses its
result; a directory left by a killed run is discarded. With the cache warm, a run is a lookup
(milliseconds). Exit status: 0 when the engine is ready; 1 when it is missing with ``--check``,
or could not be built under ``--strict`` or ``CI=true`` (tests then fail, never skip); otherwise
0 with a warning, and the tests that need the engine skip saying why.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

PREFIX = "[ensure_llama]"

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
#: bump when the layout of an engine directory or the meaning of a flag changes
REVISION = 2

BINARIES = ("llama-server", "llama-quantize")
#: the shared libraries llama-cpp-python loads (llama, ggml) and those they need
LIBRARIES = ("llama", "ggml", "ggml-base", "ggml-cpu", "mtmd")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../lib",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DGGML_NATIVE=ON",
    "-DGGML_CCACHE=OFF",
)
#: what the llama_cpp package's own CMakeLists builds: nothing (its Python files only)
PYTHON_ONLY_CMAKE_ARGS = "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"
#: /proc/cpuinfo flags that -march=native may use: instruction-set extensions only (a flag such
#: as "hypervisor" or a vulnerability mitigation does not change the code the compiler emits)
ISA_FLAG = re.compile(
    r"^(sse\w*|ssse3|avx\w*|fma\w*|f16c|bmi\d|adx|aes|vaes|pclmulqdq|vpclmulqdq|gfni|sha_ni|"
    r"popcnt|abm|lzcnt|movbe|amx\w*|xsave\w*|rdrand|rdseed|clflushopt|clwb|serialize|"
    r"asimd\w*|sve\w*|sme\w*|fp|fphp|i8mm|bf16|dotprod|asimddp|vsx\w*|altivec|rvv)$"
)
PRINTABLE = {
    "root": "the engine directory",
    "json": "the whole manifest, as JSON",
    "wheel": "llama-cpp-python's wheel with the libraries",
    "python-wheel": "llama-cpp-python's wheel without libraries (type checking)",
    "server": "llama-server",
    "quantize": "llama-quantize",
    "lib": "the directory of the shared libraries",
    "source": "the vendored llama.cpp (convert_hf_to_gguf.py, gguf-py, models/)",
}


class BuildError(RuntimeError):
    """The engine could not be made; the message says what to do."""


def say(msg: str) -> None:
    print(f"{PREFIX} {msg}", file=sys.stderr, flush=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def cache_root() -> Path:
    explicit = os.environ.get("BITNET_OBS_LLAMA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bitnet-obs" / "llama-cpp"


# ------------------------------------------------------------------------------- the key


def cpu_isa() -> list[str]:
    """The CPU's instruction-set extensions, as /proc/cpuinfo names them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features", "isa"):
            return sorted({f for f in value.split() if ISA_FLAG.match(f)})
    return []


def compiler_id() -> str:
    cxx = os.environ.get("CXX") or "c++"
    try:
        proc = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"{cxx}: not found"
    lines = proc.stdout.strip().splitlines()
    return lines[0] if lines else f"{cxx}: no version"


def key_material() -> dict[str, Any]:
    return {
        "revision": REVISION,
        "llama_cpp_python": VERSION,
        "sdist_sha256": SDIST_SHA256,
        "cmake_flags": list(CMAKE_FLAGS),
        "binaries": list(BINARIES),
        "libraries": list(LIBRARIES),
        "system": platform.system(),
        "machine": platform.machine(),
        "libc": "-".join(platform.libc_ver()),
        "compiler": compiler_id(),
        "cpu_isa": cpu_isa(),
    }


def engine_key(material: dict[str, Any]) -> str:
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- the manifest


def load_manifest(root: Path, key: str) -> dict[str, Any] | None:
    """The engine in ``root`` when complete and built for ``key``, with absolute paths."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None
    paths = manifest.get("paths")
    if not isinstance(paths, dict):
        return None
    resolved = {name: str(root / rel) for name, rel in paths.items()}
    if not all(Path(p).exists() for p in resolved.values()):
        return None
    if not all(os.access(resolved[b], os.X_OK) for b in ("server", "quantize")):
        return None
    libraries = manifest.get("libraries")
    if not isinstance(libraries, list) or not all(
        (Path(resolved["lib"]) / str(name)).is_file() for name in libraries
    ):
        return None
    return {**manifest, "root": str(root), "paths": resolved}


def python_wheel_dir(cache: Path) -> Path:
    return cache / f"python-{VERSION}-{SDIST_SHA256[:12]}"


def find_python_wheel(cache: Path) -> Path | None:
    done = python_wheel_dir(cache)
    wheels = sorted(done.glob("llama_cpp_python-*.whl")) if (done / "DONE").exists() else []
    return wheels[0] if wheels else None


# ------------------------------------------------------------------------------- locking


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (waiting for another run that holds it)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no concurrent runs expected
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another run is making {what}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -------------------------------------------------------------------------- the download


def run_logged(
    cmd: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    progress: bool = False,
) -> None:
    """Run ``cmd`` with its output in ``log``; on failure raise with the log's tail."""
    say("$ " + " ".join(cmd))
    full_env = {**os.environ, **env} if env else None
    last_report = 0.0
    with open(log, "a", encoding="utf-8", errors="replace") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise BuildError(f"could not run {cmd[0]}: {exc}") from None
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if progress and (time.monotonic() - last_report > 60 or "Linking" in line):
                last_report = time.monotonic()
                say("  " + line.strip()[:160])
        code = proc.wait()
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        raise BuildError(
            f"{cmd[0]} exited with {code}; the last lines of {log}:\n" + "\n".join(tail)
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_sdist(cache: Path) -> Path:
    """llama-cpp-python's source distribution from the package index, checksum verified."""
    target = cache / "sdist" / SDIST
    if target.exists() and sha256_of(target) == SDIST_SHA256:
        return target
    with exclusive(cache / ".sdist.lock", "the source distribution"):
        if target.exists() and sha256_of(target) == SDIST_SHA256:
            return target
        with tempfile.TemporaryDirectory(dir=cache, prefix=".sdist-") as tmp:
            log = Path(tmp) / "pip.log"
            run_logged(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--dest",
                    tmp,
                    f"llama-cpp-python=={VERSION}",
                ],
                log,
            )
            got = Path(tmp) / SDIST
            if not got.exists():
                raise BuildError(f"pip download did not produce {SDIST} (see {log})")
            digest = sha256_of(got)
            if digest != SDIST_SHA256:
                raise BuildError(
                    f"{SDIST} has SHA-256 {digest}, not the pinned {SDIST_SHA256}: refusing it"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, target)
    say(f"source distribution: {target}")
    return target


def extract(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12: the archive was checksum-verified above
            tar.extractall(dest)
    return dest / f"llama_cpp_python-{VERSION}"


# --------------------------------------------------------------------------------- wheels


def build_python_wheel(src: Path, out_dir: Path, log: Path) -> Path:
    """llama-cpp-python's wheel made by its own build backend, with no llama.cpp inside."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_logged(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "--wheel-dir",
            str(out_dir),
            str(src),
        ],
        log,
        env={"CMAKE_ARGS": PYTHON_ONLY_CMAKE_ARGS},
    )
    wheels = sorted(out_dir.glob("llama_cpp_python-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"pip wheel left {len(wheels)} wheels in {out_dir} (see {log})")
    with zipfile.ZipFile(wheels[0]) as whl:
        if any(n.startswith("llama_cpp/lib/") for n in whl.namelist()):
            raise BuildError(f"{wheels[0].name} already holds libraries: CMAKE_ARGS was ignored")
    return wheels[0]


def ensure_python_wheel(cache: Path) -> Path:
    found = find_python_wheel(cache)
    if found:
        return found
    done = python_wheel_dir(cache)
    with exclusive(cache / f".{done.name}.lock", "the llama_cpp wheel"):
        found = find_python_wheel(cache)
        if found:
            return found
        sdist = ensure_sdist(cache)
        _discard(done)
        partial = cache / f".{done.name}.partial"
        _discard(partial)
        partial.mkdir(parents=True)
        try:
            src = extract(sdist, partial / "src")
            say("building llama-cpp-python's Python package (no compilation)")
            build_python_wheel(src, partial / "wheel", partial / "build.log")
            shutil.rmtree(partial / "src")
            for whl in (partial / "wheel").iterdir():
                os.replace(whl, partial / whl.name)
            (partial / "wheel").rmdir()
            (partial / "DONE").write_text(VERSION + "\n", encoding="ascii")
            os.replace(partial, done)
        except BaseException:
            _discard(partial)
            raise
    found = find_python_wheel(cache)
    assert found is not None
    return found


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def add_libraries(wheel: Path, libs: Sequence[Path], out: Path) -> Path:
    """A copy of ``wheel`` with ``libs`` in ``llama_cpp/lib/`` and its RECORD rewritten."""
    rows: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        record = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        for info in src.infolist():
            if info.filename == record:
                continue
            data = src.read(info)
            dst.writestr(info, data)
            if not info.filename.endswith("/"):
                rows.append((info.filename, _record_hash(data), str(len(data))))
        for lib in libs:
            data = lib.read_bytes()
            info = zipfile.ZipInfo(f"llama_cpp/lib/{lib.name}", date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o100755 & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, data)
            rows.append((info.filename, _record_hash(data), str(len(data))))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerows([*rows, (record, "", "")])
        dst.writestr(record, text.getvalue())
    return out


# ---------------------------------------------------------------------------- the engine


def find_cmake(log: Path) -> str:
    """cmake >= 3.21 from PATH, else the ``cmake`` wheel installed into this environment."""
    found = shutil.which("cmake")
    if found:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
        match = re.search(r"(\d+)\.(\d+)", out.stdout)
        if match and (int(match[1]), int(match[2])) >= (3, 21):
            return found
    if sys.prefix == sys.base_prefix:
        raise BuildError(
            "cmake >= 3.21 is needed to build llama.cpp: install it (apt-get install cmake, or "
            "pip install cmake) or run this tool from a virtual environment, where it installs "
            "the cmake wheel itself"
        )
    run_logged([sys.executable, "-m", "pip", "install", "cmake>=3.21"], log)
    venv_cmake = Path(sys.executable).parent / "cmake"
    if not venv_cmake.exists():
        raise BuildError(f"pip installed cmake but {venv_cmake} is missing")
    return str(venv_cmake)


def check_compiler(log: Path) -> None:
    """A C and a C++ compiler; as root on Debian/Ubuntu, ``apt-get install g++ make`` if not."""
    tools = (os.environ.get("CC") or "cc", os.environ.get("CXX") or "c++")
    if all(shutil.which(tool) for tool in tools):
        return
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if is_root and shutil.which("apt-get") and not (os.environ.get("CC") or os.environ.get("CXX")):
        say("no C/C++ compiler: installing g++ and make with apt-get")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
        for cmd in (
            [*apt, "update"],
            [*apt, "install", "-y", "--no-install-recommends", "g++", "make"],
        ):
            with contextlib.suppress(BuildError):
                run_logged(cmd, log, env=env)
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise BuildError(
            f"no C/C++ compiler ({', '.join(missing)} not found): install one (Debian/Ubuntu: "
            "apt-get install --no-install-recommends g++ make) and run this again"
        )


def library_file(build_bin: Path, name: str) -> Path:
    for candidate in (f"lib{name}.so", f"lib{name}.dylib", f"{name}.dll"):
        if (build_bin / candidate).exists():
            return build_bin / candidate
    raise BuildError(f"the build produced no library {name!r} in {build_bin}")


def _children_cpu() -> float:
    """CPU seconds of the finished child processes (the compilers): the load-independent cost."""
    try:
        import resource
    except ImportError:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check_loadable(files: Sequence[Path]) -> None:
    """Every shared library ``files`` need resolves (``ldd``: nothing "not found")."""
    if shutil.which("ldd") is None:
        return
    for path in files:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
        missing = [ln.split()[0] for ln in out.stdout.splitlines() if "not found" in ln]
        if missing:
            raise BuildError(f"{path.name} needs {', '.join(missing)}, which the build lacks")


def build_engine(cache: Path, final: Path, key: str, material: dict[str, Any], jobs: int) -> None:
    partial = cache / f".{final.name}.partial-{os.getpid()}"
    for stale in cache.glob(f".{final.name}.partial-*"):
        say(f"removing {stale.name}, left by an interrupted build")
        _discard(stale)
    _discard(final)
    partial.mkdir(parents=True)
    try:
        log = partial / "build.log"
        check_compiler(log)
        cmake = find_cmake(log)
        python_wheel = ensure_python_wheel(cache)
        sdist = ensure_sdist(cache)
        started, cpu_started = time.monotonic(), _children_cpu()
        src = extract(sdist, partial)
        source = src / "vendor" / "llama.cpp"
        build = partial / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        say(f"configuring llama.cpp ({source})")
        run_logged([cmake, "-S", str(source), "-B", str(build), *generator, *CMAKE_FLAGS], log)
        say(
            f"building {', '.join(BINARIES)} with {jobs} jobs: the one-time cost, tens of "
            f"minutes on 2 cores (full log: {log})"
        )
        run_logged(
            [cmake, "--build", str(build), "--parallel", str(jobs), "--target", *BINARIES],
            log,
            progress=True,
        )
        build_seconds = time.monotonic() - started
        cpu_seconds = _children_cpu() - cpu_started
        bin_dir, lib_dir = partial / "bin", partial / "lib"
        bin_dir.mkdir()
        lib_dir.mkdir()
        for name in BINARIES:
            shutil.copy2(build / "bin" / name, bin_dir / name)
        for name in LIBRARIES:
            library_file(build / "bin", name)  # present, or say which is missing
        # every shared library of the build: the binaries need some of their own
        # (libllama-server-impl, libllama-quantize-impl, libllama-common)
        for lib in sorted((build / "bin").iterdir()):
            if lib.is_file() and lib.name.startswith("lib") and ".so" in lib.name:
                shutil.copy2(lib, lib_dir / lib.name)
        check_loadable([*(bin_dir / n for n in BINARIES), *sorted(lib_dir.iterdir())])
        libs = [library_file(lib_dir, n) for n in LIBRARIES]
        shutil.rmtree(build)
        wheel_dir = partial / "wheel"
        wheel_dir.mkdir()
        wheel = add_libraries(python_wheel, [Path(p) for p in libs], wheel_dir / python_wheel.name)
        root_rel = src.relative_to(partial)
        manifest = {
            "key": key,
            "material": material,
            "version": VERSION,
            "build_seconds": round(build_seconds, 1),
            "build_cpu_seconds": round(cpu_seconds, 1),
            "jobs": jobs,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "libraries": sorted(p.name for p in lib_dir.iterdir()),
            "paths": {
                "server": f"bin/{BINARIES[0]}",
                "quantize": f"bin/{BINARIES[1]}",
                "lib": "lib",
                "wheel": str(wheel.relative_to(partial)),
                "source": str(root_rel / "vendor" / "llama.cpp"),
                "converter": str(root_rel / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"),
                "gguf_py": str(root_rel / "vendor" / "llama.cpp" / "gguf-py"),
            },
        }
        tmp = partial / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, partial / "manifest.json")
        os.replace(partial, final)
        say(
            f"engine built in {build_seconds / 60:.1f} min ({cpu_seconds / 60:.1f} CPU-minutes, "
            f"{jobs} jobs): {final}"
        )
    except BaseException:
        _discard(partial)
        raise


def ensure(
    cache: Path,
    *,
    build: bool = True,
    jobs: int | None = None,
    builder: Callable[[Path, Path, str, dict[str, Any], int], None] | None = None,
) -> dict[str, Any] | None:
    """The engine's manifest (absolute paths), building it first when missing and allowed.

    ``builder(cache, final, key, material, jobs)`` makes ``final`` (default: ``build_engine``).
    """
    material = key_material()
    key = engine_key(material)
    final = cache / f"llama.cpp-{VERSION}-{key}"
    manifest = load_manifest(final, key)
    if manifest is not None or not build:
        return manifest
    cache.mkdir(parents=True, exist_ok=True)
    with exclusive(cache / f".{final.name}.lock", "this engine"):
        manifest = load_manifest(final, key)  # another run may have built it while we waited
        if manifest is None:
            _discard(final)  # incomplete or damaged
            (builder or build_engine)(cache, final, key, material, jobs or os.cpu_count() or 2)
            manifest = load_manifest(final, key)
    if manifest is None:
        raise BuildError(f"{final} is incomplete after its build")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only look; exit 1 when missing")
    parser.add_argument(
        "--print",
        choices=sorted(PRINTABLE),
        dest="show",
        help="print one path (or the manifest) on stdout: "
        + "; ".join(f"{k}: {v}" for k, v in PRINTABLE.items()),
    )
    parser.add_argument(
        "--python-only",
        action="store_true",
        help="only make llama_cpp's wheel without libraries (for mypy)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache directory (default: $BITNET_OBS_LLAMA_CACHE or ~/.cache/bitnet-obs/llama-cpp)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when the engine cannot be made (the default when CI=true)",
    )
    args = parser.parse_args(argv)
    cache = (args.cache or cache_root()).expanduser().resolve()
    strict = args.strict or in_ci()
    try:
        if args.python_only:
            wheel = find_python_wheel(cache) if args.check else ensure_python_wheel(cache)
            if wheel is None:
                say(f"llama_cpp's wheel without libraries is not in {cache}")
                return 1
            if args.show in (None, "python-wheel"):
                print(wheel)
            return 0
        manifest = ensure(cache, build=not args.check, jobs=args.jobs)
    except BuildError as exc:
        say(f"ERROR: {exc}")
        say("the llama.cpp tests will " + ("FAIL (CI)" if in_ci() else "be skipped"))
        return 1 if strict else 0
    if manifest is None:
        say(f"the llama.cpp engine is not built in {cache}; run: python tools/ensure_llama.py")
        return 1
    paths = manifest["paths"]
    if args.show == "json":
        print(json.dumps(manifest, indent=2))
    elif args.show == "root":
        print(manifest["root"])
    elif args.show == "python-wheel":
        print(find_python_wheel(cache))
    elif args.show:
        print(paths[args.show])
    else:
        say(
            f"llama.cpp engine ready ({manifest['build_seconds'] / 60:.1f} min to build, "
            f"once): {manifest['root']}"
        )
        for name in ("server", "quantize", "lib", "wheel", "source"):
            say(f"  {name}: {paths[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
