"""Quickstart: run it, then open http://127.0.0.1:9464/metrics (``python quickstart.py [N]``)."""

import sys
import time

import bitnet_obs

bitnet_obs.configure()  # Prometheus on 127.0.0.1:9464; OTEL_* variables choose otherwise


@bitnet_obs.monitored_inference(model="bitnet-b1.58-2B-4T")
def generate(prompt: str) -> list[int]:
    time.sleep(0.05)  # your model runs here
    return [791, 4320, 374, 6437]  # output token ids: counted for you


for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1200):  # about a minute
    generate("Why is the sky blue?")
