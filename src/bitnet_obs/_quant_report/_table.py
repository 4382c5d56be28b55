"""The report as text: measured tensors in a table with full (escaped) names, then the tensors
kept in float, the skipped ones with their reasons, names missing on either side, and a
summary."""

from __future__ import annotations

import math
from typing import TextIO

from bitnet_obs.quant.io import printable

from ._analyse import SHARED, Report, Row, overflow_total

__all__ = ["render_table", "summary_lines"]


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, fmt)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _cells(row: Row, reference: bool) -> list[str]:
    acc = row.accuracy
    fractions = "/".join(f"{f:.3f}" for f in row.code_fractions) if row.code_fractions else "-"
    cells = [
        printable(row.name),
        _shape(row.shape),
        printable(row.format or "-"),
        _num(row.scale, ".6g"),
        fractions,
        _num(acc.cosine if acc else None, ".4f"),
        _num(acc.sqnr_db if acc else None, ".2f"),
        _num(acc.rel_l2 if acc else None, ".4f"),
    ]
    if reference:
        cells += [
            _num(None if row.code_mismatch is None else 100 * row.code_mismatch, ".3f"),
            _num(row.scale_rel_diff, ".2e"),
        ]
    return cells


def render_table(report: Report, out: TextIO) -> None:
    opts = report.options
    reference = opts.reference is not None
    # every string here may come from the file (names, metadata, dtypes): escaped, so a file
    # cannot move the cursor or rewrite the terminal of whoever inspects it
    out.write(f"file: {printable(opts.path)} ({printable(report.file_format)})\n")
    for note in report.notes:
        out.write(f"  {printable(note)}\n")
    if reference:
        ref_format = printable(str(report.reference_format))
        out.write(f"reference: {printable(str(opts.reference))} ({ref_format})\n")
        for note in report.reference_notes:
            out.write(f"  {printable(note)}\n")
    measured = report.measured()
    head = ["tensor", "shape", "format", "scale", "-1/0/+1", "cosine", "SQNR dB", "rel err"]
    if reference:
        head += ["codes ≠ %", "scale Δ"]
    rows = [_cells(r, reference) for r in measured]
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=False)]
    out.write("\n" + _line(head, widths) + "\n" + "-" * (sum(widths) + 2 * len(widths)) + "\n")
    for row, cells in zip(measured, rows, strict=True):
        out.write(_line(cells, widths) + "\n")
        for note in (*row.kernel_notes, *((row.reason,) if row.reason else ())):
            out.write(f"    note: {printable(note)}\n")
    if any(r.format == SHARED for r in measured):
        out.write(
            f"\n{SHARED}: master weights; I2_S, TL1 and TL2 store the same ternary codes and "
            "scale, so one row holds their shared quantization error vs these weights\n"
        )
    _listing(out, "kept in float", [r for r in report.rows if r.status == "kept in float"])
    _listing(out, "skipped", [r for r in report.rows if r.status == "skipped"])
    if reference:
        for title, names in (
            ("missing in the reference", report.missing_in_reference),
            ("missing in the file", report.missing_in_file),
        ):
            if names:
                out.write(f"\n{title} ({len(names)}):\n")
                out.writelines(f"  {printable(n)}\n" for n in names)
    out.write("\n" + "\n".join(summary_lines(report)) + "\n")


def _line(cells: list[str], widths: list[int]) -> str:
    first, *rest = cells
    return "  ".join(
        [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
    )


def _listing(out: TextIO, title: str, rows: list[Row]) -> None:
    if not rows:
        return
    out.write(f"\n{title} ({len(rows)}):\n")
    for row in rows:
        why = printable(row.reason or "")
        dtype = printable(row.dtype)
        out.write(f"  {printable(row.name)}  {_shape(row.shape)} {dtype}: {why}\n")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def summary_lines(report: Report) -> list[str]:
    measured = report.measured()
    kept = sum(r.status == "kept in float" for r in report.rows)
    skipped = sum(r.status == "skipped" for r in report.rows)
    lines = [f"{_count(len(measured), 'tensor')} measured, {kept} kept in float, {skipped} skipped"]
    with_acc = [r.accuracy for r in measured if r.accuracy is not None]
    if with_acc:
        cos = [a.cosine for a in with_acc]
        sqnr = [a.sqnr_db for a in with_acc if math.isfinite(a.sqnr_db)]
        vs = "the master weights" if report.options.reference else "their FP32 values"
        text = f"vs {vs}: cosine mean {sum(cos) / len(cos):.4f} min {min(cos):.4f}"
        if sqnr:
            text += f", SQNR mean {sum(sqnr) / len(sqnr):.2f} dB min {min(sqnr):.2f} dB"
        lines.append(text)
    elif measured and not report.options.reference:
        lines.append("no FP32 values in this file: --reference MASTER compares it with its master")
    if not measured and kept and not report.options.measure_all:
        lines.append("no attention/MLP projection names found: --all measures every 2-D tensor")
    if report.options.reference:
        bad = report.unfaithful()
        worst = max((r.code_mismatch or 0.0 for r in measured), default=0.0)
        missing = len(report.missing_in_file) + len(report.missing_in_reference)
        if bad or missing:
            lines.append(
                f"NOT FAITHFUL: {_count(len(bad), 'tensor')} with codes differing beyond "
                f"{100 * report.options.max_code_mismatch:g}% (worst {100 * worst:.3f}%)"
                + (f"; {_count(missing, 'tensor')} missing" if missing else "")
            )
            lines += [f"  {printable(n)}" for n in bad]
        else:
            lines.append(f"faithful: codes differ at most {100 * worst:.3f}% in every tensor")
    wraps = overflow_total(report)
    if wraps is not None and wraps[0]:
        lines.append(
            f"AVX2 I2_S kernel: a constant activation token (int8 127) wraps the int16 lanes of "
            f"{wraps[0]} of {wraps[1]} rows (bitnet.cpp computes those rows wrong for it)"
        )
    unreadable = [r for r in report.rows if r.unreadable]
    if unreadable:
        lines.append(f"{_count(len(unreadable), 'tensor')} could not be read (see 'skipped')")
    return lines
