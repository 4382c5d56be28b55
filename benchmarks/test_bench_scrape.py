"""Scrape cost: render time and size of our ``/metrics`` for 100 and 2,000 models, with and
without gzip, against the plain OpenTelemetry Prometheus exporter on the same data, and how
long a render stalls a request of the served process.

The served process is ``benchmarks/_scrape.py`` (configured with ``bitnet_obs.configure``);
this side scrapes both endpoints over HTTP like Prometheus does, alternating between them
round after round. gzip is asked for with ``Accept-Encoding: gzip``; whatever the server sends
is measured as is, and the plain body is also compressed here (levels 1, 6, 9) so gzip's cost
and size are known even while our server does not compress.

Run with ``nox -s bench``. Nothing here asserts on time.
"""

from __future__ import annotations

import gzip
import http.client
import os
import statistics
import time
import urllib.request
from collections import defaultdict

import pytest
from tests._support.prometheus import free_port

from benchmarks._worker import Worker
from benchmarks.conftest import REPORTERS

MODELS = (100, 2000)
ROUNDS = {100: 5, 2000: 2}
GZIP_LEVELS = (1, 6, 9)
SERVERS = ("ours", "plain")


def _get(url: str, accept_gzip: bool) -> tuple[float, bytes | None, bool]:
    """Seconds for the whole response, its body as sent (None when the server cut the
    connection, e.g. at its request deadline), and whether it came gzipped."""
    headers = {"Accept-Encoding": "gzip"} if accept_gzip else {}
    request = urllib.request.Request(url, headers=headers)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
            gzipped = response.headers.get("Content-Encoding") == "gzip"
    except (OSError, http.client.HTTPException):
        return time.perf_counter() - start, None, False
    return time.perf_counter() - start, body, gzipped


def _samples(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def _scrape(models: int, results: dict[str, float]) -> None:
    port, plain_port = free_port(), free_port()
    worker = Worker("benchmarks._scrape", str(models), str(port), str(plain_port))
    try:
        info = worker.request("info")
        results[f"scrape/{models}/populate_s"] = info["populate_s"]
        urls = {
            "ours": f"http://127.0.0.1:{port}/metrics",
            "plain": f"http://127.0.0.1:{plain_port}/metrics",
        }
        for url in urls.values():  # warm up: first collection, buffers
            _get(url, False)
        worker.request("arm")
        time.sleep(1.0)
        results[f"scrape/{models}/idle_stall"] = worker.request("read")["max_stall"]
        samples: dict[str, list[float]] = defaultdict(list)
        bodies: dict[str, bytes] = {}
        for _ in range(ROUNDS[models]):
            for who, url in urls.items():
                for accept_gzip in (False, True):
                    enc = "gzip" if accept_gzip else "identity"
                    worker.request("arm")
                    seconds, body, gzipped = _get(url, accept_gzip)
                    probe = worker.request("read")
                    samples[f"{who}/{enc}/stall"].append(probe["max_stall"])
                    if body is None:
                        samples[f"{who}/{enc}/cut_s"].append(seconds)
                        continue
                    samples[f"{who}/{enc}/s"].append(seconds)
                    samples[f"{who}/{enc}/cpu_s"].append(probe["cpu"])
                    results[f"scrape/{models}/{who}/{enc}/bytes"] = len(body)
                    results[f"scrape/{models}/{who}/{enc}/gzipped"] = float(gzipped)
                    if not accept_gzip:
                        bodies[who] = body
        for name, values in samples.items():
            reduce = statistics.median if name.endswith(("/s", "cpu_s")) else max
            results[f"scrape/{models}/{name}"] = reduce(values)
            if name.endswith("cut_s"):
                results[f"scrape/{models}/{name[: -len('_s')]}"] = len(values)
        for who, body in bodies.items():
            results[f"scrape/{models}/{who}/samples"] = _samples(body)
            for level in GZIP_LEVELS:
                start = time.perf_counter()
                packed = gzip.compress(body, compresslevel=level)
                results[f"scrape/{models}/{who}/gzip{level}/s"] = time.perf_counter() - start
                results[f"scrape/{models}/{who}/gzip{level}/bytes"] = len(packed)
    finally:
        worker.close()


@pytest.mark.timeout(900)
def test_scrape(benchmark, results: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    def run() -> None:
        results["scrape/load_before"] = os.getloadavg()[0]
        for models in MODELS:
            _scrape(models, results)
        results["scrape/load_after"] = os.getloadavg()[0]

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in results.items() if k.startswith("scrape/")})


def _size(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _dur(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _get_cell(r: dict[str, float], enc: str, rounds: int) -> str:
    cut = int(r.get(f"{enc}/cut", 0))
    if f"{enc}/s" not in r:
        return f"cut by the server after {_dur(r[f'{enc}/cut_s'])} ({cut} of {rounds})"
    cell = f"{_dur(r[f'{enc}/s'])} (CPU {_dur(r[f'{enc}/cpu_s'])}), {_size(r[f'{enc}/bytes'])}"
    if enc == "gzip" and not r["gzip/gzipped"]:
        cell += " (not compressed)"
    if cut:
        cell += f"; {cut} of {rounds} cut after {_dur(r[f'{enc}/cut_s'])}"
    return cell


def report(results: dict[str, float]) -> list[str]:
    lines = [
        f"Scrape: GET /metrics over HTTP, median of {ROUNDS[MODELS[0]]} ({MODELS[0]} models) / "
        f"{ROUNDS[MODELS[1]]} ({MODELS[1]} models) rounds alternating between the servers; "
        f"load average {results['scrape/load_before']:.2f} → {results['scrape/load_after']:.2f}",
        "",
        "| models | server | samples | GET, uncompressed | GET, Accept-Encoding: gzip "
        "| gzip -1 here | gzip -6 here | gzip -9 here | request stall during a GET |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for models in MODELS:
        base = f"scrape/{models}"
        for who in SERVERS:
            r = {k[len(f"{base}/{who}/") :]: v for k, v in results.items()
                 if k.startswith(f"{base}/{who}/")}  # fmt: skip
            packed = [
                f"{_dur(r[f'gzip{level}/s'])}, {_size(r[f'gzip{level}/bytes'])}"
                if f"gzip{level}/s" in r
                else "—"
                for level in GZIP_LEVELS
            ]
            samples = f"{int(r['samples']):,}" if "samples" in r else "—"
            label = "bitnet-obs `/metrics`" if who == "ours" else "plain OTel exporter"
            stall = max(r["identity/stall"], r["gzip/stall"])
            lines.append(
                f"| {models} | {label} | {samples} | {_get_cell(r, 'identity', ROUNDS[models])} "
                f"| {_get_cell(r, 'gzip', ROUNDS[models])} | {' | '.join(packed)} "
                f"| {_dur(stall)} |"
            )
    lines.append(
        "GET: wall time of the whole response here (CPU: the served process's CPU time "
        "meanwhile). Request stall: longest extra wait of a monitored call made every 1 ms in "
        "the served process during a GET (max over rounds); idle: "
        + ", ".join(f"{_dur(results[f'scrape/{m}/idle_stall'])} ({m} models)" for m in MODELS)
        + "; populating took "
        + ", ".join(f"{results[f'scrape/{m}/populate_s']:.1f} s ({m})" for m in MODELS)
    )
    return lines


REPORTERS.append(report)
