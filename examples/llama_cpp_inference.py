"""llama.cpp in process (llama-cpp-python) under bitnet-obs with one line: every call monitored.

    pip install 'bitnet-obs[llamacpp]'     # llama-cpp-python, opentelemetry-instrument
    python examples/llama_cpp_inference.py --model ggml-model-tq2_0.gguf --requests 5

    # the same with no instrumentation code at all: the entry point loads the instrumentor
    opentelemetry-instrument python examples/llama_cpp_inference.py --model ... --zero-code

Any GGUF that llama.cpp runs: a BitNet b1.58 model converted by llama.cpp's
``convert_hf_to_gguf.py`` and quantized to TQ1_0 or TQ2_0 (bitnet.cpp's I2_S files need
bitnet.cpp's own llama.cpp). The calls are the ways people serve with llama-cpp-python:

- a completion (``llm(prompt)``), sampled, with a seed;
- a chat completion streamed chunk by chunk (``stream=True``), as an OpenAI-style server does;
- a client that stops reading a stream half-way (counted as ``cancelled``).

``Llama(...)`` is a monitored model load (``bitnet.model.load.duration``, ``bitnet.model.loaded``,
``bitnet.model.info`` with the file's architecture, stored types, parameters and SHA-256), and
every call a monitored inference: input and output tokens from the ids llama.cpp evaluated and
sampled, time to first token and every inter-token gap, the finish reason, degenerate-output
detection on the sampled ids. ``bitnet.runtime.info`` says which CPU features the llama.cpp
build compiled in (``bitnet.llama_cpp.features``).
"""

from __future__ import annotations

import argparse
import time

import llama_cpp

import bitnet_obs
from bitnet_obs.instrumentation.llama_cpp import LlamaCppInstrumentor

QUESTIONS = (
    "What is a ternary weight?",
    "Why do 1-bit models run fast on a CPU?",
    "Name three colours.",
)


def main() -> None:
    parser = argparse.ArgumentParser(description="llama-cpp-python under bitnet-obs.")
    parser.add_argument("--model", required=True, help="a GGUF file llama.cpp runs")
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--zero-code",
        action="store_true",
        help="run under opentelemetry-instrument: no configure(), no instrument()",
    )
    args = parser.parse_args()
    if not args.zero_code:
        telemetry = bitnet_obs.configure()
        print(f"metrics: {telemetry.metrics_url or 'pushed (see OTEL_METRICS_EXPORTER)'}")
        LlamaCppInstrumentor().instrument()  # the one line

    llm = llama_cpp.Llama(args.model, n_ctx=512, n_threads=args.threads, verbose=False)
    for i in range(args.requests):
        question = QUESTIONS[i % len(QUESTIONS)]
        started = time.perf_counter()
        if i % 2 == 0:
            out = llm(f"Q: {question}\nA:", max_tokens=args.max_tokens, temperature=0.7, seed=i)
            text, reason = out["choices"][0]["text"], out["choices"][0]["finish_reason"]
        else:
            chunks = llm.create_chat_completion(
                [{"role": "user", "content": question}],
                max_tokens=args.max_tokens,
                temperature=0.0,
                stream=True,
            )
            text, reason = "", None
            for chunk in chunks:
                choice = chunk["choices"][0]
                text += choice["delta"].get("content") or ""
                reason = choice["finish_reason"] or reason
        elapsed = time.perf_counter() - started
        kind = "completion" if i % 2 == 0 else "chat stream"
        print(f"{kind}: {reason} in {elapsed:.2f} s: {text!r}")

    stream = llm.create_completion("Once upon a time", max_tokens=args.max_tokens, stream=True)
    next(stream)
    stream.close()  # the client went away: a cancelled request
    print("a client left a stream half-way")

    llm.close()  # bitnet.model.loaded goes back to 0
    if not args.zero_code:
        bitnet_obs.shutdown()


if __name__ == "__main__":
    main()
