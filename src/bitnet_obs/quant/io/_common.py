"""What every reader shares: the tensor types it returns, opening and mapping a file safely,
size checks, bf16, and printable names.

Files are opened with ``O_NONBLOCK`` and checked with ``fstat`` before anything is read, so a
FIFO, socket or device named like a checkpoint is refused instead of blocking forever.  Regular
files are memory-mapped read-only: tensors are views into the map (or converted one at a time),
never the whole file in memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bitnet_obs._untrusted import printable

__all__ = [
    "Checkpoint",
    "FloatTensor",
    "MappedFile",
    "ReadError",
    "TensorInfo",
    "TernaryTensor",
    "bf16_to_f32",
    "checked_shape",
    "map_file",
    "open_regular",
    "printable",
]

Kind = Literal["float", "ternary", "other"]


class ReadError(ValueError):
    """A checkpoint (or one of its tensors) cannot be read; the message says why and what is
    accepted.  A subclass of :class:`ValueError`."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as declared by the file, before any data is read.

    ``shape`` is in numpy order, (M, K) for a linear weight (GGUF's ``ne`` reversed);
    ``dtype`` is the stored type as the format names it (``"BF16"``, ``"I2_S"``, ``"TQ2_0"``,
    ``"U8 (HF packed)"``); ``unreadable`` says why the data cannot be read, when it cannot.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    kind: Kind
    unreadable: str | None = None

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class FloatTensor:
    """Float weights (float16, float32 or float64; bf16 is widened to float32 exactly)."""

    name: str
    dtype: str
    values: npt.NDArray[np.floating[Any]]


@dataclass(frozen=True)
class TernaryTensor:
    """Ternary codes as stored by a converter, with their scale.

    The weights are ``scale * codes``.  Formats with one scale per block of values (TQ1_0,
    TQ2_0: 256) carry them in ``block_scales`` (``block_size`` values each, over the flattened
    tensor); ``scale`` is then the median of the non-zero block scales.  ``note`` says how the
    scale was read when that is a convention (HF packed weights).
    """

    name: str
    format: str
    codes: npt.NDArray[np.int8]
    scale: float
    block_scales: npt.NDArray[np.float32] | None = None
    block_size: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Tensor = FloatTensor | TernaryTensor


class Checkpoint:
    """An open checkpoint: its tensor list (nothing read yet) and a :meth:`read` that returns one
    tensor at a time.  Use it as a context manager, or call :meth:`close`.

    ``companions`` are tensors that belong to another one (HF ``weight_scale``, a TL1/TL2
    ``_scale``), read with it and not weights of their own.  ``notes`` say how the file was
    interpreted where that was a choice (layout, scale convention).
    """

    format: str = ""
    path: Path
    tensors: tuple[TensorInfo, ...] = ()
    metadata: dict[str, Any]
    notes: tuple[str, ...] = ()
    companions: frozenset[str] = frozenset()
    size_bytes: int = 0

    def read(self, info: TensorInfo) -> Tensor:
        raise NotImplementedError

    def release(self, info: TensorInfo) -> None:
        """Say that *info*'s data is no longer needed (its mapped pages leave the resident set;
        arrays still viewing them stay valid and fault the pages back in if read)."""

    def close(self) -> None:
        """Release the file mappings (tensors already read stay valid)."""

    def weights(self) -> tuple[TensorInfo, ...]:
        """The tensors, without the companions."""
        return tuple(t for t in self.tensors if t.name not in self.companions)

    def type_counts(self) -> dict[str, int]:
        """Stored type -> number of tensors (companions excluded), most frequent first."""
        counts: dict[str, int] = {}
        for t in self.weights():
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(mode: int) -> str:
    for test, what in _KINDS:
        if test(mode):
            return what
    return "not a regular file"


class MappedFile:
    """A regular file mapped read-only.  ``buf`` supports ``np.frombuffer``; arrays made from it
    keep the mapping alive after :meth:`close`, so closing never invalidates a tensor."""

    def __init__(self, path: Path, buf: mmap.mmap) -> None:
        self.path = path
        self.buf = buf
        self.size = len(buf)

    def array(self, dtype: npt.DTypeLike, count: int, offset: int) -> npt.NDArray[Any]:
        """``count`` items of ``dtype`` at ``offset``, checked against the file's size."""
        itemsize = np.dtype(dtype).itemsize
        end = offset + count * itemsize
        if offset < 0 or count < 0 or end > self.size:
            raise ReadError(
                f"{self.path}: data at bytes {offset}..{end} lies beyond the end of the file "
                f"({self.size} bytes): truncated or corrupt"
            )
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=offset)

    def release(self, offset: int, length: int) -> None:
        """Drop these bytes' pages from the process (they stay in the page cache): a tensor that
        has been read then no longer counts in the resident set, so reading a whole checkpoint
        keeps RSS at about one tensor, not the file."""
        start = offset - offset % mmap.PAGESIZE
        with contextlib.suppress(ValueError, OSError, AttributeError):
            self.buf.madvise(
                mmap.MADV_DONTNEED, start, min(length + offset - start, self.size - start)
            )

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # arrays still view the map: it goes with them
            self.buf.close()


def open_regular(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(fd, size)`` of *path* opened read-only, refusing anything but a non-empty regular file
    (opened with O_NONBLOCK, so a FIFO is refused instead of waiting for a writer)."""
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise ReadError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ReadError(f"{p}: is a directory; accepted: a regular file") from None
    except OSError as exc:
        raise ReadError(f"{p}: cannot open ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReadError(
                f"{p}: is {_not_regular(st.st_mode)}, not a regular file; accepted: a regular "
                "file (a FIFO or device would block or never end)"
            )
        if st.st_size == 0:
            raise ReadError(f"{p}: the file is empty")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def map_file(path: str | os.PathLike[str]) -> MappedFile:
    """Open and map *path*, refusing anything that is not a non-empty regular file."""
    p = Path(path)
    fd, _ = open_regular(p)
    try:
        try:
            buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ReadError(f"{p}: cannot map the file ({exc})") from None
    finally:
        os.close(fd)
    return MappedFile(p, buf)


def bf16_to_f32(raw: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """bfloat16 bit patterns to float32, exactly (bf16 is the top half of a float32)."""
    out = np.empty(raw.shape, np.uint32)
    np.left_shift(raw, np.uint32(16), out=out)
    return out.view(np.float32)


#: The largest dimension a header may declare.  A dimension bigger than anything a file can
#: hold (even of a tensor with a zero dimension, which needs no bytes) is corruption: numpy
#: cannot shape an array beyond 2**63 elements per axis, and nothing downstream should try.
MAX_DIM = 1 << 40


def checked_shape(shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """A shape read from a header, each dimension in [0, MAX_DIM]."""
    for d in shape:
        if not 0 <= d <= MAX_DIM:
            raise ReadError(
                f"{where}: declares a dimension of {d}; accepted: dimensions up to {MAX_DIM} "
                "(corrupt or hostile header)"
            )
    return shape


def checked_count(value: int, limit: int, what: str, where: str) -> int:
    """A count read from a header, refused when the file cannot possibly hold that many."""
    if value < 0 or value > limit:
        raise ReadError(
            f"{where}: the header declares {value} {what}, more than the file can hold "
            f"(at most {limit}): corrupt or not this format"
        )
    return value
