"""Recording quantization accuracy as metrics, under a sampling rate and a time budget.

Load-time calls (:func:`record_weight_quantization`) always measure. Runtime calls
(:func:`record_activation_quantization`, :func:`compare_outputs`, and
``current_inference().record_quantization``) are *eligible* samples: a fraction
``BITNET_OBS_QUANT_SAMPLE_RATE`` of them is measured, and never more than
``BITNET_OBS_QUANT_BUDGET`` of wall time goes to the statistics (a token bucket: credit
accrues at ``budget`` seconds per second, up to one minute's worth). Skipped samples are
counted in ``bitnet.quant.samples_skipped`` with their reason.

Bad input raises :class:`QuantInputError` when you call these directly; inside a monitored
inference call it becomes a counted skip (reason ``bad_input``) and never reaches inference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bitnet_obs import _config, _context, _sampling, _state
from bitnet_obs._instruments import (
    QUANT_ACCURACY,
    QUANT_DURATION,
    QUANT_KERNEL_OVERFLOWS,
    QUANT_OPERATIONS,
    QUANT_RELATIVE_ERROR,
    QUANT_SCALE,
    QUANT_SQNR,
)
from bitnet_obs._selfmon import internal_error
from bitnet_obs._tally import AttrValue, key_of
from bitnet_obs.quant._formats import I2S_BLOCK, WEIGHT_SCALE_FLOOR, quantize_activations
from bitnet_obs.quant._kernels import kernel_overflows
from bitnet_obs.quant._lut import TL2_DEFAULT_BK
from bitnet_obs.quant._stats import (
    Accuracy,
    LogitsAgreement,
    WeightReport,
    accuracy,
    logits_agreement,
)
from bitnet_obs.quant._stats import weight_report as _weight_report
from bitnet_obs.quant._validate import (
    FORMATS,
    QuantInputError,
    check_format,
    check_tiling,
    float_input,
)

SQNR_CAP_DB = 200.0  # equal tensors have infinite SQNR; histograms get this instead
MAX_SAMPLE_ELEMENTS = 1 << 20  # larger runtime tensors are measured on a row sample
MAX_TENSOR_NAMES = 512  # more distinct names fold into "_other"
REFERENCES = ("fp32", "quantized")
KINDS = _sampling.KINDS

_OPERATIONS = QUANT_OPERATIONS
_OVERFLOWS = QUANT_KERNEL_OVERFLOWS


_names_lock = threading.Lock()
_names: set[str] = set()


def _tensor_name(name: object) -> str:
    text = str(name)[:128] or "_unnamed"
    with _names_lock:
        if text in _names:
            return text
        if len(_names) < MAX_TENSOR_NAMES:
            _names.add(text)
            return text
    return "_other"


def _attrs(fmt: str, kind: str, reference: str, name: str) -> dict[str, AttrValue]:
    return {
        "bitnet.quant.format": fmt,
        "bitnet.quant.kind": kind,
        "bitnet.quant.reference": reference,
        "bitnet.tensor": _tensor_name(name),
    }


def _emit(acc: Accuracy, attrs: dict[str, AttrValue], seconds: float) -> None:
    QUANT_ACCURACY.record(acc.accuracy_ratio, attrs)
    QUANT_SQNR.record(min(acc.sqnr_db, SQNR_CAP_DB), attrs)
    QUANT_RELATIVE_ERROR.record(acc.rel_l2, attrs)
    QUANT_DURATION.record(seconds, attrs)
    _OPERATIONS.add(key_of(attrs), 1)


skip = _sampling.skip


def _in_monitored_call() -> bool:
    return _context.in_call()


def _check_choice(name: str, value: object, accepted: Sequence[str]) -> str:
    if value not in accepted:
        raise QuantInputError(f"{name}={value!r} is not valid; accepted: {', '.join(accepted)}")
    return str(value)


def record_weight_quantization(
    name: str, w: object, formats: Iterable[str] = FORMATS
) -> dict[str, Accuracy]:
    """Quantize a weight tensor to each format and record its accuracy against FP32.

    Load-time and always measured. I2_S, TL1 and TL2 share the ternary values, so the figures
    are computed once; a format whose tiling the shape does not fit is skipped (reason
    ``shape``). Returns the accuracy per recorded format::

        bitnet_obs.quant.record_weight_quantization("layers.0.attn.q_proj", w)
    """
    try:
        fmts = [check_format(f) for f in formats]
        if not fmts:
            raise QuantInputError("formats is empty; accepted: any of " + ", ".join(FORMATS))
        started = time.perf_counter()
        a = float_input(w, "w", (2,), "weights (M, K)", check_finite=False)
        fitting = []
        for fmt in fmts:
            try:
                check_tiling(fmt, a.shape[1], TL2_DEFAULT_BK)
                fitting.append(fmt)
            except QuantInputError:
                skip("weight", "shape")
        if not fitting:
            raise QuantInputError(
                f"w has shape {a.shape}, which none of {fmts} can lay out; accepted: even K "
                f"for tl1, K splittable at BK={TL2_DEFAULT_BK} for tl2, any K for i2_s"
            )
        report = _weight_report(a, fitting[0])  # same ternary values and scale for all
        emit_weight_report(name, report, fitting, time.perf_counter() - started)
        return dict.fromkeys(fitting, report.accuracy)
    except QuantInputError:
        if _in_monitored_call():
            skip("weight", "bad_input")
            return {}
        raise
    except Exception as exc:
        internal_error("quant_record", exc)
        return {}


def emit_weight_report(
    name: str, report: WeightReport, formats: Sequence[str], seconds: float
) -> None:
    """Record one weight report under each format label (shared by the CLI's --export).  The
    formats share codes and scale, except an all-zero tensor's scale: 1e-5 in I2_S, 0.0 in
    TL1/TL2, as bitnet.cpp's converter writes them."""
    all_zero = report.code_fractions[1] == 1.0
    for fmt in formats:
        attrs = _attrs(fmt, "weight", "fp32", name)
        _emit(report.accuracy, attrs, seconds / max(1, len(formats)))
        scale = report.scale
        if all_zero:
            scale = 0.0 if fmt in ("tl1", "tl2") else WEIGHT_SCALE_FLOOR
        QUANT_SCALE.set(scale, attrs)


def _row_sample(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    if a.size <= MAX_SAMPLE_ELEMENTS or a.ndim < 2 or a.shape != b.shape:
        return a, b, False
    rows = a.shape[0]
    keep = max(1, MAX_SAMPLE_ELEMENTS // max(1, a.size // rows))
    index = np.linspace(0, rows - 1, num=min(keep, rows)).astype(np.intp)
    return a[index], b[index], True


def _runtime(
    kind: str,
    name: str,
    fmt: str,
    reference_kind: str,
    measure: Any,
    admitted: bool = False,
) -> Any:
    """Shared path of the runtime samples: admission, measurement, emission, errors."""
    try:
        fmt = check_format(fmt) if fmt not in ("fp32", "int8") else fmt
        reference_kind = _check_choice("reference_kind", reference_kind, REFERENCES)
        settings = _config.current()
        # An admitted sample was drawn by admit_runtime_sample(); only the budget is checked.
        rate = 1.0 if admitted else settings.quant_sample_rate
        reason = _sampling.BUDGET.admit(rate, settings.quant_budget)
        if reason is not None:
            skip(kind, reason)
            return None
        started = time.perf_counter()
        try:
            acc, sampled = measure()
        finally:
            _sampling.spend(time.perf_counter() - started)
        attrs = _attrs(fmt, kind, reference_kind, name)
        if sampled:
            attrs["bitnet.quant.row_sample"] = True
        _emit(acc if isinstance(acc, Accuracy) else acc[0], attrs, time.perf_counter() - started)
        return acc
    except QuantInputError:
        if _in_monitored_call():
            skip(kind, "bad_input")
            return None
        raise
    except Exception as exc:  # e.g. a lazy reference that raised: a skip, counted as such
        skip(kind if kind in KINDS else "output", "error")
        internal_error("quant_record", exc if _config.current().capture_content else None,
                       f"{type(exc).__name__} while measuring {kind}")  # fmt: skip
        return None


def _as_array(value: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # e.g. a ragged nested list
        raise QuantInputError(
            f"{name} is not a rectangular array ({exc}); accepted: a numpy array, an object "
            "with __array__ or __dlpack__, or a rectangular nested sequence of numbers"
        ) from None


def record_activation_quantization(name: str, x: object) -> Accuracy | None:
    """Measure int8 per-token activation quantization of ``x`` against its float values.

    A runtime sample (subject to sampling and budget); returns None when skipped.
    """

    def measure() -> tuple[Accuracy, bool]:
        q, scales = quantize_activations(x)
        xf = np.asarray(x, dtype=np.float32)
        deq = q.astype(np.float32) / (scales[:, None] if q.ndim == 2 else scales[0])
        ref, cand, sampled = _row_sample(xf, deq.reshape(xf.shape))
        return accuracy(ref, cand), sampled

    result: Accuracy | None = _runtime("activation", name, "int8", "fp32", measure)
    return result


def _count_overflows(name: str, fmt: str, activations: object, codes: object) -> None:
    """Count the outputs where bitnet.cpp's x86 AVX2 kernel would wrap (I2_S with K a
    multiple of 128; other formats and shapes never run that kernel)."""
    x = _as_array(activations() if callable(activations) else activations, "activations")
    c = _as_array(codes() if callable(codes) else codes, "codes")
    if fmt != "i2_s" or c.ndim != 2 or c.shape[1] % I2S_BLOCK["x86"]:
        return
    q, _ = quantize_activations(x)
    n = int(np.count_nonzero(kernel_overflows(q, c)))
    attrs: dict[str, AttrValue] = {"bitnet.quant.format": fmt, "bitnet.tensor": _tensor_name(name)}
    _OVERFLOWS.add(key_of(attrs), n)


def compare_outputs(
    name: str,
    reference: object,
    candidate: object,
    *,
    format: str = "i2_s",
    reference_kind: str = "fp32",
    kind: str = "output",
    activations: object = None,
    codes: object = None,
    admitted: bool = False,
) -> Accuracy | None:
    """Compare a layer output (or logits) with a reference and record it.

    ``reference`` and ``candidate`` may be arrays or zero-argument callables returning them;
    a callable runs only when the sample is taken, so a costly reference pass is skipped with
    the sample. ``reference_kind="fp32"``: quantization error against the float model.
    ``reference_kind="quantized"``: kernel fidelity against the quantized reference (or a
    second implementation); should be ~1.0, drift here is a bug. ``kind="logits"`` records
    the top-1 agreement as the accuracy ratio. A runtime sample; None when skipped.

    With the layer's float ``activations`` (tokens, K) and ternary ``codes`` (M, K) (arrays or
    callables, like the others), an I2_S sample also counts the outputs where bitnet.cpp's x86
    AVX2 kernel overflows in ``bitnet.quant.kernel_overflows``::

        quant.compare_outputs("layers.3.mlp.down_proj", ref, y, reference_kind="quantized",
                              activations=x, codes=codes)

    ``admitted=True``: the sample belongs to a group already drawn by
    :func:`admit_runtime_sample`, so it is not drawn again (the time budget still applies).
    """
    kind = _check_choice("kind", kind, KINDS[1:])

    def measure() -> tuple[Accuracy, bool]:
        # A callable is only called for a sample that is taken: expensive references cost
        # nothing on skipped calls.
        if activations is not None and codes is not None:
            _count_overflows(name, str(format).lower(), activations, codes)
        ref = _as_array(reference() if callable(reference) else reference, "reference")
        cand = _as_array(candidate() if callable(candidate) else candidate, "candidate")
        r, c, sampled = _row_sample(ref, cand)
        acc = accuracy(r, c)
        if kind == "logits":
            agreement: LogitsAgreement = logits_agreement(r, c)
            acc = Accuracy(
                acc.cosine, acc.sqnr_db, acc.rel_l2, acc.mse, acc.max_abs, agreement.top1, acc.n
            )
        return acc, sampled

    result: Accuracy | None = _runtime(kind, name, format, reference_kind, measure, admitted)
    return result


def admit_runtime_sample(kind: str = "output", *, rate: float | None = None) -> bool:
    """Draw once for a group of runtime samples, e.g. the layer checks of one request.

    True at ``rate`` (default ``BITNET_OBS_QUANT_SAMPLE_RATE``) while the time budget
    (``BITNET_OBS_QUANT_BUDGET``) has credit; False is counted as one skipped sample (reason
    ``sampling`` or ``budget``). Record the group's samples with ``admitted=True`` so they are
    not drawn a second time. Never raises::

        if quant.admit_runtime_sample():
            quant.compare_outputs("layers.0.q_proj", ref, out, admitted=True)
    """
    try:
        if rate is None or not 0.0 <= rate <= 1.0:
            rate = _config.current().quant_sample_rate
    except Exception as exc:
        internal_error("quant_admit", exc)
        return False
    return _sampling.admit(kind, rate)


spend = _sampling.spend


@_state.on_fork
def _reinit_after_fork() -> None:
    global _names_lock
    _names_lock = threading.Lock()


@_state.on_reset(phase=_state.CLEAR)
def _reset() -> None:
    with _names_lock:
        _names.clear()
