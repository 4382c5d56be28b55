"""What the llama.cpp instrumentor knows of a model file, read once from its GGUF header.

The header alone (:mod:`bitnet_obs.quant.io`; no tensor data) names the model and its format
before llama.cpp loads it, so the load itself can be monitored under those names:

- the name: ``general.name`` (bitnet.cpp's and llama.cpp's converters write the checkpoint's),
  else the file's stem; never the full path, which would be a label per directory;
- ``bitnet.quant.format``: from the stored types of the weight matrices. ``general.file_type``
  cannot say it: upstream llama.cpp and bitnet.cpp number their file types differently from 38
  on (40 is bitnet.cpp's I2_S and upstream's Q1_0), while the tensor types are unambiguous
  (the reader tells bitnet.cpp's type ids apart). A file holding any ternary matrices (I2_S,
  TL1, TL2, TQ1_0, TQ2_0) is in the most frequent of them; otherwise the most frequent type of
  its matrices decides (F16 → ``fp16``, Q8_0 → ``q8_0``, a k-quant → ``other``);
- the architecture (``bitnet``, ``llama``, ...), for the docs and tests; the load's
  ``bitnet.model.info`` series carries it (``_provenance``).

Reading a 2B model's header takes about 0.1 s (its 128k-token vocabulary is skipped, not
decoded): once per file, before the load, never per request.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bitnet_obs._selfmon import internal_error
from bitnet_obs.quant import io

#: Stored GGUF type -> ``bitnet.quant.format``.
FORMATS = {
    "I2_S": "i2_s",
    "TL1": "tl1",
    "TL2": "tl2",
    "TQ1_0": "tq1_0",
    "TQ2_0": "tq2_0",
    "F32": "fp32",
    "F16": "fp16",
    "BF16": "bf16",
    "Q8_0": "q8_0",
    "Q4_0": "q4_0",
}
TERNARY = ("I2_S", "TL1", "TL2", "TQ1_0", "TQ2_0")
NAME_LIMIT = 128


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file's name, format and architecture (``other``/None when unreadable)."""

    name: str
    quant_format: str
    architecture: str | None


def quant_format(tensors: Iterable[io.TensorInfo]) -> str:
    """``bitnet.quant.format`` of a file with these tensors (see the module docstring)."""
    matrices = Counter(t.dtype for t in tensors if len(t.shape) >= 2)
    ternary = [(n, dtype) for dtype, n in matrices.items() if dtype in TERNARY]
    if ternary:
        return FORMATS[max(ternary)[1]]
    if not matrices:
        return "other"
    dtype = max((n, dtype) for dtype, n in matrices.items())[1]
    return FORMATS.get(dtype, "other")


def clean_name(text: str) -> str:
    """A model name as a label value: printable, one line, at most 128 characters."""
    name = io.printable(text.strip())[:NAME_LIMIT]
    return name or "unknown"


def describe_file(path: str | os.PathLike[str] | None) -> ModelFile:
    """Name, format and architecture of the GGUF file at *path*; never raises. A file that is
    missing is named after its stem (its load fails, and is recorded so); a header the reader
    refuses is also counted in ``bitnet.obs.internal_errors``."""
    if path is None:
        return ModelFile("unknown", "other", None)
    stem = clean_name(Path(os.fsdecode(path)).name.removesuffix(".gguf"))
    if not os.path.isfile(path):  # the load fails too, and is recorded so
        return ModelFile(stem, "other", None)
    try:
        with io.open_checkpoint(path) as ckpt:
            meta = ckpt.metadata
            name = meta.get("general.name")
            arch = meta.get("general.architecture")
            return ModelFile(
                clean_name(name) if isinstance(name, str) and name.strip() else stem,
                quant_format(ckpt.weights()),
                clean_name(arch)[:64] if isinstance(arch, str) and arch.strip() else None,
            )
    except Exception as exc:  # a header our reader refuses (corrupt, or a newer GGUF)
        internal_error("llama_cpp_model_file", exc)
    return ModelFile(stem, "other", None)
