"""``bitnet-obs demo``: a small synthetic BitNet-style server, instrumented only through the
public API, so every number on ``/metrics`` comes from real work.

The "model" is a stack of ternary-weight layers run with int8 activations through the same
I2_S kernel emulation that ``bitnet_obs.quant`` checks; tokens are generated greedily and
streamed. Some requests hit a simulated GPU out-of-memory error and fall back to the CPU path.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

import bitnet_obs
from bitnet_obs import quant, sla
from bitnet_obs._instruments import FALLBACKS, REQUESTS, TOKENS

MODEL = "bitnet-demo-tiny"


class SimulatedOutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError: the demo has no GPU."""


class InvalidPromptError(ValueError):
    pass


@dataclass
class TinyBitNet:
    """A few ternary linear layers plus a float LM head, like BitNet b1.58 in miniature."""

    vocab: int = 512
    hidden: int = 256
    layers: int = 4
    seed: int = 0
    embed: np.ndarray = field(init=False, repr=False)
    weights: list[np.ndarray] = field(init=False, repr=False)
    codes: list[np.ndarray] = field(init=False, repr=False)
    scales: list[float] = field(init=False, repr=False)
    head: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.embed = rng.standard_normal((self.vocab, self.hidden)).astype(np.float32)
        self.weights = [
            (rng.standard_normal((self.hidden, self.hidden)) / np.sqrt(self.hidden)).astype(
                np.float32
            )
            for _ in range(self.layers)
        ]
        quantized = [quant.quantize_weights(w) for w in self.weights]
        self.codes = [codes for codes, _ in quantized]
        self.scales = [scale for _, scale in quantized]
        self.head = rng.standard_normal((self.hidden, self.vocab)).astype(np.float32)

    def record_weights(self) -> None:
        """Load-time accuracy of every ternary layer against its FP32 weights, per format."""
        for i, w in enumerate(self.weights):
            quant.record_weight_quantization(f"layers.{i}.proj", w)

    def hidden_state(
        self, token: int, fmt: str = "i2_s", check: bool = False
    ) -> npt.NDArray[np.float32]:
        x: npt.NDArray[np.float32] = self.embed[token][None, :]
        for i, (codes, scale) in enumerate(zip(self.codes, self.scales, strict=True)):
            y = quant.matmul(x, codes, scale, format=fmt)
            if check:
                self._check_layer(i, x, y)
            h = np.maximum(y, 0.0) + 0.1 * x  # ReLU with a residual, keeps activations alive
            x = (h / (np.sqrt(np.mean(h * h)) + 1e-6)).astype(np.float32)  # RMS norm
        return x

    def _check_layer(self, i: int, x: np.ndarray, y: np.ndarray) -> None:
        """Kernel fidelity (vs the quantized reference) and quantization error (vs FP32).

        Sampled and budgeted by bitnet-obs; the references are the demo's own work.
        """
        inf = bitnet_obs.current_inference()
        codes, scale, name = self.codes[i], self.scales[i], f"layers.{i}.proj"

        def quantized_reference() -> np.ndarray:  # only computed for a sample that is taken
            q, sx = quant.quantize_activations(x)
            ref: np.ndarray = (q.astype(np.float64) / sx[:, None]) @ (
                codes.astype(np.float64) * scale
            ).T
            return ref

        inf.record_quantization(name, quantized_reference, y)
        inf.record_quantization(
            name,
            quantized_reference,
            lambda: quant.matmul(x, codes, scale, format="tl2"),
            format="tl2",
        )
        inf.record_quantization(
            name, lambda: x.astype(np.float64) @ self.weights[i].T, y, reference_kind="fp32"
        )

    def next_token(self, token: int, fmt: str = "i2_s", check: bool = False) -> int:
        return int(np.argmax(self.hidden_state(token, fmt, check) @ self.head))


@bitnet_obs.monitored_inference(model=MODEL, operation="text_completion", device="cuda:0")
def generate(
    model: TinyBitNet,
    prompt: list[int],
    max_tokens: int,
    oom: bool,
    cache_hits: int = 0,
    cache_misses: int = 0,
) -> Iterator[int]:
    """Stream tokens; the first forward pass may 'run out of GPU memory' and fall back."""
    inf = bitnet_obs.current_inference()
    inf.add_input_tokens(len(prompt))
    inf.record_cache(hits=cache_hits, misses=cache_misses, cache="prefix")
    if not prompt:
        raise InvalidPromptError("empty prompt")

    def on_gpu() -> int:
        if oom:
            raise SimulatedOutOfMemoryError("CUDA out of memory (simulated)")
        return model.next_token(prompt[-1], check=True)

    token = bitnet_obs.with_fallback(
        on_gpu,
        lambda: model.next_token(prompt[-1], check=True),
        on=(SimulatedOutOfMemoryError,),
        from_device="cuda:0",
        to_device="cpu",
        reason="out_of_memory",
    )
    yield token
    for _ in range(max_tokens - 1):
        token = model.next_token(token)
        yield token


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)
            del self.latencies[:-500]

    def p50(self) -> float:
        with self.lock:
            values = sorted(self.latencies)
        return values[len(values) // 2] if values else 0.0


class PrefixCache:
    """A toy prefix cache: (position, token) pairs seen recently count as hits."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self.entries: dict[tuple[int, int], None] = {}
        self.lock = threading.Lock()

    def lookup(self, prompt: list[int]) -> tuple[int, int]:
        hits = 0
        with self.lock:
            for key in enumerate(prompt):
                if key in self.entries:
                    hits += 1
                else:
                    self.entries[key] = None
                    if len(self.entries) > self.capacity:
                        self.entries.pop(next(iter(self.entries)))
        return hits, len(prompt) - hits

    def nbytes(self) -> int:
        return len(self.entries) * 2 * 256 * 4  # a K and a V vector of float32 per entry


def _worker(
    model: TinyBitNet,
    queue: bitnet_obs.RequestQueue,
    cache: PrefixCache,
    stop: threading.Event,
    stats: _Stats,
    seed: int,
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        # A few requests arrive and queue up; a batch is formed; each is then served.
        arrivals = [
            (queue.enqueue(rng.choice(("normal", "normal", "high", "low"))), _prompt(rng, model))
            for _ in range(rng.randint(1, 4))
        ]
        with queue.batch() as batch:
            stop.wait(rng.uniform(0.001, 0.01))  # the batching window
            for _ in arrivals:
                batch.add()
        for ticket, prompt in arrivals:
            queue.dequeue(ticket)
            started = time.perf_counter()
            try:
                hits, misses = cache.lookup(prompt)
                stream = generate(
                    model, prompt, rng.randint(8, 48), rng.random() < 0.05, hits, misses
                )
                for _token in stream:
                    if stop.is_set() or rng.random() < 0.002:
                        break  # a client that disconnects: counted as cancelled
            except InvalidPromptError:
                pass
            stats.add(time.perf_counter() - started)
        stop.wait(rng.uniform(0.0, 0.05))


def _prompt(rng: random.Random, model: TinyBitNet) -> list[int]:
    if rng.random() < 0.02:
        return []  # an invalid request: counted as an error
    # a few popular prompt prefixes, so the prefix cache has something to hit
    head = [rng.choice((1, 2, 3))] * rng.randint(0, 6)
    return head + [rng.randrange(model.vocab) for _ in range(rng.randint(1, 20))]


def _summary(stats: _Stats, started: float) -> str:
    requests = REQUESTS
    tokens = TOKENS.value(**{"gen_ai.token.type": "output"})
    elapsed = max(time.monotonic() - started, 1e-9)
    return (
        f"requests {requests.value():6d} "
        f"(ok {requests.value(**{'bitnet.outcome': 'ok'})}, "
        f"error {requests.value(**{'bitnet.outcome': 'error'})}, "
        f"cancelled {requests.value(**{'bitnet.outcome': 'cancelled'})}) | "
        f"{tokens / elapsed:7.1f} tok/s | p50 {stats.p50() * 1000:6.1f} ms | "
        f"fallbacks {FALLBACKS.value()} | SLA {_sla_text()}"
    )


def _sla_text() -> str:
    overall = sla.snapshot().get("overall")
    if overall is None or overall.compliance is None:
        return "warming up"
    return f"{overall.compliance:.1%}"


def run(duration: float | None, port: int | None, workers: int = 2) -> int:
    try:
        telemetry = (
            bitnet_obs.configure() if port is None else bitnet_obs.configure(prometheus_port=port)
        )
    except bitnet_obs.ConfigError as exc:
        print(f"bitnet-obs demo: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"bitnet-obs demo: cannot start the /metrics server ({exc}); "
            "try --port 0 or set OTEL_EXPORTER_PROMETHEUS_PORT",
            file=sys.stderr,
        )
        return 2
    with bitnet_obs.monitor_model_load(model=MODEL, quant_format="i2_s", device="cpu") as load:
        model = TinyBitNet()  # not ready until this block ends well
        load.add_tensors([*model.codes, model.embed, model.head])
        model.record_weights()
    queue = bitnet_obs.RequestQueue("generate")
    cache = PrefixCache()
    bitnet_obs.observe_cache_usage("prefix", cache.nbytes)
    if sla.objectives() is None:  # BITNET_OBS_SLA_* wins when set
        sla.set_objectives(
            sla.Objectives(latency_s=2.0, ttft_s=0.5, min_tokens_per_s=20, max_error_rate=0.05)
        )
    print(f"bitnet-obs demo: model {MODEL} ({model.layers} ternary layers, I2_S kernel emulation)")
    if telemetry.metrics_url:
        print(f"  metrics: {telemetry.metrics_url}")
        print(f"  health:  {telemetry.health_url}")
    print(
        f"  metrics exporters: {', '.join(telemetry.settings.metrics_exporters) or 'none'}; "
        f"traces: {', '.join(telemetry.settings.traces_exporters) or 'none'}"
    )
    print(f"  running {f'for {duration:g}s' if duration else 'until Ctrl-C'}", flush=True)
    stop = threading.Event()
    stats = _Stats()
    threads = [
        threading.Thread(target=_worker, args=(model, queue, cache, stop, stats, i), daemon=True)
        for i in range(workers)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    tty = sys.stdout.isatty()
    last_print = 0.0
    try:
        while duration is None or time.monotonic() - started < duration:
            time.sleep(0.25)
            now = time.monotonic()
            if tty:
                print("\r" + _summary(stats, started), end="", flush=True)
            elif now - last_print >= 5:
                print(_summary(stats, started), flush=True)
                last_print = now
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    print(("\n" if tty else "") + "final: " + _summary(stats, started), flush=True)
    bitnet_obs.shutdown()
    return 0
