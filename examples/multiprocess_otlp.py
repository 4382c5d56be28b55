"""Pre-fork workers exporting over OTLP, each with its own ``service.instance.id``.

    otelcol-contrib --config examples/monitoring/otel-collector.yml &   # or any OTLP receiver
    python examples/multiprocess_otlp.py --workers 4 --requests 100

The parent configures bitnet-obs once and forks its workers, as a pre-fork server (gunicorn,
uWSGI) does. Each forked worker gets a fresh pipeline with a new ``service.instance.id``, so
the collector's Prometheus exporter shows one ``instance`` per worker and nothing is counted
twice. With ``--start-method spawn`` each worker configures itself instead (a spawned process
starts unconfigured, with its own new id). Workers push: the Prometheus
pull exporter has no multi-process mode. ``OTEL_EXPORTER_OTLP_ENDPOINT`` says where to
(default ``http://localhost:4318``, the collector).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import bitnet_obs


@bitnet_obs.monitored_inference(model="bitnet-b1.58-2B-4T")
def generate(prompt: str) -> list[int]:
    time.sleep(0.01)  # your model runs here
    return list(range(16))


def worker(requests: int) -> None:
    if not bitnet_obs.is_configured():  # spawned; a forked worker already has its pipeline
        bitnet_obs.configure(metrics_exporters=["otlp"])
    for i in range(requests):
        generate(f"request {i} from worker {os.getpid()}")
    bitnet_obs.shutdown()  # flush this worker's telemetry before it exits


def main() -> None:
    parser = argparse.ArgumentParser(description="Pre-fork workers pushing OTLP.")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100, help="per worker")
    parser.add_argument("--start-method", choices=["fork", "spawn"], default="fork")
    args = parser.parse_args()
    bitnet_obs.configure(metrics_exporters=["otlp"])  # before the fork, like a pre-fork server
    context = multiprocessing.get_context(args.start_method)
    workers = [context.Process(target=worker, args=(args.requests,)) for _ in range(args.workers)]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    failed = [p.pid for p in workers if p.exitcode != 0]
    print(f"{args.workers} workers ({args.start_method}) served {args.requests} requests each")
    bitnet_obs.shutdown()
    if failed:
        raise SystemExit(f"workers failed: {failed}")


if __name__ == "__main__":
    main()
