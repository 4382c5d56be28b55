"""Top-k log-probabilities against a golden's full logits: top-1 and a KL that admits it is
only a bound.

A server reports, per generated token, the ``k`` most likely next tokens and their
log-probabilities under the softmax of its *whole* vocabulary (llama-server's ``n_probs``,
OpenAI's ``logprobs``); the other ``vocab - k`` values never leave it. The golden holds full
logits. Two numbers can be had honestly from that:

- **top-1**: the server's most likely token (its highest log-probability) is the argmax of its
  logits, so top-1 agreement with the golden's argmax is exact, as with full logits;
- **KL(golden || server) over the server's top-k plus one bucket for the rest**: both
  distributions are coarsened to ``k + 1`` outcomes -- each of the server's ``k`` tokens, and
  "any other token" holding the remaining probability (``1 - sum`` of the ``k``). Merging
  outcomes never raises a KL (the log-sum inequality), so this is a **lower bound** on the full
  KL, equal to it when the golden puts no mass outside the server's top-k; a server whose top-k
  misses the golden's likely tokens still shows it through the rest bucket. The server computes
  its probabilities in float32: the bucket's mass is floored at the rounding of the ``k``
  values' sum (``k * 2**-24``), which moves the bound by at most that many nats, and a
  log-probability of a token whose float32 probability underflowed is read as the smallest one
  float32 has (``log(2**-149)``).

So a passing top-k KL is evidence, not proof, of a faithful kernel: judge with top-1 and token
agreement first (they are exact), and use the KL bound for drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["TopLogprobs", "TopkAgreement", "TopkError", "topk_agreement"]

#: log of float32's smallest positive value: what a probability that underflowed to 0 was at most
LOG_FLOAT32_TINY = math.log(2.0**-149)
#: a float32 sum of k probabilities is within about k * 2**-24 of the true sum
_ROUNDING = 2.0**-24
#: a server whose k probabilities add up to more than 1 by this much is broken, not rounding
_OVER_ONE = 1e-3


class TopkError(ValueError):
    """Top-k log-probabilities that cannot be what a server computed (the message says why)."""


@dataclass(frozen=True)
class TopLogprobs:
    """The ``k`` most likely next tokens at each generated step, as a server reports them:
    ``ids`` (steps, k) token ids and ``logprobs`` (steps, k) their natural-log probabilities
    under the softmax of the full vocabulary. A candidate returns ``(ids, TopLogprobs(...))``
    in place of ``(ids, logits)`` when it only has these::

        return new_ids, crossval.TopLogprobs(top_ids, top_logprobs)
    """

    ids: npt.NDArray[np.int64]
    logprobs: npt.NDArray[np.float64]

    @property
    def steps(self) -> int:
        return int(self.ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


def checked(value: TopLogprobs, vocab: int | None = None) -> TopLogprobs:
    """``value`` with its arrays as int64 / float64 of one (steps, k) shape, or
    :class:`TopkError`: ids outside ``[0, vocab)``, repeated ids in a step, NaN or positive
    log-probabilities, or ``k`` probabilities adding up to more than 1."""
    try:
        ids = np.asarray(value.ids)
        lp = np.asarray(value.logprobs)
    except Exception as exc:
        raise TopkError(f"top-k arrays of type {type(value.ids).__name__}") from exc
    if ids.ndim != 2 or lp.shape != ids.shape or ids.shape[1] < 1:
        raise TopkError(f"top-k ids {tuple(ids.shape)} and log-probabilities {tuple(lp.shape)}; "
                        "accepted: both of shape (steps, k), k >= 1")  # fmt: skip
    if ids.size and ids.dtype.kind not in "iu":
        raise TopkError(f"top-k ids of dtype {ids.dtype}; accepted: integers")
    if lp.size and lp.dtype.kind not in "fiu":
        raise TopkError(f"top-k log-probabilities of dtype {lp.dtype}; accepted: numbers")
    lp = lp.astype(np.float64)
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or (vocab is not None and high >= vocab):
            bad = low if low < 0 else high
            limit = f"0..{vocab - 1}" if vocab is not None else "ids >= 0"
            raise TopkError(f"top-k token id {bad}; accepted: {limit}")
        ordered = np.sort(ids, axis=1)
        if (ordered[:, 1:] == ordered[:, :-1]).any():
            raise TopkError("a token id repeated within one step's top-k")
    if np.isnan(lp).any() or (lp > 1e-6).any():
        raise TopkError("top-k log-probabilities NaN or above 0; accepted: log-probabilities <= 0")
    with np.errstate(under="ignore"):
        total = np.exp(np.maximum(lp, LOG_FLOAT32_TINY)).sum(axis=1)
    if (total > 1.0 + _OVER_ONE).any():
        worst = float(total.max())
        raise TopkError(f"top-k probabilities add up to {worst:.6g} > 1 in a step")
    return TopLogprobs(ids.astype(np.int64), np.minimum(lp, 0.0))


@dataclass(frozen=True)
class TopkAgreement:
    """``kl_bound``: the mean over steps of KL(golden || server) over the server's top-k plus
    one bucket for the rest (a lower bound on the full KL, see the module); ``top1``: the share
    of steps whose most likely token is the same."""

    kl_bound: float
    top1: float
    steps: int


def _log_softmax(x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    z = x.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def _xlogy(p: npt.NDArray[np.float64], lp: npt.NDArray[np.float64],
           lq: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:  # fmt: skip
    """p * (lp - lq), 0 where p is 0 (so -inf log-probabilities of empty outcomes are fine)."""
    out = np.zeros_like(p)
    mask = p > 0
    out[mask] = p[mask] * (lp[mask] - lq[mask])
    return out


def topk_agreement(golden_logits: npt.NDArray[Any], top: TopLogprobs) -> TopkAgreement:
    """Compare the first ``steps`` rows of ``golden_logits`` (steps, vocab), full logits, with a
    server's top-k log-probabilities of the same steps (already :func:`checked`)."""
    steps = top.steps
    if golden_logits.ndim != 2 or golden_logits.shape[0] != steps:
        raise TopkError(f"golden logits {tuple(golden_logits.shape)} for {steps} top-k steps")
    if not steps:
        return TopkAgreement(0.0, 1.0, 0)
    gl = _log_softmax(golden_logits)  # (steps, vocab)
    rows = np.arange(steps)[:, None]
    lp_s = gl[rows, top.ids]  # golden log-probabilities of the server's k tokens
    with np.errstate(under="ignore", divide="ignore"):
        p_s = np.exp(lp_s)
        off = np.exp(gl)
        off[rows, top.ids] = 0.0
        p_rest = off.sum(axis=1)  # the golden's mass off the top-k, summed (not 1 - sum)
        lq_s = np.maximum(top.logprobs, LOG_FLOAT32_TINY)
        q_rest = np.maximum(1.0 - np.exp(lq_s).sum(axis=1), top.k * _ROUNDING)
        kl_in = _xlogy(p_s, lp_s, lq_s).sum(axis=1)
        kl_rest = _xlogy(p_rest, np.log(p_rest), np.log(q_rest))
    kl = np.maximum(kl_in + kl_rest, 0.0)  # >= 0; clamp rounding noise
    # the server's most likely token: its highest log-probability (ties: the first listed)
    server_top = top.ids[np.arange(steps), top.logprobs.argmax(axis=1)]
    golden_top = golden_logits.argmax(axis=1)  # of the raw logits, as logits_agreement does
    agree = int(np.count_nonzero(server_top == golden_top))
    return TopkAgreement(float(kl.mean()), agree / steps, steps)
