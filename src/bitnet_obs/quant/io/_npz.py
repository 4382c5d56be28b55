"""``.npz`` reader (``np.savez`` archives), robust to hostile archives.

Each member's ``.npy`` header is read and its declared size checked against the size the zip
directory gives for the member (and, for a compressed member, against what deflate can expand
to) before anything is allocated: a header declaring a (1e8, 1e8) array in a 1 KB archive is a
:class:`ReadError`, not a ``MemoryError``.  Stored (uncompressed) members, what ``np.savez``
writes, are viewed straight from the memory-mapped archive.
"""

from __future__ import annotations

import io
import math
import mmap
import struct
import zipfile
from typing import IO, Any

import numpy as np

from ._common import (
    Checkpoint,
    FloatTensor,
    MappedFile,
    ReadError,
    Tensor,
    TensorInfo,
    checked_shape,
    printable,
)

__all__ = ["NpzCheckpoint", "member_limit", "read_npy_header"]

# deflate cannot expand data by more than about 1032:1
_MAX_RATIO = 1100
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_FLOAT_KINDS = "f"


def member_limit(info: zipfile.ZipInfo) -> int:
    """The most bytes a member's data can hold: its stored size, or what deflate can expand
    its compressed size to. A member declaring more is corrupt or hostile."""
    return info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else _MAX_RATIO)


def read_npy_header(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """(shape, fortran order, dtype, header length) of the ``.npy`` data at ``fp``'s start:
    what it declares, read before anything is allocated (numpy's own header parser: any
    exception means an unreadable header)."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    return tuple(shape), bool(fortran), dtype, fp.tell()


class _MapReader(io.RawIOBase):
    """A seekable binary stream over the mapped archive, for :mod:`zipfile` (Python < 3.13's
    ``mmap`` lacks ``seekable``)."""

    def __init__(self, buf: mmap.mmap) -> None:
        self._buf = buf
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, len(self._buf))[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        data = self._buf[self._pos : self._pos + len(b)]
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


class NpzCheckpoint(Checkpoint):
    format = "npz"

    def __init__(self, f: MappedFile) -> None:
        self.file = f
        self.path = f.path
        self.size_bytes = f.size
        self.metadata = {}
        try:
            self._zip = zipfile.ZipFile(io.BufferedReader(_MapReader(f.buf)))
        except Exception as exc:  # zipfile raises many types on a corrupt directory
            raise ReadError(f"{f.path}: not a readable .npz archive ({exc})") from None
        self._members: dict[str, tuple[zipfile.ZipInfo, np.dtype[Any], tuple[int, ...], bool, int]]
        self._members = {}
        infos = []
        for zi in self._zip.infolist():
            if zi.is_dir():
                continue
            name = zi.filename[:-4] if zi.filename.endswith(".npy") else zi.filename
            dtype, shape, fortran, data_offset = self._header(zi)
            self._members[name] = (zi, dtype, shape, fortran, data_offset)
            kind = (
                "float" if dtype.kind in _FLOAT_KINDS and dtype.itemsize in (2, 4, 8) else "other"
            )
            why = None if kind == "float" else f"dtype {dtype} is not float"
            nbytes = math.prod(shape) * dtype.itemsize
            infos.append(TensorInfo(name, shape, str(dtype), nbytes, kind, why))  # type: ignore[arg-type]
        self.tensors = tuple(infos)

    def _header(self, zi: zipfile.ZipInfo) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
        where = f"{self.path}: member {printable(zi.filename)!r}"
        if (
            zi.file_size > member_limit(zi)
            or not 0 <= zi.header_offset <= self.file.size - _LOCAL_HEADER.size
            or zi.header_offset + zi.compress_size > self.file.size
        ):
            raise ReadError(f"{where}: sizes in the zip directory exceed the archive: corrupt")
        try:
            with self._zip.open(zi) as fp:
                shape, fortran, dtype, header_len = read_npy_header(fp)
        except Exception as exc:  # numpy parses the header with tokenize/ast: any error
            raise ReadError(f"{where}: not a readable .npy member ({exc!r})") from None
        if dtype.hasobject:
            raise ReadError(f"{where}: holds Python objects (pickles are refused)")
        checked_shape(shape, where)
        declared = header_len + math.prod(shape) * dtype.itemsize
        if declared != zi.file_size:
            raise ReadError(
                f"{where}: the .npy header declares {dtype} {shape} ({declared} bytes) but the "
                f"member holds {zi.file_size} bytes: corrupt"
            )
        data_offset = -1
        if zi.compress_type == zipfile.ZIP_STORED:
            sig, name_len, extra_len = _LOCAL_HEADER.unpack_from(self.file.buf, zi.header_offset)
            if sig == b"PK\x03\x04":
                data_offset = zi.header_offset + _LOCAL_HEADER.size + name_len + extra_len
                data_offset += header_len
        return dtype, shape, fortran, data_offset

    def read(self, info: TensorInfo) -> Tensor:
        if info.unreadable:
            raise ReadError(f"{printable(info.name)}: {info.unreadable}")
        zi, dtype, shape, fortran, offset = self._members[info.name]
        n = info.size
        if offset >= 0:
            flat = self.file.array(dtype, n, offset)
        else:
            try:
                with self._zip.open(zi) as fp:
                    fp.seek(zi.file_size - n * dtype.itemsize)
                    flat = np.frombuffer(fp.read(n * dtype.itemsize), dtype=dtype)
            except Exception as exc:  # zlib.error, BadZipFile (CRC), EOFError, ...
                raise ReadError(f"{printable(info.name)} is corrupt ({exc})") from None
            if flat.size != n:
                raise ReadError(f"{printable(info.name)} is truncated")
        values = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
        return FloatTensor(info.name, str(dtype), values)

    def release(self, info: TensorInfo) -> None:
        offset = self._members[info.name][4]
        if offset >= 0:
            self.file.release(offset, info.nbytes)

    def close(self) -> None:
        self._zip.close()
        self.file.close()
