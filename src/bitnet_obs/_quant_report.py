"""``bitnet-obs quant-report PATH``: how a checkpoint's weights fare in I2_S / TL1 / TL2.

Reads ``.npz`` (numpy) or ``.safetensors`` (the optional ``[safetensors]`` extra, imported
only when needed). Every 2-D float tensor is quantized with the absmean ternary rule and
measured against its FP32 values; other tensors are listed as skipped with the reason.
"""

from __future__ import annotations

import json
import math
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bitnet_obs.quant._stats import WeightReport, weight_report
from bitnet_obs.quant._validate import FORMATS, QuantInputError, check_format


class ReportError(Exception):
    """The file cannot be read; the message says why and what is accepted."""


@dataclass(frozen=True)
class Row:
    tensor: str
    shape: tuple[int, ...]
    format: str | None = None
    report: WeightReport | None = None
    skipped: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.report is None:
            record: dict[str, Any] = {"tensor": self.tensor, "shape": list(self.shape)}
            if self.format is not None:
                record["format"] = self.format
            record["skipped"] = self.skipped
            return record
        acc = self.report.accuracy
        return {
            "tensor": self.tensor,
            "format": self.format,
            "shape": list(self.shape),
            "scale": self.report.scale,
            "code_fractions": list(self.report.code_fractions),
            "cosine": acc.cosine,
            "sqnr_db": acc.sqnr_db if math.isfinite(acc.sqnr_db) else None,
            "rel_l2": acc.rel_l2,
            "mse": acc.mse,
        }


def load_tensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) pairs; lazily, so a big checkpoint is not all in memory."""
    if not path.exists():
        raise ReportError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ReportError(f"{path}: not a readable .npz archive ({exc})") from None
        with archive:
            for name in archive.files:
                try:
                    yield name, archive[name]
                except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                    raise ReportError(f"{path}: tensor {name!r} is corrupt ({exc})") from None
        return
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ReportError(
                "reading .safetensors needs the optional extra: "
                "pip install 'bitnet-obs[safetensors]'"
            ) from None
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # the library raises its own SafetensorError
            raise ReportError(f"{path}: not a readable .safetensors file ({exc})") from None
        yield from tensors.items()
        return
    raise ReportError(f"{path}: unknown file type {suffix!r}; accepted: .npz, .safetensors")


def analyse(path: Path, formats: Sequence[str], progress: TextIO | None) -> list[Row]:
    rows: list[Row] = []
    items = list(load_tensors(path))
    for i, (name, array) in enumerate(items, 1):
        if progress is not None:
            _progress(progress, i, len(items), name)
        shape = tuple(int(d) for d in array.shape)
        if array.dtype.kind != "f":
            rows.append(Row(name, shape, skipped=f"dtype {array.dtype} is not float"))
            continue
        if array.ndim != 2:
            rows.append(Row(name, shape, skipped=f"{array.ndim}-D (only 2-D linear weights)"))
            continue
        shared: WeightReport | None = None
        for fmt in formats:
            try:
                report = weight_report(array, fmt) if shared is None else _relabel(shared, fmt)
            except QuantInputError as exc:
                rows.append(Row(name, shape, fmt, skipped=str(exc)))
                continue
            shared = report
            rows.append(Row(name, shape, fmt, report))
    if progress is not None and items:
        progress.write("\n")
    return rows


def _relabel(report: WeightReport, fmt: str) -> WeightReport:
    """Same ternary values and scale in every format: only the tiling check differs."""
    from dataclasses import replace

    from bitnet_obs.quant._lut import TL2_DEFAULT_BK
    from bitnet_obs.quant._validate import check_tiling

    checked = check_format(fmt)
    check_tiling(checked, report.shape[1], TL2_DEFAULT_BK)
    return replace(report, format=checked)


def _progress(out: TextIO, i: int, n: int, name: str) -> None:
    width = 30
    done = int(width * i / max(n, 1))
    out.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {name[:40]:<40}")
    out.flush()


def render_table(rows: list[Row], out: TextIO) -> None:
    head = (
        f"{'tensor':<40} {'shape':>12} {'fmt':>5} {'scale':>9} {'-1/0/+1':>17} "
        f"{'cosine':>8} {'SQNR dB':>8} {'rel err':>8}"
    )
    out.write(head + "\n" + "-" * len(head) + "\n")
    for row in rows:
        shape = "x".join(map(str, row.shape)) or "scalar"
        if row.report is None:
            fmt = row.format or "-"
            out.write(f"{row.tensor[:40]:<40} {shape:>12} {fmt:>5}  skipped: {row.skipped}\n")
            continue
        r, acc = row.report, row.report.accuracy
        fractions = "/".join(f"{f:.3f}" for f in r.code_fractions)
        out.write(
            f"{row.tensor[:40]:<40} {shape:>12} {row.format:>5} {r.scale:>9.5f} {fractions:>17} "
            f"{acc.cosine:>8.4f} {acc.sqnr_db:>8.2f} {acc.rel_l2:>8.4f}\n"
        )
    out.write("\n" + summary(rows) + "\n")


def summary(rows: list[Row]) -> str:
    measured = [r for r in rows if r.report is not None]
    tensors = {r.tensor for r in measured}
    skipped = {r.tensor for r in rows if r.report is None} - tensors
    lines = [f"{len(tensors)} tensors measured, {len(skipped)} skipped"]
    for fmt in FORMATS:
        of = [r.report for r in measured if r.format == fmt and r.report is not None]
        if of:
            cos = [r.accuracy.cosine for r in of]
            sqnr = [r.accuracy.sqnr_db for r in of]
            lines.append(
                f"  {fmt:>5}: cosine mean {np.mean(cos):.4f} min {min(cos):.4f}, "
                f"SQNR mean {np.mean(sqnr):.2f} dB min {min(sqnr):.2f} dB"
            )
    return "\n".join(lines)


def export(rows: list[Row]) -> None:
    import bitnet_obs
    from bitnet_obs.quant import _record

    telemetry = bitnet_obs.configure()
    for row in rows:
        if row.report is not None and row.format is not None:
            _record.emit_weight_report(row.tensor, row.report, [row.format], 0.0)
    if "prometheus" in telemetry.settings.metrics_exporters and telemetry.server:
        print(
            "note: a one-shot process cannot be scraped; for --export set "
            "OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_METRICS_EXPORTER=otlp/console)",
            file=sys.stderr,
        )
    bitnet_obs.shutdown()


def run(path: str, formats: Sequence[str], as_json: bool, do_export: bool) -> int:
    try:
        fmts = [check_format(f.strip()) for f in formats]
        started = time.perf_counter()
        progress = sys.stderr if sys.stderr.isatty() and not as_json else None
        rows = analyse(Path(path), fmts, progress)
    except (ReportError, QuantInputError) as exc:
        print(f"bitnet-obs quant-report: {exc}", file=sys.stderr)
        return 2
    if as_json:
        json.dump([row.as_json() for row in rows], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        render_table(rows, sys.stdout)
        print(f"({time.perf_counter() - started:.1f} s)")
    if do_export:
        export(rows)
    return 0
