"""A separate process that records every instrument of the catalogue at least once.

Run with ``python -m tests._support.everything``: it configures bitnet-obs from its environment
(Prometheus on a free port, traces over OTLP to a closed port so exports fail and drops are
counted), drives every feature through the public API (GPUs through the fake NVML, put where
``import pynvml`` finds it), prints ``READY <metrics url>`` and waits for a line on stdin.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tests._support import fake_pynvml

sys.modules["pynvml"] = fake_pynvml  # the NVML boundary: nvidia-ml-py's names and error codes
fake_pynvml.reset([fake_pynvml.FakeDevice("NVIDIA A100")])

import bitnet_obs  # noqa: E402
from bitnet_obs import crossval, health, quant, sla  # noqa: E402


@bitnet_obs.monitored_inference(
    model="every-model",
    client_token_usage=True,
    response_model="every-model-i2_s",
    server_address="127.0.0.1",
    server_port=8080,
)
def call(n: int) -> list[int]:
    inf = bitnet_obs.current_inference()
    inf.add_input_tokens(5)
    inf.record_cache(hits=2, misses=1)
    inf.record_quantization("layers.0.out", np.ones((2, 8)), lambda: np.ones((2, 8)) * 1.01)
    inf.record_quantization("layers.0.bad", np.ones((2, 3)), np.ones((3, 2)))  # a counted skip
    inf.add_output_tokens(-1)  # an internal error, counted
    inf.observe_logits(np.linspace(0.0, 4.0, 64).reshape(2, 32))  # entropy, top-1 margin
    return [3] * n  # returned ids, judged: a run of one token (bitnet.output.*)


@bitnet_obs.monitored_inference(model="every-model", operation="chat", kernel="i2_s_avx2")
def stream(n: int) -> Iterator[int]:
    inf = bitnet_obs.current_inference()
    inf.set_kernel("scalar")
    inf.set_finish_reason("stop")
    for i in range(n):
        time.sleep(0.002)
        yield i


def main() -> int:
    telemetry = bitnet_obs.configure()
    sla.set_objectives(sla.Objectives(latency_s=1e-6, min_samples=1))
    health.register("always_failing", lambda: False, critical=False)
    health.evaluate()
    w = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    checkpoint = Path(tempfile.mkdtemp()) / "every-model.npz"
    np.savez(checkpoint, w=w)
    with bitnet_obs.monitor_model_load(model="every-model", path=checkpoint) as loading:
        loading.add_tensors([w])  # bitnet.model.info once the background hash is done
    quant.record_weight_quantization("layers.0.q_proj", w)
    quant.record_activation_quantization("layers.0.x", w[:4])
    quant.compare_outputs("lm_head", w[:2, :16], w[:2, :16] * 1.01, kind="logits")
    ones = np.ones((4, 4096), np.float32)  # all-+1 codes and activations: the AVX2 kernel wraps
    exact = quant.matmul(ones[:1], ones.astype(np.int8), 1.0)
    quant.compare_outputs("wrapping", exact, exact, reference_kind="quantized",
                          activations=ones[:1], codes=ones.astype(np.int8))  # fmt: skip
    queue = bitnet_obs.RequestQueue("every")
    ticket = queue.enqueue(priority="high")
    queue.dequeue(ticket)
    call(40)

    def echo(prompt: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
        ids = (prompt * max_new_tokens)[:max_new_tokens]
        return ids, np.eye(8, dtype=np.float32)[ids] * 5.0  # logits: KL is measured too

    golden = Path(tempfile.mkdtemp()) / "golden.npz"
    crossval.record(echo, [[1, 2, 3]], golden, max_new_tokens=8, model="every-model")
    crossval.check(echo, golden, reference=echo, model="every-model")  # bitnet.crossval.*
    list(stream(3))
    with queue.batch() as batch:
        batch.add(2)
    bitnet_obs.observe_cache_usage("kv", lambda: 4096.0)
    bitnet_obs.record_fallback("cuda:0", "cpu", "out_of_memory")
    bitnet_obs.force_flush(2.0)  # the OTLP span export fails: exports and drops are counted
    print("READY", telemetry.metrics_url, flush=True)
    sys.stdin.readline()
    bitnet_obs.shutdown(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
