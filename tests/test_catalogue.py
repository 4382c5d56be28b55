"""Every instrument of the catalogue, recorded once by a real workload: the exposition is what
promtool accepts without a single remark, and every attribute is declared in the catalogue."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bitnet_obs._attributes import label_name
from bitnet_obs._instruments import CATALOGUE, Instrument, Kind
from tests._support.prometheus import promtool_check_metrics

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exposition() -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    env.update(
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_PORT="0",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{_closed_port()}/v1/traces",
        OTEL_EXPORTER_OTLP_TIMEOUT="300",
        BITNET_OBS_QUANT_SAMPLE_RATE="1",
        BITNET_OBS_LOGITS_SAMPLE_RATE="1",
        BITNET_OBS_QUANT_BUDGET="1",
        # 0.1's names too, so that they are recorded (and promtool-checked) as well
        BITNET_OBS_SEMCONV_STABILITY_OPT_IN="gen_ai_latest/dup",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests._support.everything"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line + (proc.stderr.read() if proc.stderr else "")
        url = line.split()[1]
        request = urllib.request.Request(url, headers={"Accept": "text/plain; version=0.0.4"})
        # A utilization needs two readings some time apart: scrape until every family shows.
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(request, timeout=30) as response:
                text: str = response.read().decode()
            families = {f.name for f in text_string_to_metric_families(text)}
            missing = {_family(i) for i in CATALOGUE} - families
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(30)
        return text
    finally:
        if proc.poll() is None:
            proc.kill()


def _family(inst: Instrument) -> str:
    """The family name the exposition parser gives an instrument (counters without _total)."""
    name = inst.prometheus_name
    return name.removesuffix("_total") if inst.kind is Kind.OBSERVABLE_COUNTER else name


def test_every_instrument_once_promtool_clean_and_attributes_declared() -> None:
    text = _exposition()
    code, output = promtool_check_metrics(text)
    assert (code, output) == (0, ""), output
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for inst in CATALOGUE:
        name = _family(inst)
        assert name in families, f"{inst.name} ({inst.prometheus_name}) was never recorded"
        declared = {label_name(a) for a in (*inst.attributes, *inst.renamed.values())}
        declared.add("otel_metric_overflow")
        for sample in families[name].samples:
            extra = set(sample.labels) - declared - {"le"}
            assert not extra, f"{inst.name} records undeclared attributes {sorted(extra)}"
