"""GGUF v2/v3 reader: header, metadata, tensor infos and alignment, parsed by us.

Why not the ``gguf`` package's ``GGUFReader``: it refuses bitnet.cpp's type ids at open (I2_S =
36 is unknown upstream) and reads 39 as MXFP4, which bitnet.cpp uses for TL2.  Every count,
length and offset in the header is checked against the file's size before anything is
allocated, so a corrupt or hostile header is a :class:`ReadError`, never a huge allocation.

Type ids 36..39 follow bitnet.cpp's llama.cpp fork (I2_S = 36, I8_S = 37, TL1 = 38, TL2 = 39);
39 is read as upstream's MXFP4 unless the file is a bitnet.cpp file (it holds I2_S/TL1 tensors or
a TL2 tensor has the ``<name>_scale`` tensor the converter writes beside it).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .._formats import unpack_i2s
from .._tiled import packed_nbytes
from .._validate import QuantInputError
from . import _bits
from ._common import (
    Checkpoint,
    FloatTensor,
    Kind,
    MappedFile,
    ReadError,
    Tensor,
    TensorInfo,
    TernaryTensor,
    bf16_to_f32,
    checked_count,
    checked_shape,
    printable,
)

__all__ = ["GGUF_MAGIC", "GGUFCheckpoint", "TLReader"]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

# type id -> (name, values per block, bytes per block); the block types' sizes are llama.cpp's
# (ggml.c type traits), listed so every tensor's extent can be checked, read or not.
_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
}
I2_S, TL1, TL2 = 36, 38, 39
_MXFP4 = ("MXFP4", 32, 17)
_FLOATS = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}

# metadata value types: id -> (struct code or None, size); 8 = string, 9 = array
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
#: Decodes a TL1/TL2 tensor: (name, "TL1" | "TL2", its bytes up to the next tensor, (M, K), the
#: value of its ``<name>_scale`` tensor).
TLReader = Callable[[str, str, npt.NDArray[np.uint8], tuple[int, ...], float], TernaryTensor]
_KEEP_ARRAY = 64  # longer arrays (vocabularies) are summarised, not kept


class _Cursor:
    """Sequential reads from the mapped header, each checked against the end of the file."""

    def __init__(self, f: MappedFile) -> None:
        self.f = f
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.f.size:
            raise ReadError(
                f"{self.f.path}: the GGUF header is cut short reading {what} at byte {self.pos} "
                f"({n} bytes needed, file is {self.f.size}): truncated or corrupt"
            )

    def unpack(self, fmt: str, size: int, what: str) -> Any:
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.f.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", 8, what))

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        self.need(n, what)
        raw = self.f.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, key: str) -> None:
        buf, pos, size = self.f.buf, self.pos, self.f.size
        length = _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                break
            pos += 8 + length(buf, pos)[0]
        else:
            if pos <= size:
                self.pos = pos
                return
        raise ReadError(
            f"{self.f.path}: the GGUF header is cut short in the {count} strings of "
            f"{printable(key)!r} (file is {size} bytes): truncated or corrupt"
        )

    def remaining(self) -> int:
        return self.f.size - self.pos


def _value(cur: _Cursor, vtype: int, key: str) -> Any:
    if vtype in _SCALARS:
        fmt, size = _SCALARS[vtype]
        return cur.unpack(fmt, size, f"the value of {key!r}")
    if vtype == _STRING:
        return cur.string(f"the value of {key!r}")
    if vtype == _ARRAY:
        etype = cur.u32(f"the element type of {key!r}")
        count = cur.u64(f"the length of {key!r}")
        if etype in _SCALARS:
            fmt, size = _SCALARS[etype]
            checked_count(count, cur.remaining() // size, "array elements", str(cur.f.path))
            if count > _KEEP_ARRAY:
                cur.pos += count * size
                return f"[{count} values]"
            return [_value(cur, etype, key) for _ in range(count)]
        if etype == _STRING:
            checked_count(count, cur.remaining() // 8, "array strings", str(cur.f.path))
            if count <= _KEEP_ARRAY:
                return [cur.string(f"an element of {key!r}") for _ in range(count)]
            cur.skip_strings(count, key)  # a vocabulary: lengths only, nothing decoded
            return f"[{count} strings]"
        raise ReadError(
            f"{cur.f.path}: metadata {printable(key)!r} is an array of type {etype}; accepted: "
            "scalar or string elements (nested arrays are not written by llama.cpp)"
        )
    raise ReadError(
        f"{cur.f.path}: metadata {printable(key)!r} has unknown value type {vtype} (corrupt?)"
    )


class GGUFCheckpoint(Checkpoint):
    """A GGUF file; see the module docstring.  *layout* says how I2_S tensors were packed
    (``"x86"`` or ``"arm"``: the file does not record it); *tl_reader*, when given, decodes
    TL1/TL2 tensors (it needs the kernel configuration the file does not record either)."""

    format = "gguf"

    def __init__(
        self,
        f: MappedFile,
        *,
        layout: str = "x86",
        tl_reader: TLReader | None = None,
        tl_missing: str = "",
    ) -> None:
        self.file = f
        self.path = f.path
        self.size_bytes = f.size
        self.layout = layout
        self._tl_reader = tl_reader
        self._tl_missing = tl_missing
        cur = _Cursor(f)
        cur.need(4, "the magic")
        if f.buf[:4] != GGUF_MAGIC:
            raise ReadError(f"{f.path}: not a GGUF file (magic {bytes(f.buf[:4])!r})")
        cur.pos = 4
        version = cur.u32("the version")
        if version not in (2, 3):
            hint = " (a big-endian file?)" if version > 0xFFFF else ""
            raise ReadError(
                f"{f.path}: GGUF version {version}{hint}; accepted: little-endian GGUF v2 or v3"
            )
        self.version = version
        n_tensors = cur.u64("the tensor count")
        n_kv = cur.u64("the metadata count")
        checked_count(n_kv, cur.remaining() // 13, "metadata entries", str(f.path))
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string("a metadata key")
            vtype = cur.u32(f"the type of {key!r}")
            self.metadata[key] = _value(cur, vtype, key)
        checked_count(n_tensors, cur.remaining() // 32, "tensors", str(f.path))
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        seen: set[str] = set()
        for _ in range(n_tensors):
            name = cur.string("a tensor name")
            n_dims = cur.u32(f"the rank of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise ReadError(
                    f"{f.path}: tensor {printable(name)!r} declares {n_dims} dimensions; "
                    f"accepted: 1..{MAX_DIMS}"
                )
            ne = [cur.u64(f"a dimension of {name!r}") for _ in range(n_dims)]
            checked_shape(tuple(ne), f"{f.path}: tensor {printable(name)!r}")
            ttype = cur.u32(f"the type of {name!r}")
            offset = cur.u64(f"the offset of {name!r}")
            if name in seen:
                raise ReadError(f"{f.path}: tensor {printable(name)!r} appears twice")
            seen.add(name)
            raw.append((name, tuple(reversed(ne)), ttype, offset))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ReadError(
                f"{f.path}: general.alignment is {alignment!r}; accepted: a power of two"
            )
        self.data_start = -(-cur.pos // alignment) * alignment
        self._types = {name: ttype for name, _, ttype, _ in raw}
        bitnet_file = any(t in (I2_S, TL1) for t in self._types.values()) or any(
            t == TL2 and f"{n}_scale" in self._types for n, t in self._types.items()
        )
        self._bitnet = bitnet_file
        self._offsets: dict[str, int] = {}
        self.tensors = tuple(self._info(*item, alignment) for item in raw)
        self._check_overlaps()
        self.companions = frozenset(
            f"{t.name}_scale" for t in self.tensors if t.dtype in ("TL1", "TL2")
        ) & frozenset(self._types)
        arch = self.metadata.get("general.architecture")
        self.notes = (
            *((f"architecture {arch}",) if isinstance(arch, str) else ()),
            *((f"I2_S read with the {layout} layout",) if "I2_S" in self.type_counts() else ()),
        )

    # -- tensor infos ---------------------------------------------------------------------------

    def _type(self, ttype: int) -> tuple[str, int, int] | None:
        if ttype == TL2 and not self._bitnet:
            return _MXFP4
        return _TYPES.get(ttype)

    def _info(
        self, name: str, shape: tuple[int, ...], ttype: int, offset: int, alignment: int
    ) -> TensorInfo:
        where = f"{self.path}: tensor {printable(name)!r}"
        if offset % alignment:
            raise ReadError(f"{where} starts at offset {offset}, not a multiple of {alignment}")
        n = 1
        for d in shape:
            n *= d
        kind: Kind = "other"
        unreadable: str | None = None
        if ttype == I2_S:
            dtype, nbytes, kind = "I2_S", n // 4 + 32, "ternary"
        elif ttype in (TL1, TL2) and self._bitnet:
            dtype, nbytes, kind = ("TL1" if ttype == TL1 else "TL2"), 0, "ternary"
            if len(shape) == 2:  # the converter's bytes: bitnet.cpp's size less the scale tail
                nbytes = packed_nbytes(dtype, shape) - 32
            if self._tl_reader is None:
                unreadable = self._tl_missing
        else:
            known = self._type(ttype)
            if known is None:
                dtype, nbytes = f"type {ttype}", 0
                unreadable = f"unknown GGUF type id {ttype}"
            else:
                dtype, block, size = known
                if shape[-1] % block:
                    raise ReadError(
                        f"{where}: {dtype} stores blocks of {block} values along a row but the "
                        f"row has {shape[-1]}"
                    )
                nbytes = n // block * size
                if dtype in ("F32", "F16", "BF16", "F64", "Q8_0"):
                    kind = "float"
                elif dtype in ("TQ1_0", "TQ2_0"):
                    kind = "ternary"
                else:
                    unreadable = f"{dtype} is not a float or ternary type"
        start = self.data_start + offset
        if start + nbytes > self.file.size:
            raise ReadError(
                f"{where} ({dtype}, shape {shape}) needs bytes {start}..{start + nbytes} but the "
                f"file has {self.file.size}: truncated or corrupt"
            )
        self._offsets[name] = start
        return TensorInfo(name, shape, dtype, nbytes, kind, unreadable)

    def _check_overlaps(self) -> None:
        spans = sorted((self._offsets[t.name], t.nbytes, t.name) for t in self.tensors)
        for (a, size, name), (b, _, other) in itertools.pairwise(spans):
            if a + size > b:
                raise ReadError(
                    f"{self.path}: tensors {printable(name)!r} and {printable(other)!r} overlap "
                    "(corrupt offsets)"
                )

    def _extent(self, name: str) -> int:
        """Bytes from *name*'s data to the next tensor's (or the end of the file)."""
        start = self._offsets[name]
        later = [o for o in self._offsets.values() if o > start]
        return (min(later) if later else self.file.size) - start

    # -- reading --------------------------------------------------------------------------------

    def read(self, info: TensorInfo) -> Tensor:
        if info.unreadable:
            raise ReadError(f"{printable(info.name)}: {info.unreadable}")
        start = self._offsets[info.name]
        shape, n = info.shape, info.size
        dtype = info.dtype
        if dtype in _FLOATS:
            values = self.file.array(_FLOATS[dtype], n, start).reshape(shape)
            return FloatTensor(info.name, dtype, values)
        if dtype == "BF16":
            raw = self.file.array("<u2", n, start)
            return FloatTensor(info.name, dtype, bf16_to_f32(raw).reshape(shape))
        data = self.file.array(np.uint8, info.nbytes, start)
        if dtype == "Q8_0":
            return FloatTensor(info.name, dtype, _bits.decode_q8_0(data, shape))
        if dtype == "I2_S":
            try:
                codes, scale = unpack_i2s(data, shape, self.layout)  # type: ignore[arg-type]
            except QuantInputError as exc:
                raise ReadError(f"{printable(info.name)}: {exc}") from None
            return TernaryTensor(info.name, "i2_s", codes, scale, note=f"layout {self.layout}")
        if dtype in ("TQ1_0", "TQ2_0"):
            decode = _bits.decode_tq1_0 if dtype == "TQ1_0" else _bits.decode_tq2_0
            codes, scales = decode(data, shape)
            _bits.check_block_scales(scales, f"{printable(info.name)}: {dtype}")
            nonzero = scales[scales != 0]
            scale = float(np.median(nonzero)) if nonzero.size else 0.0
            return TernaryTensor(info.name, dtype.lower(), codes, scale, scales, 256)
        if dtype in ("TL1", "TL2") and self._tl_reader is not None:
            extent = self.file.array(np.uint8, self._extent(info.name), start)
            return self._tl_reader(info.name, dtype, extent, shape, self._tl_scale(info.name))
        raise ReadError(f"{printable(info.name)}: {dtype} cannot be read")  # pragma: no cover

    def release(self, info: TensorInfo) -> None:
        self.file.release(self._offsets[info.name], info.nbytes or self._extent(info.name))

    def _tl_scale(self, name: str) -> float:
        """The converter writes a TL1/TL2 tensor's scale as a separate F32 tensor."""
        scale_name = f"{name}_scale"
        if self._types.get(scale_name) != 0:
            raise ReadError(f"{printable(name)}: no F32 tensor {printable(scale_name)!r} beside it")
        return float(self.file.array("<f4", 1, self._offsets[scale_name])[0])

    def close(self) -> None:
        self.file.close()
