"""Every script in examples/ runs, briefly, and what it reports arrives over OTLP.

Each example is run as a user would, in its own process, configured only by ``OTEL_*``
variables pointing at an in-process ``OTLPReceiver``; what the receiver decodes is checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from bitnet_obs.testing import MetricPoint, OTLPReceiver
from tests.ops._kit import EXAMPLES, ROOT

MODEL = "bitnet-b1.58-2B-4T"


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rx:
        yield rx


def run_example(rx: OTLPReceiver, script: str, *args: str, timeout: float = 180, **env: str) -> str:
    """Run ``examples/<script>`` exporting OTLP to ``rx``; return its stdout."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    full_env.update(
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_TRACES_EXPORTER="none",
        OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint,
        **env,
    )
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def latest(rx: OTLPReceiver, name: str) -> list[MetricPoint]:
    """The newest point of each (resource, attributes) series of ``name``."""
    newest: dict[Any, MetricPoint] = {}
    for point in rx.metric_points(name):
        key = (tuple(sorted(point.resource.items())), tuple(sorted(point.attributes.items())))
        if key not in newest or point.time_unix_nano >= newest[key].time_unix_nano:
            newest[key] = point
    return list(newest.values())


def total(rx: OTLPReceiver, name: str, **attributes: Any) -> float:
    """Sum over series whose attributes include ``attributes`` (counters: value, else count)."""
    points = [
        p for p in latest(rx, name) if all(p.attributes.get(k) == v for k, v in attributes.items())
    ]
    return sum((p.value if p.count is None else p.count) or 0 for p in points)


def outcomes(rx: OTLPReceiver) -> dict[str, float]:
    return {
        outcome: total(rx, "bitnet.inference.requests", **{"bitnet.outcome": outcome})
        for outcome in ("ok", "error", "cancelled")
    }


def test_quickstart(receiver: OTLPReceiver) -> None:
    source = (EXAMPLES / "quickstart.py").read_text()
    code = [line for line in source.splitlines() if line.strip() and not line.startswith('"""')]
    assert len(code) <= 12, "the quickstart is about ten lines"
    run_example(receiver, "quickstart.py", "5")
    attrs = {"gen_ai.request.model": MODEL}
    assert total(receiver, "bitnet.inference.requests", **attrs) == 5
    assert total(receiver, "bitnet.inference.tokens", **{"bitnet.token.type": "output"}) == 20
    assert total(receiver, "gen_ai.server.request.duration", **attrs) == 5


def test_streaming(receiver: OTLPReceiver) -> None:
    out = run_example(receiver, "streaming.py", "--requests", "20")
    assert out.count("[client went away]") == 2
    assert outcomes(receiver) == {"ok": 18, "error": 0, "cancelled": 2}
    # TTFT and TPOT describe successful responses (GenAI semantic conventions)
    assert total(receiver, "gen_ai.server.time_to_first_token") == 18
    assert total(receiver, "gen_ai.server.time_per_output_token") == 18
    (ttft,) = latest(receiver, "gen_ai.server.time_to_first_token")
    assert ttft.sum is not None and ttft.count
    assert 0.02 <= ttft.sum / ttft.count < 0.5  # the 20 ms prefill dominates
    assert total(receiver, "bitnet.inference.tokens", **{"bitnet.token.type": "input"}) == 100


def test_async_server(receiver: OTLPReceiver) -> None:
    out = run_example(receiver, "async_server.py", "--requests", "40", "--concurrency", "8")
    assert "served 40 requests" in out
    assert outcomes(receiver) == {"ok": 38, "error": 2, "cancelled": 0}
    errors = latest(receiver, "bitnet.inference.requests")
    assert {
        p.attributes.get("error.type")
        for p in errors
        if p.value and p.attributes.get("bitnet.outcome") == "error"
    } == {"ValueError"}
    assert total(receiver, "gen_ai.server.time_to_first_token") == 38


def test_device_fallback(receiver: OTLPReceiver) -> None:
    out = run_example(receiver, "device_fallback.py", "--requests", "60")
    fell_back = int(re.search(r"(\d+) fell back", out).group(1))  # type: ignore[union-attr]
    assert fell_back > 0
    reason = {
        "bitnet.device.from": "cuda:0",
        "bitnet.device.to": "cpu",
        "bitnet.fallback.reason": "out_of_memory",
        "gen_ai.request.model": MODEL,
    }
    assert total(receiver, "bitnet.device.fallbacks", **reason) == fell_back
    on_cpu = total(receiver, "bitnet.inference.requests", **{"bitnet.device": "cpu"})
    on_gpu = total(receiver, "bitnet.inference.requests", **{"bitnet.device": "cuda:0"})
    assert (on_cpu, on_gpu) == (fell_back, 60 - fell_back)


def test_weight_accuracy(receiver: OTLPReceiver) -> None:
    out = run_example(receiver, "weight_accuracy.py")
    assert "below baseline" not in out
    points = latest(receiver, "bitnet.quant.accuracy")
    assert {p.attributes["bitnet.quant.format"] for p in points} == {"i2_s", "tl1", "tl2"}
    assert {p.attributes["bitnet.quant.kind"] for p in points} == {"weight"}
    assert {p.attributes["bitnet.quant.reference"] for p in points} == {"fp32"}
    assert len({p.attributes["bitnet.tensor"] for p in points}) == 14
    for point in points:  # absmean ternary of Gaussian weights: cosine ~0.887
        assert point.count == 1 and point.sum == pytest.approx(0.887, abs=0.01)


def test_weight_accuracy_of_a_checkpoint_file(receiver: OTLPReceiver, tmp_path: Any) -> None:
    np = pytest.importorskip("numpy")
    path = tmp_path / "model.npz"
    rng = np.random.default_rng(1)
    np.savez(path, **{"a.weight": rng.standard_normal((32, 96)), "ids": np.arange(4)})
    out = run_example(receiver, "weight_accuracy.py", str(path))
    assert "a.weight" in out and "ids" not in out
    assert {p.attributes["bitnet.tensor"] for p in latest(receiver, "bitnet.quant.accuracy")} == {
        "a.weight"
    }


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_multiprocess_workers_have_their_own_instance_ids(
    receiver: OTLPReceiver, start_method: str
) -> None:
    run_example(
        receiver,
        "multiprocess_otlp.py",
        "--workers",
        "3",
        "--requests",
        "4",
        "--start-method",
        start_method,
    )
    points = latest(receiver, "bitnet.inference.requests")
    by_worker: dict[str, float] = {}
    for p in points:
        instance = p.resource["service.instance.id"]
        by_worker[instance] = by_worker.get(instance, 0) + (p.value or 0)
    served = {k: v for k, v in by_worker.items() if v}  # the parent reports its counters at 0
    assert len(served) == 3, by_worker  # three workers, three ids, none shared
    assert set(served.values()) == {4}


@pytest.mark.slow
def test_hugging_face_transformers(receiver: OTLPReceiver) -> None:
    """Streamed, batched and pipeline calls, monitored by the instrumentor's one line."""
    pytest.importorskip("torch", reason="needs the [hf] extra")
    pytest.importorskip("transformers", reason="needs the [hf] extra")
    out = run_example(
        receiver,
        "hf_transformers.py",
        "--requests",
        "3",
        timeout=240,
        HF_HUB_OFFLINE="1",
        BITNET_OBS_QUANT_SAMPLE_RATE="1",
    )
    assert out.count("tokens/s") == 3
    found = re.search(r"batch: generated tokens per row \[([0-9, ]+)\]", out)
    assert found is not None, out
    batch = [int(n) for n in found.group(1).split(",")]
    assert len(batch) == 3 and all(1 <= n <= 12 for n in batch)
    assert outcomes(receiver) == {"ok": 5, "error": 0, "cancelled": 0}  # 3 streams, batch, pipe
    assert total(receiver, "gen_ai.server.time_to_first_token") == 5
    out_tokens = total(receiver, "bitnet.inference.tokens", **{"bitnet.token.type": "output"})
    assert out_tokens == 3 * 12 + sum(batch) + 12
    in_tokens = total(receiver, "bitnet.inference.tokens", **{"bitnet.token.type": "input"})
    assert in_tokens > 3 * 4 + 10 + 3
    checks = latest(receiver, "bitnet.quant.accuracy")
    assert len(checks) == 5  # one BitNet layer per sampled call, in turn
    for point in checks:
        assert point.attributes["bitnet.quant.kind"] == "output"
        assert point.attributes["bitnet.quant.reference"] == "quantized"
        assert point.attributes["bitnet.tensor"].startswith("model.layers.")
        assert point.sum is not None and point.count == 1 and point.sum > 0.9999


def test_llama_cpp_inference(receiver: OTLPReceiver, tiny_bitnet: Any) -> None:
    """The llama.cpp example on the tests' tiny BitNet b1.58 TQ2_0 file (llama.cpp's own)."""
    out = run_example(
        receiver,
        "llama_cpp_inference.py",
        "--model",
        str(tiny_bitnet.tq2_0),
        "--requests",
        "4",
        "--max-tokens",
        "8",
        "--threads",
        "1",
    )
    assert out.count("completion:") == 2 and out.count("chat stream:") == 2, out
    assert outcomes(receiver) == {"ok": 4, "error": 0, "cancelled": 1}
    requests = "bitnet.inference.requests"
    assert total(receiver, requests, **{"gen_ai.operation.name": "chat"}) == 2
    assert total(receiver, requests, **{"gen_ai.operation.name": "text_completion"}) == 3
    assert total(receiver, requests, **{"gen_ai.provider.name": "llama_cpp"}) == 5
    assert total(receiver, requests, **{"bitnet.quant.format": "tq2_0"}) == 5
    out_tokens = total(receiver, "bitnet.inference.tokens", **{"bitnet.token.type": "output"})
    assert 4 <= out_tokens <= 4 * 9 + 8  # each call's sampled ids, its end of generation too
    assert total(receiver, "gen_ai.server.time_to_first_token") == 4
    assert total(receiver, "bitnet.model.loads", **{"bitnet.outcome": "ok"}) == 1
    assert total(receiver, "bitnet.model.loaded") == 0  # closed at the end
    (runtime,) = latest(receiver, "bitnet.runtime.info")
    assert runtime.attributes["bitnet.llama_cpp.features"] not in ("", "none", "not_imported")
