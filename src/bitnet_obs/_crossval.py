"""Cross-validation against golden outputs: running implementations, judging, metrics.

The public face is :mod:`bitnet_obs.crossval`; the file format is :mod:`bitnet_obs._golden`.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_obs import _instruments, runtime
from bitnet_obs import _semconv as sc
from bitnet_obs._errors import ConfigError
from bitnet_obs._golden import GoldenCase, GoldenSet, load, save
from bitnet_obs._selfmon import internal_error
from bitnet_obs._version import __version__
from bitnet_obs.quant import logits_agreement

Implementation = Callable[[list[int], int], Any]


class CrossvalError(Exception):
    """An implementation broke the contract (raised, or returned something that is not ids)."""


# --- running an implementation ---------------------------------------------------------------


def _array(value: Any, who: str, what: str, ndim: int, kinds: str) -> npt.NDArray[Any]:
    """``value`` as an ``ndim``-D array of dtype kind ``kinds`` (a batch of one is unwrapped)."""
    try:
        a = np.asarray(value)
    except Exception as exc:
        raise CrossvalError(f"{who} returned {what} of type {type(value).__name__}") from exc
    if a.ndim == ndim + 1 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != ndim or (a.size and a.dtype.kind not in kinds):
        shape = f"{a.ndim}-D {a.dtype} {tuple(a.shape)}"
        raise CrossvalError(f"{who} returned {what} {shape}; accepted: {_ACCEPTED[what]}")
    return a


_ACCEPTED = {"ids": "1-D integer ids", "logits": "floats of shape (steps, vocab)"}


def _as_ids(value: Any, who: str) -> npt.NDArray[np.int64]:
    return _array(value, who, "ids", 1, "iu").astype(np.int64)


def _as_logits(value: Any, who: str) -> npt.NDArray[np.floating[Any]]:
    a = _array(value, who, "logits", 2, "f")
    if a.dtype.kind != "f" or a.shape[1] < 2:
        raise CrossvalError(f"{who} returned logits {a.dtype} {tuple(a.shape)}; accepted: "
                            f"{_ACCEPTED['logits']}")  # fmt: skip
    return a


def _call(
    fn: Implementation, prompt: npt.NDArray[np.int64], max_new: int, who: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.floating[Any]] | None, float]:
    """(ids, logits or None, seconds) of one greedy run."""
    started = time.perf_counter()
    try:
        result = fn(prompt.tolist(), max_new)
    except Exception as exc:
        raise CrossvalError(f"{who} raised {type(exc).__name__}") from exc
    elapsed = time.perf_counter() - started
    if (
        isinstance(result, tuple)
        and len(result) == 2
        and not isinstance(result[0], int | np.integer)
    ):
        ids, logits = result
        return _as_ids(ids, who), (None if logits is None else _as_logits(logits, who)), elapsed
    return _as_ids(result, who), None, elapsed


def _name_of(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else type(fn).__name__


def _check_prompts(prompts: Sequence[Sequence[int]]) -> list[npt.NDArray[np.int64]]:
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence) or not prompts:
        raise ConfigError("prompts: accepted: a non-empty sequence of token-id sequences")
    out = []
    for i, prompt in enumerate(prompts):
        a = np.asarray(prompt) if not isinstance(prompt, str | bytes) else np.asarray([])
        if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu" or (a < 0).any():
            raise ConfigError(f"prompts[{i}]: accepted: a non-empty sequence of token ids >= 0")
        out.append(a.astype(np.int64))
    return out


def _who_made_it() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user database in some containers
        return "unknown"


def record(
    fn: Implementation,
    prompts: Sequence[Sequence[int]],
    path: str | os.PathLike[str],
    *,
    max_new_tokens: int = 32,
    logits_steps: int = 8,
    model: str = "",
    quant_format: str = "",
    created_by: str | None = None,
) -> GoldenSet:
    """Run a trusted ``fn`` greedily on each prompt and write the golden file (the first
    ``logits_steps`` steps' logits too, when ``fn`` returns them). Bad arguments raise
    :class:`ConfigError`; ``fn`` failing raises :class:`CrossvalError` and writes nothing::

        crossval.record(generate, prompts, "golden.npz", model="bitnet-b1.58-2B-4T")
    """
    if not callable(fn):
        raise ConfigError(f"fn={fn!r} is not callable; accepted: fn(prompt_ids, max_new_tokens)")
    for name, value, low in (
        ("max_new_tokens", max_new_tokens, 1),
        ("logits_steps", logits_steps, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r}; accepted: an integer >= {low}")
    cases = []
    for i, prompt in enumerate(_check_prompts(prompts)):
        try:
            ids, logits, _ = _call(fn, prompt, max_new_tokens, "the implementation")
        except CrossvalError as exc:
            raise CrossvalError(f"prompt {i}: {exc}") from exc.__cause__
        if ids.shape[0] > max_new_tokens:
            raise CrossvalError(
                f"prompt {i}: the implementation returned {ids.shape[0]} ids for "
                f"max_new_tokens={max_new_tokens} (return the new ids only, not the prompt)"
            )
        kept = None
        if logits is not None and logits_steps:
            kept = np.ascontiguousarray(logits[:logits_steps], np.float32)
            if not np.isfinite(kept).all():
                raise CrossvalError(f"prompt {i}: the implementation returned non-finite logits")
        cases.append(GoldenCase(prompt, ids, kept))
    header = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_by": created_by if created_by is not None else _who_made_it(),
        "implementation": _name_of(fn),
        "model": str(model),
        "quant_format": str(quant_format),
        "max_new_tokens": max_new_tokens,
        "logits_steps": logits_steps,
        "bitnet_obs": __version__,
        "runtime": runtime.fingerprint().attributes(),
    }
    golden = GoldenSet(tuple(cases), header)
    save(path, golden)
    return golden


# --- checking -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """One golden case. ``first_divergence`` is the first output position that differs (None:
    identical); ``error`` is set when the candidate raised or returned something unusable."""

    index: int
    expected_tokens: int
    generated_tokens: int
    token_agreement: float
    first_divergence: int | None
    kl: float | None = None
    top1: float | None = None
    logits_steps: int = 0
    candidate_s: float = 0.0
    reference_s: float | None = None
    reference_tokens: int | None = None
    reference_agreement: float | None = None
    error: str | None = None
    reference_error: str | None = None

    @property
    def matched(self) -> int:
        """Tokens of the common prefix."""
        if self.first_divergence is None:
            return max(self.expected_tokens, self.generated_tokens)
        return self.first_divergence


@dataclass(frozen=True)
class CrossvalReport:
    """The answer of :func:`check`; ``reason`` says why it failed ("" when it passed)."""

    passed: bool
    reason: str
    model: str
    cases: tuple[CaseResult, ...]
    cases_skipped: int
    token_agreement: float
    kl: float | None
    top1: float | None
    candidate_tokens_per_s: float | None
    reference_tokens_per_s: float | None
    duration_s: float

    @property
    def throughput_ratio(self) -> float | None:
        """Candidate tokens/s over the reference's (None without a reference)."""
        if not self.candidate_tokens_per_s or not self.reference_tokens_per_s:
            return None
        return self.candidate_tokens_per_s / self.reference_tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["throughput_ratio"] = self.throughput_ratio
        return out


def _agreement(expected: npt.NDArray[np.int64], got: npt.NDArray[np.int64]) -> tuple[int, int]:
    """(common prefix length, compared length)."""
    common = min(expected.shape[0], got.shape[0])
    differ = np.flatnonzero(expected[:common] != got[:common])
    prefix = int(differ[0]) if differ.shape[0] else common
    return prefix, max(expected.shape[0], got.shape[0])


def _run_case(
    index: int,
    case: GoldenCase,
    max_new: int,
    candidate: Implementation,
    reference: Implementation | None,
) -> CaseResult:
    expected = case.output_ids
    try:
        ids, logits, seconds = _call(candidate, case.prompt_ids, max_new, "the candidate")
    except CrossvalError as exc:
        return CaseResult(index, expected.shape[0], 0, 0.0, 0, error=str(exc))
    ref: dict[str, Any] = {}
    if reference is not None:
        try:
            ref_ids, _, ref["reference_s"] = _call(
                reference, case.prompt_ids, max_new, "the reference"
            )
            prefix, length = _agreement(expected, ref_ids)
            ref["reference_agreement"] = prefix / length if length else 1.0
            ref["reference_tokens"] = ref_ids.shape[0]
        except CrossvalError as exc:
            ref["reference_error"] = str(exc)
    prefix, length = _agreement(expected, ids)
    diverged = prefix < length
    kl = top1 = None
    steps = 0
    if case.logits is not None and logits is not None:
        steps = min(case.logits.shape[0], logits.shape[0], prefix + 1 if diverged else length)
        if logits.shape[1] != case.logits.shape[1]:
            error = f"logits have vocab {logits.shape[1]}, the golden {case.logits.shape[1]}"
            return CaseResult(
                index, expected.shape[0], ids.shape[0], prefix / length,
                prefix if diverged else None, candidate_s=seconds, error=error, **ref,
            )  # fmt: skip
        if steps:
            agreement = logits_agreement(case.logits[:steps], logits[:steps])
            kl, top1 = agreement.kl_mean, agreement.top1
    return CaseResult(
        index,
        expected.shape[0],
        ids.shape[0],
        prefix / length if length else 1.0,
        prefix if diverged else None,
        kl,
        top1,
        steps,
        seconds,
        **ref,
    )


def _rate(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 and tokens else None


def check(
    candidate: Implementation,
    golden: GoldenSet | str | os.PathLike[str],
    reference: Implementation | None = None,
    *,
    min_agreement: float = 1.0,
    max_kl: float | None = None,
    budget_s: float | None = None,
    model: str | None = None,
    record_metrics: bool = True,
) -> CrossvalReport:
    """Run ``candidate`` (and ``reference``, for its tokens/s on the same cases) on every
    golden case and judge it: it passes when nothing raised, the token agreement is at least
    ``min_agreement`` (default: identical greedy outputs) and, when ``max_kl`` is given, the
    logits KL is at most that. ``budget_s`` stops starting cases once spent (the first always
    runs). Records the ``bitnet.crossval.*`` metrics unless ``record_metrics=False``::

        report = crossval.check(new_build, "golden.npz", reference=old_build)
        print(report.token_agreement, report.throughput_ratio)
    """
    gs = golden if isinstance(golden, GoldenSet) else load(golden)
    if not callable(candidate) or (reference is not None and not callable(reference)):
        raise ConfigError("candidate and reference: accepted: fn(prompt_ids, max_new_tokens)")
    if not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"min_agreement={min_agreement!r}; accepted: 0..1")
    if max_kl is not None and not max_kl >= 0:
        raise ConfigError(f"max_kl={max_kl!r}; accepted: a number >= 0 or None")
    started = time.monotonic()
    results: list[CaseResult] = []
    for index, case in enumerate(gs.cases):
        if results and budget_s is not None and time.monotonic() - started >= budget_s:
            break
        results.append(_run_case(index, case, gs.max_new_tokens, candidate, reference))
    report = _judge(gs, results, time.monotonic() - started, min_agreement, max_kl, model)
    if record_metrics:
        emit_metrics(report)
    return report


def _judge(
    gs: GoldenSet,
    results: list[CaseResult],
    duration: float,
    min_agreement: float,
    max_kl: float | None,
    model: str | None,
) -> CrossvalReport:
    matched = sum(r.matched for r in results)
    compared = sum(max(r.expected_tokens, r.generated_tokens) for r in results)
    agreement = matched / compared if compared else 1.0
    with_logits = [r for r in results if r.kl is not None and r.logits_steps]
    steps = sum(r.logits_steps for r in with_logits)
    kl = sum((r.kl or 0.0) * r.logits_steps for r in with_logits) / steps if steps else None
    top1 = sum((r.top1 or 0.0) * r.logits_steps for r in with_logits) / steps if steps else None
    reason = ""
    failed = next((r for r in results if r.error), None)
    if failed is not None:
        reason = f"case {failed.index}: {failed.error}"
    elif agreement < min_agreement:
        worst = min(results, key=lambda r: (r.token_agreement, r.index))
        reason = (
            f"case {worst.index} diverges at token {worst.first_divergence} of "
            f"{worst.expected_tokens} (token agreement {agreement:.3f} < {min_agreement:g})"
        )
    elif max_kl is not None and kl is not None and kl > max_kl:
        reason = f"logits KL {kl:.3g} > {max_kl:g}"
    cand_s = sum(r.candidate_s for r in results)
    ref_runs = [r for r in results if r.reference_s is not None]
    return CrossvalReport(
        passed=not reason,
        reason=reason,
        model=model if model is not None else (gs.model or "unknown"),
        cases=tuple(results),
        cases_skipped=len(gs.cases) - len(results),
        token_agreement=agreement,
        kl=kl,
        top1=top1,
        candidate_tokens_per_s=_rate(sum(r.generated_tokens for r in results), cand_s),
        reference_tokens_per_s=_rate(
            sum(r.reference_tokens or 0 for r in ref_runs),
            sum(r.reference_s or 0.0 for r in ref_runs),
        ),
        duration_s=duration,
    )


def emit_metrics(report: CrossvalReport) -> None:
    """The bitnet.crossval.* metrics of one run; never raises."""
    try:
        model = {sc.REQUEST_MODEL: report.model}
        outcome = "pass" if report.passed else "fail"
        for each in ("pass", "fail"):  # both series exist from the first run on
            key = (("bitnet.crossval.outcome", each), (sc.REQUEST_MODEL, report.model))
            _instruments.CROSSVAL_RUNS.add(key, 1 if each == outcome else 0)
        _instruments.CROSSVAL_PASSING.set(1 if report.passed else 0, model)
        _instruments.CROSSVAL_TOKEN_AGREEMENT.set(report.token_agreement, model)
        if report.kl is not None and math.isfinite(report.kl):
            _instruments.CROSSVAL_KL.set(report.kl, model)
        throughput = _instruments.CROSSVAL_THROUGHPUT
        for implementation, rate in (
            ("candidate", report.candidate_tokens_per_s),
            ("reference", report.reference_tokens_per_s),
        ):
            if rate is not None:
                throughput.set(rate, {**model, "bitnet.crossval.implementation": implementation})
    except Exception as exc:
        internal_error("crossval", exc, "recording cross-validation metrics")
