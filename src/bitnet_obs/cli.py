"""The ``bitnet-obs`` command: ``demo``, ``quant-report`` and ``crossval``."""

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
    demo.add_argument(
        "--inject-fault",
        choices=("sign", "constant"),
        default=None,
        help="break the I2_S kernel (flipped sign, or one token) so the canary catches it",
    )
    demo.add_argument(
        "--fault-after", type=_positive, default=20.0, help="seconds after the first canary run"
    )
    report = sub.add_parser("quant-report", help="I2_S/TL1/TL2 accuracy of a checkpoint's weights")
    report.add_argument("path", help="a .npz or .safetensors file")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument("--export", action="store_true", help="also send the figures as metrics")
    report.add_argument("--formats", default="i2_s,tl1,tl2", help="comma list (default: all)")
    # --- crossval (bitnet_obs._crossval_cli): record golden outputs, check a build ---
    from bitnet_obs import _crossval_cli

    _crossval_cli.add_parser(sub)
    # --- end crossval ---
    args = parser.parse_args(argv)
    if args.command == "crossval":
        return _crossval_cli.run(args)
    if args.command == "quant-report":
        from bitnet_obs import _quant_report

        return _quant_report.run(args.path, args.formats.split(","), args.json, args.export)
    if args.command == "demo":
        from bitnet_obs import _demo

        return _demo.run(
            args.duration, args.port, args.workers, args.inject_fault, args.fault_after
        )
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
