"""Real ternary GGUF files made and run by llama.cpp, from a tiny random BitNet b1.58 model.

The chain is the one people run, with no step of ours in between:

1. a real SentencePiece vocabulary, trained with the ``sentencepiece`` package on the committed
   public-domain texts of ``tests/fixtures/text`` (llama.cpp's ``bitnet`` converter reads a
   ``tokenizer.model``);
2. transformers' ``BitNetForCausalLM`` from microsoft/bitnet-b1.58-2B-4T's ``config.json`` scaled
   down (hidden 256, FFN 768: multiples of QK_K = 256, as TQ1_0/TQ2_0 rows need), saved as float
   master weights (``model.safetensors``);
3. llama.cpp's own converter (``convert_hf_to_gguf.py``, its ``conversion/bitnet.py``, its own
   ``gguf-py``) writes the ``bitnet`` GGUF in F32;
4. llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``) makes TQ1_0 and TQ2_0;
5. the golden file is recorded from the transformers model (``AutoBitLinear`` online: the master
   weights ternarised with the absmean rule and int8 activations, in every forward pass) with
   ``bitnet_obs.crossval.record``; a second one from llama.cpp's own TQ2_0 run, for checks of
   llama.cpp against itself (llama-server against llama-cpp-python), which must be exact.

llama.cpp against transformers is not bit-exact, and cannot be on a random model: see
:data:`CROSS_IMPL` for the thresholds and the figures they rest on.

The converter of the pinned llama.cpp maps the sub-norms only under the names of the first
BitNet b1.58 checkpoints (1bitLLM's ``inner_attn_ln``, ``ffn_layernorm``), not transformers'
``attn_sub_norm``/``ffn_sub_norm`` that 2B-4T ships: it stops with "Can not map tensor". The
master checkpoint is therefore written with those names (:data:`CONVERTER_NAMES`); the weights
are the model's own.

One deviation from 2B-4T's config: ``hidden_act`` is ``silu``, not ``relu2``. llama.cpp's
``bitnet`` graph (``src/models/bitnet.cpp`` in the pinned llama-cpp-python 0.3.36) hard-codes a
SiLU-gated FFN and reads no activation from the GGUF: it runs 2B-4T with the wrong activation,
the bug of microsoft/BitNet#588 and #602 (llama.cpp pull requests #25885 and #26751, closed
unmerged). ``relu2=True`` builds the model with 2B-4T's own activation, which llama.cpp then runs
wrongly -- and cross-validation catches it (tests/test_llama_files.py).

The build takes a few tens of seconds and is cached per machine beside the engine, keyed on a hash
of everything it depends on (this file, the corpus, the engine, the versions of torch,
transformers and sentencepiece); the broken variants are made per session from the F32 file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tests._support.llama import LlamaEngine, _tool

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "text"
#: microsoft/bitnet-b1.58-2B-4T's config.json (the fields BitNetConfig reads)
BITNET_2B4T: dict[str, Any] = {
    "architectures": ["BitNetForCausalLM"],
    "hidden_size": 2560,
    "intermediate_size": 6912,
    "num_hidden_layers": 30,
    "num_attention_heads": 20,
    "num_key_value_heads": 5,
    "vocab_size": 128256,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-05,
    "hidden_act": "relu2",
    "tie_word_embeddings": True,
    "attention_bias": False,
    "initializer_range": 0.02,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}
VOCAB = 512
#: scaled down; see the module docstring for hidden_act
TINY: dict[str, Any] = {
    **BITNET_2B4T,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "vocab_size": VOCAB,
    "max_position_embeddings": 512,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
}
SEED = 0
MAX_NEW_TOKENS = 16
PROMPTS_TEXT = (
    "It is a truth universally acknowledged",
    "Call me Ishmael.",
    "It was the best of times,",
    "Alice was beginning to get very tired",
    "Four score and seven years ago",
    "def load_prompts(path):",
)
FORMATS = ("f32", "tq1_0", "tq2_0")
BROKEN = ("swap", "sign", "wrong_ffn", "constant")
#: what each broken conversion does, and the tensors it touches
BROKEN_TENSORS: dict[str, tuple[str, ...]] = {
    "swap": ("blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"),  # two projections swapped
    "sign": ("blk.1.attn_v.weight",),  # a sign flipped
    "wrong_ffn": ("blk.1.ffn_down.weight",),  # layer 0's ffn_down written as layer 1's
    "constant": ("output_norm.weight",),  # zeros: every logit 0, token 0 forever ("!!!!")
}
NAME = "tiny-bitnet-b1.58"
#: cross-implementation thresholds (llama.cpp against the transformers golden). transformers'
#: BitNet rounds every activation to int8 per token; llama.cpp's F32 path does not and its TQ
#: path rounds in its own blocks, so logits differ by up to ~0.04 (on a spread of 0.33) and a
#: near-tie may be decided the other way: the healthy runs measured KL 2.7e-5 (F32) and 3.5e-5
#: (TQ1_0, TQ2_0) with token agreement 1.0 and 0.896; every broken conversion KL >= 2.3e-3 and
#: agreement <= 0.30. Same-engine checks (``golden_llama``) need no tolerance.
CROSS_IMPL: dict[str, float] = {"min_agreement": 0.5, "max_kl": 3e-4}


@dataclass(frozen=True)
class TinyBitnetFiles:
    """The files of one build (all absolute paths)."""

    root: Path
    master: Path  #: Hugging Face directory: config.json, model.safetensors, tokenizer.model
    f32: Path  #: llama.cpp's converter, --outtype f32
    tq1_0: Path  #: llama_cpp.llama_model_quantize(f32, TQ1_0)
    tq2_0: Path  #: llama_cpp.llama_model_quantize(f32, TQ2_0)
    golden: Path  #: crossval golden recorded from the transformers model
    golden_llama: Path  #: the same prompts recorded from llama.cpp on tq2_0 (exact re-checks)
    prompts: tuple[tuple[int, ...], ...]  #: the golden's prompt ids (BOS first)
    max_new_tokens: int
    build_seconds: float
    relu2: bool = False

    def gguf(self, fmt: str) -> Path:
        """``"f32"``, ``"tq1_0"`` or ``"tq2_0"``."""
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}; accepted: {', '.join(FORMATS)}")
        return {"f32": self.f32, "tq1_0": self.tq1_0, "tq2_0": self.tq2_0}[fmt]


# ----------------------------------------------------------------------------- the models


def _torch() -> Any:
    import torch

    return torch


@contextmanager
def _eager() -> Iterator[None]:
    """AutoBitLinear's quantizers carry @torch.compile: eager keeps a call at milliseconds."""
    torch = _torch()
    with torch.compiler.set_stance("force_eager"):
        yield


def config(*, relu2: bool = False) -> dict[str, Any]:
    return {**TINY, "hidden_act": "relu2"} if relu2 else dict(TINY)


def master_model(*, relu2: bool = False, seed: int = SEED) -> Any:
    """The float ``BitNetForCausalLM`` (plain nn.Linear layers holding the master weights)."""
    torch = _torch()
    import transformers

    cfg = {k: v for k, v in config(relu2=relu2).items() if k != "architectures"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BitNetForCausalLM(transformers.BitNetConfig(**cfg))
    model.train(False)
    return model


def reference_model(master: Any) -> Any:
    """transformers' BitNet as it runs b1.58 from master weights: ``AutoBitLinear`` online
    (weights ternarised with the absmean rule, activations to int8 per token, every call)."""
    torch = _torch()
    import transformers
    from transformers.integrations.bitnet import replace_with_bitnet_linear

    model = copy.deepcopy(master)
    weights = {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }
    quant_config = transformers.BitNetQuantConfig(
        modules_to_not_convert=["lm_head"],
        linear_class="autobitlinear",
        quantization_mode="online",
    )
    replace_with_bitnet_linear(model, ["lm_head"], quant_config)
    with torch.no_grad():
        for name, weight in weights.items():
            module = model.get_submodule(name)
            module.to_empty(device="cpu")
            module.weight.copy_(weight)
    model.tie_weights()
    model.train(False)
    return model


def transformers_greedy(model: Any) -> Callable[[list[int], int], tuple[list[int], Any]]:
    """``fn(prompt_ids, max_new_tokens) -> (ids, logits)``: greedy, every step's logits, no
    stop at EOS (so llama.cpp and transformers produce the same number of tokens)."""
    torch = _torch()

    def generate(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], Any]:
        seq = list(prompt_ids)
        steps = []
        with torch.no_grad(), _eager():
            for _ in range(max_new_tokens):
                logits = model(torch.tensor([seq])).logits[0, -1].float().numpy()
                steps.append(logits)
                seq.append(int(np.argmax(logits)))
        return seq[len(prompt_ids) :], np.stack(steps)

    return generate


def llama_greedy(llm: Any) -> Callable[[list[int], int], tuple[list[int], Any]]:
    """``fn(prompt_ids, max_new_tokens) -> (ids, logits)`` on a ``llama_cpp.Llama`` made with
    ``logits_all=True``: ``Llama.generate`` at temperature 0 (llama.cpp's greedy sampler), no
    penalties, the logits each token was sampled from."""

    def generate(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], Any]:
        ids: list[int] = []
        steps = []
        for token in llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0, reset=True):
            steps.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
            ids.append(int(token))
            if len(ids) >= max_new_tokens:
                break
        return ids, np.stack(steps) if steps else np.zeros((0, 2), np.float32)

    return generate


def load_llama(path: Path, *, n_ctx: int = 256, seed: int = 0) -> Any:
    """``llama_cpp.Llama`` on ``path``: every step's logits kept, one thread, quiet."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=1,
        n_batch=64,
        logits_all=True,
        seed=seed,
        verbose=False,
    )


# --------------------------------------------------------------------------- the vocabulary


def train_vocabulary(out: Path) -> Path:
    """A SentencePiece BPE model (byte fallback, as llama's) of ``VOCAB`` pieces."""
    import sentencepiece as spm

    lines = []
    for path in sorted(CORPUS.glob("*.txt")) + sorted(CORPUS.glob("*.md")):
        if path.name == "README.md":
            continue
        lines += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    model = out / "tokenizer.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out / "tokenizer"),
        vocab_size=VOCAB,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    return model


def encode_prompts(tokenizer_model: Path) -> tuple[tuple[int, ...], ...]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    return tuple((1, *sp.encode(text)) for text in PROMPTS_TEXT)


# ------------------------------------------------------------------------------ the build


def _converter_env(engine: LlamaEngine) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(engine.gguf_py))
    return env


def convert(engine: LlamaEngine, master: Path, out: Path, outtype: str = "f32") -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` on ``master`` (raises with its output on failure)."""
    cmd = [sys.executable, str(engine.converter), str(master), "--outtype", outtype,
           "--outfile", str(out)]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=_converter_env(engine), timeout=600, check=False
    )
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"convert_hf_to_gguf.py exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return out


def quantize(src: Path, out: Path, fmt: str) -> Path:
    """llama.cpp's quantizer through llama-cpp-python (``llama_model_quantize``).

    The ternary projections become ``fmt``; the (tied) token embedding, which is also the LM
    head, stays F16 -- as ``convert_hf_to_gguf.py --outtype tq2_0`` writes it -- rather than
    the quantizer's default Q4_K: the logits then carry the precision of the transformers
    reference's float head (Q4_K doubled their difference, 0.064 against 0.033 at most).
    """
    import llama_cpp

    ftype = {
        "tq1_0": llama_cpp.LLAMA_FTYPE_MOSTLY_TQ1_0,
        "tq2_0": llama_cpp.LLAMA_FTYPE_MOSTLY_TQ2_0,
    }
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype[fmt]
    params.nthread = 1
    params.token_embedding_type = llama_cpp.GGML_TYPE_F16
    params.output_tensor_type = llama_cpp.GGML_TYPE_F16
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if code != 0 or not out.exists():
        raise RuntimeError(f"llama_model_quantize({src.name}, {fmt}) returned {code}")
    return out


def inputs_hash(engine: LlamaEngine, *, relu2: bool) -> str:
    import sentencepiece
    import torch
    import transformers

    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    for path in sorted(CORPUS.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(engine.root.name.encode())  # carries the engine's key
    for part in (torch.__version__, transformers.__version__, sentencepiece.__version__, relu2):
        digest.update(str(part).encode())
    return digest.hexdigest()[:16]


#: transformers' BitNet names (2B-4T's) -> the names llama.cpp's converter maps (1bitLLM's)
CONVERTER_NAMES = {
    ".self_attn.attn_sub_norm.": ".self_attn.inner_attn_ln.",
    ".mlp.ffn_sub_norm.": ".mlp.ffn_layernorm.",
}


def save_master(master: Any, out: Path) -> Path:
    """The float master weights as ``model.safetensors`` + ``config.json``, the sub-norms under
    the names llama.cpp's converter maps (see the module docstring); tied LM head not repeated."""
    from safetensors.torch import save_file

    tensors = {}
    for name, tensor in master.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to model.embed_tokens.weight, as in 2B-4T
        for old, new in CONVERTER_NAMES.items():
            name = name.replace(old, new)
        tensors[name] = tensor.detach().contiguous().float()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = {**master.config.to_dict(), "architectures": ["BitNetForCausalLM"]}
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def _write(root: Path, engine: LlamaEngine, relu2: bool) -> dict[str, Any]:

    torch = _torch()
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is several times faster on a busy host
    try:
        return _write_files(root, engine, relu2, started)
    finally:
        torch.set_num_threads(threads)


def _write_files(root: Path, engine: LlamaEngine, relu2: bool, started: float) -> dict[str, Any]:
    from bitnet_obs import crossval

    torch = _torch()
    master_dir = root / "master"
    master_dir.mkdir(parents=True)
    tokenizer = train_vocabulary(master_dir)
    master = master_model(relu2=relu2)
    save_master(master, master_dir)
    f32 = convert(engine, master_dir, root / f"{NAME}-f32.gguf")
    for fmt in ("tq1_0", "tq2_0"):
        quantize(f32, root / f"{NAME}-{fmt}.gguf", fmt)
    prompts = encode_prompts(tokenizer)
    reference = reference_model(master)
    with torch.random.fork_rng(devices=[]):
        crossval.record(
            transformers_greedy(reference),
            [list(p) for p in prompts],
            root / "golden.npz",
            max_new_tokens=MAX_NEW_TOKENS,
            logits_steps=MAX_NEW_TOKENS,
            model=NAME,
            quant_format="fp32",
            created_by="tests/_support/llama_model.py",
        )
    llm = load_llama(root / f"{NAME}-tq2_0.gguf")
    crossval.record(
        llama_greedy(llm),
        [list(p) for p in prompts],
        root / "golden-llama-tq2_0.npz",
        max_new_tokens=MAX_NEW_TOKENS,
        logits_steps=MAX_NEW_TOKENS,
        model=NAME,
        quant_format="tq2_0",
        created_by="tests/_support/llama_model.py",
    )
    del llm
    return {
        "prompts": [list(p) for p in prompts],
        "max_new_tokens": MAX_NEW_TOKENS,
        "build_seconds": round(time.monotonic() - started, 1),
        "relu2": relu2,
    }


def build(
    engine: LlamaEngine, cache: Path | None = None, *, relu2: bool = False
) -> TinyBitnetFiles:
    """The files, from the cache when their inputs are unchanged (built once per machine)."""
    tool = _tool()
    cache = (cache or tool.cache_root()) / "fixtures"
    final = cache / f"{NAME}{'-relu2' if relu2 else ''}-{inputs_hash(engine, relu2=relu2)}"
    if not (final / "fixture.json").exists():
        with tool.exclusive(cache / f".{final.name}.lock", "the tiny BitNet files"):
            if not (final / "fixture.json").exists():
                partial = cache / f".{final.name}.partial-{os.getpid()}"
                shutil.rmtree(partial, ignore_errors=True)
                try:
                    meta = _write(partial, engine, relu2)
                    (partial / "fixture.json").write_text(json.dumps(meta, indent=2))
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(partial, final)
                except BaseException:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
    meta = json.loads((final / "fixture.json").read_text())
    return TinyBitnetFiles(
        root=final,
        master=final / "master",
        f32=final / f"{NAME}-f32.gguf",
        tq1_0=final / f"{NAME}-tq1_0.gguf",
        tq2_0=final / f"{NAME}-tq2_0.gguf",
        golden=final / "golden.npz",
        golden_llama=final / "golden-llama-tq2_0.npz",
        prompts=tuple(tuple(p) for p in meta["prompts"]),
        max_new_tokens=int(meta["max_new_tokens"]),
        build_seconds=float(meta["build_seconds"]),
        relu2=bool(meta["relu2"]),
    )


# ------------------------------------------------------------------------ broken conversions


def _tensor_views(path: Path) -> dict[str, npt.NDArray[np.float32]]:
    """Writable float32 views of the F32 file's tensors (a memory map: edits go to the file)."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    out = {}
    for tensor in reader.tensors:
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            out[tensor.name] = tensor.data
    return out


def break_conversion(files: TinyBitnetFiles, kind: str, out_dir: Path, fmt: str = "tq2_0") -> Path:
    """A copy of the F32 file with one conversion bug, then quantized to ``fmt`` like the
    healthy one (``"f32"``: left as is). ``kind``: ``swap`` (ffn_gate and ffn_up of layer 0
    exchanged), ``sign`` (layer 1's attn_v negated), ``wrong_ffn`` (layer 0's ffn_down written
    for layer 1), ``constant`` (the output norm zeroed: every logit 0, token 0 forever, the
    "!!!!" of a build whose kernels return zeros). :data:`BROKEN_TENSORS` names the tensors."""
    if kind not in BROKEN:
        raise ValueError(f"kind {kind!r}; accepted: {', '.join(BROKEN)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    f32 = out_dir / f"{NAME}-{kind}-f32.gguf"
    shutil.copyfile(files.f32, f32)
    views = _tensor_views(f32)
    if kind == "swap":
        a, b = (views[n] for n in BROKEN_TENSORS["swap"])
        saved = a.copy()
        a[...] = b
        b[...] = saved
    elif kind == "sign":
        view = views[BROKEN_TENSORS["sign"][0]]
        view[...] = -view
    elif kind == "wrong_ffn":
        views["blk.1.ffn_down.weight"][...] = views["blk.0.ffn_down.weight"]
    else:
        views["output_norm.weight"][...] = 0.0
    for view in views.values():
        base = getattr(view, "base", None)
        while base is not None and not hasattr(base, "flush"):
            base = getattr(base, "base", None)
        if base is not None:
            base.flush()
    del views
    if fmt == "f32":
        return f32
    return quantize(f32, out_dir / f"{NAME}-{kind}-{fmt}.gguf", fmt)


# ------------------------------------------------------------- llama.cpp's own dequantization


def ggml_dequantize(type_id: int, data: npt.NDArray[np.uint8], n: int) -> npt.NDArray[np.float32]:
    """``n`` values decoded by ggml's own ``to_float`` for ``type_id`` (``ggml_get_type_traits``
    in the ``libggml-base`` that ``llama_cpp`` loaded): llama.cpp's dequantization, not a copy."""
    import ctypes

    import llama_cpp

    class TypeTraits(ctypes.Structure):
        _fields_: Sequence[tuple[str, Any]] = [
            ("type_name", ctypes.c_char_p),
            ("blck_size", ctypes.c_int64),
            ("blck_size_interleave", ctypes.c_int64),
            ("type_size", ctypes.c_size_t),
            ("is_quantized", ctypes.c_bool),
            ("to_float", ctypes.c_void_p),
            ("from_float_ref", ctypes.c_void_p),
        ]

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    traits = lib.ggml_get_type_traits(type_id).contents
    if not traits.to_float or n % traits.blck_size:
        raise ValueError(f"ggml type {type_id} ({traits.type_name!r}) cannot decode {n} values")
    if data.nbytes != n // traits.blck_size * traits.type_size:
        raise ValueError(f"{data.nbytes} bytes for {n} values of {traits.type_name!r}")
    to_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        traits.to_float
    )
    src = np.ascontiguousarray(data)
    out = np.empty(n, np.float32)
    to_float(src.ctypes.data, out.ctypes.data, n)
    return out
