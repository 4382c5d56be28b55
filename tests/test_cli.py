"""The bitnet-obs command: quant-report and demo (bitnet_obs.cli)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bitnet_obs.cli import main
from tests._support.prometheus import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--duration", "nan"], "argument --duration: --duration='nan' is not valid"),
        (["--duration", "inf"], "--duration='inf' is not valid; accepted: a number in (0, 604800]"),
        (["--duration=-inf"], "--duration='-inf' is not valid"),
        (["--duration", "1e309"], "--duration='1e309' is not valid"),  # overflows to inf
        (["--duration", "0"], "accepted: a number in (0, 604800] seconds"),
        (["--duration", "604801"], "--duration='604801' is not valid"),
        (["--duration", "soon"], "--duration='soon' is not valid"),
        (["--fault-after", "0"], "argument --fault-after: --fault-after='0' is not valid"),
        (
            ["--workers", "-3"],
            "argument --workers: --workers='-3' is not valid; accepted: an integer in [1, 64]",
        ),
        (["--workers", "0"], "--workers='0' is not valid"),
        (["--workers", "65"], "--workers='65' is not valid"),
        (["--workers", "2.5"], "--workers='2.5' is not valid"),
        (
            ["--port", "70000"],
            "argument --port: --port='70000' is not valid; accepted: an integer in [0, 65535]",
        ),
        (["--port", "-1"], "--port='-1' is not valid"),
        (
            ["--slow-kernel", "0.5"],
            "--slow-kernel='0.5' is not valid; accepted: a number in [1, 100]",
        ),
        (["--slow-kernel", "101"], "--slow-kernel='101' is not valid"),
        (["--slow-kernel", "nan"], "--slow-kernel='nan' is not valid"),
        (["--slow-kernel", "fast"], "--slow-kernel='fast' is not valid"),
    ],
)
def test_demo_refuses_numbers_out_of_range_with_exit_code_2(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *args]) == 2  # returned, not raised
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    (line,) = err.splitlines()  # one line: no usage block
    assert line.startswith("bitnet-obs demo: error: argument --") and line.endswith("(see --help)")


def test_the_command_exits_2_on_a_bad_demo_number() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bitnet_obs", "demo", "--duration", "nan", "--workers", "-3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""  # refused before it starts anything
    assert "argument --duration: --duration='nan' is not valid" in proc.stderr


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_help_is_plain_text_with_the_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    top = _help(["--help"], capsys)
    (choices,) = re.findall(r"\{([\w,-]+)\}", top.splitlines()[0])
    pages = {"": top} | {cmd: _help([cmd, "--help"], capsys) for cmd in choices.split(",")}
    for command, page in pages.items():
        assert "`" not in page, (command, page)  # no reStructuredText from the docstrings
    assert "The bitnet-obs command" in top
    demo = " ".join(pages["demo"].split())  # argparse wraps lines
    assert "above 0 and at most 604800" in demo
    assert "1 to 64 (default: 2)" in demo
    assert "0 to 65535" in demo
    assert "1 to 100 (default: 1)" in demo


def _demo(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    env["BITNET_OBS_QUANT_SAMPLE_RATE"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "bitnet_obs", "demo", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], prefix: str) -> list[str]:
    """The demo's stdout lines up to the first that starts with ``prefix`` (fails at EOF)."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no {prefix!r} line: {lines} {proc.communicate()[1]}")


@pytest.mark.slow
def test_demo_serves_every_family_and_stops_cleanly_on_ctrl_c() -> None:
    port = free_port()
    proc = _demo("--port", str(port))  # until Ctrl-C: however slow the machine, it waits
    try:
        head = _read_until(proc, "requests ")  # the first summary: inside the serving loop
        assert f"  metrics: http://127.0.0.1:{port}/metrics\n" in head
        wanted = (
            "bitnet_inference_requests_total",
            "gen_ai_server_time_to_first_token",
            "bitnet_device_fallbacks_total",
            'bitnet_quant_reference="quantized"',
            'bitnet_quant_kind="weight"',
            "bitnet_model_loads_total",
            "bitnet_queue_wait_duration_seconds_count",
            "bitnet_batch_size_count",
            "bitnet_cache_hits_total",
            "bitnet_cache_usage_bytes",
            "bitnet_sla_compliance",
        )
        # the demo's requests are seeded, so each family shows after a fixed number of them;
        # how long that takes depends on the machine
        text = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            url = f"http://127.0.0.1:{port}/metrics"
            text = urllib.request.urlopen(url, timeout=30).read().decode()
            if all(w in text for w in wanted):
                break
            time.sleep(0.5)
        missing = [w for w in wanted if w not in text]
        assert not missing, missing
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "interrupted" in out and "final: requests" in out
    assert "Traceback" not in err


@pytest.mark.slow
def test_demo_stops_by_itself_after_its_duration() -> None:
    proc = _demo("--duration", "0.5", "--port", "0")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "running for 0.5s" in out and "final: requests" in out
    assert "interrupted" not in out and "Traceback" not in err
