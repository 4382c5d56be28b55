"""safetensors reader, parsed by us (no torch, no ``safetensors`` package): single files,
sharded checkpoints (``model.safetensors.index.json``) and Hugging Face packed BitNet weights.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw data: we map the file and view each tensor in place (bf16 is
widened to float32 when read, one tensor at a time).  The header length, every byte range and
every shard name are checked before use.

**HF packed weights** (transformers' ``integrations/bitnet.py``): a uint8 ``X.weight`` of shape
(ceil(M/4), K) beside ``X.weight_scale``.  What the scale means depends on the model's
``config.json`` ``quantization_config``: the ``BitLinear`` layer (``linear_class`` "bitlinear",
the default) divides, ``W = t / weight_scale``; offline ``AutoBitLinear`` multiplies,
``W = t * weight_scale``.  We read it from the checkpoint's directory and say which was used.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from bitnet_obs._untrusted import load_json

from ._bits import decode_hf_packed
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
    checked_shape,
    map_file,
    printable,
)

__all__ = ["INDEX_NAME", "SafetensorsCheckpoint", "scale_convention"]

INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100 << 20  # the safetensors library's own limit
_MAX_JSON = 64 << 20  # config.json, index.json

_DTYPES: dict[str, tuple[str, Kind]] = {
    "F64": ("<f8", "float"),
    "F32": ("<f4", "float"),
    "F16": ("<f2", "float"),
    "BF16": ("<u2", "float"),
    "I64": ("<i8", "other"),
    "I32": ("<i4", "other"),
    "I16": ("<i2", "other"),
    "I8": ("i1", "other"),
    "U64": ("<u8", "other"),
    "U32": ("<u4", "other"),
    "U16": ("<u2", "other"),
    "U8": ("u1", "other"),
    "BOOL": ("?", "other"),
    "F8_E4M3": ("u1", "other"),
    "F8_E5M2": ("u1", "other"),
}
PACKED = "U8 (HF packed)"


def _read_json(path: Path, what: str) -> Any:
    f = map_file(path)
    try:
        if f.size > _MAX_JSON:
            raise ReadError(f"{path}: {f.size} bytes is too large for {what}")
        return load_json(bytes(f.buf), f"{path}")
    except ValueError as exc:
        raise ReadError(str(exc)) from None
    finally:
        f.close()


def scale_convention(directory: Path) -> tuple[str, str]:
    """("divide" | "multiply" | "online", why) for HF packed weights in *directory*."""
    config = directory / "config.json"
    if not config.exists():
        return "divide", (
            "HF packed scales read as W = t / weight_scale (BitLinear, transformers' default): "
            "no config.json beside the checkpoint"
        )
    data = _read_json(config, "config.json")
    qc = data.get("quantization_config") if isinstance(data, dict) else None
    if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
        return "divide", (
            "HF packed scales read as W = t / weight_scale (BitLinear, transformers' default): "
            "config.json has no bitnet quantization_config"
        )
    linear = qc.get("linear_class", "bitlinear")
    mode = qc.get("quantization_mode", "offline")
    if linear == "autobitlinear" and mode == "online":
        return "online", "config.json: online AutoBitLinear (float weights, quantized at run time)"
    if linear == "autobitlinear":
        return "multiply", (
            "HF packed scales read as W = t * weight_scale (offline AutoBitLinear, from "
            "config.json quantization_config)"
        )
    return "divide", (
        "HF packed scales read as W = t / weight_scale (BitLinear, from config.json "
        "quantization_config)"
    )


class _Shard:
    def __init__(self, f: MappedFile) -> None:
        self.file = f
        if f.size < 8:
            raise ReadError(f"{f.path}: not a safetensors file (shorter than its 8-byte header)")
        (hlen,) = struct.unpack_from("<Q", f.buf, 0)
        if hlen > min(f.size - 8, _MAX_HEADER):
            raise ReadError(
                f"{f.path}: not a safetensors file (header length {hlen} exceeds the file, "
                f"{f.size} bytes)"
            )
        try:
            header = load_json(bytes(f.buf[8 : 8 + hlen]), "its header", max_depth=4)
        except ValueError as exc:
            raise ReadError(f"{f.path}: not a safetensors file ({exc})") from None
        if not isinstance(header, dict):
            raise ReadError(f"{f.path}: not a safetensors file (the header is not an object)")
        self.data_start = 8 + hlen
        data_size = f.size - self.data_start
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self.entries[name] = self._entry(name, entry, data_size)

    def _entry(
        self, name: str, entry: object, data_size: int
    ) -> tuple[str, tuple[int, ...], int, int]:
        where = f"{self.file.path}: tensor {printable(name)!r}"
        if not isinstance(entry, dict):
            raise ReadError(f"{where}: the header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            shown = repr(dtype)[:80]
            raise ReadError(f"{where}: unknown dtype {shown}; accepted: {', '.join(_DTYPES)}")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise ReadError(f"{where}: shape {repr(shape)[:80]} is not a list of ints >= 0")
        checked_shape(tuple(shape), where)
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            shown = repr(offsets)[:80]
            raise ReadError(f"{where}: data_offsets {shown} is not [begin, end]")
        begin, end = offsets
        n = 1
        for d in shape:
            n *= d
        size = n * np.dtype(_DTYPES[dtype][0]).itemsize
        if not 0 <= begin <= end <= data_size or end - begin != size:
            raise ReadError(
                f"{where}: {dtype} {tuple(shape)} needs {size} bytes but data_offsets "
                f"[{begin}, {end}] {'lie beyond the file' if end > data_size else 'disagree'} "
                f"(data section: {data_size} bytes): truncated or corrupt"
            )
        return dtype, tuple(shape), self.data_start + begin, n

    def array(self, name: str) -> Any:
        dtype, shape, start, n = self.entries[name]
        return self.file.array(_DTYPES[dtype][0], n, start).reshape(shape)


class SafetensorsCheckpoint(Checkpoint):
    """One ``.safetensors`` file, an index of shards, or a checkpoint directory holding either."""

    format = "safetensors"

    def __init__(self, path: Path) -> None:
        self.path = path
        directory, shard_names = _locate(path)
        self._shards: dict[str, _Shard] = {}
        self._where: dict[str, _Shard] = {}
        try:
            for shard_name in shard_names:
                shard = _Shard(map_file(directory / shard_name))
                self._shards[shard_name] = shard
                for name in shard.entries:
                    if name in self._where:
                        raise ReadError(f"{path}: tensor {printable(name)!r} is in two shards")
                    self._where[name] = shard
        except BaseException:
            self.close()
            raise
        self.size_bytes = sum(s.file.size for s in self._shards.values())
        self.metadata = {"shards": len(self._shards)}
        for shard in self._shards.values():
            if isinstance(shard.metadata, dict):
                self.metadata.update({str(k): v for k, v in shard.metadata.items()})
        names = set(self._where)
        packed = {
            n
            for n, s in self._where.items()
            if s.entries[n][0] == "U8" and n.endswith(".weight") and f"{n}_scale" in names
        }
        self.companions = frozenset(f"{n}_scale" for n in packed)
        notes: list[str] = []
        if len(self._shards) > 1:
            notes.append(f"{len(self._shards)} shards")
        self._convention = ""
        if packed:
            self._convention, why = scale_convention(directory)
            notes.append(why)
        self.notes = tuple(notes)
        infos = []
        for name, shard in self._where.items():
            dtype, shape, _, n = shard.entries[name]
            kind = _DTYPES[dtype][1]
            nbytes = n * np.dtype(_DTYPES[dtype][0]).itemsize
            unreadable = None
            if name in packed:
                dtype, kind = PACKED, "ternary"
                shape = (4 * shape[0], *shape[1:]) if shape else shape
                if self._convention == "online":
                    unreadable = (
                        "config.json says online AutoBitLinear (float weights), but this tensor "
                        "is packed"
                    )
            elif kind == "other":
                unreadable = f"dtype {dtype} is not a float type"
            infos.append(TensorInfo(name, shape, dtype, nbytes, kind, unreadable))
        self.tensors = tuple(sorted(infos, key=lambda t: self._where[t.name].entries[t.name][2]))

    def read(self, info: TensorInfo) -> Tensor:
        if info.unreadable:
            raise ReadError(f"{printable(info.name)}: {info.unreadable}")
        shard = self._where[info.name]
        raw = shard.array(info.name)
        if info.dtype == PACKED:
            return self._packed(info.name, raw)
        if info.dtype == "BF16":
            return FloatTensor(info.name, "BF16", bf16_to_f32(raw))
        return FloatTensor(info.name, info.dtype, raw)

    def release(self, info: TensorInfo) -> None:
        shard = self._where[info.name]
        shard.file.release(shard.entries[info.name][2], info.nbytes)

    def _packed(self, name: str, packed: Any) -> TernaryTensor:
        scale_name = f"{name}_scale"
        scale_shard = self._where[scale_name]
        dtype = scale_shard.entries[scale_name][0]
        raw = scale_shard.array(scale_name).reshape(-1)
        if raw.size != 1 or _DTYPES[dtype][1] != "float":
            raise ReadError(
                f"{printable(scale_name)}: {dtype} with {raw.size} values; accepted: one float"
            )
        ws = float(bf16_to_f32(raw)[0] if dtype == "BF16" else raw[0])
        if not (np.isfinite(ws) and ws > 0):
            raise ReadError(f"{printable(scale_name)} is {ws!r}; accepted: a finite float > 0")
        scale = ws if self._convention == "multiply" else 1.0 / ws
        codes = decode_hf_packed(np.asarray(packed))
        return TernaryTensor(
            name,
            "hf_packed",
            codes,
            scale,
            note=self.notes[-1],
            extra={"weight_scale": ws, "packed_rows": int(packed.shape[0])},
        )

    def close(self) -> None:
        for shard in self._shards.values():
            shard.file.close()


def _locate(path: Path) -> tuple[Path, list[str]]:
    """(directory, shard file names) for a file, an index or a checkpoint directory."""
    if path.is_dir():
        if (path / INDEX_NAME).exists():
            return _locate(path / INDEX_NAME)
        if (path / "model.safetensors").exists():
            return path, ["model.safetensors"]
        found = sorted(p.name for p in path.glob("*.safetensors"))
        if len(found) == 1:
            return path, found
        raise ReadError(
            f"{path}: a directory without {INDEX_NAME} or model.safetensors "
            f"({len(found)} .safetensors files); accepted: a checkpoint directory, a .safetensors "
            "file or an index"
        )
    if path.name.endswith(".json"):
        index = _read_json(path, "a safetensors index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ReadError(f"{path}: no weight_map object; not a safetensors index")
        shards = []
        for name, shard in weight_map.items():
            if (
                not isinstance(shard, str)
                or not shard
                or not shard.isprintable()
                or shard in (".", "..")
                or Path(shard).name != shard
            ):
                shown = repr(shard)[:120]
                raise ReadError(
                    f"{path}: tensor {printable(str(name))!r} maps to {shown}; accepted: a "
                    "file name in the index's directory (printable, no paths)"
                )
            if shard not in shards:
                shards.append(shard)
        return path.parent, shards
    return path.parent, [path.name]
