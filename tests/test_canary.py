"""The cross-validation canary end to end: /health/ready over a real socket goes 503 with the
reason when a kernel breaks (a flipped sign, a constant token), and 200 again when it is fixed;
runs never overlap and never block a probe or a scrape."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_obs import ConfigError, _server, crossval, health
from bitnet_obs.crossval import Canary, GoldenSet
from bitnet_obs.testing import TelemetryCapture, capture_telemetry, reset
from tests._support import tiny_model as crossval_support
from tests._support.tiny_model import PROMPTS, TinyModel

DEADLINE = 60.0  # generous: CI shares two cores; every wait ends as soon as its condition holds


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """No built-in checks (their answers depend on the machine): only the canary's."""
    reset()
    for name in ("model", "devices", "exporters", "memory"):
        health.unregister(name)
    yield
    reset()


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


@pytest.fixture
def server(cap: TelemetryCapture) -> Iterator[_server.MetricsServer]:
    """/metrics runs a real collection (every observable callback) of the captured metrics."""

    def metrics(accept: str) -> _server.Response:
        data = cap.reader.get_metrics_data()
        names = sorted(
            m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        )
        return 200, "text/plain", ("\n".join(names) + "\n").encode()

    health.enable()  # bitnet.health.status: each scrape also (re)starts stale checks
    srv = _server.MetricsServer("127.0.0.1", 0, metrics)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> GoldenSet:
    path = tmp_path_factory.mktemp("golden") / "golden.npz"
    return crossval.record(TinyModel().generate, PROMPTS, path, max_new_tokens=8, model="tiny")


def get(srv: _server.MetricsServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(srv.url + path, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    text = raw.decode()
    return status, json.loads(text) if text.startswith("{") else text


def wait_until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE}s: {what}")
        time.sleep(0.05)


def ready(srv: _server.MetricsServer, code: int, reason: str = "") -> Callable[[], bool]:
    def check() -> bool:
        status, body = get(srv, "/health/ready")
        return status == code and (not reason or any(reason in r for r in body["reasons"]))

    return check


@pytest.mark.slow  # waits on real time: the full suite runs it, not the fast lane
def test_a_broken_kernel_gates_readiness_and_recovers(
    server: _server.MetricsServer, golden: GoldenSet, cap: TelemetryCapture
) -> None:
    model = TinyModel()
    with Canary(model.generate, golden, interval_s=0.05, budget_s=30) as canary:
        wait_until("first pass", ready(server, 200))
        _, body = get(server, "/health/ready")
        check = body["checks"]["canary"]
        assert check["status"] == "healthy" and check["critical"]
        assert check["detail"].startswith("passed 5 cases (token agreement 1.000, ")
        for fault in ("sign", "constant"):
            model.fault = fault
            wait_until(f"{fault}: 503", ready(server, 503, "canary: case "))
            _, body = get(server, "/health/ready")
            (reason,) = body["reasons"]
            assert "diverges at token" in reason and "token agreement" in reason
            assert get(server, "/health/live")[0] == 200  # a restart would not fix a kernel
            model.fault = None
            wait_until(f"{fault}: recovered", ready(server, 200))
        assert canary.runs >= 5
    fails = cap.value("bitnet.crossval.runs", **{"bitnet.crossval.outcome": "fail"})
    passes = cap.value("bitnet.crossval.runs", **{"bitnet.crossval.outcome": "pass"})
    assert fails >= 2 and passes >= 3
    assert cap.value("bitnet.crossval.passing", **{"gen_ai.request.model": "tiny"}) == 1
    _, body = get(server, "/health")
    assert "canary" not in body["checks"]  # stop() unregistered it


class Gate:
    """A candidate that blocks inside a run until released, counting runs in flight."""

    def __init__(self) -> None:
        self.model = TinyModel()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.lock = threading.Lock()
        self.inside = self.most_inside = self.calls = 0

    def __call__(self, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
        with self.lock:
            self.inside += 1
            self.calls += 1
            self.most_inside = max(self.most_inside, self.inside)
        self.entered.set()
        try:
            self.release.wait(DEADLINE)
            return self.model.generate(prompt, n)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.mark.slow  # waits on real time: the full suite runs it, not the fast lane
def test_not_ready_until_the_first_run_and_probes_and_scrapes_never_wait(
    server: _server.MetricsServer, golden: GoldenSet
) -> None:
    gate = Gate()
    with Canary(gate, golden, interval_s=0.05, budget_s=30) as canary:
        assert gate.entered.wait(DEADLINE)
        # a run is stuck inside the candidate: probes and scrapes still answer
        status, body = get(server, "/health/ready")
        assert status == 503
        assert body["reasons"] == ["canary: first run not finished"]
        status, text = get(server, "/metrics")
        assert status == 200 and "bitnet.health.status" in text
        assert canary.runs == 0
        gate.release.set()
        wait_until("first pass", ready(server, 200))


def test_runs_never_overlap(golden: GoldenSet) -> None:
    gate = Gate()
    canary = Canary(gate, golden, interval_s=0.001, budget_s=30).start()
    assert gate.entered.wait(DEADLINE)
    extra = threading.Thread(target=canary.run_once)  # a manual run waits its turn
    extra.start()
    canary.stop(timeout=0)  # the run in flight cannot be interrupted ...
    canary.start()  # ... and a restart must not run beside it
    gate.release.set()
    extra.join(DEADLINE)
    wait_until("runs after the restart", lambda: canary.runs >= 3)
    canary.stop()
    assert gate.most_inside == 1
    assert not canary.running


@pytest.mark.slow  # waits on real time: the full suite runs it, not the fast lane
def test_a_run_hanging_past_its_budget_gates_readiness(
    server: _server.MetricsServer, golden: GoldenSet
) -> None:
    gate = Gate()
    with Canary(gate, golden, interval_s=0.05, budget_s=0.05, timeout_s=30) as canary:
        assert gate.entered.wait(DEADLINE)
        wait_until("hang reported", ready(server, 503, "over twice its budget of 0.05s"))
        gate.release.set()
        wait_until("recovered", ready(server, 200))
    assert canary.runs >= 1


@pytest.mark.slow  # waits on real time: the full suite runs it, not the fast lane
def test_a_call_past_its_time_limit_fails_the_run_and_no_call_piles_up(
    server: _server.MetricsServer, golden: GoldenSet
) -> None:
    """The call is abandoned at timeout_s (default: twice the budget) and the run recorded as
    failed; while it has not returned, later runs fail without calling the candidate again."""
    gate = Gate()
    with Canary(gate, golden, interval_s=3600, budget_s=0.05) as canary:
        assert canary.timeout_s == 0.1
        wait_until("timed out", ready(server, 503, "the candidate did not answer within 0.1s"))
        report = canary.last_report
        assert report is not None and report.failure is not None
        assert report.failure.kind == crossval.FailureKind.TIMEOUT
        again = canary.run_once()  # the abandoned call is still inside the candidate
        assert again.failure is not None and again.failure.kind == crossval.FailureKind.TIMEOUT
        assert "has not returned from a call abandoned" in again.reason
        assert gate.calls == 1  # no pile-up
        gate.release.set()
        wait_until("the abandoned call returned", lambda: gate.inside == 0)
        assert canary.run_once().passed
        wait_until("recovered", ready(server, 200))
    assert gate.most_inside == 1


def test_without_gating_a_failure_is_reported_but_ready(
    server: _server.MetricsServer, golden: GoldenSet
) -> None:
    model = TinyModel()
    model.fault = "sign"
    with Canary(model.generate, golden, interval_s=0.05, gate_readiness=False, name="canary-7b"):

        def degraded() -> bool:
            status, body = get(server, "/health/ready")
            check = body["checks"].get("canary-7b", {})
            return status == 200 and check.get("status") == "unhealthy"

        wait_until("reported, not gating", degraded)
        assert get(server, "/health/ready")[1]["status"] == "degraded"


def test_lifecycle_is_idempotent(golden: GoldenSet) -> None:
    canary = Canary(TinyModel().generate, golden, interval_s=3600)
    assert not canary.running and canary.last_report is None
    canary.stop()  # never started: nothing to do
    assert canary.start() is canary.start()
    wait_until("first run", lambda: canary.last_report is not None)
    report = canary.last_report
    assert report is not None and report.passed
    canary.stop()
    canary.stop()
    assert canary.run_once().passed  # by hand, after stopping
    assert canary.runs == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval_s": 0}, "interval_s=0"),
        ({"interval_s": float("inf")}, "interval_s=inf"),
        ({"budget_s": -1}, "budget_s=-1"),
        ({"budget_s": True}, "budget_s=True"),
        ({"name": "has space"}, "name='has space'"),
        ({"min_agreement": 2}, "min_agreement=2"),
        ({"max_kl": -0.1}, "max_kl=-0.1"),
        ({"reference": "slow"}, "accepted: fn"),
    ],
)
def test_constructor_validates(golden: GoldenSet, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="accepted") as info:
        Canary(TinyModel().generate, golden, **kwargs)
    assert message in str(info.value)


def test_constructor_reads_the_golden_file_once(tmp_path: Path, golden: GoldenSet) -> None:
    with pytest.raises(crossval.GoldenError, match="no such file"):
        Canary(TinyModel().generate, tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="accepted: fn"):
        Canary(None, golden)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the canary never misses


@pytest.mark.slow  # waits on real time: the full suite runs it, not the fast lane
def test_nan_logits_after_a_pass_gate_readiness(
    server: _server.MetricsServer, golden: GoldenSet, cap: TelemetryCapture
) -> None:
    """A kernel that breaks into NaN logits after a passing run: every later run is a failed
    run with the reason, and /health/ready answers 503 (the last pass never stands)."""
    model = TinyModel()
    with Canary(model.generate, golden, interval_s=0.05, budget_s=30) as canary:
        wait_until("first pass", ready(server, 200))
        model.fault = "nan"
        wait_until("NaN: 503", ready(server, 503, "NaN/infinite logits"))
        report = canary.last_report
        assert report is not None and report.failure is not None
        assert report.failure.kind == crossval.FailureKind.NON_FINITE
        model.fault = None
        wait_until("recovered", ready(server, 200))
    assert cap.value("bitnet.crossval.runs", **{"bitnet.crossval.outcome": "fail"}) >= 1


@pytest.mark.parametrize(
    ("candidate", "kind"),
    [
        (crossval_support.generate_exits, "exited"),
        (crossval_support.generate_interrupted, "interrupted"),
        (crossval_support.generate_noisy, "bad_output"),
    ],
)
def test_a_candidate_that_exits_or_breaks_the_contract_is_a_failed_run(
    golden: GoldenSet, candidate: Any, kind: str
) -> None:
    canary = Canary(candidate, golden, interval_s=3600)
    report = canary.run_once()
    assert not report.passed and report.failure is not None
    assert report.failure.kind.value == kind
    assert canary.last_report is report and canary.runs == 1
    with canary:  # and the background thread survives it
        wait_until("a background run", lambda: canary.runs == 2)
        last = canary.last_report
        assert last is not None and not last.passed and canary.running


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval_s": 1e10}, "interval_s=10000000000.0 is not valid; accepted: a number in "
                               "(0, 604800] seconds"),
        ({"budget_s": 1e10}, "budget_s=10000000000.0 is not valid"),
        ({"timeout_s": float("inf")}, "timeout_s=inf is not valid"),
        ({"max_kl": float("inf")}, "max_kl=inf is not valid"),
        ({"min_agreement": float("nan")}, "min_agreement=nan is not valid"),
    ],
)  # fmt: skip
def test_every_number_has_a_finite_bound(
    golden: GoldenSet, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Canary(TinyModel().generate, golden, **kwargs)
    assert message in str(info.value)


def test_a_run_finishing_after_stop_is_not_recorded(golden: GoldenSet) -> None:
    gate = Gate()
    canary = Canary(gate, golden, interval_s=3600, budget_s=30).start()
    assert gate.entered.wait(DEADLINE)
    canary.stop(timeout=0)  # the run in flight cannot be interrupted ...
    gate.release.set()
    after = canary.run_once()  # waits for the run in flight to end, then runs and records
    assert canary.runs == 1 and canary.last_report is after  # ... which was not recorded


@pytest.mark.slow  # waits on real time: the full suite runs it, not the fast lane
def test_two_canaries_never_share_a_readiness_slot(
    server: _server.MetricsServer, golden: GoldenSet
) -> None:
    broken = TinyModel()
    broken.fault = "sign"
    first = Canary(broken.generate, golden, interval_s=0.05).start()
    twin = Canary(TinyModel().generate, golden, interval_s=0.05)
    with pytest.raises(ConfigError, match="name='canary': another running canary has this name"):
        twin.start()
    assert not twin.running
    wait_until("the first gates", ready(server, 503, "canary: case "))
    other = Canary(TinyModel().generate, golden, interval_s=0.05, name="canary-b").start()
    other.stop()  # stopping one never removes another's gate
    _, body = get(server, "/health/ready")
    assert "canary" in body["checks"] and "canary-b" not in body["checks"]
    assert get(server, "/health/ready")[0] == 503
    first.stop()
    twin.start()  # the name is free again
    wait_until("the twin passes", ready(server, 200))
    twin.stop()
