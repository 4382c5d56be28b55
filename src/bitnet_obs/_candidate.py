"""One call of an implementation under test, and the typed reason when it fails.

Cross-validation and the canary judge a candidate by its answers; a candidate that cannot
answer -- it raised, exited, hung, or returned something that is not greedy ids (and logits) --
has **failed**, and the failure says why in a :class:`Failure` (a :class:`FailureKind` and one
line of detail). There is one way in for every kind of candidate: an in-process function is
called through :func:`call`, which turns everything that can go wrong into a ``Failure``; a
candidate of another kind (an HTTP server, a subprocess) raises :class:`CandidateError` with its
own kind and detail, and the failure is recorded the same way::

    def generate(prompt_ids, max_new_tokens):
        try:
            answer = post(url, prompt_ids, max_new_tokens, timeout=10)
        except TimeoutError:
            raise crossval.CandidateError("timeout", f"{url} did not answer within 10 s")
        except OSError as exc:
            raise crossval.CandidateError("unavailable", f"{url}: {exc.strerror}")
        return answer["tokens"]

Details are written for an operator: they name the kind of problem and never quote prompt or
output text (they reach logs and ``/health``).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_obs._topk import TopkError, TopLogprobs, checked
from bitnet_obs._untrusted import one_line

__all__ = [
    "STOPPING",
    "CandidateError",
    "CrossvalError",
    "Failure",
    "FailureKind",
    "Outcome",
    "Runner",
    "call",
]

Implementation = Callable[[list[int], int], Any]
_INT64_MAX = np.iinfo(np.int64).max


class FailureKind(str, Enum):
    """Why a candidate (or a run) failed; the value is the stable name used in JSON and
    ``/health``."""

    RAISED = "raised"  #: the candidate raised an exception
    EXITED = "exited"  #: it raised SystemExit (``sys.exit``) inside a run
    INTERRUPTED = "interrupted"  #: it raised KeyboardInterrupt (or the run was interrupted)
    TIMEOUT = "timeout"  #: no answer within the time limit (the call is abandoned)
    BAD_OUTPUT = "bad_output"  #: not 1-D integer ids, logits of the wrong shape, too many ids
    NON_FINITE = "non_finite"  #: NaN or infinite logits
    OUT_OF_RANGE = "out_of_range"  #: a token id below 0 or beyond the vocabulary
    UNAVAILABLE = "unavailable"  #: a remote candidate could not be reached or answered badly
    INTERNAL = "internal"  #: the check itself could not run (a bug of ours, reported)


#: Kinds after which a run starts no further case: the candidate is gone, stuck or interrupted.
STOPPING = frozenset({FailureKind.EXITED, FailureKind.INTERRUPTED, FailureKind.TIMEOUT})


@dataclass(frozen=True)
class Failure:
    """A failed call or run: its :class:`FailureKind` and one line saying what happened."""

    kind: FailureKind
    detail: str

    def __str__(self) -> str:
        return self.detail


class CrossvalError(Exception):
    """An implementation broke the contract (raised, or returned something that is not ids)."""


class CandidateError(CrossvalError):
    """Raise from a candidate to report a failure of a known kind::

        raise crossval.CandidateError("unavailable", "http://127.0.0.1:8080: connection refused")

    *kind* is a :class:`FailureKind` or its value; the run records ``Failure(kind, detail)``.
    """

    def __init__(self, kind: FailureKind | str, detail: str) -> None:
        try:
            self.kind = FailureKind(kind)
        except ValueError:
            accepted = ", ".join(k.value for k in FailureKind)
            raise ValueError(f"CandidateError kind={kind!r}; accepted: {accepted}") from None
        self.detail = one_line(str(detail), 500)  # it reaches logs and /health: one line
        super().__init__(self.detail)

    @property
    def failure(self) -> Failure:
        return Failure(self.kind, self.detail)


@dataclass(frozen=True)
class Outcome:
    """A successful call: the new ids, the logits (steps, vocab) -- or, from a server, the
    top-k log-probabilities of each step -- or None, and its seconds."""

    ids: npt.NDArray[np.int64]
    logits: npt.NDArray[np.floating[Any]] | TopLogprobs | None
    seconds: float


_ACCEPTED = {
    "ids": "1-D integer ids",
    "logits": "floats of shape (steps, vocab), or crossval.TopLogprobs",
}


def _array(value: Any, who: str, what: str, ndim: int, kinds: str) -> npt.NDArray[Any]:
    """``value`` as an ``ndim``-D array of dtype kind ``kinds`` (a batch of one is unwrapped)."""
    try:
        a = np.asarray(value)
    except Exception as exc:
        what_type = type(value).__name__
        raise _Bad(FailureKind.BAD_OUTPUT, f"{who} returned {what} of type {what_type}") from exc
    if a.ndim == ndim + 1 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != ndim or (a.size and a.dtype.kind not in kinds):
        shape = f"{a.ndim}-D {a.dtype} {tuple(a.shape)}"
        accepted = _ACCEPTED[what]
        raise _Bad(FailureKind.BAD_OUTPUT, f"{who} returned {what} {shape}; accepted: {accepted}")
    return a


class _Bad(Exception):
    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.failure = Failure(kind, detail)


def _ids(value: Any, who: str, max_new: int, vocab: int | None) -> npt.NDArray[np.int64]:
    a = _array(value, who, "ids", 1, "iu")
    if a.size and a.dtype.kind == "u" and int(a.max()) > _INT64_MAX:
        raise _Bad(FailureKind.OUT_OF_RANGE, f"{who} returned a token id beyond int64")
    ids = a.astype(np.int64)
    if ids.shape[0] > max_new:
        raise _Bad(
            FailureKind.BAD_OUTPUT,
            f"{who} returned {ids.shape[0]} ids for max_new_tokens={max_new} (return the new "
            "ids only, not the prompt)",
        )
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or (vocab is not None and high >= vocab):
            bad = low if low < 0 else high
            limit = f"0..{vocab - 1}" if vocab is not None else "ids >= 0"
            detail = f"{who} returned token id {bad}; accepted: {limit}"
            raise _Bad(FailureKind.OUT_OF_RANGE, detail)
    return ids


def _logits(value: Any, who: str, vocab: int | None) -> npt.NDArray[np.floating[Any]]:
    a = _array(value, who, "logits", 2, "f")
    if a.dtype.kind != "f" or a.shape[1] < 2:
        shape = f"{a.dtype} {tuple(a.shape)}"
        accepted = _ACCEPTED["logits"]
        raise _Bad(FailureKind.BAD_OUTPUT, f"{who} returned logits {shape}; accepted: {accepted}")
    if vocab is not None and a.shape[1] != vocab:
        detail = f"{who} returned logits of vocab {a.shape[1]}, the golden {vocab}"
        raise _Bad(FailureKind.BAD_OUTPUT, detail)
    with np.errstate(all="ignore"):
        finite = bool(np.isfinite(a).all())
    if not finite:
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise _Bad(FailureKind.NON_FINITE, f"{who} returned {bad} NaN/infinite logits")
    return a


def _top_logprobs(value: TopLogprobs, who: str, vocab: int | None) -> TopLogprobs:
    try:
        return checked(value, vocab)
    except TopkError as exc:
        kind = FailureKind.OUT_OF_RANGE if "token id" in str(exc) else FailureKind.BAD_OUTPUT
        raise _Bad(kind, f"{who} returned {exc}") from None


def _judge_shape(result: Any, who: str, max_new: int, vocab: int | None) -> tuple[Any, Any]:
    if (
        isinstance(result, tuple)
        and len(result) == 2
        and not isinstance(result[0], int | np.integer)
    ):
        ids, logits = result
        if isinstance(logits, TopLogprobs):
            return _ids(ids, who, max_new, vocab), _top_logprobs(logits, who, vocab)
        checked_logits = None if logits is None else _logits(logits, who, vocab)
        return _ids(ids, who, max_new, vocab), checked_logits
    return _ids(result, who, max_new, vocab), None


def _code(exc: SystemExit) -> str:
    """``SystemExit``'s code as shown, whatever object it is (its repr may itself raise)."""
    try:
        return one_line(repr(exc.code), 80)
    except Exception:  # a hostile __repr__
        return type(exc.code).__name__


def _raised(exc: BaseException, who: str) -> Failure:
    if isinstance(exc, CandidateError):
        return exc.failure
    if isinstance(exc, SystemExit):
        return Failure(FailureKind.EXITED, f"{who} raised SystemExit({_code(exc)})")
    if isinstance(exc, KeyboardInterrupt):
        return Failure(FailureKind.INTERRUPTED, f"{who} raised KeyboardInterrupt")
    return Failure(FailureKind.RAISED, f"{who} raised {type(exc).__name__}")


class _Box:
    """The result of a call made on a worker thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0


class Runner:
    """Calls implementations, with an optional time limit per call. A call past its limit is
    abandoned (a thread cannot be killed); while it has not returned, :meth:`stuck` says so and
    nothing else is started on this runner, so a hung kernel never piles up threads."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._abandoned: tuple[threading.Thread, str] | None = None

    def stuck(self) -> Failure | None:
        """A failure while an abandoned call is still running, else None."""
        if self._abandoned is None:
            return None
        thread, who = self._abandoned
        if not thread.is_alive():
            self._abandoned = None
            return None
        return Failure(
            FailureKind.TIMEOUT,
            f"{who} has not returned from a call abandoned at its time limit of "
            f"{self.timeout_s:g}s; no new run is started until it does",
        )

    def _invoke(self, fn: Implementation, prompt: list[int], max_new: int, box: _Box) -> None:
        started = time.perf_counter()
        try:
            box.value = fn(prompt, max_new)
        except BaseException as exc:
            box.error = exc
        finally:
            box.seconds = time.perf_counter() - started
            box.done.set()

    def call(
        self, fn: Implementation, prompt: list[int], max_new: int, who: str, vocab: int | None
    ) -> Outcome | Failure:
        """One greedy run: its :class:`Outcome`, or the :class:`Failure` saying why not."""
        box = _Box()
        if self.timeout_s is None:
            self._invoke(fn, prompt, max_new, box)
        else:
            context = contextvars.copy_context()  # the caller's span and current call
            thread = threading.Thread(
                target=context.run,
                args=(self._invoke, fn, prompt, max_new, box),
                name="bitnet-obs-candidate",
                daemon=True,
            )
            thread.start()
            if not box.done.wait(self.timeout_s):
                self._abandoned = (thread, who)
                return Failure(
                    FailureKind.TIMEOUT, f"{who} did not answer within {self.timeout_s:g}s"
                )
        if box.error is not None:
            return _raised(box.error, who)
        try:  # reading the answer runs its code too (__array__, __len__, __iter__)
            ids, logits = _judge_shape(box.value, who, max_new, vocab)
        except _Bad as bad:
            return bad.failure
        except BaseException as exc:  # reading the answer raised, exited or was interrupted
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                failure = _raised(exc, who)
                return Failure(failure.kind, f"{failure.detail} while its answer was read")
            detail = f"{who} returned an answer that raised {type(exc).__name__} when read"
            return Failure(FailureKind.BAD_OUTPUT, detail)
        return Outcome(ids, logits, box.seconds)


def call(
    fn: Implementation,
    prompt: list[int],
    max_new: int,
    who: str,
    *,
    vocab: int | None = None,
    timeout_s: float | None = None,
) -> Outcome | Failure:
    """One call of *fn* (see :class:`Runner`)."""
    return Runner(timeout_s).call(fn, prompt, max_new, who, vocab)
