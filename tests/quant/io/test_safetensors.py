"""safetensors reader (bitnet_obs.quant.io._safetensors): files written by the safetensors
package, sharded checkpoints, and HF packed weights made by transformers' pack_weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from bitnet_obs import quant
from bitnet_obs.quant import io
from tests._support import checkpoints as cp

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_float_tensors_equal_what_torch_reads(tmp_path: Path, dtype: str) -> None:
    from safetensors.torch import load_file

    w = np.random.default_rng(0).standard_normal((48, 64)).astype(np.float32)
    path = cp.save_safetensors(tmp_path / "m.safetensors", {"w": w, "ids": np.arange(3)}, dtype)
    expected = load_file(str(path))["w"].float().numpy()
    with io.open_checkpoint(path) as ckpt:
        infos = {t.name: t for t in ckpt.tensors}
        assert (
            infos["ids"].kind == "other"
            and infos["ids"].unreadable == "dtype I64 is not a float type"
        )
        tensor = ckpt.read(infos["w"])
    assert isinstance(tensor, io.FloatTensor)
    assert tensor.dtype == dtype.upper()
    np.testing.assert_array_equal(np.asarray(tensor.values, np.float32), expected)


def test_sharded_checkpoint_through_its_index_or_directory(tmp_path: Path) -> None:
    master = cp.master_weights(layers=2)
    names = sorted(master)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        cp.save_safetensors(tmp_path / shard, {n: master[n] for n in part})
        weight_map.update(dict.fromkeys(part, shard))
    (tmp_path / io._safetensors.INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    for path in (tmp_path, tmp_path / io._safetensors.INDEX_NAME):
        with io.open_checkpoint(path) as ckpt:
            assert "2 shards" in ckpt.notes
            got = {t.name: ckpt.read(t) for t in ckpt.tensors}
        assert set(got) == set(master)
        for name, w in master.items():
            np.testing.assert_array_equal(got[name].values, w)  # type: ignore[union-attr]


def test_index_shard_names_cannot_leave_the_directory(tmp_path: Path) -> None:
    index = tmp_path / io._safetensors.INDEX_NAME
    index.write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    with pytest.raises(io.ReadError, match="no paths"):
        io.open_checkpoint(index)


@pytest.mark.parametrize("m", [256, 258])
@pytest.mark.parametrize(
    ("linear_class", "convention"),
    [("bitlinear", "t / weight_scale"), ("autobitlinear", "t * weight_scale")],
)
def test_hf_packed_weights_from_pack_weights(
    tmp_path: Path, m: int, linear_class: str, convention: str
) -> None:
    w = np.random.default_rng(1).standard_normal((m, 128)).astype(np.float32)
    master = {"model.layers.0.mlp.up_proj.weight": w}
    directory = cp.packed_checkpoint(tmp_path / "ckpt", master, linear_class=linear_class)
    codes, scale = quant.quantize_weights(w)
    with io.open_checkpoint(directory) as ckpt:
        (info,) = ckpt.weights()
        assert info.dtype == "U8 (HF packed)" and info.shape == (4 * -(-m // 4), 128)
        assert ckpt.companions == {"model.layers.0.mlp.up_proj.weight_scale"}
        assert any(convention in note and "config.json" in note for note in ckpt.notes)
        tensor = ckpt.read(info)
    assert isinstance(tensor, io.TernaryTensor) and tensor.format == "hf_packed"
    np.testing.assert_array_equal(tensor.codes[:m], codes)
    assert (tensor.codes[m:] == -1).all()  # pack_weights leaves padding fields 0 (read as t = -1)
    assert tensor.scale == pytest.approx(scale, rel=2**-8)  # weight_scale is stored in bf16


def test_hf_packed_without_config_assumes_bitlinear_and_says_so(tmp_path: Path) -> None:
    master = {"q_proj.weight": np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)}
    directory = cp.packed_checkpoint(tmp_path / "c", master, config=False)
    with io.open_checkpoint(directory / "model.safetensors") as ckpt:
        assert any("assumed" in n or "no config.json" in n for n in ckpt.notes)


def test_online_autobitlinear_config_does_not_match_packed_tensors(tmp_path: Path) -> None:
    master = {"q_proj.weight": np.ones((8, 64), np.float32)}
    directory = cp.packed_checkpoint(tmp_path / "c", master)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"].update(linear_class="autobitlinear", quantization_mode="online")
    (directory / "config.json").write_text(json.dumps(config))
    with io.open_checkpoint(directory) as ckpt:
        (info,) = ckpt.weights()
    assert info.unreadable is not None and "online AutoBitLinear" in info.unreadable


def _raw(header: dict[str, object], data: bytes = b"", hlen: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if hlen is None else hlen) + text + data


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\x01\x02", "shorter than its 8-byte header"),
        (_raw({}, hlen=1 << 40), "exceeds the file"),
        (struct.pack("<Q", 2) + b"{x", r"not a safetensors file \(its header is not valid JSON"),
        (
            _raw({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"0000"),
            "unknown dtype",
        ),
        (
            _raw(
                {"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4]}}, b"0000"
            ),
            "needs 40000000000 bytes",
        ),
        (
            _raw({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"0000"),
            "beyond the file",
        ),
        (
            _raw({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"0000"),
            "list of ints",
        ),
    ],
)
def test_corrupt_files_are_read_errors(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(io.ReadError, match=fragment):
        io.open_checkpoint(path)
