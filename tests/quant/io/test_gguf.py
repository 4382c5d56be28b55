"""GGUF reader (bitnet_obs.quant.io._gguf) on files written by the gguf package's own writer."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnet_obs import quant
from bitnet_obs.quant import io
from tests._support import checkpoints as cp

gguf = pytest.importorskip("gguf")


def _read_all(path: Path, **kwargs: object) -> dict[str, io.Tensor]:
    with io.open_checkpoint(path, **kwargs) as ckpt:  # type: ignore[arg-type]
        return {t.name: ckpt.read(t) for t in ckpt.weights()}


@pytest.mark.parametrize("layout", ["x86", "arm"])
def test_i2s_tensors_decode_to_the_packed_codes_and_scale(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 384), dtype=np.float32)
    codes, scale = quant.quantize_weights(w)
    path = cp.write_gguf(
        tmp_path / "m.gguf", {"blk.0.attn_q.weight": ("I2_S", (codes, scale, layout))}
    )
    with io.open_checkpoint(path, layout=layout) as ckpt:
        (info,) = ckpt.tensors
        assert (info.shape, info.dtype, info.kind) == ((256, 384), "I2_S", "ternary")
        assert ckpt.type_counts() == {"I2_S": 1}
        tensor = ckpt.read(info)
    assert isinstance(tensor, io.TernaryTensor)
    assert tensor.format == "i2_s"
    np.testing.assert_array_equal(tensor.codes, codes)
    assert tensor.scale == np.float32(scale)


def test_the_wrong_layout_scrambles_the_codes(tmp_path: Path) -> None:
    codes, scale = quant.quantize_weights(np.random.default_rng(1).standard_normal((128, 256)))
    path = cp.write_gguf(tmp_path / "m.gguf", {"w": ("I2_S", (codes, scale, "arm"))})
    (tensor,) = _read_all(path, layout="x86").values()
    assert isinstance(tensor, io.TernaryTensor)
    assert (tensor.codes != codes).mean() > 0.3


@pytest.mark.parametrize("qtype", ["TQ1_0", "TQ2_0"])
def test_tq_tensors_quantized_by_the_gguf_package(tmp_path: Path, qtype: str) -> None:
    """Ternary weights s*t quantized by gguf's own TQ code: we get t back, and s per block;
    values agree with gguf's dequantize."""
    from gguf import quants

    rng = np.random.default_rng(2)
    codes, scale = quant.quantize_weights(rng.standard_normal((64, 512), dtype=np.float32))
    w = codes.astype(np.float32) * np.float32(scale)
    w[:, :256][0] = 0  # one all-zero block: its scale is 0
    path = cp.write_gguf(tmp_path / "m.gguf", {"blk.0.ffn_up.weight": (qtype, w)})
    (tensor,) = _read_all(path).values()
    assert isinstance(tensor, io.TernaryTensor)
    assert tensor.format == qtype.lower() and tensor.block_size == 256
    np.testing.assert_array_equal(tensor.codes, np.sign(w).astype(np.int8))
    assert tensor.block_scales is not None
    assert set(np.unique(tensor.block_scales)) == {0.0, np.float16(scale)}
    assert tensor.scale == pytest.approx(float(np.float16(scale)))
    expected = quants.dequantize(
        quants.quantize(w, getattr(gguf.GGMLQuantizationType, qtype)),
        getattr(gguf.GGMLQuantizationType, qtype),
    )
    deq = tensor.codes * np.repeat(tensor.block_scales, 256).reshape(w.shape)
    np.testing.assert_array_equal(deq, expected)


def test_float_types_match_the_gguf_packages_own_reader(tmp_path: Path) -> None:
    from gguf import quants

    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 256), dtype=np.float32)
    path = cp.write_gguf(
        tmp_path / "m.gguf",
        {"a": ("F32", w), "b": ("F16", w), "c": ("BF16", w), "d": ("Q8_0", w)},
    )
    ours = _read_all(path)
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        expected = quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        got = ours[t.name]
        assert isinstance(got, io.FloatTensor)
        np.testing.assert_array_equal(np.asarray(got.values, np.float32), expected)
    assert ours["a"].values.base is not None  # F32 is a view of the mapped file
    assert ours["c"].values.dtype == np.float32


def test_metadata_and_custom_alignment(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "bitnet")
    writer.add_custom_alignment(64)
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(100)])
    writer.add_tensor("x", np.arange(96, dtype=np.float32).reshape(3, 32))
    writer.add_tensor("y", np.ones((5,), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with io.open_checkpoint(path) as ckpt:
        assert ckpt.metadata["general.alignment"] == 64
        assert ckpt.metadata["general.name"] == "tiny"
        assert ckpt.metadata["tokenizer.ggml.tokens"] == "[100 strings]"
        assert "architecture bitnet" in ckpt.notes
        got = {t.name: ckpt.read(t) for t in ckpt.tensors}
    np.testing.assert_array_equal(got["x"].values, np.arange(96).reshape(3, 32))  # type: ignore[union-attr]
    np.testing.assert_array_equal(got["y"].values, np.ones(5))  # type: ignore[union-attr]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 8),
    blocks=st.integers(1, 4),
    layout=st.sampled_from(["x86", "arm"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_i2s_bytes_decode_as_the_layout_rule_says(
    rows: int, blocks: int, layout: str, seed: int
) -> None:
    """Independent of our packer: value j of a block is byte j % g at shift 6 - 2*(j // g)."""
    block = quant.I2S_BLOCK[layout]  # type: ignore[index]
    g = block // 4
    data = np.random.default_rng(seed).integers(0, 3, rows * blocks * block).astype(np.uint8)
    packed = np.zeros(rows * blocks * g, np.uint8)
    for j in range(data.size):
        b, v = divmod(j, block)
        packed[b * g + v % g] |= data[j] << (6 - 2 * (v // g))
    raw = np.concatenate(
        [packed, np.frombuffer(np.float32(0.5).tobytes(), np.uint8), np.zeros(28, np.uint8)]
    )
    codes, scale = quant.unpack_i2s(raw, (rows, blocks * block), layout)  # type: ignore[arg-type]
    np.testing.assert_array_equal(codes.reshape(-1), data.astype(np.int8) - 1)
    assert scale == 0.5


def test_a_2_bit_value_of_3_is_reported_as_corrupt(tmp_path: Path) -> None:
    codes, scale = quant.quantize_weights(np.random.default_rng(4).standard_normal((4, 128)))
    path = cp.write_gguf(tmp_path / "m.gguf", {"w": ("I2_S", (codes, scale, "x86"))})
    data = bytearray(path.read_bytes())
    start = data.index(quant.pack_i2s(codes, scale))  # the tensor's bytes in the file
    data[start + 5] = 0xFF
    path.write_bytes(bytes(data))
    with (
        io.open_checkpoint(path) as ckpt,
        pytest.raises(io.ReadError, match="value 3"),
    ):
        ckpt.read(ckpt.tensors[0])


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"GGUF\x03\x00", "cut short"),
        (_header(1 << 60, 0), "declares 1152921504606846976 tensors"),
        (_header(0, 1 << 40), "metadata entries"),
        (
            _header(0, 1) + struct.pack("<Q", 1 << 50) + b"k" * 64,
            "cut short reading a metadata key",
        ),
        (_header(0, 0, version=1), "GGUF version 1"),
        (_header(0, 0, version=3 << 24), "big-endian"),
        (
            _header(1, 0) + _string(b"w") + struct.pack("<I", 9) + b"\x00" * 40,
            "declares 9 dimensions",
        ),
        (
            _header(1, 0) + _string(b"w") + struct.pack("<IQQIQ", 2, 1 << 20, 1 << 20, 0, 0),
            "truncated or corrupt",
        ),
        (
            _header(1, 1) + _string(b"k") + struct.pack("<IIQ", 9, 4, 1 << 61) + b"\x00" * 16,
            "array elements",
        ),
    ],
)
def test_corrupt_headers_are_read_errors_not_allocations(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(io.ReadError, match=fragment):
        io.open_checkpoint(path)


def test_overlapping_and_misaligned_tensors_are_refused(tmp_path: Path) -> None:
    def file(offset_b: int) -> Path:
        body = _header(2, 0)
        for name, off in ((b"a", 0), (b"b", offset_b)):
            body += _string(name) + struct.pack("<IQIQ", 1, 64, 0, off)
        body += b"\x00" * (-len(body) % 32) + b"\x00" * 1024
        path = tmp_path / f"m{offset_b}.gguf"
        path.write_bytes(body)
        return path

    with io.open_checkpoint(file(256)) as ckpt:
        assert [t.shape for t in ckpt.tensors] == [(64,), (64,)]
    with pytest.raises(io.ReadError, match="overlap"):
        io.open_checkpoint(file(128))
    with pytest.raises(io.ReadError, match="not a multiple of 32"):
        io.open_checkpoint(file(257))


def test_tl1_without_a_kernel_config_says_why(tmp_path: Path) -> None:
    path = cp.write_gguf(tmp_path / "m.gguf", {"blk.0.attn_q.weight": ("F32", np.ones((4, 128)))})
    data = bytearray(path.read_bytes())
    at = data.index(b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight") + 4 + 16
    assert struct.unpack_from("<I", data, at)[0] == 0
    struct.pack_into("<I", data, at, 38)  # TL1 in bitnet.cpp's fork
    path.write_bytes(bytes(data))
    with io.open_checkpoint(path) as ckpt:
        (info,) = ckpt.tensors
        assert info.dtype == "TL1"
        assert info.unreadable is not None and "--kernel-config" in info.unreadable
        assert "does not record" in info.unreadable


def test_type_39_is_mxfp4_outside_bitnet_files(tmp_path: Path) -> None:
    path = cp.write_gguf(tmp_path / "m.gguf", {"w": ("F32", np.ones((2, 32)))})
    data = bytearray(path.read_bytes())
    at = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00w") + 9 + 4 + 16
    struct.pack_into("<I", data, at, 39)
    path.write_bytes(bytes(data))
    with io.open_checkpoint(path) as ckpt:
        (info,) = ckpt.tensors
    assert info.dtype == "MXFP4" and info.unreadable == "MXFP4 is not a float or ternary type"


@pytest.mark.parametrize("fmt", ["TL1", "TL2"])
def test_tl_tensors_with_the_kernel_config_they_were_tiled_for(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(5)
    ini = cp.kernel_config_ini(tmp_path / "kernel_config.ini", fmt)
    table = quant.read_kernel_config(ini)
    tensors: dict[str, tuple[str, object]] = {}
    expected = {}
    for i, shape in enumerate([(256, 256), (512, 256), (256, 512)]):
        codes, scale = quant.quantize_weights(rng.standard_normal(shape, dtype=np.float32))
        tensors[f"blk.{i}.ffn_up.weight"] = (fmt, (codes, scale, table))
        expected[f"blk.{i}.ffn_up.weight"] = (codes, scale)
    path = cp.write_gguf(tmp_path / "m.gguf", tensors)
    with io.open_checkpoint(path, kernel_config=ini) as ckpt:
        assert ckpt.companions == {f"{n}_scale" for n in expected}
        got = {t.name: ckpt.read(t) for t in ckpt.weights()}
    assert set(got) == set(expected)
    for name, (codes, scale) in expected.items():
        tensor = got[name]
        assert isinstance(tensor, io.TernaryTensor) and tensor.format == fmt.lower()
        np.testing.assert_array_equal(tensor.codes, codes)
        assert tensor.scale == np.float32(scale)
        assert "bm=128" in tensor.note
    with io.open_checkpoint(path) as ckpt:  # without it: a clear reason, no guess
        assert all("--kernel-config" in (t.unreadable or "") for t in ckpt.weights())


def test_a_kernel_config_without_the_tensors_shape(tmp_path: Path) -> None:
    ini = tmp_path / "kernel_config.ini"
    ini.write_text("[Kernels_0]\nm = 3200\nk = 8640\nbm = 160\nbk = 64\nbmm = 32\n")
    codes, scale = quant.quantize_weights(np.random.default_rng(6).standard_normal((256, 256)))
    cfg = quant.KernelConfig(128, 64, 32)
    path = cp.write_gguf(tmp_path / "m.gguf", {"blk.0.attn_q.weight": ("TL1", (codes, scale, cfg))})
    with (
        io.open_checkpoint(path, kernel_config=ini) as ckpt,
        pytest.raises(io.ReadError, match="no entry for shape 256x256"),
    ):
        ckpt.read(ckpt.weights()[0])
    (tmp_path / "bad.ini").write_text("[Kernels_0]\nm = x\n")
    with pytest.raises(io.ReadError, match="kernel"):
        io.open_checkpoint(path, kernel_config=tmp_path / "bad.ini")


def test_a_vocabulary_is_skipped_not_decoded_and_a_cut_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "bitnet")
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(5000)])
    writer.add_tensor("x", np.ones((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with io.open_checkpoint(path) as ckpt:
        assert ckpt.metadata["tokenizer.ggml.tokens"] == "[5000 strings]"
        assert [t.name for t in ckpt.tensors] == ["x"]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:41000])  # room for 5000 lengths, not all the strings
    with pytest.raises(io.ReadError, match="cut short in the 5000 strings"):
        io.open_checkpoint(cut)
