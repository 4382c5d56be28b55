"""npz reader (bitnet_obs.quant.io._npz): declared sizes are checked before allocating."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from bitnet_obs.quant import io


def test_stored_members_are_views_of_the_mapped_archive(tmp_path: Path) -> None:
    w = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    np.savez(tmp_path / "m.npz", w=w, f=np.asfortranarray(w), ids=np.arange(4))
    with io.open_checkpoint(tmp_path / "m.npz") as ckpt:
        infos = {t.name: t for t in ckpt.tensors}
        assert infos["ids"].kind == "other"
        got = {n: ckpt.read(infos[n]) for n in ("w", "f")}
    for tensor in got.values():
        np.testing.assert_array_equal(tensor.values, w)  # type: ignore[union-attr]
    assert got["w"].values.base is not None


def test_compressed_members(tmp_path: Path) -> None:
    w = np.arange(4096, dtype=np.float16).reshape(64, 64)
    np.savez_compressed(tmp_path / "m.npz", w=w)
    with io.open_checkpoint(tmp_path / "m.npz") as ckpt:
        (tensor,) = (ckpt.read(t) for t in ckpt.tensors)
    np.testing.assert_array_equal(tensor.values, w)  # type: ignore[union-attr]


def _npz_with_header(path: Path, header: bytes, data: bytes, compress: int) -> Path:
    magic = b"\x93NUMPY\x01\x00"
    pad = 64 - (len(magic) + 2 + len(header)) % 64
    body = header + b" " * (pad - 1) + b"\n"
    npy = magic + len(body).to_bytes(2, "little") + body + data
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr("w.npy", npy)
    return path


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_header_declaring_a_huge_array_is_a_read_error_not_a_memory_error(
    tmp_path: Path, compress: int
) -> None:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 100000000), }"
    path = _npz_with_header(tmp_path / "x.npz", header, b"\x00" * 64, compress)
    with pytest.raises(io.ReadError, match=r"declares float32 \(100000000, 100000000\)"):
        io.open_checkpoint(path)


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(io.ReadError, match="pickles are refused"):
        io.open_checkpoint(tmp_path / "o.npz")


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_bytes(b"not a zip at all")
    with pytest.raises(io.ReadError, match=r"not a readable \.npz"):
        io.open_checkpoint(tmp_path / "x.npz")
