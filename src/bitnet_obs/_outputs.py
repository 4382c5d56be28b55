"""Output health on the request path, in one room: degenerate-output verdicts and logits
statistics of each monitored call.

A call reaches this module only through :func:`bitnet_obs._call.outputs`, a typed accessor
that imports it the first time token ids or logits appear (``configure()`` imports it ahead,
and so does a decoration once numpy is loaded, so the request path never runs an import
that a fork in another thread could interrupt). It keeps one :class:`OutputWatch` per call
(the streamed ids' buffer, the verdicts, the logits figures) and, at the call's end, turns it
into records for the recorder in force (:class:`~bitnet_obs._recorder.OutputRecords`).

Every method here swallows and counts its own failures: nothing reaches the caller. Ids and
logits never leave the process, only the measures of :mod:`bitnet_obs.output` do (the
longest run, the lowest windowed distinct fraction, the reason, entropy and top-1 margin).

Logits are sampled on their own setting, ``BITNET_OBS_LOGITS_SAMPLE_RATE`` (drawn once per
call), and their time is charged to the quantization checks' budget
(``BITNET_OBS_QUANT_BUDGET``): both are optional statistics competing for the same CPU.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from bitnet_obs import _config, _instruments, _sampling
from bitnet_obs._degenerate import (
    LIST_JUDGED,
    REASONS,
    DegenerateThresholds,
    OutputVerdict,
    judge_list,
)
from bitnet_obs._recorder import Handle, OutputRecords, Recorder, Variant
from bitnet_obs._selfmon import describe, internal_error
from bitnet_obs._stream import IdBuffer
from bitnet_obs._tally import AttrKey, AttrValue, key_of
from bitnet_obs._tokens import id_array_size
from bitnet_obs.output import DegenerateDetector, detect_degenerate, logits_stats

__all__ = ["ROOM", "OutputHealth", "OutputWatch"]

#: Most decoding steps of one ``observe_logits`` measured (the last ones: the freshest).
MAX_LOGIT_STEPS = 64


class OutputWatch:
    """One call's output measures until its end."""

    __slots__ = (
        "detector",
        "entropy",
        "ids_reported",
        "margin",
        "thresholds",
        "verdicts",
    )

    def __init__(self) -> None:
        settings = _config.current()
        self.thresholds: DegenerateThresholds | None = (
            settings.degenerate_thresholds if settings.degenerate_detection else None
        )
        self.detector: DegenerateDetector | None = None
        self.verdicts: list[OutputVerdict] = []
        self.entropy: list[float] = []
        self.margin: list[float] = []
        #: the call reports its ids itself (add_output_ids): its stream and result are not
        #: judged a second time
        self.ids_reported = False

    def stream(self) -> DegenerateDetector | None:
        """The detector of the call's streamed output (None: detection is off)."""
        if self.detector is None and self.thresholds is not None:
            self.detector = DegenerateDetector(self.thresholds)
        return self.detector

    def add(self, rows: list[Any], batch: bool, whole: bool = False) -> None:
        """Ids from :func:`ids_of`. A batch, or a ``whole`` output (a call's returned ids), is
        judged row by row now; one sequence otherwise continues the call's output."""
        th = self.thresholds
        if th is None:
            return
        if batch or whole:
            for row in rows:
                if len(row) >= th.min_tokens:  # shorter outputs are not judged: skipped
                    self.verdicts.append(_judge(row, th))
        else:
            detector = self.stream()
            assert detector is not None
            detector.extend(rows[0])

    def outputs(self) -> list[OutputVerdict]:
        """Every judged output: the batches' rows and the streamed output (outputs shorter
        than ``min_tokens`` are not judged, and not recorded)."""
        verdicts = self.verdicts
        detector = self.detector
        if detector is not None and detector.tokens >= detector.thresholds.min_tokens:
            verdicts = [*verdicts, detector.result()]
        return verdicts


class OutputHandles:
    """The output-health instruments bound to one variant's attributes of every outcome."""

    __slots__ = ("distinct_fraction", "entropy", "reasons", "repeat_run", "top1_margin")

    def __init__(self, recorder: Recorder, attrs: Mapping[str, AttrValue]) -> None:
        self.repeat_run = recorder.handle(_instruments.OUTPUT_REPEAT_RUN, attrs)
        self.distinct_fraction = recorder.handle(_instruments.OUTPUT_DISTINCT_FRACTION, attrs)
        self.entropy = recorder.handle(_instruments.LOGITS_ENTROPY, attrs)
        self.top1_margin = recorder.handle(_instruments.LOGITS_TOP1_MARGIN, attrs)
        #: the degenerate counter's series of each reason
        self.reasons = tuple(
            key_of({**attrs, "bitnet.degenerate.reason": reason}) for reason in REASONS
        )


class OutputHealth:
    """What a monitored call does with ids and logits (see the module docstring)."""

    def watch(self) -> OutputWatch:
        return OutputWatch()

    def add_ids(self, watch: OutputWatch, ids: Any) -> int | None:
        """``add_output_ids``: the number of ids, judged as one output continued or a batch;
        None (counted) when ``ids`` holds none."""
        try:
            found = ids_of(ids)
            if found is None:
                internal_error("bad_output_ids", detail=f"add_output_ids({describe(ids)})")
                return None
            rows, batch = found
            watch.ids_reported = True
            watch.add(rows, batch)
            return sum(len(row) for row in rows)
        except Exception as exc:
            internal_error("bad_output_ids", exc)
            return None

    def draw_logits(self) -> bool:
        """A call's logits draw, once at its first ``observe_logits``, at
        ``BITNET_OBS_LOGITS_SAMPLE_RATE`` within the time budget (a refusal is counted): most
        calls are refused here, before any output measure exists for them."""
        settings = _config.current()
        return _sampling.admit("logits", settings.logits_sample_rate, settings.quant_budget)

    def observe_logits(self, watch: OutputWatch, logits: Any, first: bool) -> None:
        """``observe_logits`` of an admitted call; its later reports each within the time
        budget (skips are counted)."""
        try:
            if not first and not _sampling.admit("logits", 1.0):
                return  # an admitted call over the time budget: this step is skipped, counted
            if callable(logits):
                logits = logits()
            _sampling.spend(_add_logits(watch, logits))
        except Exception as exc:
            internal_error(
                "bad_logits", _config.loggable(exc), f"observe_logits({describe(logits)})"
            )

    def stream_ids(self, watch: OutputWatch, ids: Any, whole: bool = False) -> None:
        """A stream's ids, in order: a meter's buffer of int ids (an id beyond int64 stops the
        judging: what came before is judged, nothing after; ``whole``: the entire output,
        judged now) or a chunk item (a list or 1-D array continues the output, a 2-D item is
        consecutive steps of it)."""
        if watch.ids_reported:
            return
        try:
            if type(ids) is IdBuffer:
                th = watch.thresholds
                if whole and th is not None and listed(ids):
                    watch.verdicts.append(judge_list(ids, th))
                    return
                detector = watch.stream()
                if detector is not None:
                    detector.extend(_int64(watch, ids))
                return
            found = ids_of(ids)
            if found is not None:
                rows, batch = found
                for row in rows if batch else rows[:1]:
                    watch.add([row], False)
        except Exception as exc:
            internal_error("output_health", exc, f"{describe(ids)} item")

    def judge_result(self, watch: OutputWatch, result: Any) -> None:
        """A call's returned ids are its whole output: judged now, row by row."""
        if watch.ids_reported:
            return
        try:
            found = ids_of(result)
            if found is not None:
                watch.add(found[0], found[1], whole=True)
        except Exception as exc:
            internal_error("output_health", exc, f"{describe(result)} result")

    def records(self, variant: Variant, watch: OutputWatch, ok: bool) -> OutputRecords | None:
        """What the call's end records: every judged output of a successful call (every
        reason's counter, 0s included, so the series start with the first judged output) and
        the logits figures of any call; None when there is nothing."""
        try:
            verdicts = watch.outputs() if ok else []
            if not verdicts and not watch.entropy:
                return None
            handles = variant.outputs
            if handles is None:
                handles = variant.outputs = OutputHandles(variant.recorder, variant.base_attrs)
            records: list[tuple[Handle, float]] = []
            counts: list[tuple[AttrKey, int]] = []
            if verdicts:
                for v in verdicts:
                    records.append((handles.repeat_run, v.longest_run))
                    records.append((handles.distinct_fraction, v.distinct_fraction))
                found = [v.reason for v in verdicts if v.reason is not None]
                for reason, key in zip(REASONS, handles.reasons, strict=True):
                    counts.append((key, found.count(reason)))
            records.extend((handles.entropy, e) for e in watch.entropy)
            records.extend((handles.top1_margin, m) for m in watch.margin)
            return OutputRecords(records, counts, span_attributes(verdicts) if verdicts else {})
        except Exception as exc:
            internal_error("output_health", exc)
            return None


ROOM = OutputHealth()


def _as_numpy(value: Any) -> Any:
    """A torch tensor as numpy (copied off its device; floating types as float32, which numpy
    has for every one of them, bfloat16 included); anything else as is."""
    detach = getattr(value, "detach", None)
    if callable(detach) and hasattr(value, "cpu"):
        tensor = detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.numpy()
    return value


def ids_of(value: Any) -> tuple[list[Any], bool] | None:
    """Token ids in ``value``: (rows, batch) with rows 1-D int64 arrays or int lists, or None
    when it holds no ids (text, floats, objects). ``batch``: one output per row (2-D)."""
    kind = type(value)
    if kind is list or kind is tuple:
        if not value:
            return None
        first = type(value[0])
        if first is int:
            if all(type(x) is int for x in value):
                return [value], False
            return None
        if first is list or first is tuple:
            if all(type(r) in (list, tuple) and all(type(x) is int for x in r) for r in value):
                return [list(r) for r in value], True
            return None
        rows = [_row(r) for r in value]  # a ragged batch: one 1-D array or tensor per row
        return (rows, True) if all(r is not None for r in rows) else None
    if id_array_size(value) is None:  # not an integer array or tensor
        return None
    a = np.asarray(_as_numpy(value))
    if a.ndim == 1:
        return [a], False
    if a.ndim == 2:
        return list(a), True
    return None


def _row(value: Any) -> Any:
    """One row of a ragged batch as a 1-D integer array, or None."""
    if id_array_size(value) is None:
        return None
    a = np.asarray(_as_numpy(value))
    return a if a.ndim == 1 else None


def _add_logits(watch: OutputWatch, logits: Any) -> float:
    """Entropy and top-1 margin of the last :data:`MAX_LOGIT_STEPS` steps; the seconds it
    took. Raises OutputInputError for what is not logits."""
    started = time.perf_counter()
    shape = getattr(logits, "shape", None)
    if shape is not None and len(shape) == 2 and shape[0] > MAX_LOGIT_STEPS:
        logits = logits[-MAX_LOGIT_STEPS:]  # before any copy off a device
    stats = logits_stats(np.asarray(_as_numpy(logits)))
    watch.entropy.extend(stats.entropy.tolist())
    watch.margin.extend(stats.top1_margin.tolist())
    return time.perf_counter() - started


def _int64(watch: OutputWatch, ids: IdBuffer) -> Any:
    """A meter's ids as int64; the ones before an id beyond int64 if there is one (counted,
    and the stream's later ids are not judged)."""
    try:  # struct packs a list of ints three times faster than np.array converts it
        return np.frombuffer(struct.pack(f"{len(ids)}q", *ids), np.int64)
    except struct.error:
        good = next(i for i, x in enumerate(ids) if not -(2**63) <= x < 2**63)
        internal_error("bad_output_ids", detail="a streamed id beyond int64")
        watch.ids_reported = True
        return np.array(ids[:good], dtype=np.int64)


def _judge(row: Any, th: DegenerateThresholds) -> OutputVerdict:
    if type(row) is list and listed(row):
        return judge_list(row, th)
    verdict: OutputVerdict = detect_degenerate(row, th)  # a row is 1-D: one verdict
    return verdict


def listed(ids: list[int]) -> bool:
    """A whole output of int ids short enough for :func:`judge_list` (faster than the numpy
    pass on the request path, see there) and within int64, as the numpy pass requires."""
    return 0 < len(ids) < LIST_JUDGED and min(ids) >= _INT64_MIN and max(ids) <= _INT64_MAX


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def span_attributes(verdicts: list[OutputVerdict]) -> dict[str, AttrValue]:
    """The judged outputs on the request's span: numbers and the reason, never ids; for a
    batch, the number of degenerate rows and the worst figures."""
    if len(verdicts) == 1:
        return dict(verdicts[0].span_attributes())
    worst: dict[str, AttrValue] = {
        "bitnet.output.sequences": len(verdicts),
        "bitnet.output.degenerate_sequences": sum(1 for v in verdicts if v.degenerate),
        "bitnet.output.repeat_run": max(v.longest_run for v in verdicts),
        "bitnet.output.distinct_fraction": round(min(v.distinct_fraction for v in verdicts), 4),
        "bitnet.output.cycle_span": max(v.cycle_span for v in verdicts),
    }
    reason = next((v.reason for v in verdicts if v.reason is not None), None)
    if reason is not None:
        worst["bitnet.degenerate.reason"] = reason
    return worst
