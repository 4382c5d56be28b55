"""``bitnet-obs crossval record|check``: exit 0 on a faithful candidate, 3 on a broken kernel,
2 with one line and no traceback on bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bitnet_obs import crossval
from bitnet_obs.cli import main
from tests._support.tiny_model import PROMPTS

ROOT = Path(__file__).resolve().parent.parent
MOD = "tests._support.tiny_model"


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return path


@pytest.fixture
def golden(tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "golden.npz"
    argv = ["crossval", "record", f"{MOD}:generate", "--prompts", str(prompts), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "10", "--model", "tiny", "--quant-format", "i2_s"]) == 0
    assert capsys.readouterr().out == (
        f"wrote {out}: 5 cases, 50 output tokens, logits for 5 cases (model tiny, format i2_s)\n"
    )
    return out


def test_record_then_check_a_faithful_candidate(
    golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header = crossval.load(golden).header
    assert header["model"] == "tiny" and header["max_new_tokens"] == 10
    code = main(
        ["crossval", "check", f"{MOD}:generate", "--golden", str(golden),
         "--reference", f"{MOD}:generate_ids_only"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "PASS"
    assert lines[1] == "  5 cases, token agreement 1.000, logits KL 0, top-1 1.000"
    assert lines[2].startswith("  candidate ") and "reference" in lines[2]


@pytest.mark.parametrize("broken", ["generate_sign_flipped", "generate_constant"])
def test_a_broken_kernel_exits_3(
    golden: Path, broken: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["crossval", "check", f"{MOD}:{broken}", "--golden", str(golden)]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAIL: case ") and "diverges at token" in lines[0]
    assert any(line.startswith("  case 0: diverges at token") for line in lines[2:])


def test_json_report(golden: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crossval", "check", f"{MOD}:generate", "--golden", str(golden), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["token_agreement"] == 1.0
    assert report["golden"]["model"] == "tiny"
    assert len(report["cases"]) == 5 and report["cases"][0]["first_divergence"] is None
    # an implementation that prints: its chatter goes to stderr, the report stays JSON
    assert (
        main(["crossval", "check", f"{MOD}:generate_noisy", "--golden", str(golden), "--json"]) == 3
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["passed"] is False and "returned ids 1-D" in report["reason"]
    assert "loading weights..." in captured.err


def test_tolerance_options(golden: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["crossval", "check", f"{MOD}:generate_sign_flipped", "--golden", str(golden)]
    assert main([*argv, "--min-agreement", "0"]) == 0  # anything goes
    assert main([*argv, "--min-agreement", "0", "--max-kl", "0.01"]) == 3
    assert "FAIL: logits KL" in capsys.readouterr().out


def test_jsonl_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("[1, 2, 3]\n\n[4, 5]\n")
    out = tmp_path / "g.npz"
    assert main(["crossval", "record", f"{MOD}:generate_ids_only", "--prompts", str(prompts),
                 "--out", str(out)]) == 0  # fmt: skip
    assert len(crossval.load(out).cases) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "nocolon", "--golden", "{golden}"], "'nocolon': accepted: MODULE:FUNC"),
        (["check", "no_such_module_x:f", "--golden", "{golden}"],
         "cannot import 'no_such_module_x' (ModuleNotFoundError"),
        (["check", f"{MOD}:missing", "--golden", "{golden}"], "has no attribute 'missing'"),
        (["check", f"{MOD}:PROMPTS", "--golden", "{golden}"], "is not callable"),
        (["check", f"{MOD}:generate", "--golden", "{tmp}/none.npz"], "none.npz: no such file"),
        (["check", f"{MOD}:generate", "--golden", "{prompts}"], "not a golden .npz file"),
        (["check", f"{MOD}:generate", "--golden", "{golden}", "--reference", "x:"],
         "'x:': accepted: MODULE:FUNC"),
        (["check", f"{MOD}:generate", "--golden", "{golden}", "--min-agreement", "2"],
         "--min-agreement='2' is not valid; accepted: a number in [0, 1]"),
        (["record", f"{MOD}:generate", "--prompts", "{tmp}/none.json", "--out", "{tmp}/o.npz"],
         "--prompts {tmp}/none.json: no such file"),
        (["record", f"{MOD}:generate", "--prompts", "{bad_prompts}", "--out", "{tmp}/o.npz"],
         "accepted: a non-empty list of non-empty lists of token ids >= 0"),
        (["record", f"{MOD}:Broken.generate", "--prompts", "{prompts}", "--out", "{tmp}/o.npz"],
         "prompt 0: the implementation raised RuntimeError"),
        (["record", f"{MOD}:generate", "--prompts", "{prompts}", "--out", "{tmp}/o.npz",
          "--max-new-tokens", "0"],
         "--max-new-tokens='0' is not valid; accepted: an integer in [1, 1_048_576]"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    golden: Path,
    prompts: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    bad_prompts = tmp_path / "bad.json"
    bad_prompts.write_text('[[1, 2], ["a"]]')
    names = {"golden": golden, "prompts": prompts, "tmp": tmp_path, "bad_prompts": bad_prompts}
    argv = [a.format(**names) for a in argv]
    assert main(["crossval", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"bitnet-obs crossval {argv[0]}: ")
    assert message.format(**names) in line
    assert not (tmp_path / "o.npz").exists()


def test_exit_codes_of_the_real_command(golden: Path) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bitnet_obs", "crossval", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert run("check", f"{MOD}:generate", "--golden", str(golden)).returncode == 0
    broken = run("check", f"{MOD}:generate_sign_flipped", "--golden", str(golden))
    assert broken.returncode == 3 and broken.stdout.startswith("FAIL: ")
    bad = run("check", f"{MOD}:generate", "--golden", "/nonexistent/golden.npz")
    assert bad.returncode == 2
    assert bad.stderr == ("bitnet-obs crossval check: /nonexistent/golden.npz: no such file\n")
    usage = run("check", f"{MOD}:generate")  # --golden missing: argparse's own exit 2
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


# ------------------------------------------------------------------ exit 0 only through a pass


@pytest.mark.parametrize(
    ("candidate", "code", "reason"),
    [
        ("generate_exits", 3, "FAIL: case 0: the candidate raised SystemExit(0)"),
        ("generate_nan", 3, "FAIL: case 0: the candidate returned 640 NaN/infinite logits"),
        ("generate_interrupted", 130, "FAIL: case 0: the candidate raised KeyboardInterrupt"),
    ],
)
def test_a_failing_candidate_never_exits_0(
    golden: Path, candidate: str, code: int, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["crossval", "check", f"{MOD}:{candidate}", "--golden", str(golden)]) == code
    out = capsys.readouterr().out
    assert out.splitlines()[0] == reason


def test_a_module_that_exits_at_import_is_bad_input(
    golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = "tests._support.exits_on_import:generate"
    assert main(["crossval", "check", spec, "--golden", str(golden)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "bitnet-obs crossval check: cannot import 'tests._support.exits_on_import' (SystemExit: 0)"
    )


def test_sys_exit_0_in_the_real_command_exits_3(golden: Path) -> None:
    for candidate, code in (("generate_exits", 3), ("generate_nan", 3)):
        proc = subprocess.run(
            [sys.executable, "-m", "bitnet_obs", "crossval", "check", f"{MOD}:{candidate}",
             "--golden", str(golden)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == code, proc.stderr
        assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "bitnet_obs", "crossval", "check",
         "tests._support.exits_on_import:generate", "--golden", str(golden)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1


def test_json_is_strict_and_names_the_failure(
    golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["crossval", "check", f"{MOD}:generate_nan", "--golden", str(golden), "--json"])
    assert code == 3
    out = capsys.readouterr().out
    report = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in --json"))
    assert report["passed"] is False
    assert report["failure"] == {
        "kind": "non_finite",
        "detail": "case 0: the candidate returned 640 NaN/infinite logits",
    }
    assert report["cases"][0]["failure"]["kind"] == "non_finite"


def test_hostile_inputs_are_one_line_and_exit_2(
    tmp_path: Path, golden: Path, prompts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    nan_golden = tmp_path / "nan.npz"
    with zipfile.ZipFile(golden) as src, zipfile.ZipFile(nan_golden, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "header.npy":
                header = json.loads(np.load(io.BytesIO(data)).tobytes())
                text = json.dumps({**header, "model": 1.5}).replace("1.5", "NaN")
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.frombuffer(text.encode(), np.uint8))
                data = buf.getvalue()
            dst.writestr(name, data)
    record = ["crossval", "record", f"{MOD}:generate", "--out"]
    runs = [
        ([*record, str(tmp_path / "o.npz"), "--prompts", str(deep)],
         "nests arrays/objects deeper than 2 levels"),
        ([*record, str(tmp_path / "o.npz"), "--prompts", str(fifo)],
         "is a FIFO, not a regular file"),
        ([*record, str(tmp_path / "missing" / "o.npz"), "--prompts", str(prompts)],
         "missing/o.npz: cannot write (No such file or directory)"),
        (["crossval", "check", f"{MOD}:generate", "--golden", str(nan_golden)],
         "unreadable header (the header is not valid JSON (NaN is not JSON"),
        (["crossval", "check", f"{MOD}:generate", "--golden", str(golden), "--timeout", "1e10"],
         "argument --timeout: --timeout='1e10' is not valid; accepted: a number in (0, 86400]"),
        (["crossval", "check", f"{MOD}:generate", "--golden", str(golden), "--max-kl", "inf"],
         "--max-kl='inf' is not valid; accepted: a number in [0, 1000]"),
        (["crossval", "check", f"{MOD}:generate"],
         "error: the following arguments are required: --golden (see --help)"),
    ]  # fmt: skip
    for argv, message in runs:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert message in line, (argv, line)
        assert captured.out == ""
