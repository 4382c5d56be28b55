"""The bitnet-obs command: quant-report and demo (bitnet_obs.cli)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bitnet_obs import quant
from bitnet_obs.cli import main
from tests._support.prometheus import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "model.npz"
    np.savez(
        path,
        **{
            "layers.0.q_proj.weight": rng.standard_normal((64, 128)).astype(np.float32),
            "layers.0.odd.weight": rng.standard_normal((8, 33)).astype(np.float32),
            "layers.0.norm.weight": np.ones(128, np.float32),
            "tok_ids": np.arange(10, dtype=np.int64),
        },
    )
    return path


def test_quant_report_table(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quant-report", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "layers.0.q_proj.weight" in out
    assert "skipped: dtype int64 is not float" in out
    assert "skipped: 1-D" in out
    assert "2 tensors measured, 2 skipped" in out
    expected = quant.weight_report(np.load(checkpoint)["layers.0.q_proj.weight"], "i2_s")
    assert f"{expected.accuracy.cosine:.4f}" in out


def test_quant_report_json(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quant-report", str(checkpoint), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    measured = [r for r in records if "cosine" in r]
    assert {(r["tensor"], r["format"]) for r in measured} >= {
        ("layers.0.q_proj.weight", "i2_s"),
        ("layers.0.q_proj.weight", "tl1"),
        ("layers.0.q_proj.weight", "tl2"),
    }
    for record in measured:
        assert set(record) >= {"tensor", "format", "cosine", "sqnr_db", "rel_l2", "scale"}
    skipped = {r["tensor"]: r["skipped"] for r in records if "skipped" in r}
    assert "tok_ids" in skipped and "layers.0.norm.weight" in skipped
    assert any(
        r["tensor"] == "layers.0.odd.weight" and r.get("format") == "tl1"
        for r in records
        if "skipped" in r
    )


def test_quant_report_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    w = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    safetensors_numpy.save_file({"w": w}, str(path))
    assert main(["quant-report", str(path), "--json", "--formats", "i2_s"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["cosine"] == pytest.approx(quant.weight_report(w).accuracy.cosine)


@pytest.mark.parametrize(
    ("content", "suffix", "fragment"),
    [
        (b"not a zip at all", ".npz", "not a readable .npz"),
        (None, ".npz", "corrupt"),
        (b"\x00\x01", ".safetensors", "not a readable .safetensors"),
        (b"x", ".pt", "accepted: .npz, .safetensors"),
    ],
)
def test_quant_report_bad_files(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    suffix: str,
    fragment: str,
) -> None:
    path = tmp_path / f"bad{suffix}"
    if content is None:  # a truncated archive
        np.savez(path, w=np.ones((64, 64), np.float32))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] + data[-200:])
    else:
        path.write_bytes(content)
    assert main(["quant-report", str(path)]) == 2
    assert fragment in capsys.readouterr().err
    assert main(["quant-report", str(tmp_path / "missing.npz")]) == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--duration", "nan"], "argument --duration: expected seconds above 0"),
        (["--duration", "inf"], "argument --duration: expected seconds above 0"),
        (["--duration=-inf"], "argument --duration: expected seconds above 0"),
        (["--duration", "1e309"], "got '1e309'"),  # overflows to inf
        (["--duration", "0"], "argument --duration: expected seconds above 0"),
        (["--duration", "604801"], "at most 604800"),
        (["--duration", "soon"], "got 'soon'"),
        (["--workers", "-3"], "argument --workers: expected a whole number from 1 to 64"),
        (["--workers", "0"], "got '0'"),
        (["--workers", "65"], "got '65'"),
        (["--workers", "2.5"], "got '2.5'"),
        (["--port", "70000"], "argument --port: expected a whole number from 0 to 65535"),
        (["--port", "-1"], "got '-1'"),
    ],
)
def test_demo_refuses_numbers_out_of_range_with_exit_code_2(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("bitnet-obs demo: error: argument --")


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
    assert "argument --duration: expected seconds above 0" in proc.stderr


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
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
