"""The runtime fingerprint: what this process runs on, as ``bitnet.runtime.info`` (value 1).

"Works on my machine" is the usual story behind a BitNet model that answers "!!!!": bitnet.cpp's
x86 kernels need AVX2 (without it they compile to empty bodies), the ARM ones NEON, and the fast
paths dotprod or i8mm. One series per process carries the CPU model, the instruction-set
features that matter to those kernels, OS/arch and the versions of Python, numpy and -- when
the application already imported them -- torch, transformers and llama-cpp-python (never
imported here). With llama-cpp-python, llama.cpp's own ``llama_print_system_info()`` says what
its build compiled in: a CPU with AVX2 under a build without it (the kernels bitnet.cpp's #547
describes as empty) shows as ``bitnet.cpu.simd="avx2"`` beside ``bitnet.llama_cpp.simd="sse"``::

    from bitnet_obs import runtime

    runtime.fingerprint().cpu.simd          # 'avx512', 'avx2', 'sse', 'neon_dotprod', 'neon', ...
    runtime.enable()                        # report bitnet.runtime.info; configure() calls it

``/proc/cpuinfo`` is read once per process (never a subprocess, never per scrape); elsewhere
(macOS, Windows) the CPU fields say ``unknown``. The attributes are fixed at the first
collection, after the application had its chance to import torch, so the series changes
within a process only when :func:`refresh` asks for a new fingerprint (the llama.cpp
instrumentor does, once, for an engine imported after the first collection).
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from opentelemetry.metrics import CallbackOptions, Observation

from bitnet_obs import _instruments, _state
from bitnet_obs import _semconv as sc
from bitnet_obs._selfmon import internal_error

__all__ = [
    "CpuInfo",
    "RuntimeInfo",
    "X86_FEATURES",
    "ARM_FEATURES",
    "disable",
    "enable",
    "fingerprint",
    "parse_cpuinfo",
    "parse_system_info",
    "read_cpu",
    "refresh",
]

UNKNOWN = "unknown"
NOT_IMPORTED = "not_imported"
# /proc/cpuinfo flag -> reported name, in the order reported.
X86_FEATURES: Mapping[str, str] = {
    "ssse3": "ssse3",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512vnni",
    "avx512_bf16": "avx512bf16",
    "avx_vnni": "avxvnni",
    "amx_int8": "amx_int8",
}
ARM_FEATURES: Mapping[str, str] = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimdhp": "fp16",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
}
# (implementer, part) -> name, from the Arm/vendor technical reference manuals.
_ARM_PARTS: Mapping[tuple[int, int], str] = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x46, 0x001): "A64FX",
    (0x48, 0xD01): "Kunpeng-920",
    (0xC0, 0xAC3): "Ampere-1",
}
_ARM_VENDORS: Mapping[int, str] = {
    0x41: "ARM",
    0x46: "Fujitsu",
    0x48: "HiSilicon",
    0x4E: "NVIDIA",
    0x51: "Qualcomm",
    0x61: "Apple",
    0xC0: "Ampere",
}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as far as BitNet kernels care. ``simd`` is the widest family bitnet.cpp-style
    kernels can use: ``avx512`` (F+BW+VL), ``avx2`` (the x86 I2_S/TL2 kernels' minimum),
    ``sse`` (no BitNet kernel), ``neon_dotprod``, ``neon``, ``none`` or ``unknown``."""

    model: str
    vendor: str
    features: tuple[str, ...]
    simd: str


@dataclass(frozen=True)
class EngineBuild:
    """What a llama.cpp build compiled in, from its ``llama_print_system_info()``: ``features``
    lower-case (``avx2``, ``neon``, ``dotprod``, ``openmp``, ...) and ``simd`` the widest family
    in the sense of :class:`CpuInfo`, so the two compare."""

    version: str
    features: tuple[str, ...]
    simd: str


_NO_ENGINE = EngineBuild(NOT_IMPORTED, (), NOT_IMPORTED)


@dataclass(frozen=True)
class RuntimeInfo:
    cpu: CpuInfo
    arch: str
    os_type: str
    python: str
    numpy: str
    torch: str
    transformers: str
    llama_cpp: EngineBuild = _NO_ENGINE

    def attributes(self) -> dict[str, str]:
        """The attributes of ``bitnet.runtime.info``."""
        return {
            sc.HOST_ARCH: self.arch,
            sc.OS_TYPE: self.os_type,
            sc.HOST_CPU_MODEL_NAME: self.cpu.model,
            sc.HOST_CPU_VENDOR_ID: self.cpu.vendor,
            "bitnet.cpu.features": ",".join(self.cpu.features) or "none",
            "bitnet.cpu.simd": self.cpu.simd,
            sc.PROCESS_RUNTIME_VERSION: self.python,
            "bitnet.numpy.version": self.numpy,
            "bitnet.torch.version": self.torch,
            "bitnet.transformers.version": self.transformers,
            "bitnet.llama_cpp.version": self.llama_cpp.version,
            "bitnet.llama_cpp.features": ",".join(self.llama_cpp.features)
            or (self.llama_cpp.simd if self.llama_cpp.simd in (NOT_IMPORTED, UNKNOWN) else "none"),
            "bitnet.llama_cpp.simd": self.llama_cpp.simd,
        }


def _blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1].setdefault(key.strip().lower(), value.strip())
    return [b for b in blocks if b]


def _hex(value: str) -> int | None:
    try:
        return int(value, 16)
    except ValueError:
        return None


def _arm_model(cores: list[dict[str, str]]) -> str:
    names: list[str] = []
    for core in cores:
        implementer = _hex(core.get("cpu implementer", ""))
        part = _hex(core.get("cpu part", ""))
        if implementer is None or part is None:
            continue
        name = _ARM_PARTS.get((implementer, part)) or (
            f"{_ARM_VENDORS.get(implementer, hex(implementer))} part {part:#05x}"
        )
        if name not in names:
            names.append(name)
    return " + ".join(names) if names else UNKNOWN  # big.LITTLE: "Cortex-A76 + Cortex-A55"


def parse_cpuinfo(text: str, machine: str) -> CpuInfo:
    """Read the text of ``/proc/cpuinfo`` (x86 or ARM; ``machine`` as ``platform.machine()``)::

    cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text(), "x86_64")
    """
    blocks = _blocks(text)
    cores = [b for b in blocks if "flags" in b or "features" in b]
    if not cores:
        return CpuInfo(UNKNOWN, UNKNOWN, (), UNKNOWN)
    first = cores[0]
    if "flags" in first:  # x86
        flags = set(first["flags"].split())
        features = tuple(name for flag, name in X86_FEATURES.items() if flag in flags)
        if {"avx512f", "avx512bw", "avx512vl"} <= flags:
            simd = "avx512"
        elif "avx2" in flags:
            simd = "avx2"
        else:
            simd = "sse" if flags & {"sse2", "ssse3", "sse4_1", "sse4_2"} else "none"
        model = first.get("model name") or UNKNOWN
        return CpuInfo(model, first.get("vendor_id") or UNKNOWN, features, simd)
    flags = set(first["features"].split())
    features = tuple(name for flag, name in ARM_FEATURES.items() if flag in flags)
    is_arm64 = machine.lower() in ("aarch64", "arm64") or "asimd" in flags
    if "asimddp" in flags:
        simd = "neon_dotprod"
    elif "asimd" in flags or ("neon" in flags and not is_arm64):
        simd = "neon"
    else:
        simd = "none"
    implementer = _hex(first.get("cpu implementer", ""))
    vendor = _ARM_VENDORS.get(implementer, UNKNOWN) if implementer is not None else UNKNOWN
    named = first.get("model name") if not is_arm64 else None  # 32-bit ARM names the core
    return CpuInfo(named or _arm_model(cores), vendor, features, simd)


_MAX_FEATURES = 40  # a build lists about 15; the attribute stays bounded whatever it prints


def parse_system_info(text: str) -> tuple[str, ...]:
    """The features a llama.cpp build says it compiled in, from ``llama_print_system_info()``.

    Upstream prints only what is on (``CPU : SSE3 = 1 | AVX2 = 1 | ... |``), bitnet.cpp's older
    fork every flag (``AVX = 1 | AVX2 = 0 | NEON = 0 | ...``); either way a feature counts when
    its value is not 0. Names are lower-cased, the backend prefix (``CPU :``) dropped::

        parse_system_info("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 0 | ")   # ('sse3', 'avx')
    """
    found: list[str] = []
    for part in text.split("|"):
        name, sep, value = part.rpartition("=")
        if not sep:
            continue
        name = name.rpartition(":")[2].strip().lower()
        value = value.strip()
        if not name or value in ("", "0") or not all(c.isalnum() or c == "_" for c in name):
            continue
        if name.isascii() and name not in found and len(found) < _MAX_FEATURES:
            found.append(name[:32])
    return tuple(found)


def _engine_simd(features: tuple[str, ...]) -> str:
    have = set(features)
    if "avx512" in have or "avx512f" in have:
        return "avx512"
    if "avx2" in have:
        return "avx2"
    if "neon" in have:
        return "neon_dotprod" if have & {"dotprod", "arm_dotprod"} else "neon"
    if have & {"avx", "sse3", "ssse3"}:
        return "sse"
    return "none"


def _llama_cpp() -> EngineBuild:
    """llama-cpp-python's version and its library's build, when the application imported it."""
    module = sys.modules.get("llama_cpp")
    if module is None:
        return _NO_ENGINE
    version = str(getattr(module, "__version__", UNKNOWN))
    try:
        raw = module.llama_print_system_info()
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        features = parse_system_info(text)
    except Exception as exc:  # a stub, or a library without the function
        internal_error("runtime", exc, "reading llama_print_system_info()")
        return EngineBuild(version, (), UNKNOWN)
    return EngineBuild(version, features, _engine_simd(features))


_cpu: CpuInfo | None = None
_cpu_lock = threading.Lock()


def read_cpu(path: str | os.PathLike[str] = "/proc/cpuinfo") -> CpuInfo:
    """The CPU of this machine, read once per process (``unknown`` where there is no
    ``/proc/cpuinfo``); another ``path`` is read every time (tests, support bundles)."""
    global _cpu
    default = str(path) == "/proc/cpuinfo"
    if default and _cpu is not None:
        return _cpu
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpu = CpuInfo(UNKNOWN, UNKNOWN, (), UNKNOWN)
    else:
        cpu = parse_cpuinfo(text, platform.machine())
    if default:
        with _cpu_lock:
            _cpu = cpu
    return cpu


def _version(module: str) -> str:
    loaded = sys.modules.get(module)
    if loaded is None:
        return NOT_IMPORTED
    return str(getattr(loaded, "__version__", UNKNOWN))


def fingerprint() -> RuntimeInfo:
    """This process' fingerprint now (torch, transformers and llama-cpp-python only if already
    imported)."""
    return RuntimeInfo(
        cpu=read_cpu(),
        arch=platform.machine() or UNKNOWN,
        os_type=(platform.system() or UNKNOWN).lower(),
        python=f"{platform.python_implementation().lower()} {platform.python_version()}",
        numpy=np.__version__,
        torch=_version("torch"),
        transformers=_version("transformers"),
        llama_cpp=_llama_cpp(),
    )


_lock = threading.Lock()
_enabled = False
_frozen: dict[str, str] | None = None


def _observe(_options: CallbackOptions) -> Iterable[Observation]:
    global _frozen
    try:
        if _frozen is None:
            _frozen = fingerprint().attributes()
        return [Observation(1, _frozen)]
    except Exception as exc:
        internal_error("runtime", exc, "observing bitnet.runtime.info")
        return []


def enable() -> None:
    """Report ``bitnet.runtime.info`` from the next collection on; idempotent."""
    global _enabled
    with _lock:
        if not _enabled:
            _instruments.RUNTIME_INFO.register(_observe)
            _enabled = True


def refresh() -> None:
    """Take a new fingerprint at the next collection (the series changes once): for an engine
    the application imported after the first one. Idempotent; never raises."""
    global _frozen
    with _lock:
        _frozen = None


def disable() -> None:
    """Stop reporting it (the next :func:`enable` takes a new fingerprint)."""
    global _enabled, _frozen
    with _lock:
        _instruments.RUNTIME_INFO.unregister(_observe)
        _enabled, _frozen = False, None


@_state.on_fork
def _reinit_after_fork() -> None:
    global _lock, _cpu_lock
    _lock, _cpu_lock = threading.Lock(), threading.Lock()


_state.on_reset(disable)
