"""The ``bitnet-obs`` command: ``demo``, ``quant-report``, ``crossval`` and ``canary``."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from bitnet_obs import _parsers


def _plain(doc: str | None) -> str:
    """A docstring as --help text: reStructuredText roles and literals without their markup.

    >>> _plain("The ``bitnet-obs`` command, see :mod:`bitnet_obs.quant`.")
    'The bitnet-obs command, see bitnet_obs.quant.'
    """
    text = re.sub(r":[\w.:-]+:`([^`]*)`", r"\1", doc or "")
    return re.sub(r"``?([^`]*)``?", r"\1", text)


# --- demo: every number bounded, stated in --help; a bad one exits 2 (argparse) with the reason
DEMO_MAX_DURATION_S = 7 * 24 * 3600  # longer: leave --duration out and stop it with Ctrl-C
DEMO_MAX_WORKERS = 64  # request loops are threads of one process
DEMO_MAX_SLOWDOWN = 100.0  # a slowed kernel still answers within a request's lifetime


#: the demo's numbers, parsed as every setting is (one wording of a bad value, see _parsers)
_DURATION = _parsers.Number(0, DEMO_MAX_DURATION_S, "seconds", lo_open=True)
_SLOWDOWN = _parsers.Number(1, DEMO_MAX_SLOWDOWN)
_PORT = _parsers.Integer(0, 65535)
_WORKERS = _parsers.Integer(1, DEMO_MAX_WORKERS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command and return its exit status (see :mod:`bitnet_obs._commands`): a usage
    error is one line on stderr and 2, returned rather than raised."""
    from bitnet_obs._commands import OneLineParser, bounded

    parser = OneLineParser(prog="bitnet-obs", description=_plain(__doc__))
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run an instrumented synthetic BitNet server")
    demo.add_argument(
        "--duration",
        type=bounded(_DURATION, "--duration"),
        default=None,
        help=f"seconds, above 0 and at most {DEMO_MAX_DURATION_S} (default: until Ctrl-C)",
    )
    demo.add_argument(
        "--port",
        type=bounded(_PORT, "--port"),
        default=None,
        help="/metrics port, 0 to 65535, 0 picks a free one "
        "(default: OTEL_EXPORTER_PROMETHEUS_PORT or 9464)",
    )
    demo.add_argument(
        "--workers",
        type=bounded(_WORKERS, "--workers"),
        default=2,
        help=f"concurrent request loops, 1 to {DEMO_MAX_WORKERS} (default: 2)",
    )
    demo.add_argument(
        "--inject-fault",
        choices=("sign", "constant"),
        default=None,
        help="break the I2_S kernel (flipped sign, or one token) so the canary catches it",
    )
    demo.add_argument(
        "--fault-after",
        type=bounded(_DURATION, "--fault-after"),
        default=20.0,
        help=f"seconds after the first canary run, above 0 and at most {DEMO_MAX_DURATION_S} "
        "(default: 20)",
    )
    demo.add_argument(
        "--slow-kernel",
        type=bounded(_SLOWDOWN, "--slow-kernel"),
        default=1.0,
        metavar="FACTOR",
        help=f"make the served I2_S kernel FACTOR times slower, 1 to {DEMO_MAX_SLOWDOWN:g} "
        "(default: 1), like a replica on a CPU without the SIMD its kernels need",
    )
    from bitnet_obs import _canary_cli, _crossval_cli, _quant_report

    report = sub.add_parser(
        "quant-report",
        help="ternary weights of a checkpoint (GGUF, safetensors, npz), faithful to its master?",
    )
    _quant_report.add_arguments(report)
    _crossval_cli.add_parser(sub)
    _canary_cli.add_parser(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "crossval":
        return _crossval_cli.run(args)
    if args.command == "canary":
        return _canary_cli.run(args)
    if args.command == "quant-report":
        return _quant_report.run(args)
    if args.command == "demo":
        from bitnet_obs import _demo
        from bitnet_obs._commands import guarded

        return guarded(
            "bitnet-obs demo",
            lambda: _demo.run(
                args.duration,
                args.port,
                args.workers,
                args.inject_fault,
                args.fault_after,
                args.slow_kernel,
            ),
        )
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
