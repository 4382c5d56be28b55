"""Artifact readers and quant-report at checkpoint scale (issue 13, "Speed and memory").

* ``quant-report`` on a ~500M-parameter bf16 checkpoint (BitNet-shaped, generated in a temp
  dir with torch + safetensors, sharded): parameters measured per second and the peak RSS of the
  report process, against the bound "2x the largest tensor in float32 + the interpreter" (the
  interpreter is the peak RSS of the same command on a one-tensor checkpoint).
* Reading one GGUF I2_S tensor and unpacking its codes: GB/s of file bytes (goal >= 1 GB/s).

Nothing asserts on time; the figures go to ``benchmark.extra_info`` and the report.  The
checkpoint was just written, so it is read from the page cache, as a second report run would.
Run with ``pytest benchmarks/test_bench_artifacts.py --benchmark-only -s``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.conftest import REPORTERS
from bitnet_obs import quant
from bitnet_obs.quant import io

ROOT = Path(__file__).resolve().parent.parent
# ~495M parameters: 18 layers of hidden 1536 / GQA kv 384 / MLP 4096, a 32000-token embedding
HIDDEN, KV, FFN, LAYERS, VOCAB = 1536, 384, 4096, 18, 32000
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (FFN, HIDDEN),
    "mlp.up_proj": (FFN, HIDDEN),
    "mlp.down_proj": (HIDDEN, FFN),
}


def _checkpoint(directory: Path) -> tuple[int, int, int]:
    """Write the bf16 checkpoint in 3 shards; returns (params, measured params, largest)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    params = measured = largest = 0
    groups = [range(i, min(i + 6, LAYERS)) for i in range(0, LAYERS, 6)]
    for n, layers in enumerate(groups):
        shard = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        if n == 0:
            tensors["model.embed_tokens.weight"] = torch.randn(VOCAB, HIDDEN, generator=gen)
            tensors["model.norm.weight"] = torch.ones(HIDDEN)
        for i in layers:
            tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(HIDDEN)
            for name, shape in SHAPES.items():
                w = torch.randn(*shape, generator=gen) * 0.02
                tensors[f"model.layers.{i}.{name}.weight"] = w
                measured += w.numel()
        for name, t in tensors.items():
            params += t.numel()
            largest = max(largest, t.numel())
            weight_map[name] = shard
        save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(directory / shard))
        del tensors
    index = {"metadata": {"total_size": 2 * params}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return params, measured, largest


def _gguf_conversion(master: Path, out: Path) -> Path:
    """What bitnet.cpp's converter writes for *master*: I2_S projections (``quantize_weights``,
    ``pack_i2s``, type id 36 as its gguf-py fork writes), F32 norms, an F16 embedding."""
    gguf = pytest.importorskip("gguf")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, LAYERS)
    writer = gguf.GGUFWriter(str(out), "bitnet")
    with io.open_checkpoint(master) as ckpt:
        for info in ckpt.weights():
            values = ckpt.read(info).values  # type: ignore[union-attr]
            name = names.get_name(info.name, try_suffixes=(".weight",))
            if info.name.endswith("_proj.weight"):
                codes, scale = quant.quantize_weights(values)
                data = np.frombuffer(quant.pack_i2s(codes, scale), np.uint8)
                writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.I8)
                ti = writer.tensors[-1][name]
                ti.shape, ti.dtype = info.shape, 36
            elif values.ndim == 1:
                writer.add_tensor(name, np.asarray(values, np.float32))
            else:
                writer.add_tensor(name, np.asarray(values, np.float16))
            ckpt.release(info)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _report_process(path: Path, *extra: str) -> tuple[float, int, dict[str, object]]:
    """(seconds, peak RSS bytes, JSON summary) of ``bitnet-obs quant-report PATH --json``."""
    # VmHWM (peak resident set of this address space), not ru_maxrss: Linux carries ru_maxrss
    # over from the forking parent, here a pytest process holding torch.
    code = (
        "import re, sys, time\n"
        "from bitnet_obs.cli import main\n"
        "t = time.perf_counter()\n"
        "status = main(['quant-report', *sys.argv[1:], '--json'])\n"
        "seconds = time.perf_counter() - t\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
        "sys.stderr.write(f'{seconds} {hwm}\\n')\n"
        "sys.exit(status)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds, rss_kib = proc.stderr.split()[-2:]
    return float(seconds), int(rss_kib) * 1024, json.loads(proc.stdout)["summary"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int, int]]:
    directory = tmp_path_factory.mktemp("bf16-500m")
    yield directory, *_checkpoint(directory)
    for f in directory.iterdir():
        f.unlink()


RESULTS: dict[str, float] = {}


def test_quant_report_on_a_500m_bf16_checkpoint(  # type: ignore[no-untyped-def]
    benchmark, checkpoint: tuple[Path, int, int, int], tmp_path: Path, capsys
) -> None:
    directory, params, measured, largest = checkpoint
    tiny = tmp_path / "tiny.safetensors"
    from safetensors.numpy import save_file

    save_file({"layers.0.q_proj.weight": np.ones((128, 128), np.float32)}, str(tiny))
    runs: list[tuple[float, int]] = []

    def run() -> None:
        seconds, rss, summary = _report_process(directory)
        assert summary["measured"] == LAYERS * len(SHAPES)
        runs.append((seconds, rss))

    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    baseline = _report_process(tiny)[1]
    seconds = statistics.median(s for s, _ in runs)
    peak = max(rss for _, rss in runs)
    bound = 2 * 4 * largest + baseline
    info = {
        "params": params,
        "measured_params": measured,
        "seconds": seconds,
        "params_per_s": measured / seconds,
        "peak_rss_mib": peak / 2**20,
        "interpreter_rss_mib": baseline / 2**20,
        "largest_tensor_f32_mib": 4 * largest / 2**20,
        "bound_mib": bound / 2**20,
        "peak_over_bound": peak / bound,
    }
    benchmark.extra_info.update(info)
    RESULTS.update({f"report/{k}": float(v) for k, v in info.items()})
    with capsys.disabled():
        print(
            f"\nquant-report on {params / 1e6:.0f}M bf16 params ({measured / 1e6:.0f}M measured): "
            f"{seconds:.1f} s, {measured / seconds / 1e6:.1f} M params/s; peak RSS "
            f"{peak / 2**20:.0f} MiB (interpreter {baseline / 2**20:.0f} MiB, bound "
            f"{bound / 2**20:.0f} MiB = 2 x {4 * largest / 2**20:.0f} MiB + interpreter)"
        )


def test_quant_report_reference_check_at_scale(  # type: ignore[no-untyped-def]
    benchmark, checkpoint: tuple[Path, int, int, int], tmp_path: Path, capsys
) -> None:
    """A 446M-parameter I2_S GGUF checked against its bf16 master (every projection read from
    both files, quantized again, compared code by code, drift summed in float64)."""
    directory, _, measured, _ = checkpoint
    converted = _gguf_conversion(directory, tmp_path / "ggml-model-i2_s.gguf")
    runs: list[tuple[float, int]] = []

    def run() -> None:
        seconds, rss, summary = _report_process(converted, "--reference", str(directory))
        assert summary["faithful"] is True and summary["measured"] == LAYERS * len(SHAPES)
        runs.append((seconds, rss))

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    seconds, peak = runs[0]
    RESULTS["reference/seconds"] = seconds
    RESULTS["reference/params_per_s"] = measured / seconds
    RESULTS["reference/peak_rss_mib"] = peak / 2**20
    benchmark.extra_info.update({"seconds": seconds, "peak_rss_mib": peak / 2**20})
    with capsys.disabled():
        print(
            f"\nquant-report GGUF --reference bf16 master, {measured / 1e6:.0f}M projection "
            f"params: {seconds:.1f} s, {measured / seconds / 1e6:.1f} M params/s, peak RSS "
            f"{peak / 2**20:.0f} MiB"
        )


def test_gguf_i2s_read_and_unpack(benchmark, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    gguf = pytest.importorskip("gguf")
    m, k = 6912, 2560  # a BitNet-2B MLP projection
    codes = np.random.default_rng(0).integers(-1, 2, (m, k)).astype(np.int8)
    data = np.frombuffer(quant.pack_i2s(codes, 0.02), np.uint8)
    path = tmp_path / "i2s.gguf"
    writer = gguf.GGUFWriter(str(path), "bitnet")
    writer.add_tensor("blk.0.ffn_up.weight", data, raw_dtype=gguf.GGMLQuantizationType.I8)
    info = writer.tensors[-1]["blk.0.ffn_up.weight"]
    info.shape, info.dtype = (m, k), 36  # bitnet.cpp's I2_S
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ckpt = io.open_checkpoint(path)
    (tensor_info,) = ckpt.tensors
    times: list[float] = []

    def read() -> None:
        ckpt.release(tensor_info)  # every round faults the mapped pages in again
        start = time.perf_counter()
        tensor = ckpt.read(tensor_info)
        times.append(time.perf_counter() - start)
        assert isinstance(tensor, io.TernaryTensor)

    benchmark.pedantic(read, rounds=15, warmup_rounds=2)
    np.testing.assert_array_equal(ckpt.read(tensor_info).codes, codes)  # type: ignore[union-attr]
    ckpt.close()
    best, median = min(times[2:]), statistics.median(times[2:])
    rate = tensor_info.nbytes / median / 1e9
    benchmark.extra_info.update(
        {"gb_per_s_median": rate, "gb_per_s_best": tensor_info.nbytes / best / 1e9}
    )
    RESULTS["gguf/gb_per_s"] = rate
    RESULTS["gguf/gb_per_s_best"] = tensor_info.nbytes / best / 1e9
    RESULTS["gguf/ms"] = median * 1e3
    with capsys.disabled():
        print(
            f"\nGGUF I2_S {m}x{k} ({tensor_info.nbytes / 2**20:.1f} MiB of file): read and "
            f"unpacked in {median * 1e3:.2f} ms median = {rate:.2f} GB/s "
            f"(best {tensor_info.nbytes / best / 1e9:.2f} GB/s)"
        )


def report(_: dict[str, float]) -> list[str]:
    r = RESULTS
    lines = ["Artifacts (quant-report, GGUF reader)", ""]
    if "report/seconds" in r:
        lines.append(
            f"- quant-report, {r['report/params'] / 1e6:.0f}M bf16 params: "
            f"{r['report/params_per_s'] / 1e6:.1f} M params/s, peak RSS "
            f"{r['report/peak_rss_mib']:.0f} MiB (bound {r['report/bound_mib']:.0f} MiB)"
        )
    if "reference/seconds" in r:
        lines.append(
            f"- quant-report GGUF --reference master: {r['reference/params_per_s'] / 1e6:.1f} M "
            f"params/s, peak RSS {r['reference/peak_rss_mib']:.0f} MiB"
        )
    if "gguf/gb_per_s" in r:
        lines.append(
            f"- GGUF I2_S read + unpack: {r['gguf/gb_per_s']:.2f} GB/s of file "
            f"(best {r['gguf/gb_per_s_best']:.2f})"
        )
    return lines


REPORTERS.append(report)
