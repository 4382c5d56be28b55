"""bitnet-obs watching a real llama-server from outside (issue 20, section 2): the server
candidates, ``bitnet-obs crossval check --server`` and the ``bitnet-obs canary`` sidecar, on
the fixture's TQ2_0 file (tests/_support/llama_model.py), a broken conversion of it, and a
server that is killed or was never there.

Every server is started on 127.0.0.1 with a free port and ``--metrics``
(tests/_support/llama_server.py); the engine is built once per machine by
tools/ensure_llama.py (a missing engine skips here and fails under CI=true).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bitnet_obs import crossval, health
from bitnet_obs.cli import main
from bitnet_obs.testing import capture_telemetry, reset
from tests._support.llama_server import LlamaServer, Sidecar
from tests._support.prometheus import free_port

pytestmark = pytest.mark.slow
# tests that reach a real llama-server take the engine's fixtures (llama_engine, tiny_bitnet,
# broken_bitnet: a missing engine skips them, and fails them under CI=true); the others
# (arguments, a server that is not there) run anywhere on any_golden


@pytest.fixture(scope="module")
def healthy(
    llama_engine: Any, tiny_bitnet: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    with LlamaServer(
        llama_engine, tiny_bitnet.tq2_0, workdir=tmp_path_factory.mktemp("healthy")
    ) as server:
        yield server


@pytest.fixture(scope="module")
def broken(
    llama_engine: Any, broken_bitnet: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """The same model with two FFN projections swapped in conversion, quantized the same way."""
    model = broken_bitnet("swap")
    with LlamaServer(llama_engine, model, workdir=tmp_path_factory.mktemp("broken")) as server:
        yield server


@pytest.fixture(scope="module")
def any_golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A golden file for the tests that never reach a server (no engine needed)."""
    from tests._support.tiny_model import PROMPTS, generate

    path = tmp_path_factory.mktemp("any-golden") / "golden.npz"
    crossval.record(generate, PROMPTS, path, max_new_tokens=4, model="tiny")
    return path


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["crossval", "check", *argv])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


# ------------------------------------------------------------------ crossval check --server


@pytest.mark.parametrize("api", ["llama", "openai"])
def test_the_healthy_server_reproduces_llama_cpps_own_golden_exactly(
    healthy: LlamaServer, tiny_bitnet: Any, api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same llama.cpp and file, in process (llama-cpp-python, the golden) and as a server:
    identical greedy ids, with the default judgement (no tolerance)."""
    golden = str(tiny_bitnet.golden_llama)
    code, lines, err = _check(capsys, "--server", healthy.url, "--api", api, "--golden", golden)
    assert code == 0, (lines, err, healthy.log())
    assert lines[0] == "PASS"
    summary = re.fullmatch(
        r"  (\d+) cases, token agreement 1\.000, logits KL >= ([\d.e+-]+) \(bound from the "
        r"top-20\), top-1 1\.000",
        lines[1],
    )
    assert summary is not None, lines
    assert int(summary[1]) == len(crossval.load(golden).cases)
    assert float(summary[2]) < 1e-3  # the same kernels: near 0
    assert lines[2].startswith("  candidate ") and lines[2].endswith(" tok/s")
    assert err == ""


@pytest.mark.parametrize("api", ["llama", "openai"])
def test_the_healthy_server_passes_the_transformers_golden_within_tolerance(
    healthy: LlamaServer, tiny_bitnet: Any, api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Across implementations (transformers' int8 activations per token, llama.cpp's per
    block of 256) with the fixture's tolerance (llama_model.CROSS_IMPL): it passes."""
    code, lines, err = _check(
        capsys, "--server", healthy.url, "--api", api, "--golden", str(tiny_bitnet.golden),
        *_tolerance(),
    )  # fmt: skip
    assert code == 0, (lines, err)
    assert lines[0] == "PASS"
    assert "(bound from the top-20)" in lines[1]


def test_with_flash_attention_the_server_still_passes_across_implementations(
    llama_engine: Any, tiny_bitnet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """llama-server's own default turns flash attention on for the CPU: its sums differ from
    llama-cpp-python's, a near-tie late in one case flips (so llama.cpp's own golden fails on
    exact ids), and the cross-implementation tolerance holds."""
    with LlamaServer(llama_engine, tiny_bitnet.tq2_0, workdir=tmp_path, flash_attn=True) as s:
        code, lines, _ = _check(
            capsys, "--server", s.url, "--golden", str(tiny_bitnet.golden), *_tolerance()
        )
        assert code == 0, lines
        own = str(tiny_bitnet.golden_llama)
        code, lines, _ = _check(capsys, "--server", s.url, "--golden", own, *_tolerance())
        assert code == 0, lines


def _tolerance() -> list[str]:
    from tests._support.llama_model import CROSS_IMPL

    return [
        "--min-agreement", str(CROSS_IMPL["min_agreement"]), "--max-kl", str(CROSS_IMPL["max_kl"])
    ]  # fmt: skip


def test_json_report_from_a_server(
    healthy: LlamaServer, tiny_bitnet: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = _check(
        capsys, "--server", healthy.url, "--golden", str(tiny_bitnet.golden_llama), "--top-k",
        "5", "--json",
    )  # fmt: skip
    assert code == 0
    report = json.loads("\n".join(lines))
    assert report["passed"] is True and report["kl_top_k"] == 5
    assert all(case["error"] is None for case in report["cases"])
    # a case whose first generated token is a byte piece has no reported step to compare
    compared = [case for case in report["cases"] if case["logits_steps"]]
    assert compared and all(case["top_k"] == 5 for case in compared)
    assert report["top1"] == 1.0 and report["kl"] >= 0


def test_ids_only(
    healthy: LlamaServer, tiny_bitnet: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = _check(
        capsys, "--server", healthy.url, "--golden", str(tiny_bitnet.golden_llama), "--top-k", "0"
    )
    assert code == 0
    assert "KL" not in lines[1]


@pytest.mark.parametrize("which", ["golden_llama", "golden"])
def test_a_broken_conversion_fails_the_check(
    broken: LlamaServer, tiny_bitnet: Any, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against llama.cpp's own golden (exact) and against the transformers one (tolerant)."""
    golden = str(getattr(tiny_bitnet, which))
    extra = _tolerance() if which == "golden" else []
    code, lines, err = _check(capsys, "--server", broken.url, "--golden", golden, *extra)
    assert code == 3, (lines, err)
    assert re.fullmatch(
        r"FAIL: case \d+ diverges at token \d+ of \d+ \(token agreement .*", lines[0]
    )
    assert err == ""


def test_a_server_that_is_not_there_fails_cleanly(
    any_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, lines, err = _check(capsys, "--server", url, "--golden", str(any_golden))
    assert code == 3
    assert lines[0] == f"FAIL: case 0: {url}/completion: connection refused"
    assert err == ""


def test_a_killed_server_fails_cleanly(
    llama_engine: Any, tiny_bitnet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = LlamaServer(llama_engine, tiny_bitnet.tq2_0, workdir=tmp_path).start()
    candidate = crossval.LlamaServerCandidate(server.url, timeout_s=30)
    assert crossval.check(candidate, tiny_bitnet.golden_llama, record_metrics=False).passed
    server.kill()
    report = crossval.check(candidate, tiny_bitnet.golden_llama, record_metrics=False)
    assert not report.passed and report.failure is not None
    assert report.failure.kind is crossval.FailureKind.UNAVAILABLE
    assert report.reason == f"case 0: {server.url}/completion: connection refused"


def test_an_in_process_canary_through_the_server_candidate(
    healthy: LlamaServer, broken: LlamaServer, tiny_bitnet: Any
) -> None:
    """crossval.Canary over a LlamaServerCandidate in any process: green on the healthy server,
    red (readiness 503, the passing gauge 0) on the broken conversion."""
    reset()
    for name in ("model", "devices", "exporters", "memory"):  # only the canaries' checks
        health.unregister(name)
    try:
        with capture_telemetry() as cap:
            for server, passed in ((healthy, True), (broken, False)):
                candidate = crossval.LlamaServerCandidate(server.url, timeout_s=30)
                with crossval.Canary(
                    candidate, tiny_bitnet.golden_llama, interval_s=3600
                ) as canary:
                    report = canary.run_once()
                    assert report.passed is passed, report.reason
                    assert (health.evaluate("readiness").http_status == 200) is passed
                model = crossval.load(tiny_bitnet.golden_llama).model
                gauge = cap.value("bitnet.crossval.passing", **{"gen_ai.request.model": model})
                assert gauge == (1 if passed else 0)
    finally:
        reset()


# ---------------------------------------------------------------------- the canary sidecar


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def start(url: str, golden: Path, *extra: str) -> Sidecar:
        started.append(Sidecar(url, golden, tmp_path, *extra))
        return started[-1]

    yield start
    for sidecar in started:
        with contextlib.suppress(AssertionError):
            sidecar.stop()


def _ready(code: int, _: str) -> bool:
    return code == 200


def _not_ready(code: int, _: str) -> bool:
    return code == 503


def test_the_sidecar_passes_a_healthy_server_and_serves_its_metrics(
    healthy: LlamaServer, tiny_bitnet: Any, sidecars: Callable[..., Sidecar]
) -> None:
    sidecar = sidecars(healthy.url, tiny_bitnet.golden_llama)
    body = json.loads(sidecar.wait_for("/health/ready", _ready))
    assert body["status"] == "healthy"
    assert body["checks"]["canary"]["detail"].startswith("passed ")
    metrics = sidecar.wait_for(
        "/metrics",
        lambda code, text: 'bitnet_crossval_runs_total{bitnet_crossval_outcome="pass"' in text,
    )
    model = crossval.load(tiny_bitnet.golden_llama).model
    assert f'bitnet_crossval_passing{{gen_ai_request_model="{model}"}} 1.0' in metrics
    assert re.search(
        rf'bitnet_crossval_token_agreement\{{gen_ai_request_model="{model}"}} 1\.0', metrics
    )
    assert re.search(r"bitnet_crossval_kl\{[^}]*\} [\d.e+-]+", metrics)
    assert re.search(
        r'bitnet_crossval_throughput_per_second\{bitnet_crossval_implementation="candidate"',
        metrics,
    )
    assert 'bitnet_health_status{bitnet_health_component="canary"} 1.0' in metrics
    assert 'service_name="bitnet-canary"' in metrics
    assert re.search(r"\nPASS: \d+ cases, token agreement 1\.000, ", sidecar.wait_log("PASS: "))
    assert sidecar.stop() == 0  # SIGTERM: a clean stop
    log = sidecar.log()
    assert log.rstrip().endswith("bitnet-obs canary: stopped")
    assert "Traceback" not in log


def test_the_sidecar_takes_a_broken_server_out_of_rotation(
    broken: LlamaServer, tiny_bitnet: Any, sidecars: Callable[..., Sidecar]
) -> None:
    sidecar = sidecars(broken.url, tiny_bitnet.golden_llama)
    body = json.loads(
        sidecar.wait_for("/health/ready", lambda code, text: code == 503 and "diverges" in text)
    )
    (reason,) = body["reasons"]
    assert re.fullmatch(
        r"canary: case \d+ diverges at token \d+ of \d+ \(token agreement .*\)", reason
    )
    metrics = sidecar.wait_for("/metrics", lambda code, text: "bitnet_crossval_passing" in text)
    assert re.search(r"bitnet_crossval_passing\{[^}]*\} 0\.0", metrics)
    sidecar.wait_log("FAIL: case ")
    assert sidecar.stop() == 0
    # each failure said once: its FAIL line, not the canary's log record of it beside
    said = [line for line in sidecar.log().splitlines() if "diverges" in line]
    assert said and all(line.startswith("FAIL: case ") for line in said), said


def test_the_sidecar_follows_a_server_that_dies(
    llama_engine: Any, tiny_bitnet: Any, tmp_path: Path, sidecars: Callable[..., Sidecar]
) -> None:
    server = LlamaServer(llama_engine, tiny_bitnet.tq2_0, workdir=tmp_path / "dies").start()
    try:
        sidecar = sidecars(server.url, tiny_bitnet.golden_llama, "--timeout", "10")
        sidecar.wait_for("/health/ready", _ready)
        server.kill()
        body = json.loads(
            sidecar.wait_for("/health/ready", lambda c, t: c == 503 and "refused" in t)
        )
        assert body["reasons"] == [f"canary: case 0: {server.url}/completion: connection refused"]
        sidecar.wait_log("connection refused")
    finally:
        server.stop()
    assert sidecar.stop() == 0
    said = [line for line in sidecar.log().splitlines() if "connection refused" in line]
    fail = f"FAIL: case 0: {server.url}/completion: connection refused"
    assert said and all(line == fail for line in said), said  # never the log record beside


def test_the_sidecar_is_not_ready_before_its_first_pass(
    any_golden: Path, sidecars: Callable[..., Sidecar]
) -> None:
    sidecar = sidecars(f"http://127.0.0.1:{free_port()}", any_golden)
    text = sidecar.wait_for("/health/ready", _not_ready)
    assert "canary" in text
    assert sidecar.stop() == 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--server", "ftp://x:1"], "url='ftp://x:1'; accepted: http://host:port"),
        (["--server", "http://127.0.0.1:1", "--interval", "0"], "--interval"),
        (["--server", "http://127.0.0.1:1", "--timeout", "nan"], "--timeout"),
        (["--server", "http://127.0.0.1:1", "--api", "grpc"], "invalid choice"),
        (["--server", "http://127.0.0.1:1", "--port", "70000"], "--port"),
        (["--server", "http://127.0.0.1:1", "--top-k", "500"], "--top-k"),
        (["--server", "http://127.0.0.1:1", "--api-key-file", "/nonexistent"], "--api-key-file"),
        (["--golden", "/nonexistent.npz", "--server", "http://127.0.0.1:1"], "nonexistent"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    any_golden: Path, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--golden" not in argv:
        argv = [*argv, "--golden", str(any_golden)]
    code = main(["canary", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bitnet-obs canary"), err
    assert says in err


def test_a_busy_port_is_exit_2(any_golden: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code = main(["canary", "--server", "http://127.0.0.1:1", "--golden",
                     str(any_golden), "--port", str(port)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(port) in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "either MODULE:FUNC or --server URL"),
        (["tests._support.tiny_model:generate", "--server", "http://h:1"], "one candidate"),
        (["--server", "http://h:1/?q"], "no query"),
    ],
)
def test_crossval_check_needs_exactly_one_candidate(
    any_golden: Path, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _check(capsys, *argv, "--golden", str(any_golden))
    assert code == 2 and err.count("\n") == 1 and says in err, err
