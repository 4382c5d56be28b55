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

A candidate that cannot answer -- it raises, calls ``sys.exit``, hangs past ``timeout_s``,
returns NaN logits, ids out of the vocabulary or something that is not ids -- fails the run:
``report.failure`` says why (a :class:`FailureKind` and one line), and the canary's
``/health/ready`` answers 503 with that line. A candidate that is not a Python function (an HTTP
server, a subprocess) reports its own failures by raising :class:`CandidateError`.

**Servers** (llama-server, bitnet.cpp's ``run_inference_server.py``, any OpenAI-compatible
``/v1/completions``) are candidates too: :class:`LlamaServerCandidate` and
:class:`OpenAICompletionsCandidate` send each golden prompt as token ids for a greedy completion
and read back the ids and the top-k log-probabilities (:class:`TopLogprobs`), every call bounded
by ``timeout_s``; an unreachable, slow, erroring or malformed server fails the run with its
reason::

    canary = crossval.Canary(crossval.LlamaServerCandidate("http://127.0.0.1:8080"),
                             "golden.npz", interval_s=60).start()

With only the top-k of a server, top-1 agreement is exact and the KL is a lower bound (over the
server's k tokens plus one bucket for the rest of the vocabulary; ``report.kl_top_k`` says k):
a KL bound above ``max_kl`` proves the full KL is too, one below it does not prove the opposite.

Token agreement counts the common prefix: after the first divergence the two runs condition on
different text, so later matches mean nothing. Logits (KL, top-1, with
:func:`bitnet_obs.quant.logits_agreement`) are compared up to and including that step for the
same reason. Metrics: ``bitnet.crossval.runs`` (by outcome), ``.passing``, ``.token_agreement``,
``.kl`` and ``.throughput`` (candidate and reference), by ``gen_ai.request.model``.
"""

from __future__ import annotations

from bitnet_obs._canary import Canary
from bitnet_obs._candidate import CandidateError, CrossvalError, Failure, FailureKind
from bitnet_obs._crossval import (
    CaseResult,
    CrossvalReport,
    Implementation,
    check,
    record,
)
from bitnet_obs._golden import GoldenCase, GoldenError, GoldenSet, load
from bitnet_obs._http_candidate import (
    HTTPCandidate,
    LlamaServerCandidate,
    OpenAICompletionsCandidate,
    ServerError,
    server_candidate,
)
from bitnet_obs._topk import TopLogprobs

__all__ = [
    "CandidateError",
    "Canary",
    "CaseResult",
    "CrossvalError",
    "CrossvalReport",
    "Failure",
    "FailureKind",
    "GoldenCase",
    "GoldenError",
    "GoldenSet",
    "HTTPCandidate",
    "Implementation",
    "LlamaServerCandidate",
    "OpenAICompletionsCandidate",
    "ServerError",
    "TopLogprobs",
    "check",
    "load",
    "record",
    "server_candidate",
]
