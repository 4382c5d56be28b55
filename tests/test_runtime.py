"""The runtime fingerprint (bitnet_obs.runtime): this machine's real /proc/cpuinfo, committed
ARM and AVX2-less x86 ones, and bitnet.runtime.info (one series per process)."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bitnet_obs import runtime
from bitnet_obs.runtime import CpuInfo, parse_cpuinfo, read_cpu
from bitnet_obs.testing import TelemetryCapture, capture_telemetry

FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"
PROC = Path("/proc/cpuinfo")


@pytest.mark.skipif(not PROC.exists(), reason="no /proc/cpuinfo on this OS")
def test_this_machines_cpuinfo() -> None:
    text = PROC.read_text()
    cpu = read_cpu()
    assert cpu is read_cpu()  # read once per process
    if platform.machine() in ("x86_64", "AMD64", "i686"):
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())  # type: ignore[union-attr]
        assert model is not None and cpu.model == model.group(1).strip()
        assert cpu.vendor == re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
        assert set(cpu.features) == {
            name for flag, name in runtime.X86_FEATURES.items() if flag in flags
        }
        if {"avx512f", "avx512bw", "avx512vl"} <= flags:
            assert cpu.simd == "avx512"
        elif "avx2" in flags:
            assert cpu.simd == "avx2"
        else:
            assert cpu.simd in ("sse", "none")
    else:  # pragma: no cover - CI is x86
        assert cpu.simd in ("neon_dotprod", "neon", "none")


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        (
            "aarch64_graviton3.txt",
            CpuInfo("Neoverse-V1", "ARM", ("neon", "dotprod", "i8mm", "fp16", "bf16", "sve"),
                    "neon_dotprod"),
        ),
        (
            "aarch64_raspberry_pi5.txt",
            CpuInfo("Cortex-A76", "ARM", ("neon", "dotprod", "fp16"), "neon_dotprod"),
        ),
        (
            "aarch64_big_little.txt",
            CpuInfo("Cortex-A55 + Cortex-A76", "ARM", ("neon", "dotprod", "fp16"), "neon_dotprod"),
        ),
        (
            "x86_64_celeron_no_avx2.txt",
            CpuInfo("Intel(R) Celeron(R) N4020 CPU @ 1.10GHz", "GenuineIntel", ("ssse3",), "sse"),
        ),
    ],
)  # fmt: skip
def test_other_machines(fixture: str, expected: CpuInfo) -> None:
    machine = fixture.split("_")[0] if fixture.startswith("aarch64") else "x86_64"
    assert read_cpu(FIXTURES / fixture) == expected
    assert parse_cpuinfo((FIXTURES / fixture).read_text(), machine) == expected


def test_unknown_parts_and_machines() -> None:
    text = (FIXTURES / "aarch64_raspberry_pi5.txt").read_text().replace("0xd0b", "0xd99")
    assert parse_cpuinfo(text, "aarch64").model == "ARM part 0xd99"
    weird = text.replace("0x41", "0x99")
    assert parse_cpuinfo(weird, "aarch64").model == "0x99 part 0xd99"
    assert parse_cpuinfo(weird, "aarch64").vendor == "unknown"
    old_arm = (
        "processor : 0\nmodel name : ARMv7 Processor rev 4 (v7l)\nFeatures : half thumb vfp neon\n"
    )
    assert parse_cpuinfo(old_arm, "armv7l") == CpuInfo(
        "ARMv7 Processor rev 4 (v7l)", "unknown", (), "neon"
    )
    unknown = CpuInfo("unknown", "unknown", (), "unknown")
    assert parse_cpuinfo("", "x86_64") == unknown
    assert parse_cpuinfo("garbage without colons\n\n\n", "arm64") == unknown
    assert read_cpu(FIXTURES / "no-such-file") == unknown  # macOS, Windows


def test_fingerprint_never_imports_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "from bitnet_obs import runtime\n"
        "info = runtime.fingerprint()\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print(info.torch, info.transformers)\n"
        "import torch\n"
        "print(runtime.fingerprint().torch == torch.__version__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.splitlines() == ["not_imported not_imported", "True"]


def test_fingerprint_attributes() -> None:
    info = runtime.fingerprint()
    attrs = info.attributes()
    assert attrs["bitnet.numpy.version"] == np.__version__
    assert attrs["process.runtime.version"] == (
        f"{platform.python_implementation().lower()} {platform.python_version()}"
    )
    assert attrs["host.arch"] == platform.machine()
    assert attrs["os.type"] == platform.system().lower()
    assert attrs["bitnet.cpu.features"] == (",".join(info.cpu.features) or "none")
    assert all(isinstance(v, str) and v for v in attrs.values())


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture
    runtime.disable()


def test_runtime_info_is_one_fixed_series(
    cap: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("a subprocess at collection time")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    runtime.enable()
    runtime.enable()  # idempotent: still one callback
    (first,) = cap.points("bitnet.runtime.info")
    assert first.value == 1
    assert first.attributes == runtime.fingerprint().attributes()
    fake = types.ModuleType("transformers")
    fake.__version__ = "99.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformers", fake)  # the application imports it later
    assert runtime.fingerprint().transformers == "99.0"
    (again,) = cap.points("bitnet.runtime.info")
    assert again.attributes == first.attributes  # the series stays the same
    runtime.disable()
    assert cap.points("bitnet.runtime.info") == []


# llama_print_system_info() as upstream llama.cpp (0.3.36's) prints it: only what is on, per
# backend; and as bitnet.cpp's older fork does: every flag, 0 or 1 (a build without AVX2).
UPSTREAM = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
BITNET_CPP_NO_AVX2 = (
    "AVX = 1 | AVX_VNNI = 0 | AVX2 = 0 | AVX512 = 0 | AVX512_VBMI = 0 | AVX512_VNNI = 0 | "
    "AVX512_BF16 = 0 | FMA = 0 | NEON = 0 | SVE = 0 | ARM_FMA = 0 | F16C = 0 | FP16_VA = 0 | "
    "RISCV_VECT = 0 | WASM_SIMD = 0 | BLAS = 0 | SSE3 = 1 | SSSE3 = 1 | VSX = 0 | "
    "MATMUL_INT8 = 0 | LLAMAFILE = 1 | "
)
ARM = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | MATMUL_INT8 = 1 | DOTPROD = 1 | REPACK = 1 | "


def test_parse_system_info() -> None:
    assert runtime.parse_system_info(UPSTREAM) == (
        "sse3", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2", "llamafile", "openmp", "repack"
    )  # fmt: skip
    assert runtime.parse_system_info(BITNET_CPP_NO_AVX2) == ("avx", "sse3", "ssse3", "llamafile")
    assert runtime.parse_system_info(ARM)[:2] == ("neon", "arm_fma")
    assert runtime.parse_system_info("") == ()
    # llama-server's log line starts with thread counts: not features
    line = "n_threads = 6 (n_threads_batch = 6) / 6 | AVX = 1 | "
    assert runtime.parse_system_info(line) == ("avx",)
    assert runtime.parse_system_info("CUDA : ARCHS = 890 | USE_GRAPHS = 1 | ") == (
        "archs", "use_graphs"
    )  # fmt: skip
    hostile = " | ".join(f"F{i} = 1" for i in range(500)) + " | \x1b[2J = 1 | A" * 3
    assert len(runtime.parse_system_info(hostile)) == 40  # bounded


def _engine(text: str, version: str = "0.3.36") -> types.ModuleType:
    """A stand-in llama_cpp module as an application would have imported it."""
    fake = types.ModuleType("llama_cpp")
    fake.__version__ = version  # type: ignore[attr-defined]
    fake.llama_print_system_info = lambda: text.encode()  # type: ignore[attr-defined]
    return fake


@pytest.mark.parametrize(
    ("text", "simd", "features"),
    [
        (UPSTREAM, "avx2", "sse3,ssse3,avx,avx2,f16c,fma,bmi2,llamafile,openmp,repack"),
        (BITNET_CPP_NO_AVX2, "sse", "avx,sse3,ssse3,llamafile"),
        (ARM, "neon_dotprod", "neon,arm_fma,fp16_va,matmul_int8,dotprod,repack"),
        ("CPU : REPACK = 1 | ", "none", "repack"),
        ("", "none", "none"),
    ],
)
def test_the_engine_build_beside_the_cpu(
    monkeypatch: pytest.MonkeyPatch, text: str, simd: str, features: str
) -> None:
    """A build without the kernels the CPU could run shows as llama_cpp.simd below cpu.simd."""
    monkeypatch.setitem(sys.modules, "llama_cpp", _engine(text))
    attrs = runtime.fingerprint().attributes()
    assert attrs["bitnet.llama_cpp.version"] == "0.3.36"
    assert attrs["bitnet.llama_cpp.simd"] == simd
    assert attrs["bitnet.llama_cpp.features"] == features


def test_without_llama_cpp_the_engine_is_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    attrs = runtime.fingerprint().attributes()
    assert attrs["bitnet.llama_cpp.version"] == "not_imported"
    assert attrs["bitnet.llama_cpp.features"] == attrs["bitnet.llama_cpp.simd"] == "not_imported"
    broken = types.ModuleType("llama_cpp")  # no llama_print_system_info: unknown, counted
    monkeypatch.setitem(sys.modules, "llama_cpp", broken)
    attrs = runtime.fingerprint().attributes()
    assert attrs["bitnet.llama_cpp.features"] == attrs["bitnet.llama_cpp.simd"] == "unknown"


def test_refresh_takes_a_new_fingerprint_once(
    cap: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    runtime.enable()
    (first,) = cap.points("bitnet.runtime.info")
    assert first.attributes["bitnet.llama_cpp.version"] == "not_imported"
    monkeypatch.setitem(sys.modules, "llama_cpp", _engine(UPSTREAM))  # imported later
    (same,) = cap.points("bitnet.runtime.info")
    assert same.attributes == first.attributes
    runtime.refresh()
    (now,) = cap.points("bitnet.runtime.info")
    assert now.attributes["bitnet.llama_cpp.simd"] == "avx2"
    assert {k: v for k, v in now.attributes.items() if "llama_cpp" not in k} == {
        k: v for k, v in first.attributes.items() if "llama_cpp" not in k
    }
