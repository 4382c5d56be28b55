"""What a tensor is, from its name: which ones bitnet.cpp ternarises, their layer and projection,
and the GGUF <-> Hugging Face name map.

bitnet.cpp's converter ternarises a tensor when its Hugging Face name ends with
``{q,k,v,o,gate,up,down}_proj.weight`` and takes the first number in the name as the layer; in
a GGUF file the same tensors are ``blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,
ffn_down}.weight``.  Everything else (embeddings, norms, the LM head) stays in float.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ._common import ReadError

__all__ = ["PROJECTIONS", "Role", "gguf_names_for", "role"]

#: Projections in model order (attention, then MLP), short names.
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
_GGUF_PROJ = {
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
}
_HF = re.compile(r"(?:^|[._])(q|k|v|o|gate|up|down)_proj\.weight$")
_GGUF = re.compile(r"^blk\.(\d+)\.(" + "|".join(_GGUF_PROJ) + r")\.weight$")
_NUMBER = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")

Kind = Literal["projection", "embedding", "norm", "lm_head", "other"]
#: The largest layer number read from a name (more digits: the name has no layer).  A name is
#: text a file chose; a number of hundreds of digits must not reach arithmetic or a chart.
MAX_LAYER = 999_999


@dataclass(frozen=True)
class Role:
    kind: Kind
    layer: int | None = None
    projection: str | None = None

    @property
    def why_float(self) -> str:
        return {
            "embedding": "embedding: bitnet.cpp keeps it in float",
            "norm": "norm: bitnet.cpp keeps it in float",
            "lm_head": "LM head: bitnet.cpp keeps it in float",
            "other": "not an attention/MLP projection: bitnet.cpp keeps it in float",
            "projection": "",
        }[self.kind]


def _number(digits: str) -> int | None:
    """A layer number, or None beyond :data:`MAX_LAYER` (checked on the digits: no int() of a
    thousand-digit string)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(MAX_LAYER)) and int(digits) <= MAX_LAYER else None


def _layer(name: str) -> int | None:
    m = _NUMBER.search(name)
    return _number(m.group(1)) if m else None


def role(name: str) -> Role:
    """Classify a tensor by name (Hugging Face or GGUF naming)."""
    m = _GGUF.match(name)
    if m:
        return Role("projection", _number(m.group(1)), _GGUF_PROJ[m.group(2)])
    m = _HF.search(name)
    if m:
        return Role("projection", _layer(name), m.group(1))
    lower = name.lower()
    layer = _layer(name)
    if any(k in lower for k in ("embed", "token_embd", "wte", "wpe")):
        return Role("embedding", layer)
    if "norm" in lower or re.search(r"(?:^|[._])ln(?:_\w+)?(?:[._]|$)", lower):
        return Role("norm", layer)
    if "lm_head" in lower or lower in ("output.weight", "output"):
        return Role("lm_head", layer)
    return Role("other", layer)


def gguf_names_for(hf_names: Iterable[str]) -> dict[str, str]:
    """HF tensor name -> GGUF name, from the ``gguf`` package's tensor-name map for the BitNet
    architecture (the one bitnet.cpp's converter uses).  Names it does not know are left out."""
    try:
        import gguf
    except ImportError:
        raise ReadError(
            "comparing a GGUF file with Hugging Face master weights maps tensor names with the "
            "gguf package: pip install 'bitnet-obs[gguf]'"
        ) from None
    # One block's map, each name's layer number put back after: the map's cost does not grow
    # with the layer numbers a (hostile) file's names carry.
    mapper = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, 1)
    out: dict[str, str] = {}
    for name in hf_names:
        m = _NUMBER.search(name)
        layer = _number(m.group(1)) if m else None
        if m is None or layer is None:
            mapped = mapper.get_name(name, try_suffixes=(".weight", ".bias"))
            if mapped is not None and not mapped.startswith("blk."):
                out[name] = mapped
            continue
        generic = f"{name[: m.start(1)]}0{name[m.end(1) :]}"
        mapped = mapper.get_name(generic, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            continue
        if mapped.startswith("blk.0."):
            out[name] = f"blk.{layer}.{mapped[len('blk.0.') :]}"
        elif generic == name:  # the number was not a block id and the name maps as it is
            out[name] = mapped
    return out
