"""TL1/TL2 bytes in bitnet.cpp's tiled order.

The pinned digests are of the bytes bitnet.cpp's converter (``transform_to_tl1/tl2`` in
``utils/convert-hf-to-gguf-bitnet.py``, run on the same codes with a one-entry
kernel_config.ini) writes as the GGUF tensor.  The same comparison on every preset kernel
configuration of bitnet.cpp (22 shapes) was identical too; those tensors are too large for a
unit test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_obs import quant
from bitnet_obs.quant import (
    KernelConfig,
    QuantInputError,
    decode_tl1,
    encode_tl1,
    encode_tl2,
    pack_tl1,
    pack_tl2,
    packed_nbytes,
    read_kernel_config,
    unpack_tl1,
    unpack_tl2,
)

FAST = settings(max_examples=40, deadline=None)


def pattern(m: int, k: int) -> npt.NDArray[np.int8]:
    raw = np.random.PCG64(m * 100003 + k).random_raw(m * k)  # a stream numpy keeps stable
    return ((raw % np.uint64(3)).astype(np.int8) - 1).reshape(m, k)


# format, M, K, (bm, bk, bmm), converter's byte count, sha256 of the converter's bytes
CONVERTER = [
    ("tl1", 64, 128, (64, 64, 32), 2048,
     "5e389ee922b3b4419c2ac433c7585d8e0f6b4890d8d887d6701eb8bbed65d8eb"),
    ("tl1", 128, 256, (128, 128, 64), 8192,
     "81aa523151b7db0ab07fd7070b838653af8a46517f2c327ba28db2a64f3bcbe5"),
    ("tl1", 64, 96, (32, 32, 32), 1536,
     "c7a8622f79910e3ae69fb646e2f89762f189c6ba14623d859f15fbbec5808e65"),
    ("tl2", 64, 288, (32, 96, 32), 4522,
     "fc4f85ae655ad9d9d0d783292bed9d7edd5ace6c6c2d7503695e421150f31544"),
    ("tl2", 64, 320, (64, 96, 32), 4949,
     "327420a509d0388780a72172dfc1953c6209e1f47ec351e5d2a4a01d6e31bc8d"),
    ("tl2", 32, 512, (32, 192, 32), 3754,
     "a4292cae84f5d62b9043f9096a37be19a72e311bb8ec64036bcd1cdfe78f8c1f"),
    ("tl2", 96, 480, (96, 96, 32), 10624,
     "2fd07036bbc6983b565f32dde099824ebbb68a7207dd055ce5e7d0aadc4c238e"),
    # K < BK: the converter writes no 3-weight part, the whole K as TL1-style pairs
    ("tl2", 32, 64, (32, 96, 32), 768,
     "07968923d1223a6a8d78c1ceeb24d2b0c54c6d05ef4fd7de737c4be7e96b5ff7"),
    ("tl2", 32, 64, (32, 100, 32), 768,  # bk % 24 matters only for the 3-weight part
     "07968923d1223a6a8d78c1ceeb24d2b0c54c6d05ef4fd7de737c4be7e96b5ff7"),
    ("tl2", 64, 160, (32, 192, 32), 2816,
     "fd2306d7603c814c4c98089f059d3378153bb9545cad959f94a4bfd12d9ac15f"),
    ("tl2", 32, 32, (32, 96, 32), 554,
     "ac2e5c988b1b0259b931f34fbd8252d4cea53fba4632ad7eedf16f74b01fd5e7"),
    ("tl2", 64, 256, (64, 384, 32), 4096,
     "e9947720a6d640d948cdb29751cee8c8b4494b6c6f7c1853b7decb7df374e77d"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "m", "k", "cfg", "size", "digest"), CONVERTER)
def test_bytes_are_the_converters(
    fmt: str, m: int, k: int, cfg: tuple[int, int, int], size: int, digest: str
) -> None:
    codes, config = pattern(m, k), KernelConfig(*cfg)
    pack, unpack = (pack_tl1, unpack_tl1) if fmt == "tl1" else (pack_tl2, unpack_tl2)
    data = pack(codes, 0.5, config)
    assert hashlib.sha256(data[:size]).hexdigest() == digest
    assert len(data) == packed_nbytes(fmt, (m, k))
    tail = len(data) - 32
    assert not any(data[size:tail]) and data[tail:] == np.float32(0.5).tobytes() + bytes(28)
    for view, scale in ((data, None), (data[:size], 0.5), (data[:tail], 0.5)):
        out, s = unpack(view, (m, k), config, scale=scale)
        assert s == 0.5 and np.array_equal(out, codes)


# what the converter writes for an all-zero tensor: its scale tensor holds max|W_q| = 0.0 (not
# I2_S's 1e-5 floor), its codes the zero index
ALL_ZERO = [
    ("tl1", 64, 128, (64, 64, 32), 2048,
     "bf0999cdf657002c6cfbf03dd2588ac0d8b9660e3f2b849caf4d8de7b0b621ba"),
    ("tl2", 64, 288, (32, 96, 32), 4522,
     "3d422a514beee9336e81cd3594767dd95d917d7987c4182ef15a225935730aae"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "m", "k", "cfg", "size", "digest"), ALL_ZERO)
def test_an_all_zero_tensor_stores_the_converters_scale(
    fmt: str, m: int, k: int, cfg: tuple[int, int, int], size: int, digest: str
) -> None:
    w = np.zeros((m, k), np.float32)
    codes, scale = quant.quantize_weights(w, fmt)
    assert scale == 0.0 and not codes.any()
    assert quant.quantize_weights(w)[1] == quant.quantize_weights(w, "i2_s")[1] == np.float32(1e-5)
    tiny = np.full((m, k), 1e-7, np.float32)  # non-zero weights whose codes are all 0
    assert quant.weight_report(tiny, fmt).scale == 0.0
    assert quant.weight_report(tiny, "i2_s").scale == np.float32(1e-5)
    pack = pack_tl1 if fmt == "tl1" else pack_tl2
    data = pack(codes, scale, KernelConfig(*cfg))
    assert hashlib.sha256(data[:size]).hexdigest() == digest
    assert data[-32:] == bytes(32)  # the scale tail: float32 0.0


def test_index_semantics_are_the_row_major_encoders() -> None:
    """Tiling only reorders: the TL1 byte multiset is encode_tl1's, TL2's magnitudes too."""
    codes = pattern(64, 128)
    tiled = np.frombuffer(pack_tl1(codes, 1.0, KernelConfig(64, 64, 32)), np.uint8)[:-32]
    assert sorted(tiled.tolist()) == sorted(encode_tl1(codes).ravel().tolist())
    assert not np.array_equal(tiled, encode_tl1(codes).ravel())  # ... in another order
    codes = pattern(64, 288)
    body = np.frombuffer(pack_tl2(codes, 1.0, KernelConfig(32, 96, 32)), np.uint8)
    nibbles = np.concatenate([body[: 64 * 96 // 2] >> 4, body[: 64 * 96 // 2] & 15])
    assert sorted(nibbles.tolist()) == sorted(encode_tl2(codes).magnitudes.ravel().tolist())


def test_scale_placement_and_sizes() -> None:
    # TL1: the scale right after M*K/4 code bytes; TL2: after the size formula rounded to 32
    assert packed_nbytes("tl1", (1536, 4096)) == 1536 * 4096 // 4 + 32
    three_k_bytes = (3200 - 256) * 3200 // 3 * 5 // 8 + 256 * 3200 // 2 * 4 // 8
    assert three_k_bytes == 2167466
    assert packed_nbytes("tl2", (3200, 3200)) == 2167488 + 32
    data = pack_tl2(pattern(64, 288), 0.25, KernelConfig(32, 96, 32))
    assert np.frombuffer(data[-32:-28], "<f4")[0] == 0.25
    assert pack_tl1(np.zeros((64, 64), np.int8), 0.0, KernelConfig(64, 64, 32))[-32:] == bytes(32)


PRESET_3B_TL2 = """[Kernels_0]
m = 3200
k = 8640
bm = 160
bk = 96
bmm = 32

[Kernels_1]
m = 3200
k = 3200
bm = 320
bk = 96
bmm = 32

[Kernels_2]
m = 3200
k = 3200
bm = 64
bk = 96
bmm = 32
"""


def test_read_kernel_config(tmp_path: Path) -> None:
    ini = tmp_path / "kernel_config.ini"
    ini.write_text(PRESET_3B_TL2)
    table = read_kernel_config(ini)
    assert table == {  # the first section of a shape wins, as in the converter
        (3200, 8640): KernelConfig(160, 96, 32),
        (3200, 3200): KernelConfig(320, 96, 32),
    }
    small = tmp_path / "small.ini"
    small.write_text("[Kernels_0]\nm = 64\nk = 288\nbm = 32\nbk = 96\nbmm = 32\n")
    codes = pattern(64, 288)
    assert pack_tl2(codes, 1.0, read_kernel_config(small)) == pack_tl2(
        codes, 1.0, KernelConfig(32, 96, 32)
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"defines no kernel shapes"),
        ("[Kernels_0]\nm = 3200\nk = 8640\nbm = 160\n", r"section \[Kernels_0\] has no integer"),
        ("[Kernels_0]\nm = x\nk = 1\nbm = 1\nbk = 1\nbmm = 1\n", r"has no integer"),
        ("m = 1\n", r"cannot read kernel configuration"),
    ],
)
def test_bad_kernel_config_files(tmp_path: Path, text: str, message: str) -> None:
    ini = tmp_path / "kernel_config.ini"
    ini.write_text(text)
    with pytest.raises(QuantInputError, match=message):
        read_kernel_config(ini)
    with pytest.raises(QuantInputError, match="cannot read kernel configuration"):
        read_kernel_config(tmp_path / "missing.ini")


@st.composite
def tl1_case(draw: st.DrawFn) -> tuple[npt.NDArray[np.int8], KernelConfig]:
    bmm = draw(st.sampled_from([32, 64]))
    bm = bmm * draw(st.integers(1, 3))
    bk = 256 // bmm * draw(st.integers(1, 4))
    m, k = bm * draw(st.integers(1, 2)), bk * draw(st.integers(1, 3))
    codes = np.random.default_rng(draw(st.integers(0, 2**32))).integers(-1, 2, (m, k))
    return codes.astype(np.int8), KernelConfig(bm, bk, bmm)


@st.composite
def tl2_case(draw: st.DrawFn) -> tuple[npt.NDArray[np.int8], KernelConfig]:
    bm = 32 * draw(st.integers(1, 3))
    bk = 24 * draw(st.integers(1, 8))
    blocks = draw(st.integers(max(1, -(-256 // bk)), max(1, -(-256 // bk)) + 2))
    two_k = 32 * draw(st.integers(0, (bk - 1) // 32))
    m, k = bm * draw(st.integers(1, 2)), bk * blocks + two_k
    codes = np.random.default_rng(draw(st.integers(0, 2**32))).integers(-1, 2, (m, k))
    return codes.astype(np.int8), KernelConfig(bm, bk, 32)


@given(tl1_case(), st.floats(0, 4, width=32))
@FAST
def test_tl1_round_trip(case: tuple[npt.NDArray[np.int8], KernelConfig], scale: float) -> None:
    codes, cfg = case
    data = pack_tl1(codes, scale, cfg)
    assert len(data) == packed_nbytes("tl1", codes.shape)
    out, s = unpack_tl1(data, codes.shape, cfg)
    assert s == scale and np.array_equal(out, codes)
    assert np.array_equal(decode_tl1(encode_tl1(codes), codes.shape), out)


@given(tl2_case(), st.floats(0, 4, width=32))
@FAST
def test_tl2_round_trip(case: tuple[npt.NDArray[np.int8], KernelConfig], scale: float) -> None:
    codes, cfg = case
    data = pack_tl2(codes, scale, {codes.shape: cfg})  # type: ignore[dict-item]
    assert len(data) == packed_nbytes("tl2", codes.shape)
    out, s = unpack_tl2(data, codes.shape, cfg)
    assert s == scale and np.array_equal(out, codes)


@given(st.integers(1, 300), st.integers(1, 600), st.sampled_from([(64, 64, 32), (128, 128, 64)]))
@FAST
def test_tl1_shapes_the_kernel_cannot_tile_are_refused(
    m: int, k: int, cfg: tuple[int, int, int]
) -> None:
    config = KernelConfig(*cfg)
    fits = m % cfg[0] == 0 and k % cfg[1] == 0
    codes = np.zeros((m, k), np.int8)
    if fits:
        assert len(pack_tl1(codes, 1.0, config)) == m * k // 4 + 32
    else:
        with pytest.raises(QuantInputError, match=r"TL1 cannot tile shape .* needs"):
            pack_tl1(codes, 1.0, config)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pack_tl2(np.zeros((256, 384), np.int8), 1.0, KernelConfig(256, 96, 64)),
         r"TL2 cannot tile shape 256x384 with bm=256, bk=96, bmm=64: needs bmm == 32"),
        (lambda: pack_tl2(np.zeros((64, 304), np.int8), 1.0, KernelConfig(64, 96, 32)),
         r"needs \(K % bk\) % 32 == 0"),
        (lambda: pack_tl2(np.zeros((32, 600), np.int8), 1.0, KernelConfig(32, 312, 32)),
         r"TL2 cannot store shape 32x600: 4384 bytes .* accepted: K % bk <= 256"),
        (lambda: pack_tl2(np.zeros((96, 288), np.int8), 1.0, KernelConfig(64, 96, 32)),
         r"needs M % bm == 0"),
        (lambda: pack_tl1(np.zeros((64, 64), np.int8), 1.0, {(64, 128): KernelConfig(64, 64, 32)}),
         r"TL1: the kernel configuration has no entry for shape 64x64 \(it covers 64x128\)"),
        (lambda: pack_tl1(np.zeros((64, 64), np.int8), 1.0, (64, 64, 32)),
         r"config is tuple; accepted: a KernelConfig"),
        (lambda: pack_tl1(np.zeros((64, 64), np.int8), 1.0, KernelConfig(64, 64, 16)),
         r"needs bmm in \{32, 64\}"),
        (lambda: unpack_tl1(bytes(100), (64, 64), KernelConfig(64, 64, 32)),
         r"TL1 data for shape \(64, 64\): got 100 bytes; accepted: 1056 .* or 1024 \(the GGUF"),
        (lambda: unpack_tl1(bytes(1024), (64, 64), KernelConfig(64, 64, 32)),
         r"got 1024 bytes; accepted: 1056"),
        (lambda: unpack_tl1(bytes([0x99]) + bytes(1055), (64, 64), KernelConfig(64, 64, 32)),
         r"corrupt data: TL1 pair index 9"),
        (lambda: unpack_tl2(bytes([0xE0]) + bytes(4575), (64, 288), KernelConfig(32, 96, 32)),
         r"corrupt data: TL2 magnitude 14"),
        (lambda: unpack_tl1(bytes(1024) + b"\0\0\xc0\x7f" + bytes(28), (64, 64),
                            KernelConfig(64, 64, 32)),
         r"corrupt TL1 tail or scale: scale is nan"),
    ],
)  # fmt: skip
def test_bad_tiled_input(call: object, message: str) -> None:
    with pytest.raises(QuantInputError, match=message):
        call()  # type: ignore[operator]


def test_tl2_packs_fields_into_shared_bytes() -> None:
    """The issue's size case: 64x288 at BK = 96 is 12288 bytes as one field per byte
    (Tl2Packed), 4522 bytes as the converter writes it (5 bits per 3 weights, padded)."""
    codes = pattern(64, 288)
    fields = encode_tl2(codes)
    assert fields.magnitudes.nbytes + fields.signs.nbytes == 12288
    data = pack_tl2(codes, 1.0, KernelConfig(32, 96, 32))
    assert len(data) == packed_nbytes("tl2", (64, 288)) == 4544 + 32
    assert hashlib.sha256(data[:4522]).hexdigest() == CONVERTER[3][5]


# bitnet.cpp's preset kernel configurations (preset_kernels/*/kernel_config_tl{1,2}.ini):
# format, (bm, bk, bmm), K % bk of the preset shape.  The preset shapes themselves (up to
# 14336 x 4096) were checked byte for byte against the converter outside the test suite; here
# each configuration's tiling is exercised on the smallest shape it accepts.
PRESETS = [
    ("tl1", (256, 128, 64), 0), ("tl1", (256, 128, 32), 0), ("tl1", (128, 64, 64), 0),
    ("tl1", (128, 64, 32), 0), ("tl1", (160, 64, 32), 0), ("tl1", (320, 128, 64), 0),
    ("tl1", (320, 64, 32), 0), ("tl1", (256, 128, 32), 0),
    ("tl2", (256, 96, 32), 64), ("tl2", (128, 96, 32), 32), ("tl2", (160, 96, 32), 0),
    ("tl2", (320, 96, 32), 32), ("tl2", (128, 192, 32), 0),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "cfg", "rest"), PRESETS)
def test_round_trip_for_every_preset_configuration(
    fmt: str, cfg: tuple[int, int, int], rest: int
) -> None:
    bm, bk, _ = cfg
    k = bk * max(1, -(-(256 - rest) // bk)) + rest  # TL2's size formula wants K >= 256
    codes = pattern(bm, k)
    pack, unpack = (pack_tl1, unpack_tl1) if fmt == "tl1" else (pack_tl2, unpack_tl2)
    out, s = unpack(pack(codes, 0.125, KernelConfig(*cfg)), (bm, k), KernelConfig(*cfg))
    assert s == 0.125 and np.array_equal(out, codes)


def test_a_kernel_config_that_is_not_a_small_regular_file_is_refused(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "kernel_config.ini"
    os.mkfifo(fifo)
    with pytest.raises(QuantInputError, match="is not a regular file"):
        read_kernel_config(fifo)  # never waits for a writer
    big = tmp_path / "big.ini"
    big.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(QuantInputError, match="at most 1048576"):
        read_kernel_config(big)
