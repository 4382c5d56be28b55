"""The report's rows: one per tensor, each tensor read once and its statistics computed once.

Which tensors are measured follows bitnet.cpp: the attention and MLP projections are ternarised,
everything else stays in float and is listed as "kept in float" (``--all`` measures every 2-D
float tensor anyway).  A measured row is, for a ternary tensor (I2_S, TQ1_0, TQ2_0, HF packed),
its stored format, scale and code fractions; for float master weights, the absmean ternary
quantization error, computed once because I2_S, TL1 and TL2 store the same codes and scale
(the row's format says ``i2_s/tl1/tl2``).  With a reference (master weights), each converted
projection is compared with a faithful quantization of its master tensor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bitnet_obs.quant import (
    I2S_BLOCK,
    TL2_DEFAULT_BK,
    Accuracy,
    QuantInputError,
    io,
    kernel_overflows,
    weight_report,
)
from bitnet_obs.quant._validate import check_tiling

from . import _compare

__all__ = ["SHARED", "Options", "Report", "Row", "analyse"]

Status = Literal["measured", "kept in float", "skipped"]
Progress = Callable[[int], contextlib.AbstractContextManager[Callable[[int], None] | None]]
#: The format label of a master-weights row: the three bitnet.cpp formats share its figures.
SHARED = "i2_s/tl1/tl2"


@dataclass(frozen=True)
class Options:
    path: str
    reference: str | None = None
    measure_all: bool = False
    layout: str = "x86"
    kernel_config: str | None = None
    max_code_mismatch: float = 0.0


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]
    dtype: str
    status: Status
    format: str | None = None
    reason: str | None = None
    layer: int | None = None
    projection: str | None = None
    scale: float | None = None
    code_fractions: tuple[float, float, float] | None = None
    accuracy: Accuracy | None = None
    kernel_notes: tuple[str, ...] = ()
    kernel_overflow_rows: int | None = None
    reference_name: str | None = None
    code_mismatch: float | None = None
    scale_rel_diff: float | None = None
    unfaithful: bool = False
    unreadable: bool = False


@dataclass
class Report:
    options: Options
    file_format: str = ""
    notes: tuple[str, ...] = ()
    reference_format: str | None = None
    reference_notes: tuple[str, ...] = ()
    rows: list[Row] = field(default_factory=list)
    missing_in_file: list[str] = field(default_factory=list)
    missing_in_reference: list[str] = field(default_factory=list)

    def measured(self) -> list[Row]:
        return [r for r in self.rows if r.status == "measured"]

    def unfaithful(self) -> list[str]:
        return [r.name for r in self.rows if r.unfaithful]

    def exit_status(self) -> int:
        """2: a tensor could not be read; 3: the conversion is not faithful; else 0."""
        if any(r.unreadable for r in self.rows):
            return 2
        if self.options.reference and (
            self.unfaithful() or self.missing_in_file or self.missing_in_reference
        ):
            return 3
        return 0


def _proj_key(row: Row) -> tuple[int, int, str]:
    order = io.PROJECTIONS.index(row.projection) if row.projection in io.PROJECTIONS else 99
    return (-1 if row.layer is None else row.layer, order, row.name)


def _code_fractions(codes: Any) -> tuple[float, float, float]:
    n = max(1, codes.size)  # empty tensors are never measured; no division by zero anyway
    neg = int(np.count_nonzero(codes < 0))
    pos = int(np.count_nonzero(codes > 0))
    return neg / n, (n - neg - pos) / n, pos / n


def kernel_notes(shape: tuple[int, ...], fmt: str, layout: str) -> tuple[str, ...]:
    """Why bitnet.cpp's kernels could not run this (M, K) weight, per format."""
    if len(shape) != 2:
        return ()
    k = shape[1]
    notes = []
    if fmt in ("i2_s", SHARED):
        block = I2S_BLOCK["arm" if layout == "arm" else "x86"]
        if k % block:
            notes.append(
                f"I2_S ({layout}): the kernel reads K/{block} blocks per row; K={k} is not a "
                f"multiple of {block}"
            )
    if fmt == SHARED:
        for tl in ("tl1", "tl2"):
            try:
                check_tiling(tl, k, TL2_DEFAULT_BK)
            except QuantInputError as exc:
                notes.append(str(exc))
    return tuple(notes)


def overflow_rows(codes: Any) -> int:
    """Rows of an (M, K) I2_S tensor on which bitnet.cpp's x86 AVX2 kernel wraps its int16
    lanes for a constant activation token (every int8 activation 127, what
    ``quantize_activations`` makes of any constant token), by ``quant.kernel_overflows``.

    The kernel sums ``(t + 1) * q`` over 256 values per lane, so with q = 127 a lane wraps as
    soon as it holds three more +1 than -1 codes: for symmetric ternary weights that is most
    rows.  The figure says how exposed a tensor is to such inputs, not that the weights are
    wrong; real activations rarely sit at their maximum everywhere."""
    q = np.full((1, codes.shape[1]), 127, np.int8)
    return int(np.count_nonzero(kernel_overflows(q, codes)))


class _Reader:
    """The file and (optionally) the reference, read one tensor at a time."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.file = io.open_checkpoint(
            options.path, layout=options.layout, kernel_config=options.kernel_config
        )
        self.reference: io.Checkpoint | None = None
        if options.reference is not None:
            try:
                self.reference = io.open_checkpoint(options.reference, layout=options.layout)
            except BaseException:
                self.file.close()
                raise

    def close(self) -> None:
        self.file.close()
        if self.reference is not None:
            self.reference.close()


def _plan(
    report: Report, file: io.Checkpoint, measure_all: bool
) -> list[tuple[Row, io.TensorInfo]]:
    """Every tensor's row, with the ones to measure returned for reading.  A tensor that would
    be measured (a projection, or any float or ternary tensor with ``--all``) but cannot be read
    -- a projection of a type that is neither float nor ternary included -- makes the report's
    exit status 2; an empty tensor (a dimension of 0) has nothing to measure and says so."""
    todo = []
    for info in file.weights():
        role = io.role(info.name)
        row = Row(info.name, info.shape, info.dtype, "kept in float", None, None, role.layer)
        row.projection = role.projection
        report.rows.append(row)
        wanted = role.kind == "projection" or measure_all
        if info.kind == "other" or (info.unreadable and not wanted):
            row.status, row.reason = "skipped", info.unreadable or f"{info.dtype} is not a weight"
            # a projection nobody can read (an unknown type id, Q4_K, ...) is the exit table's
            # 2; an integer array that --all would not measure anyway is no weight
            row.unreadable = role.kind == "projection"
            continue
        if not wanted:
            row.reason = role.why_float
            continue
        if info.size == 0:
            row.status, row.reason = "skipped", f"empty (shape {_shape(info.shape)}): no values"
            continue
        if len(info.shape) != 2 and info.kind == "float":
            row.reason = f"{len(info.shape)}-D: not a linear weight (bitnet.cpp keeps it in float)"
            continue
        if info.unreadable:
            row.status, row.reason, row.unreadable = "skipped", info.unreadable, True
            continue
        row.status = "measured"
        todo.append((row, info))
    return todo


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def analyse(options: Options, progress: Progress | None = None) -> Report:
    """Read the checkpoint (and reference) and build every row.  Raises ``io.ReadError`` when a
    file cannot be opened at all; a tensor that cannot be read becomes a skipped row.
    *progress* is given the number of values to measure and returns the per-tensor callback."""
    reader = _Reader(options)
    try:
        return _analyse(reader, progress)
    finally:
        reader.close()


def _analyse(reader: _Reader, progress: Progress | None) -> Report:
    options, file, ref = reader.options, reader.file, reader.reference
    report = Report(options, file.format, file.notes)
    todo = _plan(report, file, options.measure_all)
    matches: dict[str, str] = {}
    ref_infos: dict[str, io.TensorInfo] = {}
    if ref is not None:
        report.reference_format, report.reference_notes = ref.format, ref.notes
        ref_infos = {t.name: t for t in ref.weights()}
        projections = [r.name for r, _ in todo if r.projection is not None]
        matches = _compare.match_names(projections, list(ref_infos))
        report.missing_in_reference = [n for n in projections if n not in matches]
        matched = set(matches.values())
        report.missing_in_file = [
            n for n in ref_infos if io.role(n).kind == "projection" and n not in matched
        ]
    with contextlib.ExitStack() as stack:
        total = sum(info.size for _, info in todo)
        advance = stack.enter_context(progress(total)) if progress else None
        for row, info in todo:
            master = ref_infos.get(matches.get(row.name, ""))
            try:
                _measure(row, file.read(info), options, ref, master)
            except (io.ReadError, QuantInputError) as exc:
                row.status, row.reason, row.unreadable = "skipped", str(exc), True
            finally:
                file.release(info)
            if advance is not None:
                advance(info.size)
    measured = sorted((r for r in report.rows if r.status == "measured"), key=_proj_key)
    others = [r for r in report.rows if r.status != "measured"]
    report.rows = measured + others
    return report


def _measure(
    row: Row,
    tensor: io.Tensor,
    options: Options,
    ref: io.Checkpoint | None,
    ref_info: io.TensorInfo | None,
) -> None:
    if isinstance(tensor, io.TernaryTensor):
        row.format, row.scale = tensor.format, tensor.scale
        row.code_fractions = _code_fractions(tensor.codes)
        row.kernel_notes = kernel_notes(row.shape, tensor.format, options.layout)
        if tensor.codes.ndim != 2:
            row.kernel_notes += (
                f"{tensor.codes.ndim}-D: not an (M, K) linear weight; bitnet.cpp's kernels "
                "cannot run it",
            )
        elif tensor.format == "i2_s" and options.layout == "x86" and not row.kernel_notes:
            row.kernel_overflow_rows = overflow_rows(tensor.codes)
        if tensor.block_scales is not None:
            distinct = np.unique(tensor.block_scales[tensor.block_scales != 0]).size
            if distinct > 1:
                row.kernel_notes += (f"{distinct} distinct block scales; scale is their median",)
    else:
        rep = weight_report(tensor.values, "i2_s")
        row.format, row.scale = SHARED, rep.scale
        row.code_fractions, row.accuracy = rep.code_fractions, rep.accuracy
        row.kernel_notes = kernel_notes(row.shape, SHARED, options.layout)
    if ref is not None and ref_info is not None and row.projection is not None:
        _against_reference(row, tensor, ref, ref_info, options)


def _against_reference(
    row: Row,
    tensor: io.Tensor,
    ref: io.Checkpoint,
    ref_info: io.TensorInfo,
    options: Options,
) -> None:
    row.reference_name = ref_info.name
    try:
        master = ref.read(ref_info)
    finally:
        ref.release(ref_info)
    if not isinstance(master, io.FloatTensor):
        raise io.ReadError(
            f"reference {io.printable(ref_info.name)} is {ref_info.dtype}; accepted: float master "
            "weights (f32, f16, bf16)"
        )
    fmt = tensor.format if isinstance(tensor, io.TernaryTensor) else SHARED
    expected_codes, expected_scale = _compare.faithful(master.values, fmt)
    if isinstance(tensor, io.FloatTensor):  # a float conversion: compare what bitnet.cpp derives
        codes, scale = _compare.faithful(tensor.values)
        tensor = io.TernaryTensor(tensor.name, row.format or SHARED, codes, scale)
    codes = tensor.codes
    if tensor.format == "hf_packed" and codes.shape[0] > master.values.shape[0]:
        codes = codes[: master.values.shape[0]]  # pack_weights pads M to a multiple of 4
        tensor = io.TernaryTensor(tensor.name, tensor.format, codes, tensor.scale)
    if codes.shape != master.values.shape:
        row.reason = (
            f"shape {codes.shape} differs from the reference's {master.values.shape} "
            f"({io.printable(ref_info.name)})"
        )
        row.unfaithful = True
        return
    row.code_mismatch = _compare.mismatch(codes, expected_codes)
    row.scale_rel_diff = _compare.scale_rel_diff(tensor, expected_scale)
    row.accuracy = _compare.drift(master.values, tensor)
    row.unfaithful = row.code_mismatch > options.max_code_mismatch


def overflow_total(report: Report) -> tuple[int, int] | None:
    """(rows that wrap, rows probed) over the I2_S tensors, or None when none was probed."""
    probed = [r for r in report.rows if r.kernel_overflow_rows is not None]
    if not probed:
        return None
    return sum(r.kernel_overflow_rows or 0 for r in probed), sum(r.shape[0] for r in probed)


def finite(value: float | None) -> float | None:
    """A figure for JSON and charts: ``None`` for missing and non-finite values."""
    return value if value is not None and math.isfinite(value) else None
