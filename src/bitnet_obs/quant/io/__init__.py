"""Readers for the files BitNet models ship as: GGUF (bitnet.cpp's I2_S, TL1, TL2 and llama.cpp's
TQ1_0, TQ2_0, float types, Q8_0), safetensors (f32/f16/bf16, sharded, Hugging Face packed
ternary weights) and ``.npz``.

Streaming: opening a checkpoint reads only its header; :meth:`Checkpoint.read` returns one
tensor, memory-mapped where the format allows (float32/float16 data is a view of the file; bf16
is widened to float32; ternary formats are decoded to int8 codes).  Every size and offset a header
declares is checked against the file before anything is allocated or mapped, and anything that
is not a regular file is refused.  numpy only; the ``gguf`` package is needed only to map GGUF
tensor names to Hugging Face ones.

>>> from bitnet_obs.quant import io
>>> with io.open_checkpoint("model.gguf") as ckpt:            # doctest: +SKIP
...     for info in ckpt.weights():
...         tensor = ckpt.read(info)      # io.TernaryTensor (codes, scale) or io.FloatTensor
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .._tiled import packed_nbytes, read_kernel_config, unpack_tl1, unpack_tl2
from .._validate import QuantInputError
from ._common import (
    Checkpoint,
    FloatTensor,
    ReadError,
    Tensor,
    TensorInfo,
    TernaryTensor,
    map_file,
    open_regular,
    printable,
)
from ._gguf import GGUF_MAGIC, GGUFCheckpoint, TLReader
from ._names import PROJECTIONS, Role, gguf_names_for, role
from ._npz import NpzCheckpoint
from ._safetensors import INDEX_NAME, SafetensorsCheckpoint

__all__ = [
    "LAYOUTS",
    "PROJECTIONS",
    "Checkpoint",
    "FileSummary",
    "FloatTensor",
    "ReadError",
    "Role",
    "Tensor",
    "TensorInfo",
    "TernaryTensor",
    "content_hash",
    "gguf_names_for",
    "open_checkpoint",
    "printable",
    "role",
    "summarize",
]

#: I2_S byte layouts: bitnet.cpp packs differently on x86 and ARM, and the file does not say.
LAYOUTS = ("x86", "arm")
ACCEPTED = ".gguf, .safetensors, model.safetensors.index.json, a checkpoint directory, .npz"

_TL_NEEDS_CONFIG = (
    "{fmt} stores its codes in bitnet.cpp's tiled order for a kernel configuration (BM, BK, bm) "
    "that the GGUF file does not record; pass the kernel_config.ini bitnet.cpp's codegen wrote "
    "for this model (--kernel-config)"
)


def open_checkpoint(
    path: str | os.PathLike[str],
    *,
    layout: str = "x86",
    kernel_config: str | os.PathLike[str] | None = None,
) -> Checkpoint:
    """Open a checkpoint by its path (the format comes from the name and the first bytes).

    *layout* is the I2_S byte layout (``"x86"`` or ``"arm"``); *kernel_config* is bitnet.cpp's
    ``kernel_config.ini``, needed to read TL1/TL2 tensors.  Raises :class:`ReadError` with what
    was wrong and what is accepted.
    """
    if layout not in LAYOUTS:
        raise ReadError(f"unknown I2_S layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    p = Path(path)
    if p.is_dir() or p.name.endswith(".json"):
        return SafetensorsCheckpoint(p)
    f = map_file(p)
    try:
        head = bytes(f.buf[:4])
        suffix = p.suffix.lower()
        if head == GGUF_MAGIC or suffix == ".gguf":
            tl_reader, missing = _tl_reader(kernel_config)
            return GGUFCheckpoint(f, layout=layout, tl_reader=tl_reader, tl_missing=missing)
        if suffix == ".safetensors":
            f.close()
            return SafetensorsCheckpoint(p)
        if suffix == ".npz" or head.startswith(b"PK"):
            return NpzCheckpoint(f)
    except BaseException:
        f.close()
        raise
    f.close()
    raise ReadError(f"{p}: unknown file type {p.suffix!r}; accepted: {ACCEPTED}")


def _tl_reader(kernel_config: str | os.PathLike[str] | None) -> tuple[TLReader | None, str]:
    """A TL1/TL2 decoder for the kernel configuration in *kernel_config* (bitnet.cpp's
    ``kernel_config.ini``: tile sizes per (M, K)), or why there is none."""
    if kernel_config is None:
        return None, _TL_NEEDS_CONFIG.format(fmt="TL1/TL2")
    try:
        table = read_kernel_config(kernel_config)
    except QuantInputError as exc:
        raise ReadError(str(exc)) from None

    def read(
        name: str, fmt: str, data: npt.NDArray[np.uint8], shape: tuple[int, ...], scale: float
    ) -> TernaryTensor:
        if len(shape) != 2:
            raise ReadError(f"{printable(name)}: {fmt} with shape {shape}; accepted: (M, K)")
        size = packed_nbytes(fmt, shape) - 32
        unpack = unpack_tl1 if fmt == "TL1" else unpack_tl2
        try:
            codes, s = unpack(data[:size], shape, table, scale=scale)
        except QuantInputError as exc:
            raise ReadError(f"{printable(name)}: {exc}") from None
        cfg = table[(shape[0], shape[1])]
        note = f"tiled for bm={cfg.bm}, bk={cfg.bk}, bmm={cfg.bmm} ({kernel_config})"
        return TernaryTensor(name, fmt.lower(), codes, s, note=note)

    return read, ""


@dataclass(frozen=True)
class FileSummary:
    """What a model file holds, from its header alone (no tensor data is read).

    ``architecture`` (GGUF ``general.architecture``: ``bitnet``, ``llama``, ...) and
    ``parameters`` (the elements of every weight tensor, as llama.cpp counts them) are None
    where the format does not declare them.
    """

    format: str
    type_counts: dict[str, int]
    size_bytes: int
    architecture: str | None = None
    parameters: int | None = None


def summarize(path: str | os.PathLike[str]) -> FileSummary:
    """Format, stored types with their tensor counts, and total size of a checkpoint (with the
    architecture and parameter count of a GGUF file)."""
    with open_checkpoint(path) as ckpt:
        if not isinstance(ckpt, GGUFCheckpoint):
            return FileSummary(ckpt.format, ckpt.type_counts(), ckpt.size_bytes)
        arch = ckpt.metadata.get("general.architecture")
        return FileSummary(
            ckpt.format,
            ckpt.type_counts(),
            ckpt.size_bytes,
            printable(arch)[:64] if isinstance(arch, str) and arch else None,
            sum(t.size for t in ckpt.weights()),
        )


def content_hash(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (or, for a checkpoint directory, of its safetensors shards and index in
    name order).  Read with ``readinto`` into one reused buffer, not mapped: hashing a 2 GB model
    beside a serving process must not add 2 GB to its resident set.  hashlib releases the GIL,
    so a thread doing this does not hold up the interpreter."""
    p = Path(path)
    files = [p]
    if p.is_dir():
        files = sorted(
            q for q in p.iterdir() if q.name.endswith((".safetensors", INDEX_NAME)) and q.is_file()
        )
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    for q in files:
        fd, _ = open_regular(q)
        with os.fdopen(fd, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while n := f.readinto(view):
                digest.update(view[:n])
    return digest.hexdigest()
