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
import math
import sys
import time
from typing import TextIO

from bitnet_obs._commands import (
    EXIT_BAD_INPUT,
    InputError,
    bounded,
    error,
    guarded,
    write_json,
)
from bitnet_obs._parsers import Number

__all__ = ["add_arguments", "run"]

_PROG = "bitnet-obs quant-report"


_FRACTION = Number(0, 1)  # --max-code-mismatch


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
        type=bounded(_FRACTION, "--max-code-mismatch"),
        default=0.0,
        metavar="F",
        help="fraction of codes allowed to differ per tensor with --reference (default 0)",
    )
    parser.add_argument("--export", action="store_true", help="also send the figures as metrics")


def run(args: argparse.Namespace) -> int:
    """Run the report for parsed *args*; returns the exit status (never raises for bad input:
    every problem is one line on stderr, see :mod:`bitnet_obs._commands`)."""
    return guarded(_PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    telemetry = _start_export() if args.export else None  # a bad setting fails before the work
    try:
        return _report(args, telemetry)
    finally:
        if telemetry is not None:
            import bitnet_obs

            bitnet_obs.shutdown()


def _report(args: argparse.Namespace, telemetry: object) -> int:
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
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the progress bar's line
        raise
    if args.html:
        from ._html import render_html

        page = render_html(report)
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(page)
        except OSError as exc:
            raise InputError(f"cannot write {args.html}: {exc.strerror or exc}") from None
    _write(report, args.json, sys.stdout, time.perf_counter() - started)
    status = report.exit_status()
    if status == EXIT_BAD_INPUT:
        error(_PROG, "some tensors could not be read (status 'skipped')")
    if telemetry is not None:
        _export(report, telemetry)
    return status


def _write(report: object, as_json: bool, out: TextIO, seconds: float) -> None:
    from ._analyse import Report

    assert isinstance(report, Report)
    if as_json:
        from ._json import report_json

        write_json(report_json(report), out, indent=1)
    else:
        from ._table import render_table

        render_table(report, out)
        out.write(f"({seconds:.1f} s)\n")
    out.flush()


def _start_export() -> object:
    """``configure()`` for ``--export``, before any work: a setting that cannot be used (a busy
    port, a bad ``OTEL_METRICS_EXPORTER``) is bad input -- ``ConfigError``, one line, exit 2."""
    import bitnet_obs

    try:
        return bitnet_obs.configure()
    except OSError as exc:  # a server that cannot start for a reason configure() did not name
        raise InputError(f"--export: cannot start the exporters ({exc})") from None


def _export(report: object, telemetry: object) -> None:
    """Send the measured rows as metrics (``shutdown()`` flushes them)."""
    import bitnet_obs
    from bitnet_obs.quant import WeightReport, _record

    from ._analyse import SHARED, Report

    assert isinstance(report, Report)
    assert isinstance(telemetry, bitnet_obs.Telemetry)
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
