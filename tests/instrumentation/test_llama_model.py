"""What the llama.cpp instrumentor reads of a GGUF before llama.cpp loads it (_llama_model):
files written with the ``gguf`` package, as the converters write them; no engine needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bitnet_obs.instrumentation._llama_model import (
    ModelFile,
    clean_name,
    describe_file,
    quant_format,
)
from bitnet_obs.quant import io
from bitnet_obs.testing import TelemetryCapture, capture_telemetry
from tests._support import checkpoints as cp

KIND = "bitnet.obs.error.kind"


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def tensors(*specs: tuple[str, tuple[int, ...], str]) -> list[io.TensorInfo]:
    return [io.TensorInfo(name, shape, dtype, 0, "other") for name, shape, dtype in specs]


def test_ternary_matrices_decide_the_format() -> None:
    layer = [
        ("blk.0.attn_q.weight", (256, 256), "TQ2_0"),
        ("blk.0.ffn_up.weight", (768, 256), "TQ2_0"),
        ("token_embd.weight", (512, 256), "F16"),
        ("output.weight", (512, 256), "Q6_K"),
        ("blk.0.attn_norm.weight", (256,), "F32"),
        ("blk.0.ffn_norm.weight", (256,), "F32"),
        ("output_norm.weight", (256,), "F32"),
    ]
    assert quant_format(tensors(*layer)) == "tq2_0"
    # fewer ternary matrices than others still make a ternary model (its projections)
    many_floats = [*layer, *[(f"extra.{i}", (8, 8), "F16") for i in range(10)]]
    assert quant_format(tensors(*many_floats)) == "tq2_0"
    mixed = [*layer, ("blk.1.attn_q.weight", (256, 256), "TQ1_0")]
    assert quant_format(tensors(*mixed)) == "tq2_0"  # the more frequent ternary type


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("F32", "fp32"), ("F16", "fp16"), ("BF16", "bf16"), ("Q8_0", "q8_0"), ("Q4_0", "q4_0"),
     ("Q4_K", "other"), ("I2_S", "i2_s"), ("TL1", "tl1"), ("TL2", "tl2"), ("TQ1_0", "tq1_0")],
)  # fmt: skip
def test_the_matrices_type_maps_to_a_bounded_format(dtype: str, expected: str) -> None:
    specs = [(f"blk.{i}.w", (64, 64), dtype) for i in range(3)]
    norms = [(f"blk.{i}.norm", (64,), "F32") for i in range(5)]  # 1-D: never decide
    assert quant_format(tensors(*specs, *norms)) == expected


def test_a_file_without_matrices_is_other() -> None:
    assert quant_format(tensors(("norm", (8,), "F32"))) == "other"
    assert quant_format([]) == "other"


@pytest.mark.parametrize(("ternary", "fmt"), [("I2_S", "i2_s"), ("TQ1_0", "tq1_0"),
                                               ("TQ2_0", "tq2_0")])  # fmt: skip
def test_describe_a_converted_file(tmp_path: Path, ternary: str, fmt: str) -> None:
    path = cp.convert_to_gguf(tmp_path / "ggml-model.gguf", cp.master_weights(2), ternary)
    assert describe_file(path) == ModelFile("ggml-model", fmt, "bitnet")


def test_the_name_is_general_name_made_safe(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "weights-v3.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny\x1b[2Jmodel " + "x" * 200)  # a hostile, long name
    writer.add_tensor("blk.0.w", np.zeros((4, 32), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    found = describe_file(path)
    assert found.name.startswith("tiny\\x1b[2Jmodel xxx") and len(found.name) == 128
    assert found.name.isprintable()
    assert (found.quant_format, found.architecture) == ("fp16", "llama")
    assert clean_name("  ") == "unknown"


def test_an_unreadable_file_is_named_after_its_stem(cap: TelemetryCapture, tmp_path: Path) -> None:
    missing = describe_file(tmp_path / "absent-model.gguf")
    assert missing == ModelFile("absent-model", "other", None)
    assert cap.value("bitnet.obs.internal_errors", **{KIND: "llama_cpp_model_file"}) == 0
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)  # a header our reader refuses
    assert describe_file(bad) == ModelFile("broken", "other", None)
    assert cap.value("bitnet.obs.internal_errors", **{KIND: "llama_cpp_model_file"}) == 1
    assert describe_file(None) == ModelFile("unknown", "other", None)
