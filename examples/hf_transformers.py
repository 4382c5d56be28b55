"""Hugging Face transformers under bitnet-obs with one line: every ``generate()`` monitored.

    pip install 'bitnet-obs[hf]'          # CPU torch, transformers, opentelemetry-instrument
    HF_HUB_OFFLINE=1 python examples/hf_transformers.py --requests 5

    # the same with no instrumentation code at all: the entry point loads the instrumentor
    HF_HUB_OFFLINE=1 opentelemetry-instrument python examples/hf_transformers.py --zero-code

Nothing is downloaded: the model is a tiny random ``BitNetForCausalLM`` whose linear layers are
transformers' own ``BitLinear`` (packed ternary weights, as microsoft/bitnet-b1.58-2B-4T loads),
the tokenizer a word-level one (``t0`` ... ``t127``). The calls are the ways people serve:

- streaming: ``generate()`` in a thread feeding a ``TextIteratorStreamer`` that the request
  handler iterates (the generate span is a child of the handler's);
- a batch of prompts of different lengths, left-padded, whose rows stop at their own EOS;
- ``pipeline("text-generation")``.

Each call is a monitored inference: exact input and output tokens per row, time to first token
and per output token from the decoding loop, and on sampled calls
(``BITNET_OBS_QUANT_SAMPLE_RATE``) a BitNet layer's output checked against the bitnet.cpp I2_S
emulation of its weights (``bitnet.quant.*`` with ``bitnet.quant.reference="quantized"``).
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch
from opentelemetry import trace
from transformers import TextIteratorStreamer, pipeline

import bitnet_obs
from bitnet_obs.instrumentation.transformers import TransformersInstrumentor
from bitnet_obs.testing import tiny_bitnet_model, tiny_tokenizer

EOS = 2


def stream(model: torch.nn.Module, tokenizer: object, prompt: str, new_tokens: int) -> str:
    """A request handler: generation in a thread, text handed on as it comes."""
    tracer = trace.get_tracer("example")
    with tracer.start_as_current_span("handle request"):
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)  # type: ignore[arg-type]
        inputs = tokenizer(prompt, return_tensors="pt")  # type: ignore[operator]
        thread = threading.Thread(
            target=model.generate,  # type: ignore[arg-type]
            kwargs=dict(
                **inputs, streamer=streamer, max_new_tokens=new_tokens, min_new_tokens=new_tokens
            ),
        )
        thread.start()
        text = "".join(streamer)
        thread.join()
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description="Hugging Face generate() under bitnet-obs.")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument(
        "--zero-code",
        action="store_true",
        help="run under opentelemetry-instrument: no configure(), no instrument()",
    )
    args = parser.parse_args()
    if not args.zero_code:
        telemetry = bitnet_obs.configure()
        print(f"metrics: {telemetry.metrics_url or 'pushed (see OTEL_METRICS_EXPORTER)'}")
        TransformersInstrumentor().instrument()  # the one line

    torch.compiler.set_stance("force_eager")  # BitLinear's @torch.compile: skip a 30 s compile
    model, tokenizer = tiny_bitnet_model(), tiny_tokenizer()
    rng = np.random.default_rng(0)

    for _ in range(args.requests):
        prompt = " ".join(f"t{i}" for i in rng.integers(4, 128, size=int(rng.integers(4, 16))))
        started = time.perf_counter()
        text = stream(model, tokenizer, prompt, args.new_tokens)
        rate = len(text.split()) / (time.perf_counter() - started)
        print(f"streamed {len(prompt.split()):2d} prompt tokens -> {text!r} ({rate:.0f} tokens/s)")

    prompts = ["t5 t6 t7 t8 t9", "t11 t12", "t20 t21 t22"]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=args.new_tokens, eos_token_id=EOS)
    rows = [row.tolist() for row in out[:, batch["input_ids"].shape[1] :]]
    lengths = [row.index(EOS) + 1 if EOS in row else len(row) for row in rows]
    print(f"batch: generated tokens per row {lengths}")

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    new = args.new_tokens
    result = generator("t40 t41 t42", max_new_tokens=new, min_new_tokens=new)
    print(f"pipeline: {result[0]['generated_text']!r}")

    TransformersInstrumentor().flush()  # the background layer checks, before exporting
    if not args.zero_code:
        bitnet_obs.shutdown()


if __name__ == "__main__":
    main()
