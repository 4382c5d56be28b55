"""The ``bitnet-obs`` command: ``demo`` and ``quant-report``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitnet-obs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run an instrumented synthetic BitNet server")
    demo.add_argument(
        "--duration", type=_positive, default=None, help="seconds (default: until Ctrl-C)"
    )
    demo.add_argument(
        "--port",
        type=int,
        default=None,
        help="/metrics port (default: OTEL_EXPORTER_PROMETHEUS_PORT or 9464)",
    )
    demo.add_argument("--workers", type=int, default=2, help="concurrent request loops")
    from bitnet_obs import _quant_report

    report = sub.add_parser(
        "quant-report",
        help="ternary weights of a checkpoint (GGUF, safetensors, npz), faithful to its master?",
    )
    _quant_report.add_arguments(report)
    args = parser.parse_args(argv)
    if args.command == "quant-report":
        return _quant_report.run(args)
    if args.command == "demo":
        from bitnet_obs import _demo

        return _demo.run(args.duration, args.port, args.workers)
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
