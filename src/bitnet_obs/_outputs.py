"""What one request learned about its output: degenerate-output verdicts and logits statistics.

The request path (:mod:`bitnet_obs._call`) creates an :class:`OutputWatch` the first time a
call sees token ids (a streamed int, a chunk of ids, ``add_output_ids``, a returned id
sequence) or logits (``observe_logits``), and records it when the call ends. Loaded on that
first use only: calls that never produce ids never import numpy through here.

Ids and logits never leave the process: only the measures of :mod:`bitnet_obs.output` do (the
longest run, the lowest windowed distinct fraction, the reason, entropy and top-1 margin).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bitnet_obs import _config, _instruments, _tally
from bitnet_obs._degenerate import REASONS, DegenerateThresholds, OutputVerdict, short
from bitnet_obs._instruments import Bound
from bitnet_obs._selfmon import describe, internal_error
from bitnet_obs._tally import AttrValue, key_of
from bitnet_obs._tokens import id_array_size
from bitnet_obs.output import DegenerateDetector, detect_degenerate, logits_stats

__all__ = ["OutputWatch", "ids_of"]

#: Most decoding steps of one ``observe_logits`` measured (the last ones: the freshest).
MAX_LOGIT_STEPS = 64


def _as_numpy(value: Any) -> Any:
    """A torch tensor as numpy (copied off its device); anything else as is."""
    detach = getattr(value, "detach", None)
    if callable(detach) and hasattr(value, "cpu"):
        return detach().cpu().numpy()
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


class OutputWatch:
    """One call's output measures until its end."""

    __slots__ = ("detector", "entropy", "margin", "thresholds", "verdicts")

    def __init__(self) -> None:
        settings = _config.current()
        self.thresholds: DegenerateThresholds | None = (
            settings.degenerate_thresholds if settings.degenerate_detection else None
        )
        self.detector: DegenerateDetector | None = None
        self.verdicts: list[OutputVerdict] = []
        self.entropy: list[float] = []
        self.margin: list[float] = []

    # ----- ids -----
    def sink(self) -> Callable[[int], None]:
        """The append of this call's streamed output (``pump`` keeps it bounded)."""
        if self.thresholds is None:
            return _discard
        return self._stream().append

    def _stream(self) -> DegenerateDetector:
        if self.detector is None:
            self.detector = DegenerateDetector(self.thresholds)
        return self.detector

    def pump(self) -> None:
        if self.detector is not None:
            self.detector.pump()

    def add(self, rows: list[Any], batch: bool) -> None:
        """Ids from :func:`ids_of`: a batch is judged row by row now; one sequence continues
        the call's output."""
        th = self.thresholds
        if th is None:
            return
        if not batch:
            self._stream().extend(rows[0])
            return
        for row in rows:
            if len(row) < th.min_tokens:  # plain Python: a numpy pass costs more
                self.verdicts.append(short(row.tolist() if isinstance(row, np.ndarray) else row))
            else:
                self.verdicts.append(detect_degenerate(row, th))

    # ----- logits -----
    def add_logits(self, logits: Any) -> float:
        """Entropy and top-1 margin of the last :data:`MAX_LOGIT_STEPS` steps; the seconds
        it took. Raises OutputInputError for what is not logits."""
        started = time.perf_counter()
        a = np.asarray(_as_numpy(logits))
        if a.ndim == 2 and a.shape[0] > MAX_LOGIT_STEPS:
            a = a[-MAX_LOGIT_STEPS:]
        stats = logits_stats(a)
        self.entropy.extend(stats.entropy.tolist())
        self.margin.extend(stats.top1_margin.tolist())
        return time.perf_counter() - started

    # ----- the end -----
    def outputs(self) -> list[OutputVerdict]:
        verdicts = list(self.verdicts)
        if self.detector is not None and self.detector.tokens:
            verdicts.append(self.detector.result())
        return verdicts

    def record(self, attrs: dict[str, AttrValue], span: Any, judged_ok: bool) -> None:
        """Record the measures with the request's attributes (without outcome or error);
        verdicts only for a call that ended well (``judged_ok``). Never raises."""
        try:
            context = span.get_span_context() if span is not None else None
            pairs: list[tuple[Bound, float]] = []
            verdicts = self.outputs() if judged_ok else []
            if verdicts:
                run = _instruments.OUTPUT_REPEAT_RUN.bound(attrs)
                fraction = _instruments.OUTPUT_DISTINCT_FRACTION.bound(attrs)
                for v in verdicts:
                    pairs.append((run, v.longest_run))
                    pairs.append((fraction, v.distinct_fraction))
                _count(attrs, verdicts)
            if self.entropy:
                entropy = _instruments.LOGITS_ENTROPY.bound(attrs)
                margin = _instruments.LOGITS_TOP1_MARGIN.bound(attrs)
                pairs.extend((entropy, e) for e in self.entropy)
                pairs.extend((margin, m) for m in self.margin)
            if pairs:
                _instruments.record_bound(pairs, context)
            if verdicts and span is not None and span.is_recording():
                span.set_attributes(_span_attributes(verdicts))
        except Exception as exc:
            internal_error("output_health", exc)


def _discard(_: int) -> None:
    pass


def _count(attrs: dict[str, AttrValue], verdicts: list[OutputVerdict]) -> None:
    """Degenerate outputs by reason; every reason's series starts at 0 with the first judged
    output of these attributes, so a ratio has a denominator from the start."""
    tally = _instruments.DEGENERATE_OUTPUTS.tally
    counts = [
        (key_of(dict(attrs, **{"bitnet.degenerate.reason": reason})),
         sum(1 for v in verdicts if v.reason == reason))
        for reason in REASONS
    ]  # fmt: skip
    with _tally.REQUEST_LOCK:  # a shared tally: the request path's one lock
        for key, n in counts:
            tally.add_locked(key, n)


def _span_attributes(verdicts: list[OutputVerdict]) -> dict[str, AttrValue]:
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


def bad_ids(where: str, value: object) -> None:
    internal_error("bad_output_ids", detail=f"{where}({describe(value)})")
