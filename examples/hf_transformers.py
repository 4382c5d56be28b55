"""A real model library: a tiny, randomly initialised Hugging Face BitNet causal LM, streamed.

    pip install 'bitnet-obs[hf]'          # CPU torch and transformers
    HF_HUB_OFFLINE=1 python examples/hf_transformers.py --requests 5

Nothing is downloaded: the model is ``BitNetForCausalLM`` built from a small ``BitNetConfig``
with random weights, and prompts are token ids (no tokenizer). Through the public API only:

- at load, the accuracy of every linear layer's weights, ternary (I2_S/TL1/TL2) vs FP32; the
  LM head stays in high precision, as in BitNet b1.58;
- the served model is the ternary one; ``generate()`` runs in a thread and feeds a streamer,
  and the monitored generator yields each token as it arrives, so time to first token and
  time per output token are the model's real ones;
- per request, the top-1 agreement of the ternary model's next-token logits with the FP32
  model's (``kind="logits"``, sampled at ``BITNET_OBS_QUANT_SAMPLE_RATE``). The FP32 forward
  pass it needs costs as much as the real one: in production, do it for a few requests.
"""

from __future__ import annotations

import argparse
import copy
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch
from transformers import BitNetConfig, BitNetForCausalLM
from transformers.generation.streamers import BaseStreamer

import bitnet_obs
from bitnet_obs import quant

MODEL = "bitnet-tiny-random"


class TokenStreamer(BaseStreamer):
    """Token ids from ``generate()`` as an iterator: TextIteratorStreamer without a tokenizer."""

    def __init__(self) -> None:
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._prompt_seen = False
        self.error: BaseException | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() puts the prompt first
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._queue.put(int(token))

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[int]:
        while (token := self._queue.get()) is not None:
            yield token


def load_models() -> tuple[BitNetForCausalLM, BitNetForCausalLM]:
    """(the FP32 model, its ternary copy), recording each layer's weight accuracy."""
    config = BitNetConfig(
        vocab_size=512,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    fp32 = BitNetForCausalLM(config)
    fp32.train(False)  # inference mode (what .eval() does)
    ternary = copy.deepcopy(fp32)
    with torch.no_grad():
        for name, module in ternary.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                w = module.weight.numpy()
                quant.record_weight_quantization(name, w)
                codes, scale = quant.quantize_weights(w)
                module.weight.copy_(torch.from_numpy(codes.astype(np.float32) * scale))
    return fp32, ternary


@bitnet_obs.monitored_inference(model=MODEL, operation="text_completion", device="cpu")
def stream(
    model: BitNetForCausalLM, reference: BitNetForCausalLM, prompt: list[int], new_tokens: int
) -> Iterator[int]:
    inf = bitnet_obs.current_inference()
    inf.add_input_tokens(len(prompt))
    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        logits = model(input_ids).logits[0, -1:].numpy()
        fp32_logits = reference(input_ids).logits[0, -1:].numpy()
    inf.record_quantization("lm_head", fp32_logits, logits, reference_kind="fp32", kind="logits")
    streamer = TokenStreamer()

    def run() -> None:
        try:
            model.generate(  # type: ignore[misc]  # transformers' self-type is too narrow
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=streamer,
            )
        except BaseException as exc:  # surfaced in the request below
            streamer.error = exc
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield from streamer  # one token per item: TTFT and TPOT as the model produces them
    thread.join()
    if streamer.error is not None:
        raise streamer.error


def main() -> None:
    parser = argparse.ArgumentParser(description="A Hugging Face BitNet model under bitnet-obs.")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=12)
    args = parser.parse_args()
    telemetry = bitnet_obs.configure()
    print(f"metrics: {telemetry.metrics_url or 'pushed (see OTEL_METRICS_EXPORTER)'}")
    fp32, ternary = load_models()
    rng = np.random.default_rng(0)
    for _ in range(args.requests):
        prompt = rng.integers(3, 512, size=int(rng.integers(4, 16))).tolist()
        started = time.perf_counter()
        tokens = list(stream(ternary, fp32, prompt, args.new_tokens))
        elapsed = time.perf_counter() - started
        print(f"{len(prompt):2d} prompt tokens -> {tokens} ({len(tokens) / elapsed:.0f} tokens/s)")
    bitnet_obs.shutdown()


if __name__ == "__main__":
    main()
