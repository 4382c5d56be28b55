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
from bitnet_obs._candidate import (
    STOPPING,
    CandidateError,
    CrossvalError,
    Failure,
    FailureKind,
    Outcome,
    Runner,
)
from bitnet_obs._errors import ConfigError
from bitnet_obs._golden import (
    MAX_CASES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_TOKENS,
    GoldenCase,
    GoldenSet,
    load,
    save,
    usable,
)
from bitnet_obs._parsers import Integer, Maybe, Number
from bitnet_obs._selfmon import internal_error
from bitnet_obs._topk import TopLogprobs, topk_agreement
from bitnet_obs._version import __version__
from bitnet_obs.quant import logits_agreement

Implementation = Callable[[list[int], int], Any]

__all__ = [
    "AGREEMENT",
    "KL",
    "LOGITS_STEPS",
    "MAX_KL",
    "MAX_LOGITS_STEPS",
    "MAX_NEW_TOKENS",
    "MAX_SECONDS",
    "NEW_TOKENS",
    "SECONDS",
    "CandidateError",
    "CaseResult",
    "CrossvalError",
    "CrossvalReport",
    "Failure",
    "FailureKind",
    "Implementation",
    "Judge",
    "check",
    "emit_metrics",
    "failed_report",
    "judge",
    "record",
    "run",
]

#: Bounds of every number cross-validation takes (the canary and the CLI use the same ones).
MAX_LOGITS_STEPS = 4096
MAX_SECONDS = 86_400.0
MAX_KL = 1_000.0
AGREEMENT = Number(0.0, 1.0)
KL = Maybe(Number(0.0, MAX_KL))
SECONDS = Maybe(Number(0.0, MAX_SECONDS, "seconds", lo_open=True))
NEW_TOKENS = Integer(1, MAX_NEW_TOKENS)
LOGITS_STEPS = Integer(0, MAX_LOGITS_STEPS)
_INT64_MAX = np.iinfo(np.int64).max


def _name_of(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else type(fn).__name__


def _check_prompts(prompts: Sequence[Sequence[int]]) -> list[npt.NDArray[np.int64]]:
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence) or not prompts:
        raise ConfigError("prompts: accepted: a non-empty sequence of token-id sequences")
    if len(prompts) > MAX_CASES:
        raise ConfigError(f"prompts: {len(prompts)} prompts; accepted: at most {MAX_CASES}")
    out = []
    for i, prompt in enumerate(prompts):
        a = np.asarray(prompt) if not isinstance(prompt, str | bytes) else np.asarray([])
        ok = a.ndim == 1 and 0 < a.size <= MAX_PROMPT_TOKENS and a.dtype.kind in "iu"
        if not ok or (a < 0).any() or (a.dtype.kind == "u" and (a > _INT64_MAX).any()):
            raise ConfigError(
                f"prompts[{i}]: accepted: a non-empty sequence of at most {MAX_PROMPT_TOKENS} "
                "token ids in [0, 2**63)"
            )
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
    max_new = NEW_TOKENS.check("max_new_tokens", max_new_tokens)
    steps = LOGITS_STEPS.check("logits_steps", logits_steps)
    runner = Runner()
    cases = []
    vocab: int | None = None
    for i, prompt in enumerate(_check_prompts(prompts)):
        got = runner.call(fn, prompt.tolist(), max_new, "the implementation", None)
        if isinstance(got, Failure):
            if got.kind is FailureKind.INTERRUPTED:
                raise KeyboardInterrupt
            raise CrossvalError(f"prompt {i}: {got}")
        kept = None
        if got.logits is not None and not isinstance(got.logits, TopLogprobs) and steps:
            kept = np.ascontiguousarray(got.logits[:steps], np.float32)
            if not np.isfinite(kept).all():  # finite in float64, beyond float32
                raise CrossvalError(f"prompt {i}: the implementation returned logits beyond "
                                    "float32")  # fmt: skip
            if vocab is not None and kept.shape[1] != vocab:
                raise CrossvalError(
                    f"prompt {i}: the implementation returned logits of vocab {kept.shape[1]}, "
                    f"an earlier prompt {vocab}"
                )
            vocab = kept.shape[1]
        cases.append(GoldenCase(prompt, got.ids, kept))
    header: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_by": created_by if created_by is not None else _who_made_it(),
        "implementation": _name_of(fn),
        "model": str(model),
        "quant_format": str(quant_format),
        "max_new_tokens": max_new,
        "logits_steps": steps,
        "bitnet_obs": __version__,
        "runtime": runtime.fingerprint().attributes(),
    }
    if vocab is not None:
        header["vocab_size"] = vocab
    golden = GoldenSet(tuple(cases), header)
    save(path, golden)
    return golden


# --- checking -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """One golden case. ``first_divergence`` is the first output position that differs (None:
    identical); ``failure`` (and its text, ``error``) is set when the candidate failed -- it
    raised, exited, timed out or returned something unusable -- and ``reference_failure``
    (``reference_error``) when the reference did."""

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
    failure: Failure | None = None
    reference_failure: Failure | None = None
    top_k: int | None = None

    @property
    def matched(self) -> int:
        """Tokens of the common prefix."""
        if self.first_divergence is None:
            return max(self.expected_tokens, self.generated_tokens)
        return self.first_divergence


@dataclass(frozen=True)
class CrossvalReport:
    """The answer of :func:`check`; ``reason`` says why it failed ("" when it passed) and
    ``failure`` is set when it failed because something could not run (a failing candidate,
    a stuck or interrupted run), not because the answers differ."""

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
    failure: Failure | None = None
    kl_top_k: int | None = None

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


def failed_report(gs: GoldenSet, failure: Failure, model: str | None = None) -> CrossvalReport:
    """A run that could not run at all: failed, with *failure* as its reason."""
    return CrossvalReport(
        passed=False,
        reason=failure.detail,
        model=model if model is not None else (gs.model or "unknown"),
        cases=(),
        cases_skipped=len(gs.cases),
        token_agreement=0.0,
        kl=None,
        top1=None,
        candidate_tokens_per_s=None,
        reference_tokens_per_s=None,
        duration_s=0.0,
        failure=failure,
    )


def _agreement(expected: npt.NDArray[np.int64], got: npt.NDArray[np.int64]) -> tuple[int, int]:
    """(common prefix length, compared length)."""
    common = min(expected.shape[0], got.shape[0])
    differ = np.flatnonzero(expected[:common] != got[:common])
    prefix = int(differ[0]) if differ.shape[0] else common
    return prefix, max(expected.shape[0], got.shape[0])


def _failed_case(index: int, expected: int, failure: Failure, **more: Any) -> CaseResult:
    return CaseResult(index, expected, 0, 0.0, 0, error=failure.detail, failure=failure, **more)


def _run_case(
    index: int,
    case: GoldenCase,
    gs: GoldenSet,
    candidate: Implementation,
    reference: Implementation | None,
    runner: Runner,
) -> CaseResult:
    expected = case.output_ids
    prompt = case.prompt_ids.tolist()
    got = runner.call(candidate, prompt, gs.max_new_tokens, "the candidate", gs.vocab_size)
    if isinstance(got, Failure):
        return _failed_case(index, expected.shape[0], got)
    ref: dict[str, Any] = {}
    if reference is not None:
        ref_got = runner.call(reference, prompt, gs.max_new_tokens, "the reference", gs.vocab_size)
        if isinstance(ref_got, Failure):
            ref["reference_error"], ref["reference_failure"] = ref_got.detail, ref_got
        else:
            prefix, length = _agreement(expected, ref_got.ids)
            ref["reference_agreement"] = prefix / length if length else 1.0
            ref["reference_tokens"] = ref_got.ids.shape[0]
            ref["reference_s"] = ref_got.seconds
    return _judge_case(index, case, got, ref)


def _judge_case(index: int, case: GoldenCase, got: Outcome, ref: dict[str, Any]) -> CaseResult:
    expected, ids, logits = case.output_ids, got.ids, got.logits
    prefix, length = _agreement(expected, ids)
    diverged = prefix < length
    kl = top1 = top_k = None
    steps = 0
    if case.logits is not None and logits is not None:
        given = logits.steps if isinstance(logits, TopLogprobs) else logits.shape[0]
        steps = min(case.logits.shape[0], given, prefix + 1 if diverged else length)
        if not isinstance(logits, TopLogprobs) and logits.shape[1] != case.logits.shape[1]:
            failure = Failure(  # a golden file without vocab_size
                FailureKind.BAD_OUTPUT,
                f"the candidate returned logits of vocab {logits.shape[1]}, the golden "
                f"{case.logits.shape[1]}",
            )
            return _failed_case(index, expected.shape[0], failure, **ref)
        if steps:
            try:
                if isinstance(logits, TopLogprobs):
                    top = TopLogprobs(logits.ids[:steps], logits.logprobs[:steps])
                    bound = topk_agreement(case.logits[:steps], top)
                    kl, top1, top_k = bound.kl_bound, bound.top1, top.k
                else:
                    agreement = logits_agreement(case.logits[:steps], logits[:steps])
                    kl, top1 = agreement.kl_mean, agreement.top1
            except Exception as exc:  # checked logits of the right shape: a bug of ours
                failure = Failure(
                    FailureKind.INTERNAL, f"comparing logits failed ({type(exc).__name__})"
                )
                return _failed_case(index, expected.shape[0], failure, **ref)
    return CaseResult(
        index,
        expected.shape[0],
        ids.shape[0],
        prefix / length if length else 1.0,
        prefix if diverged else None,
        kl,
        top1,
        steps,
        got.seconds,
        **ref,
        top_k=top_k,
    )


def _rate(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 and tokens else None


@dataclass(frozen=True)
class Judge:
    """How a run is judged (checked once, by :func:`judge`)."""

    min_agreement: float = 1.0
    max_kl: float | None = None
    budget_s: float | None = None
    model: str | None = None


def judge(
    min_agreement: object = 1.0,
    max_kl: object = None,
    budget_s: object = None,
    model: object = None,
) -> Judge:
    """The checked judging options: bounded numbers, ``ConfigError`` otherwise."""
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"model={model!r}; accepted: a string or None")
    return Judge(
        AGREEMENT.check("min_agreement", min_agreement),
        KL.check("max_kl", max_kl),
        SECONDS.check("budget_s", budget_s),
        model,
    )


def check(
    candidate: Implementation,
    golden: GoldenSet | str | os.PathLike[str],
    reference: Implementation | None = None,
    *,
    min_agreement: float = 1.0,
    max_kl: float | None = None,
    budget_s: float | None = None,
    timeout_s: float | None = None,
    model: str | None = None,
    record_metrics: bool = True,
) -> CrossvalReport:
    """Run ``candidate`` (and ``reference``, for its tokens/s on the same cases) on every
    golden case and judge it: it passes when every call answered (no exception, exit, timeout,
    non-finite logits or ids out of range: those fail the run with a typed ``failure``), the
    token agreement is at least ``min_agreement`` (default: identical greedy outputs) and, when
    ``max_kl`` is given, the logits KL is at most that. ``budget_s`` stops starting cases once
    spent (the first always runs); ``timeout_s`` abandons a call that has not answered by then
    (it runs on a worker thread) and stops the run. Records the ``bitnet.crossval.*`` metrics
    unless ``record_metrics=False``::

        report = crossval.check(new_build, "golden.npz", reference=old_build)
        print(report.token_agreement, report.throughput_ratio)
    """
    gs = usable(golden) if isinstance(golden, GoldenSet) else load(golden)
    if not callable(candidate) or (reference is not None and not callable(reference)):
        raise ConfigError("candidate and reference: accepted: fn(prompt_ids, max_new_tokens)")
    how = judge(min_agreement, max_kl, budget_s, model)
    runner = Runner(SECONDS.check("timeout_s", timeout_s))
    report = run(candidate, gs, reference, runner, how)
    if record_metrics:
        emit_metrics(report)
    return report


def run(
    candidate: Implementation,
    gs: GoldenSet,
    reference: Implementation | None,
    runner: Runner,
    how: Judge,
) -> CrossvalReport:
    """One judged run on *runner* (arguments already checked); never raises for anything the
    implementations do."""
    started = time.monotonic()
    results: list[CaseResult] = []
    stopped: Failure | None = None
    for index, case in enumerate(gs.cases):
        if results and how.budget_s is not None and time.monotonic() - started >= how.budget_s:
            break
        result = _run_case(index, case, gs, candidate, reference, runner)
        results.append(result)
        ref_failure = result.reference_failure
        if result.failure is None and ref_failure is not None and ref_failure.kind in STOPPING:
            stopped = Failure(ref_failure.kind, f"case {index}: {ref_failure}; the run stopped")
        if (result.failure is not None and result.failure.kind in STOPPING) or stopped:
            break
    return _judge(gs, results, time.monotonic() - started, how, stopped)


def _judge(
    gs: GoldenSet,
    results: list[CaseResult],
    duration: float,
    how: Judge,
    stopped: Failure | None,
) -> CrossvalReport:
    matched = sum(r.matched for r in results)
    compared = sum(max(r.expected_tokens, r.generated_tokens) for r in results)
    agreement = matched / compared if compared else 1.0
    with_logits = [r for r in results if r.kl is not None and r.logits_steps]
    steps = sum(r.logits_steps for r in with_logits)
    kl = sum((r.kl or 0.0) * r.logits_steps for r in with_logits) / steps if steps else None
    top1 = sum((r.top1 or 0.0) * r.logits_steps for r in with_logits) / steps if steps else None
    # from a server's top-k log-probabilities, the KL is a lower bound (bitnet_obs._topk)
    top_ks = [r.top_k for r in with_logits if r.top_k is not None]
    reason = ""
    failure: Failure | None = None
    failed = next((r for r in results if r.failure is not None), None)
    if failed is not None and failed.failure is not None:
        reason = f"case {failed.index}: {failed.failure}"
        failure = Failure(failed.failure.kind, reason)
    elif stopped is not None:
        reason, failure = stopped.detail, stopped
    elif not results:
        failure = Failure(FailureKind.INTERNAL, "no case was run")
        reason = failure.detail
    elif agreement < how.min_agreement:
        worst = min(results, key=lambda r: (r.token_agreement, r.index))
        reason = (
            f"case {worst.index} diverges at token {worst.first_divergence} of "
            f"{worst.expected_tokens} (token agreement {agreement:.3f} < {how.min_agreement:g})"
        )
    elif how.max_kl is not None and kl is not None and not kl <= how.max_kl:
        reason = f"logits KL {'at least ' if top_ks else ''}{kl:.3g} > {how.max_kl:g}"
    cand_s = sum(r.candidate_s for r in results)
    ref_runs = [r for r in results if r.reference_s is not None]
    return CrossvalReport(
        passed=not reason,
        reason=reason,
        model=how.model if how.model is not None else (gs.model or "unknown"),
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
        failure=failure,
        kl_top_k=min(top_ks) if top_ks else None,
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
        if math.isfinite(report.token_agreement):
            _instruments.CROSSVAL_TOKEN_AGREEMENT.set(report.token_agreement, model)
        if report.kl is not None and math.isfinite(report.kl):
            _instruments.CROSSVAL_KL.set(report.kl, model)
        throughput = _instruments.CROSSVAL_THROUGHPUT
        for implementation, rate in (
            ("candidate", report.candidate_tokens_per_s),
            ("reference", report.reference_tokens_per_s),
        ):
            if rate is not None and math.isfinite(rate):
                throughput.set(rate, {**model, "bitnet.crossval.implementation": implementation})
    except Exception as exc:
        internal_error("crossval", exc, "recording cross-validation metrics")
