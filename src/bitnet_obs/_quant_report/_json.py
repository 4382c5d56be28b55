"""The report as JSON (``--json``): a stable schema, documented in docs/quantization.md.

Every tensor record has every key (``null`` when a figure does not apply), so consumers can
rely on the shape; ``schema_version`` changes only when a key changes meaning or goes away.
Names are the tensors' real names (JSON escapes control characters itself).
"""

from __future__ import annotations

from typing import Any

from ._analyse import Report, Row, finite, overflow_total

__all__ = ["SCHEMA_VERSION", "report_json"]

SCHEMA_VERSION = 1


def _tensor(row: Row) -> dict[str, Any]:
    acc = row.accuracy
    return {
        "name": row.name,
        "shape": list(row.shape),
        "dtype": row.dtype,
        "format": row.format,
        "status": row.status,
        "reason": row.reason,
        "layer": row.layer,
        "projection": row.projection,
        "scale": finite(row.scale),
        "code_fractions": list(row.code_fractions) if row.code_fractions else None,
        "cosine": finite(acc.cosine) if acc else None,
        "sqnr_db": finite(acc.sqnr_db) if acc else None,
        "rel_l2": finite(acc.rel_l2) if acc else None,
        "mse": finite(acc.mse) if acc else None,
        "max_abs_error": finite(acc.max_abs) if acc else None,
        "kernel_notes": list(row.kernel_notes),
        "kernel_overflow_rows": row.kernel_overflow_rows,
        "reference_name": row.reference_name,
        "code_mismatch": row.code_mismatch,
        "scale_rel_diff": finite(row.scale_rel_diff),
        "faithful": None if row.code_mismatch is None else not row.unfaithful,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def report_json(report: Report) -> dict[str, Any]:
    opts = report.options
    measured = report.measured()
    cos = [
        v
        for r in measured
        if r.accuracy is not None and (v := finite(r.accuracy.cosine)) is not None
    ]
    sqnr = [
        v
        for r in measured
        if r.accuracy is not None and (v := finite(r.accuracy.sqnr_db)) is not None
    ]
    mismatches = [r.code_mismatch for r in measured if r.code_mismatch is not None]
    reference = None
    if opts.reference is not None:
        reference = {
            "file": opts.reference,
            "format": report.reference_format,
            "notes": list(report.reference_notes),
            "missing_in_file": report.missing_in_file,
            "missing_in_reference": report.missing_in_reference,
            "max_code_mismatch": opts.max_code_mismatch,
        }
    status = report.exit_status()
    return {
        "schema_version": SCHEMA_VERSION,
        "file": opts.path,
        "format": report.file_format,
        "layout": opts.layout,
        "notes": list(report.notes),
        "reference": reference,
        "tensors": [_tensor(r) for r in report.rows],
        "summary": {
            "tensors": len(report.rows),
            "measured": len(measured),
            "kept_in_float": sum(r.status == "kept in float" for r in report.rows),
            "skipped": sum(r.status == "skipped" for r in report.rows),
            "unreadable": sum(r.unreadable for r in report.rows),
            "cosine_mean": _mean(cos),
            "cosine_min": min(cos, default=None),
            "sqnr_db_mean": _mean(sqnr),
            "sqnr_db_min": min(sqnr, default=None),
            "code_mismatch_max": max(mismatches, default=None),
            "kernel_overflow_rows": overflow_total(report),
            "unfaithful": report.unfaithful(),
            "faithful": None if opts.reference is None else status != 3,
            "exit_status": status,
        },
    }
