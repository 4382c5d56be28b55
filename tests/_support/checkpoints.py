"""Real checkpoint files for the reader, report and provenance tests.

GGUF files are written with the ``gguf`` package's own writer; I2_S tensors are added as raw
bytes and their tensor info patched to bitnet.cpp's type id 36 with the logical (M, K) shape,
which is what bitnet.cpp's converter (whose gguf-py fork knows I2_S) writes.  TQ1_0/TQ2_0 data is
quantized by the ``gguf`` package itself; Hugging Face packed weights come from transformers'
``pack_weights``; safetensors files from the ``safetensors`` package (bf16 through torch).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitnet_obs import quant

#: bitnet.cpp's GGUF type ids (its llama.cpp fork); upstream gguf does not know them
BITNET_TYPES = {"I2_S": 36, "TL1": 38, "TL2": 39}
F32 = npt.NDArray[np.float32]
HIDDEN, FFN = 256, 512


def master_weights(layers: int = 2, seed: int = 0) -> dict[str, F32]:
    """A tiny BitNet-shaped model in Hugging Face naming (float32)."""
    rng = np.random.default_rng(seed)
    out: dict[str, F32] = {
        "model.embed_tokens.weight": rng.standard_normal((64, HIDDEN), dtype=np.float32),
        "model.norm.weight": np.ones(HIDDEN, np.float32),
    }
    shapes = {
        "self_attn.q_proj": (HIDDEN, HIDDEN),
        "self_attn.k_proj": (HIDDEN // 2, HIDDEN),
        "self_attn.v_proj": (HIDDEN // 2, HIDDEN),
        "self_attn.o_proj": (HIDDEN, HIDDEN),
        "mlp.gate_proj": (FFN, HIDDEN),
        "mlp.up_proj": (FFN, HIDDEN),
        "mlp.down_proj": (HIDDEN, FFN),
    }
    for i in range(layers):
        out[f"model.layers.{i}.input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        out[f"model.layers.{i}.post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        for name, shape in shapes.items():
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            out[f"model.layers.{i}.{name}.weight"] = w
    return out


def save_safetensors(path: Path, tensors: Mapping[str, np.ndarray], dtype: str = "f32") -> Path:
    """Write with the safetensors package; ``dtype="bf16"`` casts floats through torch."""
    if dtype == "bf16":
        import torch
        from safetensors.torch import save_file as save_torch

        save_torch(
            {
                k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16)
                if v.dtype.kind == "f"
                else torch.from_numpy(np.ascontiguousarray(v))
                for k, v in tensors.items()
            },
            str(path),
        )
        return path
    from safetensors.numpy import save_file

    cast = {"f32": np.float32, "f16": np.float16}[dtype]
    save_file(
        {
            k: np.ascontiguousarray(v.astype(cast) if v.dtype.kind == "f" else v)
            for k, v in tensors.items()
        },
        str(path),
    )
    return path


def gguf_name(hf: str) -> str | None:
    import gguf

    mapper = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, 64)
    return mapper.get_name(hf, try_suffixes=(".weight", ".bias"))


def kernel_config_ini(path: Path, fmt: str) -> Path:
    """A kernel_config.ini covering the tiny model's shapes, as bitnet.cpp's codegen writes."""
    shapes = [(HIDDEN, HIDDEN), (HIDDEN // 2, HIDDEN), (FFN, HIDDEN), (HIDDEN, FFN)]
    bk = 64 if fmt == "TL1" else 96
    path.write_text(
        "".join(
            f"[Kernels_{i}]\nm = {m}\nk = {k}\nbm = 128\nbk = {bk}\nbmm = 32\n\n"
            for i, (m, k) in enumerate(shapes)
        )
    )
    return path


def write_gguf(
    path: Path,
    tensors: Mapping[str, tuple[str, object]],
    arch: str = "bitnet",
) -> Path:
    """tensors: GGUF name -> (type, payload).  Types: "F32"/"F16"/"BF16"/"TQ1_0"/"TQ2_0"/"Q8_0"
    (payload: float array), "I2_S" (payload: (codes, scale, layout)) and "TL1"/"TL2"
    (payload: (codes, scale, kernel configuration))."""
    import gguf
    from gguf import quants

    writer = gguf.GGUFWriter(str(path), arch)
    for name, (kind, payload) in tensors.items():
        if kind in BITNET_TYPES:
            codes, scale, extra = payload  # type: ignore[misc]
            if kind == "I2_S":
                data = np.frombuffer(quant.pack_i2s(codes, scale, extra), np.uint8)
            else:  # the converter writes the tiled bytes, then the scale as its own tensor
                pack = quant.pack_tl1 if kind == "TL1" else quant.pack_tl2
                data = np.frombuffer(pack(codes, scale, extra), np.uint8)[:-32]
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.I8)
            info = writer.tensors[-1][name]
            info.shape = tuple(np.shape(codes))
            info.dtype = BITNET_TYPES[kind]  # type: ignore[assignment]  # bitnet.cpp's type id
            if kind != "I2_S":
                writer.add_tensor(name + "_scale", np.array([scale], np.float32))
            continue
        arr = np.asarray(payload, np.float32)
        if kind == "F32":
            writer.add_tensor(name, arr)
        elif kind == "F16":
            writer.add_tensor(name, arr.astype(np.float16))
        else:
            qtype = getattr(gguf.GGMLQuantizationType, kind)
            writer.add_tensor(name, quants.quantize(arr, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def convert_to_gguf(
    path: Path,
    master: Mapping[str, F32],
    ternary: str = "I2_S",
    layout: str = "x86",
    tamper: Mapping[str, float] | None = None,
    kernel_config: object = None,
) -> Path:
    """What bitnet.cpp's converter writes: projections quantized with the absmean rule (our
    quantize_weights) in *ternary*, norms F32, embeddings F16.  *tamper* flips the codes of
    that fraction of a tensor (HF name -> fraction)."""
    tensors: dict[str, tuple[str, object]] = {}
    for hf, w in master.items():
        name = gguf_name(hf)
        assert name is not None, hf
        if hf.endswith("_proj.weight"):
            codes, scale = quant.quantize_weights(w)
            if tamper and hf in tamper:
                codes = flip(codes, tamper[hf])
            if ternary in BITNET_TYPES:
                extra = layout if ternary == "I2_S" else kernel_config
                tensors[name] = (ternary, (codes, scale, extra))
            else:  # TQ types quantize s*t per 256-block: the codes survive exactly
                tensors[name] = (ternary, codes.astype(np.float32) * np.float32(scale))
        elif w.ndim == 1:
            tensors[name] = ("F32", w)
        else:
            tensors[name] = ("F16", w)
    return write_gguf(path, tensors)


def flip(codes: npt.NDArray[np.int8], fraction: float, seed: int = 1) -> npt.NDArray[np.int8]:
    """Change *fraction* of the codes to a different ternary value."""
    rng = np.random.default_rng(seed)
    out = codes.copy().reshape(-1)
    idx = rng.choice(out.size, round(out.size * fraction), replace=False)
    out[idx] = (out[idx] + 2) % 3 - 1  # -1 -> 0 -> 1 -> -1
    return out.reshape(codes.shape).astype(np.int8)


def packed_checkpoint(
    directory: Path,
    master: Mapping[str, F32],
    linear_class: str = "bitlinear",
    tamper: Mapping[str, float] | None = None,
    config: bool = True,
) -> Path:
    """A Hugging Face packed BitNet checkpoint (weights packed by transformers' pack_weights,
    weight_scale in bf16 as the model dtype), with a config.json naming *linear_class*."""
    import torch
    from safetensors.torch import save_file
    from transformers.integrations.bitnet import pack_weights

    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, torch.Tensor] = {}
    for name, w in master.items():
        if name.endswith("_proj.weight"):
            codes, scale = quant.quantize_weights(w)
            if tamper and name in tamper:
                codes = flip(codes, tamper[name])
            out[name] = pack_weights(torch.from_numpy(codes.astype(np.int8)))
            ws = 1.0 / scale if linear_class == "bitlinear" else scale
            out[name + "_scale"] = torch.tensor([ws], dtype=torch.bfloat16)
        else:
            out[name] = torch.from_numpy(w).to(torch.bfloat16)
    save_file(out, str(directory / "model.safetensors"))
    if config:
        (directory / "config.json").write_text(
            json.dumps(
                {
                    "architectures": ["BitNetForCausalLM"],
                    "quantization_config": {
                        "quant_method": "bitnet",
                        "linear_class": linear_class,
                        "quantization_mode": "offline",
                    },
                }
            )
        )
    return directory


RawTensor = tuple[str, tuple[int, ...], int, bytes]  # name, numpy-order shape, type id, data


def raw_gguf(
    path: Path, tensors: list[RawTensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """A GGUF v3 file written byte by byte, for shapes and types no writer would produce
    (zero-size, 1-D ternary, dimensions of 2**63, unknown type ids).  Metadata: strings only."""
    import struct

    def text(s: str) -> bytes:
        raw = s.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata or {})))
    for key, value in (metadata or {}).items():
        out += text(key) + struct.pack("<I", 8) + text(value)
    offset = 0
    for name, shape, ttype, data in tensors:
        out += text(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        out += struct.pack("<IQ", ttype, offset)
        offset += -(-len(data) // 32) * 32
    out += bytes(-len(out) % 32)
    for _, _, _, data in tensors:
        out += data + bytes(-len(data) % 32)
    path.write_bytes(bytes(out))
    return path
