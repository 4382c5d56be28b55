"""Runtime sampling under one time budget: who may spend CPU on optional statistics.

Quantization checks (``BITNET_OBS_QUANT_SAMPLE_RATE``) and logits statistics
(``BITNET_OBS_LOGITS_SAMPLE_RATE``) are drawn at their own rates and share one budget,
``BITNET_OBS_QUANT_BUDGET``: a token bucket where credit accrues at ``budget`` seconds per
second, up to one minute's worth. A sample not taken is counted in
``bitnet.quant.samples_skipped`` with its reason (``sampling``, ``budget``).

No numpy here: the output room imports this at configure time, and nothing it pulls in may
register fork handlers late (see ``bitnet_obs._pipeline``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from bitnet_obs import _config, _state
from bitnet_obs._instruments import QUANT_SAMPLES_SKIPPED
from bitnet_obs._selfmon import internal_error
from bitnet_obs._tally import AttrKey, key_of

#: What a runtime sample measures (``bitnet.quant.kind``).
KINDS = ("weight", "activation", "output", "logits")


class Budget:
    """Token bucket over wall time: at most ``fraction`` of it spent on statistics."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._credit: float | None = None
        self._last = clock()
        self.rng = random.Random()

    def admit(self, rate: float, fraction: float) -> str | None:
        """None to go ahead, else the skip reason."""
        if rate <= 0.0 or (rate < 1.0 and self.rng.random() >= rate):
            return "sampling"
        return self.within(fraction)

    def within(self, fraction: float) -> str | None:
        """None when the budget has credit (the sample is drawn already), else ``budget``."""
        cap = max(0.05, fraction * 60.0)
        with self._lock:
            now = self._clock()
            credit = cap if self._credit is None else self._credit
            credit = min(cap, credit + max(0.0, now - self._last) * fraction)
            self._last = now
            self._credit = credit
            return None if credit > 0.0 else "budget"

    def spend(self, seconds: float) -> None:
        with self._lock:
            self._credit = (self._credit or 0.0) - seconds


BUDGET = Budget()


_SKIP_KEYS: dict[tuple[str, str], AttrKey] = {}  # (kind, reason) -> its series, built once


def skip(kind: str, reason: str) -> None:
    """Count a runtime sample not taken."""
    key = _SKIP_KEYS.get((kind, reason))
    QUANT_SAMPLES_SKIPPED.tally.add(_skip_key(kind, reason) if key is None else key, 1)


def _skip_key(kind: str, reason: str) -> AttrKey:
    """The skip counter's series of ``kind`` and ``reason``, built once (a refused draw is
    most calls)."""
    key = key_of({"bitnet.quant.kind": kind, "bitnet.quant.skip_reason": reason})
    if len(_SKIP_KEYS) < 64:
        _SKIP_KEYS[kind, reason] = key
    return key


def admit(kind: str, rate: float, budget: float | None = None) -> bool:
    """Draw one sample of ``kind`` at ``rate`` within the budget (``budget``: the
    ``BITNET_OBS_QUANT_BUDGET`` in force, when the caller has the settings at hand); a refusal
    is counted. Never raises. The draw comes first: a refusal (most calls) costs a random
    number and a count."""
    try:
        budget_ = BUDGET
        if rate <= 0.0 or (rate < 1.0 and budget_.rng.random() >= rate):
            reason: str | None = "sampling"
        else:
            reason = budget_.within(_config.current().quant_budget if budget is None else budget)
        if reason is not None:
            kind = kind if kind in KINDS else "output"
            key = _SKIP_KEYS.get((kind, reason))
            QUANT_SAMPLES_SKIPPED.tally.add(_skip_key(kind, reason) if key is None else key, 1)
            return False
        return True
    except Exception as exc:
        internal_error("quant_admit", exc)
        return False


def spend(seconds: float) -> None:
    """Charge the budget for work measured outside the sampler."""
    BUDGET.spend(seconds)


@_state.on_fork
def _reinit_after_fork() -> None:
    BUDGET._lock = threading.Lock()


@_state.on_reset(phase=_state.CLEAR)
def _reset() -> None:
    global BUDGET
    BUDGET = Budget()
