"""The golden-case file of ``bitnet_obs.crossval``: one ``.npz``, loadable without pickle.

Ragged sequences are stored flat with offsets (case i's prompt is
``prompt_ids[prompt_offsets[i]:prompt_offsets[i + 1]]``); the JSON header (who made the file,
when, with which implementation, model and format) is a ``uint8`` array inside the archive, so
the file is one artifact a deployment pipeline can pass around.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_obs._errors import ConfigError
from bitnet_obs._untrusted import load_json, one_line, printable
from bitnet_obs.quant.io._common import ReadError, open_regular
from bitnet_obs.quant.io._npz import member_limit, read_npy_header

FORMAT = "bitnet-obs-golden"
VERSION = 1

#: Bounds of what a golden file may declare (checked before anything is allocated).
MAX_CASES = 100_000
MAX_PROMPT_TOKENS = 1 << 20
MAX_NEW_TOKENS = 1 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAY_BYTES = 2 << 30
_MAX_DIM = 1 << 31
_MAX_HEADER_DEPTH = 16
_INT64_MAX = int(np.iinfo(np.int64).max)
_ARRAYS = (
    "header",
    "prompt_ids",
    "prompt_offsets",
    "output_ids",
    "output_offsets",
    "logits",
    "logits_offsets",
)


class GoldenError(ConfigError):
    """A golden file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class GoldenCase:
    """Prompt ids, the expected greedy output ids and (optionally) the logits of the first
    steps, shape (steps, vocab)."""

    prompt_ids: npt.NDArray[np.int64]
    output_ids: npt.NDArray[np.int64]
    logits: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class GoldenSet:
    """The cases of one golden file and its header (``model``, ``quant_format``,
    ``max_new_tokens``, ``created_at``, ``created_by``, ``implementation``, ``runtime``...)."""

    cases: tuple[GoldenCase, ...]
    header: Mapping[str, Any]

    @property
    def max_new_tokens(self) -> int:
        return int(self.header["max_new_tokens"])

    @property
    def model(self) -> str:
        return str(self.header.get("model") or "")

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary the ids index (the header's ``vocab_size``, else the logits' width),
        None when the file says neither."""
        vocab = self.header.get("vocab_size")
        if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
            return vocab
        with_logits = next((c.logits for c in self.cases if c.logits is not None), None)
        return None if with_logits is None else int(with_logits.shape[1])


def _flat(parts: Sequence[npt.NDArray[Any]]) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    offsets = np.zeros(len(parts) + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    return (np.concatenate(parts) if parts else np.zeros(0)), offsets


def save(path: str | os.PathLike[str], golden: GoldenSet) -> None:
    """Write atomically (a temporary file renamed over ``path``)."""
    cases = golden.cases
    prompts, prompt_offsets = _flat([c.prompt_ids for c in cases])
    outputs, output_offsets = _flat([c.output_ids for c in cases])
    header = dict(golden.header, format=FORMAT, version=VERSION, cases=len(cases))
    arrays: dict[str, Any] = {
        "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
        "prompt_ids": prompts.astype(np.int64),
        "prompt_offsets": prompt_offsets,
        "output_ids": outputs.astype(np.int64),
        "output_offsets": output_offsets,
    }
    with_logits = [c.logits for c in cases if c.logits is not None]
    if with_logits:
        vocab = with_logits[0].shape[1]
        blocks = [
            c.logits if c.logits is not None else np.zeros((0, vocab), np.float32) for c in cases
        ]
        logits, logits_offsets = _flat(blocks)
        arrays["logits"] = logits.astype(np.float32)
        arrays["logits_offsets"] = logits_offsets
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent or ".")
    except OSError as exc:
        raise GoldenError(f"{printable(str(path))}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise GoldenError(f"{printable(str(path))}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _split(
    flat: npt.NDArray[Any], offsets: npt.NDArray[Any], n: int, what: str, where: str
) -> list[npt.NDArray[Any]]:
    ok = (
        offsets.ndim == 1
        and offsets.dtype.kind in "iu"
        and offsets.shape[0] == n + 1
        and offsets[0] == 0
        and offsets[-1] == flat.shape[0]
        and bool(np.all(np.diff(offsets.astype(np.int64)) >= 0))
    )
    if not ok:
        raise GoldenError(f"{where}: {what}_offsets do not describe {n} cases of {what}")
    return [flat[offsets[i] : offsets[i + 1]] for i in range(n)]


def _member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, budget: list[int]
) -> npt.NDArray[Any]:
    """One ``.npy`` member, its declared size checked against the zip directory, deflate's
    largest expansion and what is left of the file's budget before anything is allocated."""
    name = printable(info.filename)
    if info.file_size > member_limit(info):
        raise GoldenError(f"{where}: member {name} declares more bytes than its data can hold")
    budget[0] -= info.file_size
    if budget[0] < 0:
        raise GoldenError(
            f"{where}: the arrays exceed {MAX_ARRAY_BYTES >> 20} MiB; accepted: golden files "
            f"up to {MAX_ARRAY_BYTES >> 20} MiB of arrays"
        )
    try:
        with archive.open(info) as fp:
            shape, fortran, dtype, header_len = read_npy_header(fp)
            if dtype.hasobject or fortran or dtype.kind not in "iuf":
                raise GoldenError(f"{where}: member {name} holds {dtype}; accepted: numbers")
            if len(shape) > 2 or any(d > _MAX_DIM for d in shape):
                raise GoldenError(f"{where}: member {name} has shape {shape}; accepted: 1-D or "
                                  f"2-D, each dimension at most {_MAX_DIM}")  # fmt: skip
            count = math.prod(shape)
            if header_len + count * dtype.itemsize != info.file_size:
                raise GoldenError(
                    f"{where}: member {name} declares {dtype} {shape} but holds "
                    f"{info.file_size - header_len} bytes of data: corrupt"
                )
            data = fp.read(count * dtype.itemsize)
    except GoldenError:
        raise
    except Exception as exc:  # zlib, CRC, a header numpy cannot parse: corrupt either way
        why = one_line(f"{type(exc).__name__}: {exc}", 200)
        raise GoldenError(f"{where}: member {name} is unreadable ({why})") from None
    if len(data) != count * dtype.itemsize:
        raise GoldenError(f"{where}: member {name} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _arrays(path: str | os.PathLike[str], where: str) -> dict[str, npt.NDArray[Any]]:
    try:
        fd, _ = open_regular(path)
    except ReadError as exc:
        raise GoldenError(str(exc).replace(str(Path(path)), where, 1)) from None
    with os.fdopen(fd, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise GoldenError(f"{where}: a single array, not a golden .npz archive")
        f.seek(0)
        try:
            archive = zipfile.ZipFile(f)
        except Exception as exc:  # BadZipFile, OSError, ValueError on a corrupt directory
            why = one_line(f"{type(exc).__name__}: {exc}", 200)
            raise GoldenError(f"{where}: not a golden .npz file ({why})") from None
        with archive:
            infos = {i.filename.removesuffix(".npy"): i for i in archive.infolist()}
            budget = [MAX_ARRAY_BYTES]
            return {n: _member(archive, infos[n], where, budget) for n in _ARRAYS if n in infos}


def _positive(header: Mapping[str, Any], key: str, high: int, where: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise GoldenError(f"{where}: header {key}={value!r}; accepted: an integer in [1, {high}]")
    return value


def load(path: str | os.PathLike[str]) -> GoldenSet:
    """Read and check a golden file; :class:`GoldenError` says what is wrong with it. Nothing
    a hostile file declares (array sizes, nesting, counts) is allocated before it is checked
    against the file and the bounds above."""
    where = printable(str(path))
    data = _arrays(path, where)
    missing = {"header", "prompt_ids", "prompt_offsets", "output_ids", "output_offsets"} - set(data)
    if missing:
        raise GoldenError(f"{where}: not a golden file (missing {', '.join(sorted(missing))})")
    raw = data["header"]
    if raw.ndim != 1 or raw.dtype != np.uint8 or raw.size > MAX_HEADER_BYTES:
        raise GoldenError(f"{where}: the header is not UTF-8 JSON of at most "
                          f"{MAX_HEADER_BYTES} bytes")  # fmt: skip
    try:
        header = load_json(raw.tobytes(), "the header", max_depth=_MAX_HEADER_DEPTH)
    except ValueError as exc:
        raise GoldenError(f"{where}: unreadable header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise GoldenError(f"{where}: not a {FORMAT} file")
    if header.get("version") != VERSION:
        version = one_line(repr(header.get("version")), 40)
        raise GoldenError(f"{where}: version {version}; this reads {VERSION}")
    n = _positive(header, "cases", MAX_CASES, where)
    max_new = _positive(header, "max_new_tokens", MAX_NEW_TOKENS, where)
    vocab = header.get("vocab_size")
    if vocab is not None:
        vocab = _positive(header, "vocab_size", _MAX_DIM, where)
    for name in ("prompt_ids", "output_ids"):
        ids = data[name]
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise GoldenError(f"{where}: {name} must be 1-D integer ids")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= (vocab or _INT64_MAX)):
            raise GoldenError(f"{where}: {name} holds ids outside [0, {vocab or '2**63'})")
    prompts = _split(data["prompt_ids"], data["prompt_offsets"], n, "prompt", where)
    outputs = _split(data["output_ids"], data["output_offsets"], n, "output", where)
    logits: list[npt.NDArray[Any] | None] = [None] * n
    if "logits" in data:
        flat = data["logits"]
        if flat.ndim != 2 or flat.dtype.kind != "f" or flat.shape[1] < 2:
            raise GoldenError(f"{where}: logits must be floats of shape (steps, vocab)")
        if vocab is not None and flat.shape[1] != vocab:
            raise GoldenError(f"{where}: logits of vocab {flat.shape[1]}, the header {vocab}")
        if not np.isfinite(flat).all():
            raise GoldenError(f"{where}: logits must be finite")
        offsets = data.get("logits_offsets", np.zeros(0, np.int64))
        blocks = _split(flat, offsets, n, "logits", where)
        logits = [b if b.shape[0] else None for b in blocks]
    if any(p.shape[0] == 0 or p.shape[0] > MAX_PROMPT_TOKENS for p in prompts):
        raise GoldenError(f"{where}: a case has an empty prompt or one over "
                          f"{MAX_PROMPT_TOKENS} tokens")  # fmt: skip
    if any(o.shape[0] > max_new for o in outputs):
        raise GoldenError(f"{where}: a case has more output ids than max_new_tokens={max_new}")
    cases = tuple(
        GoldenCase(p.astype(np.int64), o.astype(np.int64), lg)
        for p, o, lg in zip(prompts, outputs, logits, strict=True)
    )
    return GoldenSet(cases, header)


def usable(golden: GoldenSet) -> GoldenSet:
    """A :class:`GoldenSet` built in code (not read by :func:`load`) checked the same way:
    :class:`GoldenError` when a run could not use it."""
    where = "golden set"
    if not isinstance(golden, GoldenSet) or not isinstance(golden.header, Mapping):
        raise GoldenError(f"{where}: accepted: a GoldenSet with a header mapping")
    _positive(golden.header, "max_new_tokens", MAX_NEW_TOKENS, where)
    if not golden.cases or len(golden.cases) > MAX_CASES:
        raise GoldenError(f"{where}: accepted: 1 to {MAX_CASES} cases")
    for i, case in enumerate(golden.cases):
        ok = isinstance(case, GoldenCase) and all(
            isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iu"
            for a in (case.prompt_ids, case.output_ids)
        )
        logits = case.logits if ok else None
        if (
            not ok
            or case.prompt_ids.size == 0
            or (
                logits is not None
                and not (
                    isinstance(logits, np.ndarray)
                    and logits.ndim == 2
                    and logits.dtype.kind == "f"
                    and bool(np.isfinite(logits).all())
                )
            )
        ):
            raise GoldenError(
                f"{where}: case {i} is not a GoldenCase of 1-D integer ids (a non-empty "
                "prompt) and finite (steps, vocab) logits or None"
            )
    return golden
