"""Cross-validation: does this build still produce the answers a trusted one produced?

A broken 1-bit kernel answers fast and wrong (AVX2-less x86 builds answering "!!!!", a
mis-unpacked ARM fallback, a converted GGUF that differs from the official one). Record the
greedy outputs of a trusted implementation once, then check every new build, GGUF or machine
against them -- in a deployment pipeline (``bitnet-obs crossval check``, exit 3 on divergence)
and continuously in the serving process (:class:`Canary`, which gates ``/health/ready``)::

    from bitnet_obs import crossval

    def generate(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        ...  # greedy; may return (ids, logits) with logits of shape (steps, vocab)

    crossval.record(generate, [[1, 15043, 29892], [1, 1724, 338]], "golden.npz",
                    model="bitnet-b1.58-2B-4T", quant_format="i2_s")
    report = crossval.check(generate, "golden.npz", reference=slow_but_trusted)
    assert report.passed, report.reason

    canary = crossval.Canary(generate, "golden.npz", interval_s=300).start()

Token agreement counts the common prefix: after the first divergence the two runs condition on
different text, so later matches mean nothing. Logits (KL, top-1, with
:func:`bitnet_obs.quant.logits_agreement`) are compared up to and including that step for the
same reason. Metrics: ``bitnet.crossval.runs`` (by outcome), ``.passing``, ``.token_agreement``,
``.kl`` and ``.throughput`` (candidate and reference), by ``gen_ai.request.model``.
"""

from __future__ import annotations

from bitnet_obs._canary import Canary
from bitnet_obs._crossval import (
    CaseResult,
    CrossvalError,
    CrossvalReport,
    Implementation,
    check,
    record,
)
from bitnet_obs._golden import GoldenCase, GoldenError, GoldenSet, load

__all__ = [
    "Canary",
    "CaseResult",
    "CrossvalError",
    "CrossvalReport",
    "GoldenCase",
    "GoldenError",
    "GoldenSet",
    "Implementation",
    "check",
    "load",
    "record",
]
