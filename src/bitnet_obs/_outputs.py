"""What one request learned about its output: degenerate-output verdicts and logits statistics.

The request path (:mod:`bitnet_obs._call`) creates an :class:`OutputWatch` the first time a
call sees token ids (a streamed int, a chunk of ids, ``add_output_ids``, a returned id
sequence) or logits (``observe_logits``), and records it when the call ends. Imported by
``configure()`` (or at decoration when numpy is loaded already), never on the request path.

Ids and logits never leave the process: only the measures of :mod:`bitnet_obs.output` do (the
longest run, the lowest windowed distinct fraction, the reason, entropy and top-1 margin).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bitnet_obs import _config, _instruments
from bitnet_obs._degenerate import REASONS, DegenerateThresholds, OutputVerdict
from bitnet_obs._instruments import Bound
from bitnet_obs._tally import AttrKey, AttrValue, key_of
from bitnet_obs._tokens import id_array_size
from bitnet_obs.output import DegenerateDetector, detect_degenerate, logits_stats

__all__ = ["Bounds", "OutputWatch", "ids_of", "span_attributes"]

#: Most decoding steps of one ``observe_logits`` measured (the last ones: the freshest).
MAX_LOGIT_STEPS = 64


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
            self._stream().extend(rows[0])

    # ----- logits -----
    def add_logits(self, logits: Any) -> float:
        """Entropy and top-1 margin of the last :data:`MAX_LOGIT_STEPS` steps; the seconds
        it took. Raises OutputInputError for what is not logits."""
        started = time.perf_counter()
        shape = getattr(logits, "shape", None)
        if shape is not None and len(shape) == 2 and shape[0] > MAX_LOGIT_STEPS:
            logits = logits[-MAX_LOGIT_STEPS:]  # before any copy off a device
        stats = logits_stats(np.asarray(_as_numpy(logits)))
        self.entropy.extend(stats.entropy.tolist())
        self.margin.extend(stats.top1_margin.tolist())
        return time.perf_counter() - started

    # ----- the end -----
    def outputs(self) -> list[OutputVerdict]:
        """Every judged output: the batches' rows and the streamed output (outputs shorter
        than ``min_tokens`` are not judged, and not recorded)."""
        verdicts = self.verdicts
        detector = self.detector
        if detector is not None and detector.tokens >= detector.thresholds.min_tokens:
            verdicts = [*verdicts, detector.result()]
        return verdicts


class Bounds:
    """The output instruments bound to one request variant's attributes (built once per
    variant and binding by :class:`bitnet_obs._call.Variant`)."""

    __slots__ = ("entropy", "fraction", "margin", "reasons", "run")

    def __init__(self, attrs: Mapping[str, AttrValue]) -> None:
        self.run = _instruments.OUTPUT_REPEAT_RUN.bound(attrs)
        self.fraction = _instruments.OUTPUT_DISTINCT_FRACTION.bound(attrs)
        self.entropy = _instruments.LOGITS_ENTROPY.bound(attrs)
        self.margin = _instruments.LOGITS_TOP1_MARGIN.bound(attrs)
        #: the degenerate counter's series of each reason
        self.reasons = tuple(
            key_of({**attrs, "bitnet.degenerate.reason": reason}) for reason in REASONS
        )

    def records(
        self, watch: OutputWatch, verdicts: list[OutputVerdict]
    ) -> tuple[list[tuple[Bound, float]], list[tuple[AttrKey, int]]]:
        """The histogram records and the counter adds (every reason, 0s included: the series
        start at 0 with the first judged output) of one request."""
        pairs: list[tuple[Bound, float]] = []
        counts: list[tuple[AttrKey, int]] = []
        if verdicts:
            run, fraction = self.run, self.fraction
            for v in verdicts:
                pairs.append((run, v.longest_run))
                pairs.append((fraction, v.distinct_fraction))
            found = [v.reason for v in verdicts if v.reason is not None]
            for reason, key in zip(REASONS, self.reasons, strict=True):
                counts.append((key, found.count(reason) if found else 0))
        if watch.entropy:
            pairs.extend((self.entropy, e) for e in watch.entropy)
            pairs.extend((self.margin, m) for m in watch.margin)
        return pairs, counts


def _judge(row: Any, th: DegenerateThresholds) -> OutputVerdict:
    verdict: OutputVerdict = detect_degenerate(row, th)  # a row is 1-D: one verdict
    return verdict


def _discard(_: int) -> None:
    pass


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
