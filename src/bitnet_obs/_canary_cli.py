"""``bitnet-obs canary --server URL --golden FILE``: a sidecar that cross-validates a server.

llama-server (and bitnet.cpp's ``run_inference_server.py``, which starts it) cannot be
decorated, so this small process runs beside it: a :class:`~bitnet_obs.crossval.Canary` sends
the golden prompts to the server every ``--interval`` seconds and judges the answers, and the
bitnet-obs HTTP server (:func:`bitnet_obs.configure`) serves ``/metrics`` (the
``bitnet_crossval_*`` series, health, the host) and ``/health/ready``, which answers 503 with
the reason from start until the first pass and whenever a run fails -- so a Kubernetes
readiness probe or a load balancer takes a replica that answers wrong out of rotation::

    bitnet-obs canary --server http://127.0.0.1:8080 --golden golden.npz --port 9465

It binds 127.0.0.1 unless ``--host`` (or ``OTEL_EXPORTER_PROMETHEUS_HOST``) says otherwise.
SIGTERM or Ctrl-C stop it cleanly (exit 0); a bad argument is one line on stderr and exit 2.
Each change of verdict is printed as one line (reasons name the case and the token, never text).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from bitnet_obs._commands import EXIT_OK, bounded, guarded
from bitnet_obs._crossval_cli import agreement, judge_options, server_from, server_options

__all__ = ["add_parser", "run"]

DEFAULT_INTERVAL_S = 60.0
DEFAULT_BUDGET_S = 120.0
SERVICE_NAME = "bitnet-canary"


def add_parser(sub: Any) -> None:
    """The ``canary`` subcommand: the server and its judging as ``crossval check --server``
    takes them, plus how often, how long, and where /metrics and /health are served."""
    from bitnet_obs import _canary, _http_candidate, _parsers

    canary = sub.add_parser(
        "canary",
        help="cross-validate a server (llama-server) continuously; serve /metrics and "
        "/health/ready for readiness probes",
        description="A sidecar beside a server that cannot be instrumented (llama-server, "
        "bitnet.cpp's run_inference_server.py): every --interval seconds it sends the golden "
        "prompts to the server and judges the answers; /metrics has the bitnet_crossval_* "
        "series, and /health/ready answers 503 with the reason until the first pass and "
        "whenever a run fails, so a readiness probe or a load balancer takes a replica that "
        "answers wrong out of rotation. SIGTERM or Ctrl-C stop it (exit 0).",
    )
    server_options(canary, required=True)
    judge_options(canary, "also fail above this logits KL (from a server: its top-k bound)")
    canary.add_argument(
        "--interval",
        type=bounded(_canary.INTERVAL, "--interval"),
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between the end of a run and the next, up to {_canary.MAX_INTERVAL_S:g} "
        f"(default {DEFAULT_INTERVAL_S:g})",
    )
    canary.add_argument(
        "--budget",
        type=bounded(_canary.BUDGET, "--budget"),
        default=DEFAULT_BUDGET_S,
        help="seconds a run may spend starting cases; readiness also fails while a run takes "
        f"over twice this (default {DEFAULT_BUDGET_S:g})",
    )
    canary.add_argument(
        "--timeout",
        type=bounded(_http_candidate.TIMEOUT, "--timeout"),
        default=_http_candidate.DEFAULT_TIMEOUT_S,
        help="seconds one request may take, connecting to reading the whole answer, up to "
        f"{_http_candidate.MAX_TIMEOUT_S:g} (default {_http_candidate.DEFAULT_TIMEOUT_S:g})",
    )
    canary.add_argument(
        "--port",
        type=bounded(_parsers.Integer(0, 65535), "--port"),
        default=None,
        help="port of /metrics and /health, 0 to 65535, 0 picks a free one "
        "(default: OTEL_EXPORTER_PROMETHEUS_PORT or 9464)",
    )
    canary.add_argument(
        "--host",
        default=None,
        help="address to bind (default: OTEL_EXPORTER_PROMETHEUS_HOST or 127.0.0.1; a "
        "Kubernetes probe reaches the pod's address: 0.0.0.0)",
    )
    canary.add_argument(
        "--name",
        default="canary",
        help="the health check's name in /health (default: canary)",
    )


def run(args: argparse.Namespace) -> int:
    return guarded("bitnet-obs canary", lambda: _run(args))


def _verdict(report: Any) -> str:
    from bitnet_obs._untrusted import printable

    if report.passed:
        rate = report.candidate_tokens_per_s
        speed = f", {rate:.1f} tok/s" if rate else ""
        return f"PASS: {agreement(report)}{speed}"
    return f"FAIL: {printable(report.reason)}"


class _PrintedHere(logging.Filter):
    """Drops the canary's own log records of its verdicts: the sidecar prints each one itself
    (a ``FAIL:`` line), and Python's last-resort handler would say it a second time."""

    def __init__(self, name: str) -> None:
        from bitnet_obs._canary import LOG_KEY

        super().__init__()
        self.key, self.canary = LOG_KEY, name

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, self.key, None) != self.canary


def _run(args: argparse.Namespace) -> int:
    import bitnet_obs
    from bitnet_obs import health
    from bitnet_obs._canary import Canary
    from bitnet_obs._golden import load
    from bitnet_obs._selfmon import logger

    candidate = server_from(args, args.timeout)
    golden = load(args.golden)
    overrides: dict[str, Any] = {"server": "on"}
    if args.port is not None:
        overrides["prometheus_port"] = args.port
    if args.host is not None:
        overrides["prometheus_host"] = args.host
    if not os.environ.get("OTEL_SERVICE_NAME"):
        overrides["service_name"] = SERVICE_NAME
    canary = Canary(  # checked before anything starts: a bad option changes nothing
        candidate,
        golden,
        interval_s=args.interval,
        budget_s=args.budget,
        timeout_s=args.timeout + 5.0,  # the request's own limit comes first
        name=args.name,
        min_agreement=args.min_agreement,
        max_kl=args.max_kl,
    )
    stop = threading.Event()
    printed_here = _PrintedHere(canary.name)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # from before the HTTP server answers: a SIGTERM at any moment is a clean stop
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # never ready before the canary's check gates readiness, nor after it is gone
        health.mark_not_ready("starting: the canary has not run yet")
        telemetry = bitnet_obs.configure(**overrides)  # a busy port: ConfigError, exit 2
        print(
            f"bitnet-obs canary: {len(golden.cases)} golden cases against {candidate.endpoint} "
            f"every {args.interval:g}s",
            flush=True,
        )
        if telemetry.metrics_url:
            print(f"  metrics: {telemetry.metrics_url}", flush=True)
            print(f"  ready:   {telemetry.health_url}/ready", flush=True)
        logger.addFilter(printed_here)
        canary.start()
        health.mark_ready()  # from now on the canary's own check decides
        seen, said = 0, ""
        while not stop.wait(0.25):
            report = canary.last_report
            if canary.runs == seen or report is None:
                continue
            seen = canary.runs
            line = _verdict(report)
            key = "PASS" if report.passed else line  # a pass is said once, each new failure
            if key != said:
                print(line, flush=True)
                said = key
    finally:
        health.mark_not_ready("stopping")
        canary.stop(timeout=2.0)
        logger.removeFilter(printed_here)
        bitnet_obs.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("bitnet-obs canary: stopped", file=sys.stderr, flush=True)
    return EXIT_OK
