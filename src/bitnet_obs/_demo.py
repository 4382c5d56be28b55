"""``bitnet-obs demo``: a small synthetic BitNet-style server, instrumented only through the
public API, so every number on ``/metrics`` comes from real work.

The "model" is a stack of ternary-weight layers run with int8 activations through the same
I2_S kernel emulation that ``bitnet_obs.quant`` checks; tokens are generated greedily and
streamed. Some requests hit a simulated GPU out-of-memory error and fall back to the CPU path.

A cross-validation canary checks the served I2_S kernel every 10 s against golden outputs
recorded at start from the float64 quantized reference, and times it against the TL2 kernel;
``--inject-fault sign|constant`` breaks the I2_S kernel ``--fault-after`` seconds after the
canary's first run, so the failing canary, the 503 on ``/health/ready`` and the alerts can be
watched. ``--slow-kernel FACTOR`` makes the served kernel FACTOR times slower, like a replica on a
CPU without the SIMD its kernels were built for: run several demos, one of them slowed or
faulty, to watch the fleet rules pick out the replica that went wrong.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

import bitnet_obs
from bitnet_obs import crossval, quant, runtime, sla
from bitnet_obs._instruments import FALLBACKS, REQUESTS, TOKENS
from bitnet_obs._semconv import TOKEN_TYPE

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
    fault: str | None = field(default=None, init=False)  # "sign" or "constant": a broken I2_S
    slowdown: float = field(default=1.0, init=False)  # the I2_S kernel takes this many times longer

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
        slow = self.slowdown > 1.0 and fmt == "i2_s"
        spent = 0.0
        for i, (codes, scale) in enumerate(zip(self.codes, self.scales, strict=True)):
            started = time.perf_counter() if slow else 0.0
            y = quant.matmul(x, codes, scale, format=fmt)
            if slow:
                spent += time.perf_counter() - started
            if self.fault == "sign" and fmt == "i2_s":
                y = -y  # a kernel with a flipped sign
            if check:
                self._check_layer(i, x, y)
            h = np.maximum(y, 0.0) + 0.1 * x  # ReLU with a residual, keeps activations alive
            x = (h / (np.sqrt(np.mean(h * h)) + 1e-6)).astype(np.float32)  # RMS norm
        if slow:  # a slower kernel path: sleeping the difference costs the host no CPU
            time.sleep((self.slowdown - 1.0) * spent)
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

    def logits(self, token: int, fmt: str = "i2_s", check: bool = False) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = (self.hidden_state(token, fmt, check) @ self.head)[0]
        if self.fault == "constant" and fmt == "i2_s":  # a kernel that answers "!!!!"
            out = np.full_like(out, -10.0)
            out[0] = 10.0
        return out

    def reference_logits(self, token: int) -> npt.NDArray[np.float64]:
        """The quantized model's math in float64 (the trusted, unoptimized reference)."""
        x: npt.NDArray[np.float32] = self.embed[token][None, :]
        for codes, scale in zip(self.codes, self.scales, strict=True):
            q, sx = quant.quantize_activations(x)
            y = (q.astype(np.float64) / sx[:, None]) @ (codes.astype(np.float64) * scale).T
            h = np.maximum(y, 0.0) + 0.1 * x
            x = (h / (np.sqrt(np.mean(h * h)) + 1e-6)).astype(np.float32)
        out: npt.NDArray[np.float64] = (x.astype(np.float64) @ self.head)[0]
        return out

    def sample(self, token: int, rng: np.random.Generator, check: bool = False) -> int:
        """Serve one step: sample at temperature 1 (greedy decoding of a model this small
        falls into loops that the degenerate-output detector rightly flags); the logits go to
        ``observe_logits`` (entropy and top-1 margin of sampled calls)."""
        logits = self.logits(token, check=check).astype(np.float64)
        bitnet_obs.current_inference().observe_logits(logits)
        p = np.exp(logits - logits.max())
        return int(rng.choice(self.vocab, p=p / p.sum()))


# --- the cross-validation canary ----------------------------------------------------------

CANARY_PROMPTS = [[1, 2, 3], [17, 99], [256, 7, 300], [511]]
FAULTS = ("sign", "constant")


def _greedy(step: Callable[[int], np.ndarray]) -> crossval.Implementation:
    """An implementation for crossval: greedy decoding from the prompt's last token."""

    def generate(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
        token, ids, steps = prompt_ids[-1], [], []
        for _ in range(max_new_tokens):
            logits = step(token)
            token = int(np.argmax(logits))
            ids.append(token)
            steps.append(logits)
        return ids, np.stack(steps)

    return generate


def _start_canary(model: TinyBitNet, workdir: Path) -> crossval.Canary:
    golden = crossval.record(
        _greedy(model.reference_logits),
        CANARY_PROMPTS,
        workdir / "golden.npz",
        max_new_tokens=16,
        logits_steps=4,
        model=MODEL,
        quant_format="i2_s",
        created_by="bitnet-obs demo",
    )
    return crossval.Canary(
        _greedy(model.logits),
        golden,
        reference=_greedy(lambda token: model.logits(token, "tl2")),
        interval_s=10.0,
        budget_s=5.0,
    ).start()


def _inject_later(
    model: TinyBitNet, canary: crossval.Canary, fault: str, after: float, stop: threading.Event
) -> None:
    """Break the served kernel ``after`` seconds after the canary's first run (so a pass is
    always seen first)."""
    while canary.runs == 0:
        if stop.wait(0.1):
            return
    if not stop.wait(after):
        model.fault = fault
        print(f"\ninjected fault: {fault} (the served I2_S kernel is now broken)", flush=True)


@bitnet_obs.monitored_inference(model=MODEL, operation="text_completion", device="cuda:0")
def generate(
    model: TinyBitNet,
    prompt: list[int],
    max_tokens: int,
    oom: bool,
    cache_hits: int = 0,
    cache_misses: int = 0,
    rng: np.random.Generator | None = None,
) -> Iterator[int]:
    """Stream tokens; the first forward pass may 'run out of GPU memory' and fall back."""
    inf = bitnet_obs.current_inference()
    inf.add_input_tokens(len(prompt))
    inf.record_cache(hits=cache_hits, misses=cache_misses, cache="prefix")
    if not prompt:
        raise InvalidPromptError("empty prompt")

    sampler = rng if rng is not None else np.random.default_rng()

    def on_gpu() -> int:
        if oom:
            raise SimulatedOutOfMemoryError("CUDA out of memory (simulated)")
        return model.sample(prompt[-1], sampler, check=True)

    token = bitnet_obs.with_fallback(
        on_gpu,
        lambda: model.sample(prompt[-1], sampler, check=True),
        on=(SimulatedOutOfMemoryError,),
        from_device="cuda:0",
        to_device="cpu",
        reason="out_of_memory",
    )
    yield token
    for _ in range(max_tokens - 1):
        token = model.sample(token, sampler)
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
    sampler = np.random.default_rng(seed)
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
                    model, prompt, rng.randint(8, 48), rng.random() < 0.05, hits, misses, sampler
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


def _summary(stats: _Stats, started: float, canary: crossval.Canary | None = None) -> str:
    requests = REQUESTS
    tokens = TOKENS.value(**{TOKEN_TYPE: "output"})
    elapsed = max(time.monotonic() - started, 1e-9)
    return (
        f"requests {requests.value():6d} "
        f"(ok {requests.value(**{'bitnet.outcome': 'ok'})}, "
        f"error {requests.value(**{'bitnet.outcome': 'error'})}, "
        f"cancelled {requests.value(**{'bitnet.outcome': 'cancelled'})}) | "
        f"{tokens / elapsed:7.1f} tok/s | p50 {stats.p50() * 1000:6.1f} ms | "
        f"fallbacks {FALLBACKS.value()} | SLA {_sla_text()}"
        f"{_canary_text(canary)}"
    )


def _canary_text(canary: crossval.Canary | None) -> str:
    report = canary.last_report if canary is not None else None
    if report is None:
        return ""
    return " | canary " + ("pass" if report.passed else "FAIL")


def _sla_text() -> str:
    overall = sla.snapshot().get("overall")
    if overall is None or overall.compliance is None:
        return "warming up"
    return f"{overall.compliance:.1%}"


def run(
    duration: float | None,
    port: int | None,
    workers: int = 2,
    fault: str | None = None,
    fault_after: float = 20.0,
    slow_kernel: float = 1.0,
) -> int:
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
        model.slowdown = slow_kernel
        load.add_tensors([*model.codes, model.embed, model.head])
        model.record_weights()
    runtime.enable()
    workdir = tempfile.TemporaryDirectory(prefix="bitnet-obs-demo-")
    canary = _start_canary(model, Path(workdir.name))
    stop = threading.Event()
    if fault is not None:
        threading.Thread(
            target=_inject_later, args=(model, canary, fault, fault_after, stop), daemon=True
        ).start()
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
    print(
        f"  canary: {len(CANARY_PROMPTS)} golden cases from the float64 reference, "
        f"checked every {canary.interval_s:g}s (reference timing: TL2)"
        + (f"; fault {fault!r} {fault_after:g}s after its first run" if fault else "")
    )
    if slow_kernel > 1.0:
        print(f"  kernel: I2_S slowed {slow_kernel:g}x (--slow-kernel)")
    print(f"  running {f'for {duration:g}s' if duration else 'until Ctrl-C'}", flush=True)
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
                print("\r" + _summary(stats, started, canary), end="", flush=True)
            elif now - last_print >= 5:
                print(_summary(stats, started, canary), flush=True)
                last_print = now
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    stop.set()
    canary.stop()
    for thread in threads:
        thread.join(timeout=5)
    print(("\n" if tty else "") + "final: " + _summary(stats, started, canary), flush=True)
    bitnet_obs.shutdown()
    workdir.cleanup()
    return 0
