"""Service-level objectives, evaluated over a sliding window of recent requests.

Operators get paged on SLA violations, not on histograms. Objectives come from code or from
``BITNET_OBS_SLA_*`` (``configure()`` applies them when at least one is set; the last call wins)::

    from bitnet_obs import sla

    sla.set_objectives(
        sla.Objectives(latency_s=2.0, percentile=95, max_error_rate=0.01,
                       min_tokens_per_s=20.0, ttft_s=0.5)
    )
    sla.snapshot()["latency"].compliance   # e.g. 0.97

Definitions (what ``bitnet.sla.compliance`` and ``bitnet.sla.violations`` mean):

- **Window**: the last ``window`` finished requests (default 1000), none older than
  ``window_s`` (default 300 s), in a fixed ring buffer. Cancelled requests are left out (the
  client went away). Each request costs one O(1) update under a lock, about 1-3 µs (expiring
  old entries is amortised O(1)); nothing is sorted.
- **Per request and objective** a request is eligible or not, and if eligible good or bad:
  ``latency``: ok requests, bad when duration > ``latency_s``; ``ttft``: ok requests that had
  a first token, bad when TTFT > ``ttft_s``; ``throughput``: ok requests with output tokens,
  bad when output tokens / duration < ``min_tokens_per_s``; ``error_rate``: ok and error
  requests, bad when it failed. ``overall``: ok and error requests, bad when it failed or was
  bad on any configured objective.
- **Compliance** (gauge, per objective and ``overall``) = good / eligible in the window: the
  fraction of the window's requests that met the objective. Reported once an objective has
  ``min_samples`` eligible requests (default 10).
- **Met**: the bad fraction is at most the allowed one: ``1 - percentile/100`` for latency,
  TTFT and throughput (so "p95 latency <= 2 s" holds exactly when at most 5% of requests took
  longer: the nearest-rank p95), ``max_error_rate`` for errors. Missed: **warning**; the bad
  fraction over ``critical_factor`` (default 2) x allowed: **critical**.
- **Violations** (counter by objective and severity) count transitions to a worse level,
  checked after every request and at every collection: met -> warning counts one warning;
  met or warning -> critical counts one critical. A level is left only once the bad fraction is
  back to ``RECOVERY`` (0.8) x its threshold, so a window hovering at the threshold does not
  count a violation per request. An objective with no eligible request left is met again.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Observation

from bitnet_obs import _config, _context, _state
from bitnet_obs._config import Settings
from bitnet_obs._instruments import SLA_COMPLIANCE, SLA_VIOLATIONS
from bitnet_obs._parsers import Integer, Number
from bitnet_obs._selfmon import internal_error

__all__ = [
    "OBJECTIVES",
    "ObjectiveState",
    "Objectives",
    "objectives",
    "record",
    "set_objectives",
    "snapshot",
]

OBJECTIVES = ("latency", "ttft", "throughput", "error_rate")
LEVELS = ("met", "warning", "critical")
RECOVERY = 0.8
_NAMES = (*OBJECTIVES, "overall")
_EPS = 1e-12
_VIOLATIONS = SLA_VIOLATIONS
_VIOLATION_KEYS = {
    (i, level): (("bitnet.sla.objective", name), ("bitnet.sla.severity", LEVELS[level]))
    for i, name in enumerate(OBJECTIVES)
    for level in (1, 2)
}
_ATTRS = [{"bitnet.sla.objective": name} for name in _NAMES]


# Objective field -> the settings field whose declaration (range, accepted values) it shares.
_SETTINGS_FIELDS = {
    "latency_s": "sla_latency_s",
    "ttft_s": "sla_ttft_s",
    "min_tokens_per_s": "sla_min_tokens_per_s",
    "max_error_rate": "sla_max_error_rate",
    "percentile": "sla_percentile",
    "window": "sla_window",
    "window_s": "sla_window_s",
}
_MIN_SAMPLES = Integer(1, 1_000_000)
_CRITICAL_FACTOR = Number(1.0, 1000.0)


@dataclass(frozen=True)
class Objectives:
    """What to hold the service to; ``None`` leaves an objective out. See the module docs."""

    latency_s: float | None = None
    ttft_s: float | None = None
    min_tokens_per_s: float | None = None
    max_error_rate: float | None = None
    percentile: float = 95.0
    window: int = 1000
    window_s: float | None = 300.0
    min_samples: int = 10
    critical_factor: float = 2.0

    def __post_init__(self) -> None:
        for name, settings_field in _SETTINGS_FIELDS.items():
            value = getattr(self, name)
            if name == "window_s" and value is None:
                continue  # no time limit
            _config.row(settings_field).parser.check(name, value)
        _MIN_SAMPLES.check("min_samples", self.min_samples)
        _CRITICAL_FACTOR.check("critical_factor", self.critical_factor)

    @property
    def active(self) -> tuple[bool, bool, bool, bool]:
        """Which of :data:`OBJECTIVES` are configured."""
        return (
            self.latency_s is not None,
            self.ttft_s is not None,
            self.min_tokens_per_s is not None,
            self.max_error_rate is not None,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Objectives | None:
        """The ``BITNET_OBS_SLA_*`` objectives, or None when none is set."""
        o = cls(
            latency_s=settings.sla_latency_s,
            ttft_s=settings.sla_ttft_s,
            min_tokens_per_s=settings.sla_min_tokens_per_s,
            max_error_rate=settings.sla_max_error_rate,
            percentile=settings.sla_percentile,
            window=settings.sla_window,
            window_s=settings.sla_window_s,
        )
        return o if any(o.active) else None


@dataclass(frozen=True)
class ObjectiveState:
    """One objective now: ``compliance`` is None below ``min_samples`` eligible requests;
    ``level`` is met, warning or critical ("" for overall, which has no target)."""

    objective: str
    compliance: float | None
    eligible: int
    bad: int
    allowed_bad_fraction: float | None
    level: str


class _Tracker:
    """Ring buffer of per-request flags (eligible/bad bits per objective) and running counts."""

    def __init__(self, o: Objectives) -> None:
        self.o = o
        self.active = o.active
        self.flags = array("H", bytes(2 * o.window))
        self.times = array("d", bytes(8 * o.window))
        self.head = self.size = 0
        self.window_s = o.window_s
        self.eligible = [0] * 5
        self.bad = [0] * 5
        self.level = [0] * 4
        slow = round(1.0 - o.percentile / 100.0, 12)
        self.allowed = (slow, slow, slow, o.max_error_rate or 0.0)
        # (objective, warning, critical, stay warning, stay critical): bad-fraction thresholds
        self.rules = [
            (i, a + _EPS, a * o.critical_factor + _EPS, RECOVERY * a + _EPS,
             RECOVERY * a * o.critical_factor + _EPS)
            for i, a in enumerate(self.allowed)
            if self.active[i]
        ]  # fmt: skip
        self.deltas: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self.lock = threading.Lock()

    def classify(self, duration: float, ttft: float | None, n_out: int, outcome: str) -> int:
        o, flags, bad_any = self.o, 0, False
        if outcome == "error":
            return (0b11 << 6 if o.max_error_rate is not None else 0) | 0b11 << 8
        if o.latency_s is not None:
            flags |= 1
            if duration > o.latency_s:
                flags, bad_any = flags | 0b10, True
        if o.ttft_s is not None and ttft is not None:
            flags |= 1 << 2
            if ttft > o.ttft_s:
                flags, bad_any = flags | 0b10 << 2, True
        if o.min_tokens_per_s is not None and n_out > 0 and duration > 0:
            flags |= 1 << 4
            if n_out / duration < o.min_tokens_per_s:
                flags, bad_any = flags | 0b10 << 4, True
        if o.max_error_rate is not None:
            flags |= 1 << 6
        return flags | 1 << 8 | (0b10 << 8 if bad_any else 0)

    def add(self, flags: int, now: float) -> None:
        with self.lock:
            window_s = self.window_s
            if window_s is not None and self.size and self.times[self.head] < now - window_s:
                self._expire(now)
            capacity = len(self.flags)
            if self.size == capacity:  # the newest takes the oldest's slot
                head = self.head
                evicted = self.flags[head]
                self.flags[head], self.times[head] = flags, now
                self.head = (head + 1) % capacity
                if evicted == flags:  # same verdicts out and in: nothing to recount (common)
                    return
                self._count(evicted, -1)
            else:
                i = (self.head + self.size) % capacity
                self.flags[i], self.times[i] = flags, now
                self.size += 1
            self._count(flags, 1)
            self._evaluate()

    def _pop(self) -> None:
        self._count(self.flags[self.head], -1)
        self.head = (self.head + 1) % len(self.flags)
        self.size -= 1

    def _expire(self, now: float) -> None:
        if self.window_s is not None:
            oldest = now - self.window_s
            while self.size and self.times[self.head] < oldest:
                self._pop()

    def _count(self, flags: int, sign: int) -> None:
        split = self.deltas.get(flags)
        if split is None:  # at most 2**10 distinct flag values: decoded once each
            eligible = tuple(i for i in range(5) if flags >> (2 * i) & 1)
            bad = tuple(i for i in eligible if flags >> (2 * i + 1) & 1)
            split = self.deltas[flags] = (eligible, bad)
        for i in split[0]:
            self.eligible[i] += sign
        for i in split[1]:
            self.bad[i] += sign

    def _evaluate(self) -> None:
        level, eligible, bad, min_samples = self.level, self.eligible, self.bad, self.o.min_samples
        for i, warn, crit, stay_warn, stay_crit in self.rules:
            n = eligible[i]
            if n < min_samples:
                if n == 0:
                    level[i] = 0
                continue
            fraction, current = bad[i] / n, level[i]
            up = 2 if fraction > crit else 1 if fraction > warn else 0
            if up > current:
                level[i] = up
                _VIOLATIONS.add(_VIOLATION_KEYS[(i, up)])
            elif current:
                stay = 2 if fraction > stay_crit else 1 if fraction > stay_warn else 0
                level[i] = min(current, stay)

    def states(self, now: float) -> dict[str, ObjectiveState]:
        with self.lock:
            self._expire(now)
            self._evaluate()
            out: dict[str, ObjectiveState] = {}
            for i, name in enumerate(_NAMES):
                if i < 4 and not self.active[i]:
                    continue
                eligible, bad = self.eligible[i], self.bad[i]
                good = eligible - bad
                compliance = good / eligible if eligible >= self.o.min_samples else None
                level = LEVELS[self.level[i]] if i < 4 else ""
                allowed = self.allowed[i] if i < 4 else None
                out[name] = ObjectiveState(name, compliance, eligible, bad, allowed, level)
            return out


_lock = threading.Lock()
_tracker: _Tracker | None = None


def _on_request(duration: float, ttft: float | None, n_out: int, outcome: str) -> None:
    """The request observer: O(1), never raises."""
    tracker = _tracker
    if tracker is None or outcome not in ("ok", "error"):
        return
    try:
        tracker.add(tracker.classify(duration, ttft, n_out, outcome), time.monotonic())
    except Exception as exc:
        internal_error("sla", exc)


def _observe(_options: CallbackOptions) -> Iterable[Observation]:
    tracker = _tracker
    if tracker is None:
        return []
    try:
        return [
            Observation(state.compliance, _ATTRS[_NAMES.index(name)])
            for name, state in tracker.states(time.monotonic()).items()
            if state.compliance is not None
        ]
    except Exception as exc:
        internal_error("sla", exc, "observing bitnet.sla.compliance")
        return []


def set_objectives(new: Objectives | None) -> None:
    """Track these objectives from now on, with a fresh window; ``None`` stops tracking.

    For example::

        sla.set_objectives(sla.Objectives(latency_s=2.0, max_error_rate=0.01))
    """
    global _tracker
    if new is not None and not isinstance(new, Objectives):
        raise TypeError(f"expected sla.Objectives or None, got {type(new).__name__}")
    with _lock:
        _tracker = _Tracker(new) if new is not None else None
        if new is not None:
            _context.add_request_observer(_on_request)
            SLA_COMPLIANCE.register(_observe)
            for i in range(len(OBJECTIVES)):  # start the violation counters at 0
                if new.active[i]:
                    for level in (1, 2):
                        _VIOLATIONS.tally.declare(_VIOLATION_KEYS[(i, level)])
        else:
            _context.remove_request_observer(_on_request)
            SLA_COMPLIANCE.unregister(_observe)


def objectives() -> Objectives | None:
    """The objectives being tracked, if any."""
    tracker = _tracker
    return tracker.o if tracker is not None else None


def snapshot() -> dict[str, ObjectiveState]:
    """Every configured objective and ``overall``, now (for the demo, tests and dashboards)."""
    tracker = _tracker
    return {} if tracker is None else tracker.states(time.monotonic())


def record(
    duration_s: float, ttft_s: float | None = None, output_tokens: int = 0, outcome: str = "ok"
) -> None:
    """Count one request that ``monitored_inference`` did not see (it feeds the SLA itself).

    For example::

        sla.record(1.7, ttft_s=0.2, output_tokens=64)      # outcome: ok, error, cancelled
    """
    _on_request(duration_s, ttft_s, output_tokens, outcome)


@_state.on_fork
def _reinit_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    if _tracker is not None:
        _tracker.lock = threading.Lock()


@_state.on_reset
def _reset() -> None:
    set_objectives(None)
