"""Is this output degenerate? Content-free checks on token ids, and next-token logits signals.

A broken 1-bit kernel rarely crashes: it answers fast and wrong -- "!!!!", "GGGG", a few tokens
cycling, or nonsense from a handful of ids. These checks see only token ids (never text) and
judge one output sequence by three measures:

* ``longest_run``: the longest run of one repeated token ("!!!!" is a run);
* ``cycle_span``: how many tokens the longest short-period cycle covers (the output repeating
  a pattern of 2..``max_period`` tokens, "of the of the of the"); a run of one token is not a
  cycle, so the two reasons never describe the same stretch;
* ``distinct_fraction``: distinct ids / tokens, in aligned windows of ``window`` tokens (the
  lowest window counts), so a long healthy answer does not drift low as its vocabulary
  saturates, and a healthy start cannot hide a collapse later on.

An output shorter than ``min_tokens`` is measured (its run and distinct fraction, not its
cycles) but never judged. The verdict's reason is the first that applies of ``repeat_run``,
``cycle``, ``low_diversity``. Whole sequences::

    >>> from bitnet_obs import output
    >>> output.detect_degenerate([7] * 40).reason
    'repeat_run'
    >>> output.detect_degenerate(list(range(40))).degenerate
    False

and streams, a token or a chunk at a time, in bounded memory (ids are buffered in a compact
``array('q')`` and judged a chunk at a time with numpy; only a few numbers and the last
``max_period`` ids are carried between chunks)::

    >>> detector = output.DegenerateDetector()
    >>> for token in [5, 6] * 40:
    ...     detector.add(token)
    >>> detector.result().reason, detector.result().cycle_period
    ('cycle', 2)

The default thresholds were tuned on real token streams (bytes with ByT5, code points with
Canine, and BPEs trained on the texts) of public-domain prose, code, Markdown and deliberately
repetitive answers (``tests/fixtures/text``): every healthy text stays at least 1.5x away from
every threshold (:class:`DegenerateThresholds` gives the figures). Settings
``BITNET_OBS_DEGENERATE_*`` map onto its fields (:func:`thresholds_from_env`).

:func:`logits_stats` gives the other early sign of a broken model: next-token entropy
collapsing (or flattening to uniform) and the top-1 margin.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from bitnet_obs._degenerate import (
    DEFAULT_THRESHOLDS,
    EMPTY,
    I64,
    REASONS,
    DegenerateThresholds,
    OutputVerdict,
    State,
    advance,
    flush,
    judge,
    short,
    verdict,
)
from bitnet_obs._errors import ConfigError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "REASONS",
    "DegenerateDetector",
    "DegenerateThresholds",
    "LogitsStats",
    "OutputInputError",
    "OutputVerdict",
    "detect_degenerate",
    "logits_stats",
    "thresholds_from_env",
]

_CHUNK_TOKENS = 4096  # ids buffered before a numpy pass: 32 KiB
_LOGITS_BLOCK = 1 << 20  # logits per float64 block (8 MiB)


class OutputInputError(ValueError):
    """Ids or logits that cannot be judged; the message says what is accepted."""


def thresholds_from_env(environ: Mapping[str, str]) -> DegenerateThresholds:
    """Thresholds from the ``BITNET_OBS_DEGENERATE_*`` variables of ``environ`` (unset or
    empty: the default); a malformed value raises :class:`ConfigError` naming the variable.
    The request path reads the same settings from the configuration in force::

        thresholds = output.thresholds_from_env(os.environ)
    """
    from bitnet_obs import _config  # at call time: importing the measures stays numpy-only

    ours = {k: v for k, v in environ.items() if k.startswith("BITNET_OBS_DEGENERATE_")}
    return _config.from_env(ours).degenerate_thresholds


def _chunk_size(th: DegenerateThresholds, chunk_tokens: int | None) -> int:
    if chunk_tokens is None:
        return -(-_CHUNK_TOKENS // th.window) * th.window
    if (
        isinstance(chunk_tokens, bool)
        or not isinstance(chunk_tokens, int)
        or chunk_tokens <= 0
        or chunk_tokens % th.window
    ):
        raise ConfigError(
            f"chunk_tokens={chunk_tokens!r}; accepted: a positive multiple of the window "
            f"({th.window})"
        )
    return chunk_tokens


def _thresholds(thresholds: DegenerateThresholds | None) -> DegenerateThresholds:
    if thresholds is None:
        return DEFAULT_THRESHOLDS
    if not isinstance(thresholds, DegenerateThresholds):
        raise ConfigError(
            f"thresholds={thresholds!r}; accepted: a DegenerateThresholds or None (defaults)"
        )
    return thresholds


def _as_array(x: object, name: str) -> npt.NDArray[Any]:
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        if hasattr(x, "__dlpack__"):
            try:
                return np.from_dlpack(x)
            except (TypeError, ValueError, RuntimeError, BufferError):
                pass
        raise OutputInputError(
            f"{name}: cannot read {type(x).__name__} as an array ({exc}); accepted: a sequence "
            "or numpy array (or CPU tensor)"
        ) from None


def _ids(x: object, ndims: tuple[int, ...]) -> I64:
    a = _as_array(x, "ids")
    if a.ndim not in ndims:
        accepted = "one sequence (1-D)" + (" or one per row (2-D)" if 2 in ndims else "")
        raise OutputInputError(f"ids: {a.ndim}-D shape {a.shape}; accepted: {accepted}")
    if a.size == 0:
        return np.zeros(a.shape, np.int64)
    if a.dtype.kind not in "iu":
        raise OutputInputError(f"ids have dtype {a.dtype}; accepted: integer token ids")
    if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise OutputInputError("ids: a value above 2**63-1; accepted: token ids")
    return a.astype(np.int64, copy=False)


class DegenerateDetector:
    """Judges one output as it streams: :meth:`add` one id (an append to a compact buffer, with
    a numpy pass every ``chunk_tokens`` ids), :meth:`extend` a chunk, :meth:`result` at any
    time (it does not consume). Memory stays bounded for any length::

        detector = DegenerateDetector()
        for token in stream:
            detector.add(token)
        verdict = detector.result()

    The cheapest path per id is :attr:`append`, the buffer's own append (a C call): whoever
    uses it calls :meth:`pump` at least every ``chunk_tokens`` ids to keep memory bounded (a
    token counter they keep anyway tells when). ``add``/``append`` raise TypeError or
    OverflowError for something that is not an int64 id; callers on an inference path catch it.
    """

    __slots__ = ("_buf", "_chunk", "_state", "add", "append", "thresholds")

    add: Callable[[int], None]
    append: Callable[[int], None]

    def __init__(
        self, thresholds: DegenerateThresholds | None = None, *, chunk_tokens: int | None = None
    ) -> None:
        th = self.thresholds = _thresholds(thresholds)
        chunk = self._chunk = _chunk_size(th, chunk_tokens)
        buf = self._buf = array("q")
        st = self._state = State(th.max_period - 1)
        append = self.append = buf.append

        # A closure over the buffer and the state, not over self: no reference cycle, and
        # cell loads instead of attribute lookups.
        def add(token: int) -> None:
            append(token)
            if len(buf) >= chunk:
                flush(buf, st, th, chunk)

        self.add = add

    def pump(self) -> None:
        """Judge the whole chunks :attr:`append` buffered (cheap when there are none)."""
        if len(self._buf) >= self._chunk:
            flush(self._buf, self._state, self.thresholds, self._chunk)

    def extend(self, ids: Sequence[int] | npt.NDArray[Any]) -> None:
        """Add a chunk of ids (a sequence or 1-D integer array); raises OutputInputError."""
        a = _ids(ids, (1,))
        buf, chunk, st, th = self._buf, self._chunk, self._state, self.thresholds
        self.pump()
        start = 0
        if len(buf):
            start = min(a.shape[0], chunk - len(buf))
            buf.frombytes(a[:start].tobytes())
            if len(buf) < chunk:
                return
            flush(buf, st, th, chunk)
        whole = (a.shape[0] - start) // chunk * chunk
        for i in range(start, start + whole, chunk):
            advance(st, a[i : i + chunk], th)
        buf.frombytes(a[start + whole :].tobytes())

    @property
    def tokens(self) -> int:
        return self._state.n + len(self._buf)

    def result(self) -> OutputVerdict:
        """The verdict on the ids so far."""
        buf, th, chunk = self._buf, self.thresholds, self._chunk
        if self._state.n + len(buf) < th.min_tokens:
            return short(buf)
        st = self._state.copy()
        rest = np.frombuffer(buf, np.int64).copy() if len(buf) else EMPTY
        for i in range(0, rest.shape[0], chunk):  # more than a chunk if pump() came late
            advance(st, rest[i : i + chunk], th)
        return verdict(st, th)

    def reset(self) -> None:
        """Start a new output (keeps the thresholds; ``add`` and ``append`` stay valid)."""
        del self._buf[:]
        self._state.reset(self.thresholds.max_period - 1)


@overload
def detect_degenerate(
    ids: Sequence[int],
    thresholds: DegenerateThresholds | None = ...,
    *,
    pad_id: int | None = ...,
    chunk_tokens: int | None = ...,
) -> OutputVerdict: ...
@overload
def detect_degenerate(
    ids: Sequence[Sequence[int]],
    thresholds: DegenerateThresholds | None = ...,
    *,
    pad_id: int | None = ...,
    chunk_tokens: int | None = ...,
) -> tuple[OutputVerdict, ...]: ...
@overload
def detect_degenerate(
    ids: npt.NDArray[Any],
    thresholds: DegenerateThresholds | None = ...,
    *,
    pad_id: int | None = ...,
    chunk_tokens: int | None = ...,
) -> OutputVerdict | tuple[OutputVerdict, ...]: ...
def detect_degenerate(
    ids: Sequence[int] | Sequence[Sequence[int]] | npt.NDArray[Any],
    thresholds: DegenerateThresholds | None = None,
    *,
    pad_id: int | None = None,
    chunk_tokens: int | None = None,
) -> OutputVerdict | tuple[OutputVerdict, ...]:
    """Judge a whole output (1-D), or each row of a batch (2-D: one verdict per row).
    ``pad_id`` strips trailing padding from each row first. Same answer as streaming the ids
    through a :class:`DegenerateDetector`, for any chunking::

        verdicts = detect_degenerate(model.generate(batch), pad_id=tokenizer.pad_token_id)
    """
    th = _thresholds(thresholds)
    chunk = _chunk_size(th, chunk_tokens)
    a = _ids(ids, (1, 2))
    if a.ndim == 1:
        return judge(a, th, chunk, pad_id)
    return tuple(judge(row, th, chunk, pad_id) for row in a)


# --- logits ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogitsStats:
    """Per decoding step: next-token ``entropy`` in nats (0: certain, log(vocab): uniform) and
    ``top1_margin``, p(top-1) - p(top-2) in [0, 1]."""

    entropy: npt.NDArray[np.float64]
    top1_margin: npt.NDArray[np.float64]


def logits_stats(logits: object) -> LogitsStats:
    """Entropy and top-1 margin of the softmax of each row of ``logits`` ((steps, vocab), or
    (vocab,) for one step), in float64 with the max subtracted first, a block of rows at a
    time; ``-inf`` (masked ids) is allowed, NaN and ``+inf`` are not::

        stats = logits_stats(out.logits[0, -8:])   # the last 8 steps of a HF forward pass
        stats.entropy.mean()
    """
    a = _as_array(logits, "logits")
    if a.ndim not in (1, 2) or a.shape[-1] < 2 or a.size == 0:
        raise OutputInputError(
            f"logits: shape {a.shape}; accepted: (steps, vocab) or (vocab,) with vocab >= 2"
        )
    if a.dtype.kind not in "fiu":
        raise OutputInputError(f"logits have dtype {a.dtype}; accepted: real numbers")
    rows = a.reshape(-1, a.shape[-1])
    step = max(1, _LOGITS_BLOCK // rows.shape[1])
    entropy = np.empty(rows.shape[0], np.float64)
    margin = np.empty(rows.shape[0], np.float64)
    for i in range(0, rows.shape[0], step):
        entropy[i : i + step], margin[i : i + step] = _block_stats(rows[i : i + step], i)
    return LogitsStats(entropy, margin)


def _block_stats(
    block: npt.NDArray[Any], first_row: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    z = block.astype(np.float64)  # a copy, worked on in place
    top = z.max(axis=1, keepdims=True)
    if not np.isfinite(top).all():  # max() propagates NaN, so this catches NaN too
        bad = first_row + int(np.flatnonzero(~np.isfinite(top[:, 0]))[0])
        raise OutputInputError(
            f"logits row {bad} has NaN, +inf or only -inf; accepted: finite logits (-inf masks)"
        )
    z -= top
    np.maximum(z, -1e300, out=z)  # -inf -> a finite floor: exp() is 0 and 0 * z stays 0
    e = np.exp(z)
    total = e.sum(axis=1)
    weighted = np.einsum("ij,ij->i", e, z)
    entropy = np.maximum(np.log(total) - weighted / total, 0.0)
    # the runner-up: the top (0 after the shift) masked out; a tie at the top gives margin 0
    rows = np.arange(z.shape[0])
    z[rows, z.argmax(axis=1)] = -np.inf
    margin = (1.0 - np.exp(z.max(axis=1))) / total
    return entropy, margin
