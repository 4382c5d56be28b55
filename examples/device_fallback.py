"""Device fallback: a (simulated) GPU out-of-memory error falls back to the CPU, and is recorded.

    python examples/device_fallback.py --requests 100

``with_fallback`` runs the GPU path; on one of the ``on`` exceptions it counts a fallback
(``bitnet.device.fallbacks`` with from, to and reason), moves the request to the CPU device
(so its duration is recorded under ``bitnet.device="cpu"``) and runs the CPU path. With a real
GPU pass ``on=(torch.cuda.OutOfMemoryError,)``. For other shapes of code, call
``bitnet_obs.current_inference().fallback("cuda:0", "cpu", "out_of_memory")`` yourself.
"""

from __future__ import annotations

import argparse
import random
import time

import bitnet_obs


class GPUOutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError on a machine without a GPU."""


class Model:
    """A model whose KV cache needs GPU memory in proportion to the prompt."""

    gpu_free_mib = 2048

    def run_on_gpu(self, prompt_ids: list[int]) -> list[int]:
        need = 16 * len(prompt_ids)
        if need > self.gpu_free_mib:
            raise GPUOutOfMemoryError(f"CUDA out of memory: tried to allocate {need} MiB")
        time.sleep(0.005)
        return prompt_ids[:8]

    def run_on_cpu(self, prompt_ids: list[int]) -> list[int]:
        time.sleep(0.03)  # slower, but the request is served
        return prompt_ids[:8]


@bitnet_obs.monitored_inference(model="bitnet-b1.58-2B-4T", device="cuda:0")
def generate(model: Model, prompt_ids: list[int]) -> list[int]:
    result: list[int] = bitnet_obs.with_fallback(
        lambda: model.run_on_gpu(prompt_ids),
        lambda: model.run_on_cpu(prompt_ids),
        on=(GPUOutOfMemoryError,),
        from_device="cuda:0",
        to_device="cpu",
        reason="out_of_memory",
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="GPU -> CPU fallback under bitnet-obs.")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    bitnet_obs.configure()
    model, fallbacks = Model(), 0
    for _ in range(args.requests):
        prompt = list(range(random.choice([16, 64, 256])))  # 256 tokens need 4096 MiB
        fallbacks += len(prompt) * 16 > model.gpu_free_mib
        generate(model, prompt)
    print(f"{args.requests} requests, {fallbacks} fell back from cuda:0 to cpu")
    bitnet_obs.shutdown()


if __name__ == "__main__":
    main()
