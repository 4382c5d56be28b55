"""The serving-time canary: cross-validation on a background thread, gating readiness."""

from __future__ import annotations

import os
import re
import threading
import time
import weakref

from bitnet_obs import _state, health
from bitnet_obs._candidate import Failure, FailureKind, Runner
from bitnet_obs._crossval import (
    MAX_SECONDS,
    SECONDS,
    CrossvalReport,
    Implementation,
    emit_metrics,
    failed_report,
    judge,
    run,
)
from bitnet_obs._errors import ConfigError
from bitnet_obs._golden import GoldenSet, load, usable
from bitnet_obs._parsers import Number
from bitnet_obs._selfmon import internal_error, logger

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
#: The attribute naming the canary on the log records of its verdicts (``logging``'s extra).
LOG_KEY = "bitnet_canary"
_live: weakref.WeakSet[Canary] = weakref.WeakSet()
_names_lock = threading.Lock()
_running: dict[str, Canary] = {}  # name -> the started canary whose health check it is

#: Bounds of a canary's times (every number has a finite upper bound).
MAX_INTERVAL_S = 7 * 86_400.0
INTERVAL = Number(0.0, MAX_INTERVAL_S, "seconds", lo_open=True)
BUDGET = Number(0.0, MAX_SECONDS, "seconds", lo_open=True)


class Canary:
    """Checks ``candidate`` against the golden cases at :meth:`start` and then every
    ``interval_s`` (counted from the end of a run) on one daemon thread, so runs never overlap
    and a probe or a scrape never waits for one. Each run stops starting cases once
    ``budget_s`` is spent, and abandons a call that has not answered within ``timeout_s``
    (default: twice the budget) as a failed run. With ``gate_readiness`` the health check
    ``name`` is critical: ``/health/ready`` answers 503 with the reason from start until the
    first pass, and again whenever a run fails -- the candidate diverged, raised, exited, hung,
    returned NaN logits or ids out of range, or the run itself could not run -- or one has been
    running for over twice its budget; it recovers with the next pass. A canary that cannot
    run is never passing. ``gate_readiness=False`` reports the same check without gating::

        canary = crossval.Canary(generate, "golden.npz", interval_s=300, budget_s=30).start()
        ...
        canary.stop()

    ``name`` is the health check's: two running canaries cannot share one (the second
    :meth:`start` raises ``ConfigError``), so stopping one never removes another's gate. A run
    still going when :meth:`stop` is called finishes in the background and is not recorded.
    Start canaries in each worker after forking: a thread does not survive ``fork()``.
    """

    def __init__(
        self,
        candidate: Implementation,
        golden: GoldenSet | str | os.PathLike[str],
        *,
        reference: Implementation | None = None,
        interval_s: float = 300.0,
        budget_s: float = 60.0,
        timeout_s: float | None = None,
        gate_readiness: bool = True,
        name: str = "canary",
        min_agreement: float = 1.0,
        max_kl: float | None = None,
        model: str | None = None,
    ) -> None:
        if not callable(candidate) or (reference is not None and not callable(reference)):
            raise ConfigError("candidate and reference: accepted: fn(prompt_ids, max_new_tokens)")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"name={name!r}; accepted: 1-64 of A-Z a-z 0-9 _ . : -")
        self.interval_s = INTERVAL.check("interval_s", interval_s)
        self.budget_s = BUDGET.check("budget_s", budget_s)
        timeout = SECONDS.check("timeout_s", timeout_s)
        self.timeout_s = min(2 * self.budget_s, MAX_SECONDS) if timeout is None else timeout
        self._judge = judge(min_agreement, max_kl, self.budget_s, model)
        self.golden = usable(golden) if isinstance(golden, GoldenSet) else load(golden)
        self.candidate, self.reference = candidate, reference
        self.gate_readiness, self.name = bool(gate_readiness), name
        self._lock = threading.Lock()  # state below; never held during a run
        self._run_lock = threading.Lock()  # one run at a time, across restarts too
        self._runner = Runner(self.timeout_s)  # used under _run_lock only
        self._last: CrossvalReport | None = None
        self._running_since: float | None = None
        self._runs = 0
        self._logged = ""  # the last reason logged: a failure is logged when it changes
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        _live.add(self)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Canary:
        """Register the health check and start the thread (idempotent); returns self.
        ``ConfigError`` when another running canary has this one's name."""
        with self._lock:
            if self._stop is not None:
                return self
            with _names_lock:
                holder = _running.get(self.name)
                if holder is not None and holder is not self:
                    raise ConfigError(
                        f"name={self.name!r}: another running canary has this name (its health "
                        "check); accepted: a name of its own for each canary, e.g. "
                        "name='canary-i2s'"
                    )
                _running[self.name] = self
            stop = self._stop = threading.Event()
        health.register(self.name, self._check, critical=self.gate_readiness, probe="readiness")
        thread = threading.Thread(
            target=self._loop, args=(stop,), name=f"bitnet-obs-{self.name}", daemon=True
        )
        with self._lock:
            self._thread = thread
        thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waiting up to ``timeout`` for a run in progress) and unregister
        the health check. A run still going finishes in the background, unrecorded."""
        with self._lock:
            stop, thread = self._stop, self._thread
            self._stop = self._thread = None
            if stop is not None:
                stop.set()  # under the lock: a run that finishes now sees it before recording
        if stop is None:
            return
        with _names_lock:
            if _running.get(self.name) is self:
                del _running[self.name]
                health.unregister(self.name)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Canary:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state -------------------------------------------------------------------------------

    @property
    def last_report(self) -> CrossvalReport | None:
        """The report of the last finished run."""
        with self._lock:
            return self._last

    @property
    def runs(self) -> int:
        """Runs finished and recorded since construction."""
        with self._lock:
            return self._runs

    @property
    def running(self) -> bool:
        with self._lock:
            return self._stop is not None

    def run_once(self) -> CrossvalReport:
        """One run now, on the calling thread (after a run in progress finishes); recorded
        like the background runs."""
        report = self._run(None)
        assert report is not None  # only a stop event skips a run
        return report

    def _attempt(self) -> CrossvalReport:
        """One run; whatever goes wrong is a failed report, never an exception."""
        stuck = self._runner.stuck()
        if stuck is not None:
            return failed_report(self.golden, stuck, self._judge.model)
        try:
            return run(self.candidate, self.golden, self.reference, self._runner, self._judge)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                internal_error("canary", RuntimeError(type(exc).__name__), f"{self.name!r} run")
            else:
                internal_error("canary", exc, f"canary {self.name!r} run")
            failure = Failure(
                FailureKind.INTERNAL, f"the canary could not run ({type(exc).__name__})"
            )
            return failed_report(self.golden, failure, self._judge.model)

    def _run(self, stop: threading.Event | None) -> CrossvalReport | None:
        with self._run_lock:
            if stop is not None and stop.is_set():  # stopped while an older run held the lock
                return None
            with self._lock:
                self._running_since = time.monotonic()
            try:
                report = self._attempt()
            finally:
                with self._lock:
                    self._running_since = None
            with self._lock:
                if stop is not None and stop.is_set():
                    return None  # finished after stop(): not recorded, as documented
                self._last = report
                self._runs += 1
                news = report.reason != self._logged
                self._logged = report.reason
            emit_metrics(report)  # after the state: a scrape never runs ahead of a probe
        said = {LOG_KEY: self.name}  # whose record: `bitnet-obs canary` prints its own
        if news and not report.passed:  # once per new reason, not once per run
            logger.warning("canary %r failed: %s", self.name, report.reason, extra=said)
        elif news:
            logger.info("canary %r passes again", self.name, extra=said)
        return report

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._run(stop)
            except Exception as exc:  # pragma: no cover - _run records every failure itself
                internal_error("canary", exc, f"canary {self.name!r} run")
            stop.wait(self.interval_s)

    def _check(self) -> health.CheckResult:
        """The health check: reads the last result, never runs anything."""
        with self._lock:
            last, since = self._last, self._running_since
        if since is not None and time.monotonic() - since > 2 * self.budget_s:
            running = time.monotonic() - since
            return health.CheckResult(
                health.HealthStatus.UNHEALTHY,
                f"run in progress for {running:.0f}s, over twice its budget of {self.budget_s:g}s",
            )
        if last is None:
            return health.CheckResult(health.HealthStatus.UNHEALTHY, "first run not finished")
        if not last.passed:
            return health.CheckResult(health.HealthStatus.UNHEALTHY, last.reason)
        rate = last.candidate_tokens_per_s
        speed = f", {rate:.1f} tok/s" if rate else ""
        return health.CheckResult(
            health.HealthStatus.HEALTHY,
            f"passed {len(last.cases)} cases (token agreement {last.token_agreement:.3f}{speed})",
        )


@_state.on_fork
def _reinit_after_fork() -> None:
    for canary in list(_live):
        canary._lock = threading.Lock()
        canary._run_lock = threading.Lock()
        canary._thread = canary._stop = None  # the thread did not survive the fork
        canary._running_since = None
        canary._runner = Runner(canary.timeout_s)  # an abandoned call's thread is gone too
    global _names_lock
    _names_lock = threading.Lock()
    _running.clear()


@_state.on_reset(phase=_state.STOP)
def _stop_all() -> None:
    for canary in list(_live):
        canary.stop(timeout=1.0)
    with _names_lock:
        _running.clear()
