"""The degenerate-output measures: thresholds, verdict, and the chunked numpy pass.

Public through :mod:`bitnet_obs.output`. One pass (:func:`advance`) folds a chunk of ids into
a small carried state, so a stream is judged in bounded memory and gets the same answer for
any chunking (chunks start on window boundaries).
"""

from __future__ import annotations

import functools
import math
import re
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import eq
from typing import Final

import numpy as np
import numpy.typing as npt

from bitnet_obs._errors import ConfigError

REASONS: Final = ("repeat_run", "cycle", "low_diversity")


I64 = npt.NDArray[np.int64]
EMPTY: Final[I64] = np.zeros(0, np.int64)
_ZEROS: Final[I64] = np.zeros(64, np.int64)  # left padding of a stream's first ids


@dataclass(frozen=True)
class DegenerateThresholds:
    """When an output counts as degenerate. ``0`` switches a reason off.

    Set on real tokenizations (``tests/fixtures/tokens``: Llama 3's BPE, the tokenizer of
    BitNet b1.58 2B4T; Llama 2's SentencePiece, 1bitLLM's; GPT-2's BPE; plus the byte-level
    ByT5/Canine and small BPEs of ``tests/fixtures/text``).  With the two BitNet tokenizers the
    healthy texts *and* the answers that are repetitive by nature -- a list of 40 zeros, an
    empty Markdown table template, an 80-column box-drawing rule or frame -- stay at least 1.5x
    away from every threshold; the worst figure is given for each.  Past that a content-free
    detector cannot tell structure from a loop, and judges it degenerate (the boundary is
    given too).

    * ``repeat_run`` (32): a run of one token this long -- "!!!!" collapse. Healthy: 21 (code
      indentation, byte level); structured: 20 (an 80-column rule, Llama 2: 4 columns per
      token), 10 with Llama 3. Boundary: a rule of ~128 columns in Llama 2's tokens, ~256 in
      Llama 3's; GPT-2 has no merged "─" runs (an 80-column frame is a run of 63).
    * ``cycle_span`` (192): a cycle of period 2..``max_period`` covering this many tokens.
      Healthy: 41 (a 10-column Markdown table rule, byte level), 21 with the real BPEs;
      structured: 118 (a list of 40 zeros: "0", ",", " " in Llama 3 and 2). Boundary: a list
      of ~65 zeros.
    * ``max_period`` (8): longest cycle period looked for.
    * ``min_distinct_fraction`` (0.03): a window whose fraction of distinct ids is below this.
      Healthy: 0.047 (counting "1, 2, 3, ..." byte by byte: 12 symbols), 0.0625 with Llama 2's
      tokens; structured: 0.069 (a 15-row table template, Llama 2). Boundary: a *bare* list of
      zeros (no other text: 5 distinct ids) is 0.042 at 40 zeros and judged degenerate from
      ~55. With a BPE vocabulary, 0.1 is still safe for prose and catches more.
    * ``window`` (256): tokens per distinct-fraction window.
    * ``min_tokens`` (32): shorter outputs are measured but never judged; also the shortest
      trailing window that counts.

    >>> DegenerateThresholds(repeat_run=64).repeat_run
    64
    """

    repeat_run: int = 32
    cycle_span: int = 192
    max_period: int = 8
    min_distinct_fraction: float = 0.03
    window: int = 256
    min_tokens: int = 32

    def __post_init__(self) -> None:
        check_thresholds(self.__dict__, lambda name: f"degenerate thresholds: {name}")


def check_thresholds(values: Mapping[str, object], label: Callable[[str], str]) -> None:
    """The thresholds' ranges and cross-checks (cycle span above the max period, min tokens
    within the window, no run of 1); ``label`` names a field in the error (the settings name
    their environment variable)."""

    def whole(name: str, low: int, high: int, zero_ok: bool = False) -> int:
        value = values[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (low <= value <= high or (zero_ok and value == 0))
        ):
            off = " or 0 (off)" if zero_ok else ""
            raise ConfigError(f"{label(name)}={value!r}; accepted: an integer {low}..{high}{off}")
        return value

    whole("repeat_run", 2, 1 << 40, zero_ok=True)
    period = whole("max_period", 2, 64)
    whole("cycle_span", period + 1, 1 << 40, zero_ok=True)
    window = whole("window", 8, 1 << 16)
    whole("min_tokens", 1, window)
    fraction = values["min_distinct_fraction"]
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0.0 <= fraction < 1.0
    ):
        raise ConfigError(
            f"{label('min_distinct_fraction')}={fraction!r}; accepted: a number 0 <= f < 1 (0: off)"
        )


DEFAULT_THRESHOLDS: Final = DegenerateThresholds()


@dataclass(frozen=True)
class OutputVerdict:
    """The measures of one output and the verdict. ``reason`` is None when healthy or not
    judged (``judged`` is False below ``min_tokens``)."""

    tokens: int
    longest_run: int
    distinct_fraction: float
    cycle_span: int
    cycle_period: int
    judged: bool
    reason: str | None

    @property
    def degenerate(self) -> bool:
        return self.reason is not None

    def span_attributes(self) -> dict[str, int | float | str]:
        """Content-free span attributes (numbers and the reason; never ids)."""
        attrs: dict[str, int | float | str] = {
            "bitnet.output.repeat_run": self.longest_run,
            "bitnet.output.distinct_fraction": round(self.distinct_fraction, 4),
            "bitnet.output.cycle_span": self.cycle_span,
        }
        if self.reason is not None:
            attrs["bitnet.degenerate.reason"] = self.reason
        return attrs


class State:
    """What is carried between chunks: a few numbers and the last ``max_period`` ids."""

    __slots__ = ("best_run", "cyc", "cyc_best", "hist", "min_frac", "n", "run")

    n: int  # ids judged so far (always a whole number of windows until the end)
    hist: I64
    run: int  # length of the current run of one token
    best_run: int
    cyc: I64  # current cycle stretch, per period
    cyc_best: I64
    min_frac: float  # lowest distinct fraction of a counted window

    def __init__(self, periods: int) -> None:
        self.reset(periods)

    def reset(self, periods: int) -> None:
        self.n, self.run, self.best_run, self.min_frac = 0, 0, 0, math.inf
        self.hist = EMPTY
        self.cyc = np.zeros(periods, np.int64)
        self.cyc_best = np.zeros(periods, np.int64)

    def copy(self) -> State:
        other = State(0)
        other.n, other.hist, other.run, other.best_run = self.n, self.hist, self.run, self.best_run
        other.cyc, other.cyc_best, other.min_frac = self.cyc, self.cyc_best, self.min_frac
        return other  # arrays are replaced, never mutated, by advance


def _stretches(rows: npt.NDArray[np.bool_], carry: I64) -> tuple[I64, I64]:
    """Per row of ``rows`` (each padded with a False column at both ends): the longest stretch
    of True and the one ending the chunk, a stretch starting it continuing the row's carry.
    Works on the stretch boundaries only, so healthy text (few, short stretches) is cheap."""
    r, width = rows.shape
    flat = rows.reshape(-1).view(np.int8)
    d = np.subtract(flat[1:], flat[:-1])
    starts = (d == 1).nonzero()[0]  # a stretch begins at flat index start + 1 ...
    ends = (d == -1).nonzero()[0]  # ... and ends at flat index end (inclusive)
    lengths = ends - starts
    row = ends // width
    lead = starts - row * width == 0
    lengths[lead] += carry[row[lead]]
    best = np.zeros(r, np.int64)
    np.maximum.at(best, row, lengths)
    last = np.zeros(r, np.int64)
    tail = ends - row * width == width - 2
    last[row[tail]] = lengths[tail]
    return best, last


@functools.lru_cache(maxsize=64)
def _first_ids_valid(top: int, k: int) -> npt.NDArray[np.bool_]:
    """[p - 2, j]: position j of a stream's first chunk has an id p positions back, with ``k``
    ids carried before the chunk (read-only, cached: the same shape for every stream)."""
    valid = np.arange(top)[None, :] >= (np.arange(2, top + 1) - k)[:, None]
    valid.flags.writeable = False
    return valid


@functools.lru_cache(maxsize=64)
def _run_limits(top: int) -> I64:
    """[p - 2]: p - 1, the run (in repeats) at which the last p ids are all one token."""
    limits = np.arange(1, top, dtype=np.int64)[:, None]
    limits.flags.writeable = False
    return limits


def _few_stretches(hits: list[int], width: int, r: int, carry: I64) -> tuple[I64, I64]:
    """:func:`_stretches` from the flat indices of the True cells (sorted), in Python: a
    healthy chunk has few, and a loop over them beats the dozen numpy calls above."""
    best, last = [0] * r, [0] * r
    previous = carry.tolist()
    i, n = 0, len(hits)
    while i < n:
        first = hits[i]
        j = i
        while j + 1 < n and hits[j + 1] == hits[j] + 1:  # padding keeps rows apart
            j += 1
        row, column = divmod(first, width)
        length = j - i + 1
        if column == 1:  # the chunk's first position: the carried stretch goes on
            length += previous[row]
        if length > best[row]:
            best[row] = length
        if hits[j] - row * width == width - 2:  # ends the chunk: carried to the next one
            last[row] = length
        i = j + 1
    return np.array(best, np.int64), np.array(last, np.int64)


#: True cells (id pairs one period apart) up to which :func:`_few_stretches` is used.
_FEW = 64


def advance(st: State, x: I64, th: DegenerateThresholds) -> None:
    """Fold ids ``x`` (starting at a window boundary) into the state.

    Healthy text takes the short way where it can: no id repeating the one before it means
    no run to measure and none to take out of the cycles, and few ids equal to one a period
    back means their stretches are found in Python (same figures, fewer numpy calls: the
    fixed cost of judging a short output)."""
    m = x.shape[0]
    if m == 0:
        return
    top = th.max_period
    k = st.hist.shape[0]
    pad = top - k  # > 0 only at the start of a stream: no ids before the first
    ext = np.concatenate((_ZEROS[:pad], st.hist, x)) if pad else np.concatenate((st.hist, x))
    same = ext[top:] == ext[top - 1 : -1]  # same[j]: x[j] repeats the id before it
    if k == 0:
        same[0] = False  # the stream's first id repeats nothing
    repeats = bool(same.any())
    reps: I64 | None = None
    if repeats:
        # reps[j]: how many times the id at j repeats the one before, counting into the past
        pos = np.arange(1, m + 1, dtype=np.int64)
        last_new = np.where(same, 0, pos)
        np.maximum.accumulate(last_new, out=last_new)
        reps = pos - last_new
        if st.run > 1:  # the run the previous chunk ended with goes on
            reps[: int(np.searchsorted(last_new, 0, side="right"))] += st.run - 1
        st.best_run = max(st.best_run, int(reps.max()) + 1)
        st.run = int(reps[-1]) + 1
    else:  # every id differs from the one before: runs of one
        st.best_run = max(st.best_run, 1)
        st.run = 1
    # rows[p - 2]: x[j] equals the id p before it (a cycle of period p) and the p ids ending
    # at j are not all one token (a run is not a cycle); padded for _stretches
    rows = np.zeros((top - 1, m + 2), np.bool_)
    cyc = rows[:, 1:-1]
    shifted = np.ndarray((top + 1, m), np.int64, ext, 0, (8, 8))  # shifted[i] = ext[i : i + m]
    np.equal(shifted[top - 2 :: -1][: top - 1], x, out=cyc)
    if pad:  # stream start: no id p positions back for the first p - k positions
        span = min(top, m)
        cyc[:, :span] &= _first_ids_valid(top, k)[:, :span]
    if reps is not None:
        cyc &= reps < _run_limits(top)
    hits = np.flatnonzero(rows)
    if hits.shape[0] <= _FEW:
        best, last = _few_stretches(hits.tolist(), m + 2, top - 1, st.cyc)
    else:
        best, last = _stretches(rows, st.cyc)
    st.cyc_best = np.maximum(st.cyc_best, best)
    st.cyc = last
    # distinct fraction per aligned window; a trailing partial window counts if long enough
    w = th.window
    whole = m // w
    if whole:
        s = np.sort(x[: whole * w].reshape(whole, w), axis=1)
        distinct = np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1) + 1
        st.min_frac = min(st.min_frac, int(distinct.min()) / w)
    tail = m - whole * w
    if tail >= th.min_tokens:
        s = np.sort(x[whole * w :])
        st.min_frac = min(st.min_frac, (int(np.count_nonzero(s[1:] != s[:-1])) + 1) / tail)
    st.hist = ext[max(pad, m) :].copy()
    st.n += m


def short(ids: Sequence[int]) -> OutputVerdict:
    """An output shorter than ``min_tokens``: not judged, so only the two measures that are
    recorded as histograms, in plain Python (a numpy pass would cost more than the output)."""
    best = run = 0
    prev: object = None
    for token in ids:
        if token == prev:
            run += 1
        else:
            run, prev = 1, token
        if run > best:
            best = run
    n = len(ids)
    return OutputVerdict(n, best, len(set(ids)) / n if n else 1.0, 0, 0, False, None)


def judge_list(ids: Sequence[int], th: DegenerateThresholds) -> OutputVerdict:
    """A whole output given as a list of ints, judged in Python (the same figures as the numpy
    pass): each measure is a comparison of the ids with themselves shifted, made by ``map``
    in C into bytes, whose runs of 1s ``split`` finds. For an output of up to a few hundred ids
    right after an engine's decode this beats numpy several times over, whose C code the
    decode has pushed out of the caches (docs/performance.md); :data:`LIST_JUDGED` bounds it."""
    n = len(ids)
    if n < th.min_tokens:
        return short(ids)
    # same[k]: ids[k + 1] repeats ids[k]; each run of 1s at same[a..b] is ids[a..b + 1]
    same = bytes(map(eq, islice(ids, 1, None), ids))
    runs: list[tuple[int, int]] = []
    best_run = 1
    if 1 in same:
        for found in _ONES.finditer(same):
            a, b = found.start(), found.end() - 1
            runs.append((a, b))
            best_run = max(best_run, b - a + 2)
    span = period = 0
    for p in range(2, min(th.max_period, n - 1) + 1):
        # cyc[i]: ids[i + p] equals the id p before it ...
        cyc = bytearray(map(eq, islice(ids, p, None), ids))
        if 1 not in cyc:
            continue
        for a, b in runs:  # ... and the p ids ending there are not all one token
            if b - a + 2 >= p:
                cyc[max(a - 1, 0) : b + 2 - p] = bytes(b + 2 - p - max(a - 1, 0))
        stretch = max(map(len, _ONES.findall(cyc)), default=0)
        if stretch and stretch + p > span:
            span, period = stretch + p, p
    w = th.window
    fraction = math.inf
    for start in range(0, n, w):
        size = min(w, n - start)
        if size == w or size >= th.min_tokens:
            fraction = min(fraction, len(set(ids[start : start + w])) / size)
    return OutputVerdict(
        n, best_run, fraction, span, period, True, _reason(best_run, span, fraction, th)
    )


#: The longest output :func:`judge_list` takes (numpy beyond).
LIST_JUDGED = 1024
_ONES = re.compile(rb"\x01+")


def verdict(st: State, th: DegenerateThresholds) -> OutputVerdict:
    n, fraction = st.n, st.min_frac
    span, period = 0, 0
    for i, best in enumerate(st.cyc_best.tolist()):
        if best and best + i + 2 > span:
            span, period = best + i + 2, i + 2
    reason = _reason(st.best_run, span, fraction, th) if n >= th.min_tokens else None
    return OutputVerdict(n, st.best_run, fraction, span, period, True, reason)


def _reason(run: int, span: int, fraction: float, th: DegenerateThresholds) -> str | None:
    """Why an output of at least ``min_tokens`` ids is degenerate (the first threshold it
    crosses, in :data:`REASONS` order), or None."""
    if th.repeat_run and run >= th.repeat_run:
        return "repeat_run"
    if th.cycle_span and span >= th.cycle_span:
        return "cycle"
    if fraction < th.min_distinct_fraction:
        return "low_diversity"
    return None


def flush(buf: array[int], st: State, th: DegenerateThresholds, chunk: int) -> None:
    """Judge the whole chunks in ``buf``; the rest stays buffered."""
    whole = len(buf) // chunk * chunk
    x = np.frombuffer(buf, np.int64)[:whole].copy()  # copied: a viewed buffer cannot shrink
    del buf[:whole]
    for i in range(0, whole, chunk):
        advance(st, x[i : i + chunk], th)


def judge(seq: I64, th: DegenerateThresholds, chunk: int, pad_id: int | None) -> OutputVerdict:
    if pad_id is not None and seq.shape[0]:
        keep = np.flatnonzero(seq != pad_id)
        seq = seq[: keep[-1] + 1] if keep.shape[0] else seq[:0]
    n = seq.shape[0]
    if n < th.min_tokens:
        return short(seq.tolist())
    st = State(th.max_period - 1)
    for i in range(0, n, chunk):
        advance(st, seq[i : i + chunk], th)
    return verdict(st, th)
