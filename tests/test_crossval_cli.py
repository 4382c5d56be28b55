"""``bitnet-obs crossval record|check``: exit 0 on a faithful candidate, 3 on a broken kernel,
2 with one line and no traceback on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
         "min_agreement=2.0; accepted: 0..1"),
        (["record", f"{MOD}:generate", "--prompts", "{tmp}/none.json", "--out", "{tmp}/o.npz"],
         "--prompts {tmp}/none.json: cannot read"),
        (["record", f"{MOD}:generate", "--prompts", "{bad_prompts}", "--out", "{tmp}/o.npz"],
         "accepted: a non-empty list of non-empty lists of token ids >= 0"),
        (["record", f"{MOD}:Broken.generate", "--prompts", "{prompts}", "--out", "{tmp}/o.npz"],
         "prompt 0: the implementation raised RuntimeError"),
        (["record", f"{MOD}:generate", "--prompts", "{prompts}", "--out", "{tmp}/o.npz",
          "--max-new-tokens", "0"], "max_new_tokens=0; accepted: an integer >= 1"),
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
