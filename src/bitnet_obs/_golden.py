"""The golden-case file of ``bitnet_obs.crossval``: one ``.npz``, loadable without pickle.

Ragged sequences are stored flat with offsets (case i's prompt is
``prompt_ids[prompt_offsets[i]:prompt_offsets[i + 1]]``); the JSON header (who made the file,
when, with which implementation, model and format) is a ``uint8`` array inside the archive, so
the file is one artifact a deployment pipeline can pass around.
"""

from __future__ import annotations

import json
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

FORMAT = "bitnet-obs-golden"
VERSION = 1


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
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(tmp, target)
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
        and bool(np.all(np.diff(offsets) >= 0))
    )
    if not ok:
        raise GoldenError(f"{where}: {what}_offsets do not describe {n} cases of {what}")
    return [flat[offsets[i] : offsets[i + 1]] for i in range(n)]


def load(path: str | os.PathLike[str]) -> GoldenSet:
    """Read and check a golden file; :class:`GoldenError` says what is wrong with it."""
    where = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise GoldenError(f"{where}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise GoldenError(f"{where}: not a golden .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise GoldenError(f"{where}: a single array, not a golden .npz archive")
    try:
        with archive:
            data = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise GoldenError(f"{where}: unreadable archive ({exc})") from None
    missing = {"header", "prompt_ids", "prompt_offsets", "output_ids", "output_offsets"} - set(data)
    if missing:
        raise GoldenError(f"{where}: not a golden file (missing {', '.join(sorted(missing))})")
    try:
        header = json.loads(data["header"].astype(np.uint8).tobytes().decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GoldenError(f"{where}: unreadable header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise GoldenError(f"{where}: not a {FORMAT} file")
    if header.get("version") != VERSION:
        raise GoldenError(f"{where}: version {header.get('version')!r}; this reads {VERSION}")
    n = header.get("cases")
    max_new = header.get("max_new_tokens")
    if not isinstance(n, int) or n < 1 or not isinstance(max_new, int) or max_new < 1:
        raise GoldenError(f"{where}: header needs positive 'cases' and 'max_new_tokens'")
    for name in ("prompt_ids", "output_ids"):
        if data[name].ndim != 1 or data[name].dtype.kind not in "iu":
            raise GoldenError(f"{where}: {name} must be 1-D integer ids")
    prompts = _split(data["prompt_ids"], data["prompt_offsets"], n, "prompt", where)
    outputs = _split(data["output_ids"], data["output_offsets"], n, "output", where)
    logits: list[npt.NDArray[Any] | None] = [None] * n
    if "logits" in data:
        flat = data["logits"]
        if flat.ndim != 2 or flat.dtype.kind != "f" or not np.isfinite(flat).all():
            raise GoldenError(f"{where}: logits must be finite floats of shape (steps, vocab)")
        blocks = _split(flat, data.get("logits_offsets", np.zeros(0, np.int64)), n, "logits", where)
        logits = [b if b.shape[0] else None for b in blocks]
    cases = tuple(
        GoldenCase(p.astype(np.int64), o.astype(np.int64), lg)
        for p, o, lg in zip(prompts, outputs, logits, strict=True)
    )
    if any(c.prompt_ids.shape[0] == 0 for c in cases):
        raise GoldenError(f"{where}: a case has an empty prompt")
    return GoldenSet(cases, header)
