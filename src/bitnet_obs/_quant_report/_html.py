"""The report as one self-contained HTML page (``--html FILE``): per-layer charts first (SQNR and
cosine by layer and projection, code fractions, and with ``--reference`` the codes that differ
from a faithful conversion and the scale drift), then the full table.  Inline SVG and CSS only:
nothing is fetched from the network, so the page opens offline and from a ticket attachment.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from bitnet_obs._untrusted import html_text
from bitnet_obs.quant.io import PROJECTIONS, printable

from . import _svg
from ._analyse import Report, Row, finite
from ._table import summary_lines

__all__ = ["CODE_COLOURS", "FAITHFUL_COLOURS", "PROJECTION_COLOURS", "render_html"]

#: Line colours per projection (q, k, v, o, gate, up, down), then for other tensors.
PROJECTION_COLOURS = {
    "q": "#1f77b4",
    "k": "#ff7f0e",
    "v": "#2ca02c",
    "o": "#d62728",
    "gate": "#9467bd",
    "up": "#8c564b",
    "down": "#e377c2",
    None: "#7f7f7f",
}
#: Code fraction colours: -1, 0, +1.
CODE_COLOURS = ("#0571b0", "#fdb863", "#5e3c99")
#: Mismatch bars: within the allowed fraction, beyond it.
FAITHFUL_COLOURS = ("#1a9850", "#f03b20")

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 6px} h2{font-size:16px;margin:22px 0 6px}
p.note{margin:2px 0;color:#555;font-size:13px} figure{margin:10px 0}
table{border-collapse:collapse;font-size:12px} td,th{padding:2px 8px;border-bottom:1px solid #eee}
th{text-align:left;background:#f6f6f6} td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#fde0dd} .mono{font-family:ui-monospace,monospace}
"""


def _e(text: object) -> str:
    """Escaped for HTML, control characters first: file-derived text never reaches the page
    raw."""
    return html_text(text)


def _name(row: Row) -> str:
    return _e(row.name)


def _layer_ticks(rows: Sequence[Row]) -> list[tuple[float, str]]:
    """One tick per layer, in the middle of that layer's bars."""
    starts = [i for i, r in enumerate(rows) if i == 0 or r.layer != rows[i - 1].layer]
    ends = [*starts[1:], len(rows)]
    every = max(1, math.ceil(len(starts) / 24))
    return [
        ((a + b) / 2 - 0.5, "-" if rows[a].layer is None else str(rows[a].layer))
        for a, b in list(zip(starts, ends, strict=True))[::every]
    ]


def _by_projection(rows: Sequence[Row], value: str) -> list[tuple[str, str, list[_svg.Point]]]:
    series = []
    for proj in (*PROJECTIONS, None):
        points: list[_svg.Point] = []
        for r in rows:
            if r.projection != proj or r.layer is None or r.accuracy is None:
                continue
            v = finite(getattr(r.accuracy, value))
            if v is not None:
                points.append((float(r.layer), v, f"{printable(r.name)}: {v:.4g}"))
        if points:
            series.append((proj or "other", PROJECTION_COLOURS[proj], points))
    return series


def _x_ticks(rows: Sequence[Row]) -> list[tuple[float, str]]:
    layers = sorted({r.layer for r in rows if r.layer is not None})
    every = max(1, math.ceil(len(layers) / 24))
    return [(float(layer), str(layer)) for layer in layers[::every]]


def charts(report: Report) -> list[str]:
    rows = report.measured()
    out: list[str] = []
    vs = "master weights" if report.options.reference else "FP32 values"
    sqnr = _by_projection(rows, "sqnr_db")
    if sqnr:
        out.append(
            _svg.line_chart(
                f"SQNR vs {vs} by layer and projection", "SQNR (dB)", sqnr, _x_ticks(rows)
            )
        )
        out.append(
            _svg.line_chart(
                f"Cosine vs {vs} by layer and projection",
                "cosine",
                _by_projection(rows, "cosine"),
                _x_ticks(rows),
            )
        )
    elif rows:
        out.append(
            '<p class="note">No FP32 values in this file (ternary weights only): run with '
            "<code>--reference MASTER</code> for SQNR and cosine against the master weights.</p>"
        )
    with_codes = [r for r in rows if r.code_fractions is not None]
    if with_codes:
        bars = [(printable(r.name), r.code_fractions or (0, 0, 0)) for r in with_codes]
        out.append(
            _svg.stacked_bars(
                "Code fractions per tensor (by layer, then q k v o gate up down)",
                "fraction",
                bars,
                list(zip(("-1", "0", "+1"), CODE_COLOURS, strict=True)),
                _layer_ticks(with_codes),
            )
        )
    compared = [r for r in rows if r.code_mismatch is not None]
    if report.options.reference and compared:
        limit = 100 * report.options.max_code_mismatch
        out.append(
            _svg.bar_chart(
                "Codes differing from a faithful conversion of the master (%)",
                "codes differing (%)",
                [
                    (
                        f"{printable(r.name)}: {100 * (r.code_mismatch or 0):.4f}%",
                        100 * (r.code_mismatch or 0),
                        FAITHFUL_COLOURS[r.unfaithful],
                    )
                    for r in compared
                ],
                _layer_ticks(compared),
                threshold=limit if limit > 0 else None,
                legend=[
                    (f"≤ {limit:g}%", FAITHFUL_COLOURS[0]),
                    (f"> {limit:g}%", FAITHFUL_COLOURS[1]),
                ],
            )
        )
        drift = []
        for proj in (*PROJECTIONS, None):
            pts: list[_svg.Point] = [
                (
                    float(r.layer),
                    math.log10(max(diff, 1e-12)),
                    f"{printable(r.name)}: {diff:.3g}",
                )
                for r in compared
                if r.projection == proj
                and r.layer is not None
                and (diff := finite(r.scale_rel_diff)) is not None
            ]
            if pts:
                drift.append((proj or "other", PROJECTION_COLOURS[proj], pts))
        if all(r.scale_rel_diff == 0 for r in compared):
            out.append('<p class="note">Every stored scale equals the faithful one.</p>')
        elif drift:
            out.append(
                _svg.line_chart(
                    "Scale relative difference vs a faithful conversion (log10)",
                    "log10 |Δscale| / scale",
                    drift,
                    _x_ticks(compared),
                )
            )
    return out


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _table(report: Report) -> str:
    reference = report.options.reference is not None
    head = ["tensor", "shape", "type", "format", "status", "scale", "-1/0/+1", "cosine", "SQNR dB"]
    head += ["rel err", *(["codes ≠ %", "scale Δ"] if reference else []), "notes"]
    lines = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in report.rows:
        acc = r.accuracy
        cells = [
            f'<td class="mono">{_name(r)}</td>',
            f"<td>{_e('x'.join(map(str, r.shape)))}</td>",
            f"<td>{_e(r.dtype)}</td>",
            f"<td>{_e(r.format or '-')}</td>",
            f"<td>{_e(r.status)}</td>",
            f'<td class="n">{_cell(r.scale, ".6g")}</td>',
            "<td>"
            + ("/".join(f"{f:.3f}" for f in r.code_fractions) if r.code_fractions else "-")
            + "</td>",
            f'<td class="n">{_cell(acc.cosine if acc else None, ".4f")}</td>',
            f'<td class="n">{_cell(finite(acc.sqnr_db) if acc else None, ".2f")}</td>',
            f'<td class="n">{_cell(acc.rel_l2 if acc else None, ".4f")}</td>',
        ]
        if reference:
            mism = None if r.code_mismatch is None else 100 * r.code_mismatch
            cells.append(f'<td class="n">{_cell(mism, ".3f")}</td>')
            cells.append(f'<td class="n">{_cell(finite(r.scale_rel_diff), ".2e")}</td>')
        notes = [*r.kernel_notes, *((r.reason,) if r.reason else ())]
        cells.append("<td>" + "<br>".join(_e(n) for n in notes) + "</td>")
        cls = ' class="bad"' if r.unfaithful or r.unreadable else ""
        lines.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return "".join(lines) + "</table>"


def render_html(report: Report) -> str:
    opts = report.options
    head = [f"<h1>quant-report: {_e(opts.path)}</h1>"]
    head.append(f'<p class="note">format: {_e(report.file_format)}</p>')
    head += [f'<p class="note">{_e(n)}</p>' for n in report.notes]
    if opts.reference:
        head.append(
            f'<p class="note">reference: {_e(opts.reference)} ({_e(report.reference_format)})</p>'
        )
    # summary lines are escaped for the terminal already (printable): HTML escaping only
    head += [f'<p class="note"><b>{html.escape(line)}</b></p>' for line in summary_lines(report)]
    figures = "".join(f"<figure>{c}</figure>" for c in charts(report))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>quant-report: {_e(opts.path)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(head)}<h2>Charts</h2>{figures}<h2>Tensors</h2>{_table(report)}"
        "</body></html>\n"
    )
