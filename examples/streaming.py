"""A streaming generator: time to first token and time per output token from real timing.

    python examples/streaming.py --requests 20

Decorate the generator itself: bitnet-obs times the first ``yield`` (TTFT) and the ones after it
(time per output token), counts one output token per yielded item, and records a stream the
client stops reading (``close()``) as outcome ``cancelled``, not as an error.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from collections.abc import Generator

import bitnet_obs

WORDS = ("The", "sky", "is", "blue", "because", "air", "scatters", "blue", "light", "most", ".")


@bitnet_obs.monitored_inference(model="bitnet-b1.58-2B-4T", operation="chat")
def stream_chat(prompt: str, max_tokens: int = 32) -> Generator[str, None, None]:
    """Prefill, then decode token by token (a stand-in for a real model)."""
    bitnet_obs.current_inference().add_input_tokens(len(prompt.split()))
    time.sleep(0.02)  # prefill: most of the time to first token
    for i in range(max_tokens):
        time.sleep(random.uniform(0.002, 0.006))  # one decode step
        yield WORDS[i % len(WORDS)] + " "


def main() -> None:
    parser = argparse.ArgumentParser(description="Stream tokens under bitnet-obs.")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    telemetry = bitnet_obs.configure()
    print(f"metrics: {telemetry.metrics_url or 'pushed (see OTEL_METRICS_EXPORTER)'}")
    for n in range(args.requests):
        with contextlib.closing(stream_chat("Why is the sky blue?", random.randint(8, 24))) as s:
            for i, token in enumerate(s):
                print(token, end="", flush=True)
                if n % 10 == 9 and i == 3:
                    print("[client went away]", end="")
                    break  # closing() ends the generator: recorded as "cancelled"
        print()
    bitnet_obs.shutdown()


if __name__ == "__main__":
    main()
