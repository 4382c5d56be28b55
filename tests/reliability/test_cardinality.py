"""Scenario 4, cardinality attack: 100,000 distinct model ids (a new monitor per call) and
25,000 distinct tensor names (fifty times the 512 names kept; each costs a real accuracy
measurement), against ``BITNET_OBS_CARDINALITY_LIMIT=100``.

User side: calls succeed, memory stays flat once the limit is reached. Telemetry side: every
metric family exposes at most limit + 1 series (the ``otel_metric_overflow`` one), the
overflow is counted, and totals stay exact (folded, not lost).
"""

from __future__ import annotations

import gc
import time
import urllib.request
from collections import defaultdict
from typing import Any

import pytest

from tests.reliability._harness import Child, rss_mb

LIMIT = 100
N = {"models": 100_000, "tensors": 25_000}
TARGET = "tests.reliability.test_cardinality:attack"


def attack(kind: str, n: int) -> dict[str, Any]:
    """In the child: ``n`` calls, each with a never-seen model id or tensor name."""
    import numpy as np

    import bitnet_obs
    from bitnet_obs import _call, _instruments, quant
    from bitnet_obs.quant import _record

    telemetry = bitnet_obs.configure()
    ref = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
    cand = ref * np.float32(0.99)
    weight = np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(4, 8)

    @bitnet_obs.monitored_inference(model="victim")
    def host_call(i: int) -> None:
        bitnet_obs.current_inference().record_quantization(
            f"blk.{i}.attn_out", ref, cand, reference_kind="fp32"
        )

    def one(i: int) -> None:
        if kind == "models":
            if i % 2:
                with bitnet_obs.monitor_inference(model=f"attacker-{i}") as inf:
                    inf.add_output_tokens(2)
            else:  # a decorator built per call, as a careless wrapper would
                bitnet_obs.monitored_inference(model=f"attacker-{i}")(lambda: [1, 2])()
        elif i % 50 == 0:
            quant.record_weight_quantization(f"blk.{i}.ffn_up.weight", weight, formats=["i2_s"])
        elif i % 2:
            host_call(i)
        else:
            quant.compare_outputs(f"blk.{i}.ffn_out", ref, cand)

    marks: dict[str, float] = {}
    errors = 0
    started = time.monotonic()
    for i in range(n):
        try:
            one(i)
        except Exception:
            errors += 1
        if i + 1 in (n // 10, n // 2, n):
            gc.collect()
            marks[f"rss_at_{(i + 1) * 100 // n}pct"] = round(rss_mb(), 2)
    seconds = time.monotonic() - started
    assert telemetry.metrics_url is not None
    text = urllib.request.urlopen(telemetry.metrics_url, timeout=10).read().decode()
    series, overflow_families = _series_per_family(text)
    sites = sum(type(o) is _call.Site for o in gc.get_objects())
    tallies = {c.name: c.tally for c in _instruments.COUNTERS}
    return {
        "errors": errors,
        "seconds": round(seconds, 2),
        "rss": marks,
        "max_series": max(series.values()),
        "max_series_family": max(series, key=lambda k: series[k]),
        "overflow_families": sorted(overflow_families),
        "requests_total": _sum_samples(text, "bitnet_inference_requests_total"),
        "duration_count": _sum_samples(text, "gen_ai_server_request_duration_seconds_count"),
        "quant_operations": _sum_samples(text, "bitnet_quant_operations_total"),
        "tally_overflowed": {k: t.overflowed for k, t in tallies.items() if t.overflowed},
        "tally_max_keys": max(len(t.snapshot()) for t in tallies.values()),
        "tensor_names_kept": len(_record._names),
        "sites_alive": sites,
    }


def _series_per_family(text: str) -> tuple[dict[str, int], set[str]]:
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    overflow: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            series[family.name].add(labels)
            if sample.labels.get("otel_metric_overflow") == "true":
                overflow.add(family.name)
    return {name: len(sets) for name, sets in series.items()}, overflow


def _sum_samples(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


@pytest.mark.slow
def test_100k_model_ids_and_25k_tensor_names(figures: Any) -> None:
    env = {
        "BITNET_OBS_CARDINALITY_LIMIT": str(LIMIT),
        "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
        "BITNET_OBS_DEVICE_METRICS": "none",
        "BITNET_OBS_QUANT_SAMPLE_RATE": "1",
        "BITNET_OBS_QUANT_BUDGET": "1",
    }
    children = {kind: Child(TARGET, env, kind=kind, n=n) for kind, n in N.items()}
    results = {kind: child.finish(240).result for kind, child in children.items()}
    models, tensors = results["models"], results["tensors"]
    for kind, result in results.items():
        assert result["errors"] == 0, result
        assert result["max_series"] <= LIMIT + 1, result  # limit + the overflow series
        assert result["tally_max_keys"] <= LIMIT + 1, result
        assert result["sites_alive"] < 10, result  # per-call monitors are not kept
        rss = result["rss"]
        assert rss["rss_at_100pct"] - rss["rss_at_10pct"] < 20, rss
        figures("seconds", result["seconds"], attack=kind, n=N[kind])
        figures("max_series_per_metric", result["max_series"], attack=kind, limit=LIMIT)
        figures("rss_mb_at_10_50_100pct", list(rss.values()), attack=kind)
        figures("overflow_counted", sum(result["tally_overflowed"].values()), attack=kind)
    # Folded, not lost: totals over all series (overflow included) are exact.
    assert models["requests_total"] == N["models"]
    assert models["duration_count"] == N["models"]
    assert "bitnet_inference_requests" in models["overflow_families"]
    assert models["tally_overflowed"]["bitnet.inference.requests"] >= N["models"] - LIMIT
    assert tensors["tensor_names_kept"] <= 512  # more names fold into "_other"
    assert tensors["quant_operations"] == N["tensors"]
    assert "bitnet_quant_operations" in tensors["overflow_families"]
    figures("sites_alive_after", models["sites_alive"], attack="models")
    figures("tensor_names_kept", tensors["tensor_names_kept"], attack="tensors")
