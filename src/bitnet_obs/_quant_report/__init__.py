"""``bitnet-obs quant-report PATH``: what a checkpoint's ternary weights are, and whether a
conversion is faithful to its master weights.

Reads GGUF (bitnet.cpp's I2_S, llama.cpp's TQ1_0/TQ2_0, float types), safetensors (f32, f16,
bf16, sharded, Hugging Face packed) and ``.npz`` through :mod:`bitnet_obs.quant.io`, one tensor
at a time.  Exit status: 0 done (and faithful, with ``--reference``), 1 an internal error (a
bug of ours, reported in one line), 2 bad input (a file or a
tensor that cannot be read, a bad argument), 3 a conversion that is not faithful (codes differing
beyond ``--max-code-mismatch``, or projections missing on either side), 130 when interrupted
(Ctrl-C), 141 when the output pipe was closed (``| head``), as a tool stopped by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import TextIO

__all__ = ["add_arguments", "run"]

_PROG = "bitnet-obs quant-report"
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_UNFAITHFUL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's flags (kept here so cli.py stays a table of subcommands)."""
    parser.description = (
        "Report the ternary weights of a checkpoint: the attention and MLP projections "
        "bitnet.cpp ternarises (the rest is listed as kept in float). With --reference, "
        "check that a conversion (GGUF or HF packed) holds the codes a faithful quantization "
        "of its master weights gives."
    )
    parser.epilog = (
        "exit status: 0 done (and faithful with --reference); 1 internal error; 2 bad input "
        "(a file or tensor "
        "that cannot be read, a bad argument); 3 not faithful; 130 interrupted; 141 output "
        "pipe closed"
    )
    parser.add_argument(
        "path",
        help=".gguf, .safetensors, model.safetensors.index.json, a checkpoint directory or .npz",
    )
    parser.add_argument(
        "--reference",
        metavar="MASTER",
        help="master weights to compare a converted checkpoint (GGUF or HF packed) with",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (schema 1)")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    parser.add_argument(
        "--all", action="store_true", help="also measure tensors bitnet.cpp keeps in float"
    )
    parser.add_argument(
        "--layout",
        choices=("x86", "arm"),
        default="x86",
        help="I2_S byte layout of the file (the file does not say; default x86)",
    )
    parser.add_argument(
        "--kernel-config",
        metavar="FILE",
        help="bitnet.cpp's kernel_config.ini, needed to read TL1/TL2 tensors",
    )
    parser.add_argument(
        "--max-code-mismatch",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="fraction of codes allowed to differ per tensor with --reference (default 0)",
    )
    parser.add_argument("--export", action="store_true", help="also send the figures as metrics")


def run(args: argparse.Namespace) -> int:
    """Run the report for parsed *args*; returns the exit status (never raises for bad input)."""
    from bitnet_obs.quant import QuantInputError, io

    from ._analyse import Options, analyse
    from ._progress import progress_bar

    options = Options(
        path=args.path,
        reference=args.reference,
        measure_all=args.all,
        layout=args.layout,
        kernel_config=args.kernel_config,
        max_code_mismatch=args.max_code_mismatch,
    )
    started = time.perf_counter()
    try:
        report = analyse(options, progress_bar)
    except (io.ReadError, QuantInputError) as exc:
        print(f"{_PROG}: {io.printable(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"\n{_PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug of ours: one line, not a traceback, and say so
        print(
            f"{_PROG}: internal error {type(exc).__name__}: {io.printable(str(exc))} "
            "(please report it with the file's header)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    if args.html:
        from ._html import render_html

        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(render_html(report))
        except OSError as exc:
            print(f"{_PROG}: cannot write {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        _write(report, args.json, sys.stdout, time.perf_counter() - started)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    status = report.exit_status()
    if status == EXIT_BAD_INPUT:
        print(f"{_PROG}: some tensors could not be read (status 'skipped')", file=sys.stderr)
    if args.export:
        _export(report)
    return status


def _write(report: object, as_json: bool, out: TextIO, seconds: float) -> None:
    from ._analyse import Report

    assert isinstance(report, Report)
    if as_json:
        from ._json import report_json

        json.dump(report_json(report), out, indent=1, allow_nan=False)
        out.write("\n")
    else:
        from ._table import render_table

        render_table(report, out)
        out.write(f"({seconds:.1f} s)\n")
    out.flush()


def _silence_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the interpreter's final flush does not
    raise BrokenPipeError again on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _export(report: object) -> None:
    import bitnet_obs
    from bitnet_obs.quant import WeightReport, _record

    from ._analyse import SHARED, Report

    assert isinstance(report, Report)
    telemetry = bitnet_obs.configure()
    for row in report.measured():
        if row.accuracy is None or row.scale is None or len(row.shape) != 2:
            continue
        formats = ["i2_s", "tl1", "tl2"] if row.format == SHARED else [row.format or ""]
        formats = [f for f in formats if f in ("i2_s", "tl1", "tl2")]
        rep = WeightReport(
            format="i2_s",
            shape=(row.shape[0], row.shape[1]),
            scale=row.scale,
            code_fractions=row.code_fractions or (math.nan, math.nan, math.nan),
            bits_per_weight=2.0,
            accuracy=row.accuracy,
        )
        _record.emit_weight_report(row.name, rep, formats, 0.0)
    if "prometheus" in telemetry.settings.metrics_exporters and telemetry.server:
        print(
            "note: a one-shot process cannot be scraped; for --export set "
            "OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_METRICS_EXPORTER=otlp/console)",
            file=sys.stderr,
        )
    bitnet_obs.shutdown()
