"""Cost of the transformers instrumentor, in one run.

1. ``generate()`` on the tiny BitNet model (``bitnet_obs.testing.tiny_bitnet_model``: BitLinear
   layers; 8-token prompt, 16 new tokens, greedy) through the instrumented method at the
   default sample rate, against the original ``GenerationMixin.generate`` on the same model,
   interleaved round by round: the ratio of the medians, wall and process CPU time. On a shared
   machine that ratio moves by a few percent from run to run, so an A/A pair (original against
   original) is timed the same way, and the instrumentation's own work per call is measured
   apart: the same wrapper around a stand-in for ``generate`` that runs the decoding loop's
   calls into it (16 stopping-criterion checks) and returns the same ids.
2. Sampling forced to 1 (one layer per call, the default): the extra wall time of a sampled
   call, and the hook's own time on the request path per layer (it copies a few tokens' input
   and output and queues the check), for a tiny layer and one of bitnet-b1.58-2B-4T's shapes.
3. The background check per layer (unpack the ternary weights, emulate the I2_S matmul, compare),
   for a tiny layer and for one of bitnet-b1.58-2B-4T's shapes (2560 -> 6912, of which a check
   recomputes a stripe of 102 output channels).

torch.compile is off (``force_eager``; BitLinear's compile takes ~30 s here) and torch runs on
one thread. Nothing here asserts on time: the figures are reported.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from benchmarks._inproc import providers as _providers
from benchmarks.conftest import REPORTERS
from bitnet_obs import _config, _instruments, quant

torch = pytest.importorskip("torch", reason="needs the [hf] extra")
pytest.importorskip("transformers", reason="needs the [hf] extra")

from transformers import GenerationMixin, StoppingCriteriaList  # noqa: E402
from transformers.integrations.bitnet import BitLinear  # noqa: E402

from bitnet_obs.instrumentation._generate import Instrumentation  # noqa: E402
from bitnet_obs.instrumentation._layers import (  # noqa: E402
    ROWS_PER_CHECK,
    Layer,
    capture,
    output_channels,
    quantized_reference,
    ternary_weights,
)
from bitnet_obs.instrumentation._options import Options  # noqa: E402
from bitnet_obs.instrumentation.transformers import TransformersInstrumentor  # noqa: E402
from bitnet_obs.testing import tiny_bitnet_model  # noqa: E402

NEW_TOKENS = 16
PROMPT = [[5, 6, 7, 8, 9, 10, 11, 12]]


def _generate(fn: Callable[..., Any], model: Any) -> None:
    fn(model, torch.tensor(PROMPT), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)


def _median_pair(
    a: Callable[[], None], b: Callable[[], None], rounds: int, clock: Callable[[], float]
) -> tuple[float, float]:
    """Medians of a and b timed alternately (a, b, a, b, ...), after one warm-up each."""
    a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        for fn, out in ((a, ta), (b, tb)):
            start = clock()
            fn()
            out.append(clock() - start)
    return statistics.median(ta), statistics.median(tb)


def _own_cost(model: Any, rounds: int = 2000) -> float:
    """Seconds per call of the instrumentation itself: its wrapper around a stand-in generate."""
    prompt = torch.tensor(PROMPT)
    new = torch.arange(20, 20 + NEW_TOKENS).reshape(1, -1)

    def stand_in(model: Any, inputs: Any, stopping_criteria: Any = None, **kwargs: Any) -> Any:
        ids = inputs
        for i in range(NEW_TOKENS):
            ids = torch.cat([inputs, new[:, : i + 1]], dim=1)
            stopping_criteria(ids, None)
        return ids

    state = Instrumentation(Options())
    state.active = True  # the wrapper without the patch: GenerationMixin stays untouched
    wrapped = state._wrap(stand_in)
    bare = functools.partial(stand_in, model, prompt, StoppingCriteriaList(), max_new_tokens=16)
    monitored = functools.partial(wrapped, model, prompt, max_new_tokens=16)
    times: dict[str, list[float]] = {"bare": [], "monitored": []}
    for _ in range(rounds // 100):
        for name, fn in (("bare", bare), ("monitored", monitored)):
            start = time.perf_counter()
            for _ in range(100):
                fn()
            times[name].append((time.perf_counter() - start) / 100)
    state.uninstall()
    return statistics.median(times["monitored"]) - statistics.median(times["bare"])


def _measure(results: dict[str, float]) -> None:
    model = tiny_bitnet_model()
    original = GenerationMixin.__dict__["generate"]
    plain = functools.partial(_generate, original, model)
    instrumentor = TransformersInstrumentor()

    instrumentor.instrument()  # the default sample rate
    monitored = functools.partial(_generate, type(model).generate, model)
    for clock, name in ((time.perf_counter, "wall"), (time.process_time, "cpu")):
        base, ours = _median_pair(plain, monitored, 100, clock)
        results[f"hf/{name}/plain"], results[f"hf/{name}/default"] = base, ours
        a1, a2 = _median_pair(plain, plain, 100, clock)
        results[f"hf/{name}/aa"] = a2 / a1 - 1
    results["hf/rate"] = _config.current().quant_sample_rate
    instrumentor.uninstrument()
    results["hf/own"] = _own_cost(model)

    # A sampled call (one layer checked, the default) against an unsampled one, alternately.
    # Its check runs in the background thread while the call goes on: on this 2-core machine
    # the difference includes that thread's competition for the CPU and the GIL.
    timings: dict[float, list[float]] = {0.0: [], 1.0: []}
    for _ in range(30):
        for rate, out in timings.items():
            instrumentor.instrument(fidelity_sample_rate=rate)
            call = functools.partial(_generate, type(model).generate, model)
            call()  # the model described, warm
            instrumentor.flush(60)
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
            instrumentor.flush(60)
            instrumentor.uninstrument()
    results["hf/sampled_call"] = statistics.median(timings[1.0]) - statistics.median(timings[0.0])


def _hook_cost(layer: Any, tokens: int, rounds: int) -> float:
    """Median seconds the hook spends on the request path: copy a few tokens' input and output
    (the check itself is queued for the background thread)."""
    x = torch.randn(1, tokens, layer.in_features)
    with torch.no_grad():
        y = layer(x)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            capture(layer, (x,), y)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _check_cost(layer: Layer, x: Any, rounds: int) -> float:
    """Median seconds of one background check: the reference and the statistics."""
    with torch.no_grad():
        y = layer.module(torch.from_numpy(x)).numpy()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        channels = output_channels(y.shape[1], x.shape[1])
        reference = quantized_reference(layer, x, ternary_weights(layer, channels))
        quant.accuracy(reference, y[:, channels])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _big_layer() -> Layer:
    module = BitLinear(2560, 6912, bias=False, dtype=torch.float32)
    rng = np.random.default_rng(0)
    fields = rng.integers(0, 3, (4, 6912 // 4, 2560), dtype=np.uint8)
    with torch.no_grad():
        module.weight.copy_(
            torch.from_numpy(fields[0] | fields[1] << 2 | fields[2] << 4 | fields[3] << 6)
        )
        module.weight_scale.fill_(1.7)
    return Layer("mlp.up_proj (2560 -> 6912)", module, "packed")


def test_transformers_overhead(benchmark, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    mp, tp = _providers(True)
    _instruments.bind(mp, tp)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.compiler.set_stance("force_eager"):
            benchmark.pedantic(_measure, args=(results,), rounds=1, iterations=1)
            tiny = tiny_bitnet_model()
            q_proj = Layer("q_proj", tiny.model.layers[0].self_attn.q_proj, "packed")
            x_tiny = np.random.default_rng(1).standard_normal((ROWS_PER_CHECK, 64))
            results["hf/check_tiny"] = _check_cost(q_proj, x_tiny.astype(np.float32), 50)
            x_big = np.random.default_rng(2).standard_normal((ROWS_PER_CHECK, 2560))
            big = _big_layer()
            results["hf/check_big"] = _check_cost(big, x_big.astype(np.float32), 5)
            results["hf/hook_tiny"] = _hook_cost(q_proj.module, 8, 200)
            results["hf/hook_big"] = _hook_cost(big.module, 512, 50)
    finally:
        torch.set_num_threads(threads)
        tp.shutdown()
    benchmark.extra_info.update(results)


def report(results: dict[str, float]) -> list[str]:
    def ratio(clock: str) -> str:
        base, ours = results[f"hf/{clock}/plain"], results[f"hf/{clock}/default"]
        return (
            f"| instrumented, {clock} time | {base * 1e3:.1f} ms | {ours * 1e3:.1f} ms "
            f"| **{(ours / base - 1) * 100:+.1f}%** | {results[f'hf/{clock}/aa'] * 100:+.1f}% |"
        )

    own = results["hf/own"] / results["hf/wall/plain"]
    return [
        f"transformers generate(), tiny BitNet model, {NEW_TOKENS} new tokens, sample rate "
        f"{results['hf/rate']:g} (target: ≤ +2%):",
        "| case | original generate() | instrumented | overhead | A/A (original vs original) |",
        "|---|---|---|---|---|",
        ratio("wall"),
        ratio("cpu"),
        f"| the instrumentation's own work per call | | +{results['hf/own'] * 1e6:.0f} µs "
        f"| **{own * 100:+.2f}%** of the original's wall time | |",
        f"| a sampled call (one layer checked, in the background meanwhile) "
        f"| | {results['hf/sampled_call'] * 1e3:+.2f} ms | | |",
        f"| the hook on the request path, tiny layer (8-token prompt) "
        f"| | {results['hf/hook_tiny'] * 1e6:.0f} µs | | |",
        f"| the hook on the request path, 2B-4T shape (512-token prompt) "
        f"| | {results['hf/hook_big'] * 1e6:.0f} µs | | |",
        f"| background check per layer, tiny (64 -> 64, {ROWS_PER_CHECK} tokens) "
        f"| | {results['hf/check_tiny'] * 1e3:.2f} ms | | |",
        f"| background check per layer, 2B-4T shape (2560 -> 6912, {ROWS_PER_CHECK} tokens) "
        f"| | {results['hf/check_big'] * 1e3:.1f} ms | | |",
    ]


REPORTERS.append(report)
