"""TL1/TL2 tensor bytes in bitnet.cpp's tiled order, for one kernel configuration.

bitnet.cpp's converter (``preprocess_weights_tl1/tl2`` in ``utils/convert-hf-to-gguf-bitnet.py``)
writes the TL1 pair indices and the TL2 triple magnitudes and signs not row by row but tile by
tile, in the order its generated kernels read them: tiles of BM rows by BK columns, split into
sub-tiles of bm rows.  The three numbers come from ``kernel_config.ini`` (sections with ``m``,
``k``, ``bm`` = BM, ``bk`` = BK, ``bmm`` = bm); the GGUF file does not record them, so reading a
TL1/TL2 tensor needs the configuration it was converted with.  The index values are those of
:mod:`._lut`; only their order and packing differ.

Writing the orders as index permutations: with row ``r = i*BM + a*bm + e*16 + f`` and pair
``p = j*BK/2 + c*by/2 + g*2 + h`` (TL1, ``by = 256/bm``), byte ``(i, j, a, c, e, g, f)`` holds
pair h = 0 in its high nibble and h = 1 in its low one.  TL2 (``bm = 32``, ``by = 6``) stores,
for row ``r = i*BM + a*32 + b`` and triple ``q = j*BK/3 + c*2 + d``, the magnitudes ``|v|`` two
per byte in order ``(i, j, a, c, b)`` with the four 8-byte groups of each 32 bytes in order
0, 2, 1, 3; then the sign bits (``v < 0``) 16 per little-endian uint16 in order
``(i, j, a, c, y)`` holding triple ``q = j*BK/3 + c*8 + x // 2`` of row ``b = (x % 2)*16 + y``
at bit ``15 - x``; then the K remainder (``K % BK``, a multiple of 32) as TL1 pairs tiled with
BK = 32, bm = 32 and the same group order; then zeros up to the converter's size formula.  A
tensor with K < BK has no 3-weight part: the converter writes its whole K as that remainder.

The scale is not part of these bytes in the GGUF file: the converter writes it as a separate
float32 tensor ``<name>_scale`` right after, which GGUF's 32-byte alignment places exactly where
bitnet.cpp's kernel reads it: at byte ``M*K/4`` of the tensor for TL1, and at the TL2 size
formula rounded up to 32 for TL2 (``codegen_tl2.py``; the preset TL2 headers shipped in
``preset_kernels/`` read it at ``M*K/4`` instead, inside the zero padding).  :func:`pack_tl1` and
:func:`pack_tl2` return that kernel view: the tiled bytes, then a 32-byte tail whose first four
bytes hold the float32 scale, :func:`packed_nbytes` bytes in all.
"""

from __future__ import annotations

import configparser
import os
import stat
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ._formats import _bytes_input
from ._lut import _PAIRS, _TRIPLES, _pair_indices
from ._validate import QuantInputError, check_scale, codes_input, shape_input

__all__ = [
    "KernelConfig",
    "pack_tl1",
    "pack_tl2",
    "read_kernel_config",
    "unpack_tl1",
    "unpack_tl2",
]

_TAIL = 32  # the float32 scale, then padding, as for I2_S
_GROUP_ORDER = np.array([0, 2, 1, 3])  # 8-byte groups within each 32 bytes (TL2 only)
_TL2_BM = 32  # the only sub-tile height codegen_tl2.py accepts
_TL2_TWO_BK = 32  # the remainder columns are tiled as TL1 with BK = bm = 32


class KernelConfig(NamedTuple):
    """One kernel shape of ``kernel_config.ini``, named as there: ``bm`` is the tile height BM,
    ``bk`` the tile width BK, ``bmm`` the sub-tile height bm.

    >>> KernelConfig(bm=256, bk=128, bmm=32)
    KernelConfig(bm=256, bk=128, bmm=32)
    """

    bm: int
    bk: int
    bmm: int


Tiling = KernelConfig | Mapping[tuple[int, int], KernelConfig]


def read_kernel_config(path: str | os.PathLike[str]) -> dict[tuple[int, int], KernelConfig]:
    """Parse a bitnet.cpp ``kernel_config.ini`` into ``{(M, K): KernelConfig}``.

    Sections hold ``m``, ``k``, ``bm``, ``bk`` and ``bmm`` (written by ``codegen_tl1.py`` /
    ``codegen_tl2.py``; the presets are ``preset_kernels/<model>/kernel_config_tl{1,2}.ini``).
    When two sections share a shape the first wins, as in the converter.

    >>> import pathlib, tempfile
    >>> ini = pathlib.Path(tempfile.mkdtemp()) / "kernel_config.ini"
    >>> _ = ini.write_text("[Kernels_0]\\nm = 3200\\nk = 8640\\nbm = 160\\nbk = 96\\nbmm = 32\\n")
    >>> read_kernel_config(ini)
    {(3200, 8640): KernelConfig(bm=160, bk=96, bmm=32)}
    """
    parser = configparser.ConfigParser()
    try:
        parser.read_string(_small_text(path))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise QuantInputError(
            f"cannot read kernel configuration {os.fspath(path)!r} ({exc}); accepted: a "
            "bitnet.cpp kernel_config.ini"
        ) from exc
    table: dict[tuple[int, int], KernelConfig] = {}
    for name in parser.sections():
        section = parser[name]
        try:
            m, k, bm, bk, bmm = (int(section[key]) for key in ("m", "k", "bm", "bk", "bmm"))
        except (KeyError, ValueError) as exc:
            raise QuantInputError(
                f"{os.fspath(path)}: section [{name}] has no integer {exc}; accepted: sections "
                "with integer m, k, bm, bk and bmm"
            ) from exc
        table.setdefault((m, k), KernelConfig(bm, bk, bmm))
    if not table:
        raise QuantInputError(
            f"{os.fspath(path)} defines no kernel shapes; accepted: a bitnet.cpp "
            "kernel_config.ini with [Kernels_N] sections"
        )
    return table


_MAX_INI = 1 << 20


def _small_text(path: str | os.PathLike[str]) -> str:
    """A small regular text file: a FIFO or device named as the configuration is refused, not
    waited on, and a huge file is not read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{os.fspath(path)} is not a regular file")
        if st.st_size > _MAX_INI:
            raise OSError(f"{st.st_size} bytes; a kernel_config.ini is at most {_MAX_INI}")
        return f.read(_MAX_INI).decode("utf-8")


def _config(tiling: object, shape: tuple[int, int], fmt: str) -> KernelConfig:
    if isinstance(tiling, KernelConfig):
        return tiling
    if isinstance(tiling, Mapping):
        found = tiling.get(shape)
        if found is None:
            known = ", ".join(f"{m}x{k}" for m, k in tiling) or "none"
            raise QuantInputError(
                f"{fmt}: the kernel configuration has no entry for shape {shape[0]}x{shape[1]} "
                f"(it covers {known}); accepted: the kernel_config.ini the file was converted "
                "with"
            )
        return KernelConfig(*(int(v) for v in found))
    raise QuantInputError(
        f"{fmt}: config is {type(tiling).__name__}; accepted: a KernelConfig or the table "
        "read_kernel_config returns"
    )


def _require(ok: bool, fmt: str, shape: tuple[int, int], cfg: KernelConfig, rule: str) -> None:
    if not ok:
        raise QuantInputError(
            f"{fmt} cannot tile shape {shape[0]}x{shape[1]} with bm={cfg.bm}, bk={cfg.bk}, "
            f"bmm={cfg.bmm}: needs {rule}; accepted: a kernel_config.ini entry that bitnet.cpp's "
            "codegen accepts for this shape"
        )


def _tl1_geometry(shape: tuple[int, int], cfg: KernelConfig, fmt: str = "TL1") -> int:
    """Check a TL1-style tiling; returns by (pairs*2 per sub-tile column block)."""
    m, k = shape
    bm, bk, bmm = cfg
    _require(min(cfg) > 0, fmt, shape, cfg, "positive bm, bk and bmm")
    _require(m % bm == 0, fmt, shape, cfg, "M % bm == 0")
    _require(bmm in (32, 64) and bm % bmm == 0, fmt, shape, cfg, "bmm in {32, 64}, bm % bmm == 0")
    by = 256 // bmm
    _require(k % bk == 0 and bk % by == 0, fmt, shape, cfg, f"K % bk == 0 and bk % {by} == 0")
    return by


def _tl2_split(shape: tuple[int, int], cfg: KernelConfig) -> tuple[int, int]:
    """(three_k, two_k) as the converter splits K.  K < BK is packed as the converter packs it:
    no 3-weight groups at all (``three_k = 0``), every column a TL1-style pair."""
    m, k = shape
    bm, bk, bmm = cfg
    _require(min(cfg) > 0, "TL2", shape, cfg, "positive bm, bk and bmm")
    _require(bmm == _TL2_BM, "TL2", shape, cfg, "bmm == 32 (codegen_tl2.py)")
    _require(m % bm == 0 and bm % _TL2_BM == 0, "TL2", shape, cfg, "M % bm == 0, bm % 32 == 0")
    three_k = k // bk * bk
    if three_k:  # the 3-weight tiles: groups of 3, 16 sign bits per uint16
        _require(bk % 24 == 0, "TL2", shape, cfg, "bk % 24 == 0 (3-weight groups, 16 sign bits)")
    _require((k - three_k) % 32 == 0, "TL2", shape, cfg, "(K % bk) % 32 == 0")
    return three_k, k - three_k


def _tl2_data_nbytes(m: int, k: int) -> int:
    """The converter's padded size of the TL2 bytes (Python floor division, as written)."""
    return (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _tl2_scale_offset(m: int, k: int) -> int:
    """Where codegen_tl2.py's kernel reads the scale: its size formula rounded up to 32."""
    n = _c_div(_c_div(_c_div((k - 256) * m, 3) * 5, 8) + 256 * m // 2 * 4 // 8, 1)
    return n + (-n) % 32


def packed_nbytes(format: str, shape: object) -> int:
    """Bytes of a tensor as bitnet.cpp's ``ggml_nbytes`` sizes it (codes and a 32-byte tail
    that starts with the float32 scale): ``M*K/4 + 32`` for I2_S and TL1, the TL2 size formula
    rounded up to 32, plus 32, for TL2.  The GGUF writer's data for TL1/TL2 is the part before
    the tail (the converter's own padding for TL2); the scale sits in a ``<name>_scale`` tensor.

    >>> packed_nbytes("i2_s", (2560, 2560)), packed_nbytes("tl2", (3200, 3200))
    (1638432, 2167520)
    """
    dims = shape_input(shape)
    if len(dims) != 2:
        raise QuantInputError(f"shape: got {dims}; accepted: (M, K)")
    m, k = dims
    fmt = str(format).lower()
    if fmt in ("i2_s", "tl1"):
        return m * k // 4 + _TAIL
    if fmt == "tl2":
        return _tl2_scale_offset(m, k) + _TAIL
    raise QuantInputError(f"unknown format {format!r}; accepted: i2_s, tl1, tl2")


# --- tile orders -------------------------------------------------------------------------------


def _nibbles(hi: npt.NDArray[Any], lo: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    out: npt.NDArray[np.uint8] = (hi.astype(np.uint8) << np.uint8(4)) | lo.astype(np.uint8)
    return out


def _split_nibbles(b: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(..., n) bytes -> (..., n, 2) with the high nibble first."""
    return np.stack([b >> np.uint8(4), b & np.uint8(0x0F)], axis=-1)


# TL1 pair order: (i, a, e, f | j, c, g, h) -> (i, j, a, c, e, g, f, h)
_TL1_AXES = (0, 4, 1, 5, 2, 6, 3, 7)
# TL2 magnitude / remainder order: (i, a, b | j, c, d) -> (i, j, a, c, b, d)
_TL2_AXES = (0, 3, 1, 4, 2, 5)
# TL2 sign order: (i, a, b | j, c, d) -> (i, j, a, c, d, b)
_SIGN_AXES = (0, 3, 1, 4, 5, 2)


def _inverse(axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(axes))


def _tl1_tiles(idx: npt.NDArray[np.uint8], cfg: KernelConfig, by: int) -> npt.NDArray[np.uint8]:
    m, pairs = idx.shape
    bm, bk, bmm = cfg
    v = idx.reshape(m // bm, bm // bmm, bmm // 16, 16, pairs * 2 // bk, bk // by, by // 4, 2)
    v = v.transpose(_TL1_AXES)
    return _nibbles(v[..., 0], v[..., 1]).reshape(-1)


def _tl1_untile(
    data: npt.NDArray[np.uint8], shape: tuple[int, int], cfg: KernelConfig, by: int
) -> npt.NDArray[np.uint8]:
    m, k = shape
    bm, bk, bmm = cfg
    tiled = (m // bm, k // bk, bm // bmm, bk // by, bmm // 16, by // 4, 16)
    v = _split_nibbles(data.reshape(tiled)).transpose(_inverse(_TL1_AXES))
    return np.ascontiguousarray(v).reshape(m, k // 2)


def _grouped(b: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Reorder the 8-byte groups of each 32-byte row to 0, 2, 1, 3 (an involution)."""
    return b.reshape(*b.shape[:-1], 4, 8)[..., _GROUP_ORDER, :].reshape(b.shape)


def _tl2_tiles(v: npt.NDArray[np.uint8], bm: int, width: int, per: int) -> npt.NDArray[np.uint8]:
    """Magnitudes (per = 3) or remainder pairs (per = 2): (M, groups) -> bytes, two per byte."""
    m, groups = v.shape
    t = v.reshape(m // bm, bm // _TL2_BM, _TL2_BM, groups * per // width, width // per // 2, 2)
    t = t.transpose(_TL2_AXES)
    return _grouped(_nibbles(t[..., 0], t[..., 1])).reshape(-1)


def _tl2_untile(
    data: npt.NDArray[np.uint8], m: int, groups: int, bm: int, width: int, per: int
) -> npt.NDArray[np.uint8]:
    tiled = (m // bm, groups * per // width, bm // _TL2_BM, width // per // 2, _TL2_BM)
    t = _split_nibbles(_grouped(data.reshape(tiled))).transpose(_inverse(_TL2_AXES))
    return np.ascontiguousarray(t).reshape(m, groups)


def _sign_tiles(signs: npt.NDArray[np.uint8], bm: int, bk: int) -> npt.NDArray[np.uint8]:
    m, triples = signs.shape
    t = signs.reshape(m // bm, bm // _TL2_BM, _TL2_BM, triples * 3 // bk, bk // 24, 8)
    t = t.transpose(_SIGN_AXES)  # (i, j, a, c, d, b): 8 x 32 bits -> x = 2d + b // 16
    t = t.reshape(*t.shape[:4], 16, 16).swapaxes(-1, -2)  # (.., y, x)
    packed = np.packbits(t, axis=-1)  # (.., y, 2): x 0..7 (high byte), x 8..15 (low byte)
    return np.ascontiguousarray(packed[..., ::-1]).reshape(-1)  # little-endian uint16s


def _sign_untile(data: npt.NDArray[np.uint8], m: int, triples: int, bm: int, bk: int) -> Any:
    tiled = (m // bm, triples * 3 // bk, bm // _TL2_BM, bk // 24, 16, 2)
    bits = np.unpackbits(data.reshape(tiled)[..., ::-1], axis=-1)  # (.., y, x)
    t = bits.swapaxes(-1, -2).reshape(*tiled[:4], 8, _TL2_BM)  # (i, j, a, c, d, b)
    return np.ascontiguousarray(t.transpose(_inverse(_SIGN_AXES))).reshape(m, triples)


# --- public pack / unpack ----------------------------------------------------------------------


def _codes2d(codes: object) -> npt.NDArray[np.int8]:
    return codes_input(codes, "codes")


def _with_tail(body: npt.NDArray[np.uint8], size: int, scale: np.float32) -> bytes:
    out = np.zeros(size + _TAIL, np.uint8)
    out[: body.size] = body
    out[size : size + 4] = np.frombuffer(np.array([scale], "<f4").tobytes(), np.uint8)
    return out.tobytes()


def _body_and_scale(
    data: object, fmt: str, shape: tuple[int, int], body: int, tail_at: int, scale: object
) -> tuple[npt.NDArray[np.uint8], float]:
    """The code bytes and the scale, from the kernel view (codes, tail) or from the GGUF
    tensor's own bytes plus ``scale=`` (its ``<name>_scale`` tensor)."""
    buf = _bytes_input(data)
    full = tail_at + _TAIL
    if buf.size == full:
        value = scale if scale is not None else np.frombuffer(buf[tail_at : tail_at + 4], "<f4")[0]
    elif buf.size in (body, tail_at) and scale is not None:
        value = scale
    else:
        bare = f"{body}" if body == tail_at else f"{body} or {tail_at}"
        raise QuantInputError(
            f"{fmt} data for shape {shape}: got {buf.size} bytes; accepted: {full} (codes and the "
            f"32-byte scale tail, as bitnet.cpp sizes the tensor) or {bare} (the GGUF tensor's "
            "own bytes) with scale= from its <name>_scale tensor"
        )
    try:
        s = check_scale(value, "scale", allow_zero=True)
    except QuantInputError as exc:
        raise QuantInputError(f"corrupt {fmt} tail or scale: {exc}") from None
    return buf[:body], float(s)


def pack_tl1(codes: object, scale: object, config: Tiling) -> bytes:
    """TL1 tensor bytes as bitnet.cpp's converter tiles them for *config*, plus the scale tail.

    *codes* is (M, K) ternary, *scale* the stored scale (:func:`quantize_weights`' second
    result), *config* a :class:`KernelConfig` or the :func:`read_kernel_config` table (looked up
    by (M, K), as the converter does).  Needs M % bm == 0, bm % bmm == 0, bmm in {32, 64},
    K % bk == 0.  Returns ``M*K/4 + 32`` bytes: ``data[:M*K/4]`` is what the converter writes
    as the GGUF tensor, ``data[M*K/4:][:4]`` its ``<name>_scale`` tensor.

    >>> data = pack_tl1(np.ones((256, 128), np.int8), 0.5, KernelConfig(256, 128, 32))
    >>> len(data), data[:2].hex()
    (8224, '8888')
    """
    c = _codes2d(codes)
    shape = (int(c.shape[0]), int(c.shape[1]))
    cfg = _config(config, shape, "TL1")
    by = _tl1_geometry(shape, cfg)
    s = check_scale(scale, allow_zero=True)
    body = _tl1_tiles(_pair_indices(c), cfg, by)
    return _with_tail(body, body.size, s)


def unpack_tl1(
    data: object, shape: object, config: Tiling, *, scale: object = None
) -> tuple[npt.NDArray[np.int8], float]:
    """Inverse of :func:`pack_tl1`: ``(codes, scale)`` from TL1 bytes tiled for *config*.

    *data* is either the kernel view (``M*K/4 + 32`` bytes, the scale in the tail) or the GGUF
    tensor's own ``M*K/4`` bytes with ``scale=`` the value of its ``<name>_scale`` tensor.
    Pair indices above 8 (no pair maps there) raise :class:`QuantInputError`.
    """
    dims = _shape2d(shape)
    cfg = _config(config, dims, "TL1")
    by = _tl1_geometry(dims, cfg)
    n = dims[0] * dims[1] // 4
    body, s = _body_and_scale(data, "TL1", dims, n, n, scale)
    idx = _tl1_untile(body, dims, cfg, by)
    _check_range(idx, 8, "TL1 pair index")
    return _PAIRS[idx].astype(np.int8).reshape(dims), s


def _shape2d(shape: object) -> tuple[int, int]:
    dims = shape_input(shape)
    if len(dims) != 2:
        raise QuantInputError(f"shape: got {dims}; accepted: (M, K)")
    return dims[0], dims[1]


def _check_range(values: npt.NDArray[np.uint8], top: int, what: str) -> None:
    if values.size and int(values.max()) > top:
        where = tuple(int(i) for i in np.unravel_index(int(np.argmax(values > top)), values.shape))
        raise QuantInputError(
            f"corrupt data: {what} {int(values[where])} at {where}; accepted: 0..{top}"
        )


def pack_tl2(codes: object, scale: object, config: Tiling) -> bytes:
    """TL2 tensor bytes as bitnet.cpp's converter tiles them for *config*, plus the scale tail.

    K splits into ``three_k = K // bk * bk`` columns of 3-weight groups (4-bit magnitudes, two
    per byte, then sign bits, 16 per uint16) and a remainder of TL1 pairs; the converter pads
    the whole to ``(K-256)*M//3*5//8 + 256*M//2*4//8`` bytes.  Needs bmm == 32, M % bm == 0,
    bk % 24 == 0 (when K >= bk) and (K % bk) % 32 == 0 (codegen_tl2.py's rules); K < bk is all
    remainder, as the converter writes it.  Returns
    :func:`packed_nbytes` ``("tl2", shape)`` bytes, the scale in the last 32.

    >>> data = pack_tl2(np.ones((160, 256), np.int8), 0.5, KernelConfig(160, 96, 32))
    >>> len(data), data[:1].hex()  # triple (1, 1, 1): magnitude 13 twice
    (10272, 'dd')
    """
    c = _codes2d(codes)
    m, k = (int(c.shape[0]), int(c.shape[1]))
    cfg = _config(config, (m, k), "TL2")
    three_k, two_k = _tl2_split((m, k), cfg)
    s = check_scale(scale, allow_zero=True)
    t = c[:, :three_k].reshape(m, -1, 3).astype(np.int16)
    v = 9 * t[..., 0] + 3 * t[..., 1] + t[..., 2]
    parts = [
        _tl2_tiles(np.abs(v).astype(np.uint8), cfg.bm, cfg.bk, 3),
        _sign_tiles((v < 0).astype(np.uint8), cfg.bm, cfg.bk),
    ]
    if two_k:
        parts.append(_tl2_tiles(_pair_indices(c[:, three_k:]), cfg.bm, _TL2_TWO_BK, 2))
    body = np.concatenate(parts)
    size = _tl2_data_nbytes(m, k)
    if body.size > size:
        raise QuantInputError(
            f"TL2 cannot store shape {m}x{k}: {body.size} bytes of codes exceed the converter's "
            f"size formula ({size}), which allows for at most 256 remainder columns; accepted: "
            "K % bk <= 256"
        )
    return _with_tail(body, _tl2_scale_offset(m, k), s)


def unpack_tl2(
    data: object, shape: object, config: Tiling, *, scale: object = None
) -> tuple[npt.NDArray[np.int8], float]:
    """Inverse of :func:`pack_tl2`: ``(codes, scale)`` from TL2 bytes tiled for *config*.

    *data* is either the kernel view (:func:`packed_nbytes` bytes, the scale in the tail) or the
    GGUF tensor's own bytes (the converter's padded size, or that rounded up to 32) with
    ``scale=`` the value of its ``<name>_scale`` tensor.
    """
    m, k = _shape2d(shape)
    cfg = _config(config, (m, k), "TL2")
    three_k, two_k = _tl2_split((m, k), cfg)
    triples = three_k // 3
    mag_n, sign_n = m * triples // 2, m * triples // 8
    need = mag_n + sign_n + m * two_k // 4
    size = _tl2_data_nbytes(m, k)
    if need > size:
        raise QuantInputError(f"TL2 cannot store shape {m}x{k}; accepted: K % bk <= 256")
    body, s = _body_and_scale(data, "TL2", (m, k), size, _tl2_scale_offset(m, k), scale)
    mags = _tl2_untile(body[:mag_n], m, triples, cfg.bm, cfg.bk, 3)
    _check_range(mags, 13, "TL2 magnitude")
    signs = _sign_untile(body[mag_n : mag_n + sign_n], m, triples, cfg.bm, cfg.bk)
    out = np.empty((m, k), np.int8)
    sign = 1 - 2 * signs.astype(np.int8)
    out[:, :three_k] = (_TRIPLES[mags].astype(np.int8) * sign[..., None]).reshape(m, three_k)
    if two_k:
        pairs = _tl2_untile(body[mag_n + sign_n : need], m, two_k // 2, cfg.bm, _TL2_TWO_BK, 2)
        _check_range(pairs, 8, "TL2 remainder pair index")
        out[:, three_k:] = _PAIRS[pairs].astype(np.int8).reshape(m, two_k)
    return out, s
