"""Tiny random Hugging Face models for tests: real transformers classes, nothing downloaded.

A BitNet b1.58 checkpoint loads as ``BitNetForCausalLM`` whose linear layers transformers
replaces with ``BitLinear`` (packed ternary weights) or ``AutoBitLinear`` (online: float master
weights quantized on the fly; offline: ternary values and a scale). These helpers build the same
shape from a small config: transformers' own ``replace_with_bitnet_linear`` swaps the layers,
then each one is filled from the random float weights, quantized with the absmean rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import BitNetForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast

LINEAR_KINDS = ("bitlinear", "autobitlinear-offline", "autobitlinear-online")

_TINY: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def _hf() -> Any:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"tiny Hugging Face models need torch and transformers ({exc}); install the extra: "
            "pip install 'bitnet-obs[hf]'"
        ) from None
    return torch, transformers


def tiny_tokenizer(vocab_size: int = 128) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for the tiny models: token ``i`` is the word ``t{i}``.

    ``t0`` pads (on the left, as batched generation needs), ``t1``/``t2`` are BOS/EOS (the tiny
    models' ids), ``t3`` is unknown; no special tokens are added, so a prompt of n words is n
    tokens::

        tok = tiny_tokenizer()
        pipe = transformers.pipeline("text-generation", model=tiny_bitnet_model(), tokenizer=tok)
        pipe("t5 t6 t7", max_new_tokens=4)
    """
    _hf()
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t3"))
    words.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=words,
        pad_token="t0",
        bos_token="t1",
        eos_token="t2",
        unk_token="t3",
        padding_side="left",
    )


def tiny_llama_model(*, seed: int = 0, **config: Any) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` (2 layers, hidden size 64, vocab 128).

    >>> model = tiny_llama_model()                      # doctest: +SKIP
    >>> model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4)  # doctest: +SKIP
    """
    torch, transformers = _hf()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**_TINY, **config}))
    model.train(False)
    return cast("LlamaForCausalLM", model)


def tiny_bitnet_model(
    *,
    linear: str = "bitlinear",
    use_rms_norm: bool = False,
    seed: int = 0,
    **config: Any,
) -> BitNetForCausalLM:
    """A randomly initialised ``BitNetForCausalLM`` with transformers' BitNet linear layers.

    ``linear`` is one of ``bitlinear`` (packed 2-bit weights, as microsoft/bitnet-b1.58-2B-4T
    loads), ``autobitlinear-offline`` (ternary values and a scale) or ``autobitlinear-online``
    (float master weights, quantized in every forward pass). The LM head stays in float, and
    ``config.quantization_config`` says ``bitnet`` as a loaded checkpoint's does::

        model = tiny_bitnet_model(linear="autobitlinear-online")
        ids = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4)
    """
    if linear not in LINEAR_KINDS:
        raise ValueError(f"linear={linear!r} is not valid; accepted: {', '.join(LINEAR_KINDS)}")
    torch, transformers = _hf()
    from transformers.integrations.bitnet import (
        AutoBitLinear,
        BitLinear,
        pack_weights,
        replace_with_bitnet_linear,
    )

    from bitnet_obs import quant

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BitNetForCausalLM(transformers.BitNetConfig(**{**_TINY, **config}))
    master = {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }
    quant_config = transformers.BitNetQuantConfig(
        modules_to_not_convert=["lm_head"],
        linear_class="bitlinear" if linear == "bitlinear" else "autobitlinear",
        quantization_mode="online" if linear.endswith("online") else "offline",
        use_rms_norm=use_rms_norm,
    )
    replace_with_bitnet_linear(model, ["lm_head"], quant_config)  # new layers on "meta"
    with torch.no_grad():
        for name, weight in master.items():
            module = model.get_submodule(name)
            module.to_empty(device="cpu")
            if module.rms_norm is not None:
                module.rms_norm.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            codes, scale = quant.quantize_weights(weight.numpy())
            ternary = torch.from_numpy(codes.astype("float32"))
            if isinstance(module, BitLinear):
                module.weight.copy_(pack_weights(ternary.clone()))
                module.weight_scale.fill_(1.0 / scale)  # BitLinear divides by it
            elif isinstance(module, AutoBitLinear) and module.online_quant:
                module.weight.copy_(weight)
            else:
                module.weight.copy_(ternary)
                module.weight_scale.fill_(scale)  # offline AutoBitLinear multiplies by it
    model.config.quantization_config = quant_config
    model.train(False)
    return cast("BitNetForCausalLM", model)
