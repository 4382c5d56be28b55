"""Real ternary files, made and run by llama.cpp (issue 20, section 3).

A tiny random BitNet b1.58 (transformers) converted by llama.cpp's own converter, quantized to
TQ1_0 and TQ2_0 by llama.cpp's own quantizer and run by llama-cpp-python
(tests/_support/llama_model.py). On those files: quant-report reads them as llama.cpp decodes
them and finds them faithful to their master weights; broken conversions are named by
quant-report, fail cross-validation against the transformers golden and turn a live canary red;
a constant-token model is flagged degenerate; the healthy runs pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_obs import crossval, output
from bitnet_obs.cli import main
from bitnet_obs.quant import io
from bitnet_obs.testing import reset
from tests._support import llama_model as lm

pytestmark = pytest.mark.slow

TQ = ("tq1_0", "tq2_0")
TERNARY = 2 * 7  # two layers of q, k, v, o, gate, up, down


@pytest.fixture(autouse=True)
def _clean() -> Any:
    reset()
    yield
    reset()


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    status = main(["quant-report", *args, "--json"])
    return status, json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- quant-report


@pytest.mark.parametrize("fmt", TQ)
def test_quant_report_reads_the_tq_files_llama_cpp_wrote(
    tiny_bitnet: lm.TinyBitnetFiles, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = _report(capsys, str(tiny_bitnet.gguf(fmt)))
    assert status == 0
    rows = {t["name"]: t for t in report["tensors"]}
    ternary = [r for r in rows.values() if r.get("format") == fmt]
    assert len(ternary) == TERNARY, sorted(rows)
    for row in ternary:  # absmean codes: about a third of each value
        assert all(0.2 < f < 0.5 for f in row["code_fractions"]), row


@pytest.mark.parametrize("fmt", TQ)
def test_decoded_codes_equal_llama_cpp_dequantization(
    tiny_bitnet: lm.TinyBitnetFiles, fmt: str
) -> None:
    """Our reader's codes times its block scales are, bit for bit, what ggml's own ``to_float``
    (the library llama.cpp runs) and the gguf package's ``dequantize`` decode."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(tiny_bitnet.gguf(fmt)))
    raw = {t.name: t for t in reader.tensors}
    checked = 0
    with io.open_checkpoint(tiny_bitnet.gguf(fmt)) as ckpt:
        for info in ckpt.weights():
            if info.kind != "ternary":
                continue
            tensor = ckpt.read(info)
            assert isinstance(tensor, io.TernaryTensor)
            assert tensor.block_scales is not None
            ours = (
                tensor.codes.reshape(-1, 256).astype(np.float32) * tensor.block_scales[:, None]
            ).reshape(info.shape)
            data = np.asarray(raw[info.name].data, np.uint8)
            ggml = lm.ggml_dequantize(int(raw[info.name].tensor_type), data.reshape(-1), ours.size)
            np.testing.assert_array_equal(ours.reshape(-1), ggml, err_msg=info.name)
            package = dequantize(data, raw[info.name].tensor_type)
            np.testing.assert_array_equal(ours, package.reshape(ours.shape), err_msg=info.name)
            checked += 1
    assert checked == TERNARY


@pytest.mark.parametrize("fmt", TQ)
def test_the_tq_files_are_faithful_to_their_master_weights(
    tiny_bitnet: lm.TinyBitnetFiles, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = _report(capsys, str(tiny_bitnet.gguf(fmt)), "--reference",
                             str(tiny_bitnet.master))  # fmt: skip
    assert status == 0, report
    compared = [t for t in report["tensors"] if t.get("code_mismatch") is not None]
    assert len(compared) == TERNARY
    assert all(t["code_mismatch"] == 0 for t in compared)


@pytest.mark.parametrize("kind", ["swap", "sign", "wrong_ffn"])
def test_a_broken_conversion_exits_3_naming_the_tensor(
    tiny_bitnet: lm.TinyBitnetFiles,
    broken_bitnet: Callable[..., Path],
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["quant-report", str(broken_bitnet(kind)), "--reference",
                   str(tiny_bitnet.master)])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 3
    verdict = out[out.index("NOT FAITHFUL") :]
    for name in lm.BROKEN_TENSORS[kind]:
        assert name in verdict
    named = {line.strip() for line in verdict.splitlines()[1:] if line.strip().endswith(".weight")}
    assert named == set(lm.BROKEN_TENSORS[kind])


# --------------------------------------------------------------------------- running them


def _llama(path: Path) -> Callable[[list[int], int], Any]:
    return lm.llama_greedy(lm.load_llama(path))


@pytest.mark.parametrize("fmt", ["f32", *TQ])
def test_the_healthy_llama_cpp_run_passes_against_the_transformers_golden(
    tiny_bitnet: lm.TinyBitnetFiles, fmt: str
) -> None:
    report = crossval.check(_llama(tiny_bitnet.gguf(fmt)), tiny_bitnet.golden, **lm.CROSS_IMPL)
    print(
        f"\n{fmt}: passed={report.passed} token agreement {report.token_agreement:.4f} "
        f"KL {report.kl:.3g} top-1 {report.top1:.4f} "
        f"first divergences {[c.first_divergence for c in report.cases]}"
    )
    assert report.passed, report.reason
    assert report.kl is not None and report.kl <= lm.CROSS_IMPL["max_kl"]


@pytest.mark.parametrize("kind", ["swap", "sign", "wrong_ffn", "constant"])
def test_a_broken_conversion_fails_crossval_against_the_transformers_golden(
    tiny_bitnet: lm.TinyBitnetFiles, broken_bitnet: Callable[..., Path], kind: str
) -> None:
    report = crossval.check(_llama(broken_bitnet(kind)), tiny_bitnet.golden, **lm.CROSS_IMPL)
    print(f"\n{kind}: token agreement {report.token_agreement:.4f} KL {report.kl:.3g}")
    assert not report.passed
    assert report.reason


def test_crossval_check_command_passes_the_healthy_file_and_fails_a_broken_one(
    tiny_bitnet: lm.TinyBitnetFiles,
    broken_bitnet: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["crossval", "check", "tests._support.llama_generate:generate", "--golden",
            str(tiny_bitnet.golden), "--min-agreement", str(lm.CROSS_IMPL["min_agreement"]),
            "--max-kl", str(lm.CROSS_IMPL["max_kl"]), "--json"]  # fmt: skip
    monkeypatch.setenv("BITNET_OBS_TEST_GGUF", str(tiny_bitnet.tq2_0))
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    monkeypatch.setenv("BITNET_OBS_TEST_GGUF", str(broken_bitnet("sign")))
    assert main(argv) == 3
    assert json.loads(capsys.readouterr().out)["passed"] is False


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_live_canary_on_a_broken_file_turns_red(
    tiny_bitnet: lm.TinyBitnetFiles, broken_bitnet: Callable[..., Path]
) -> None:
    from bitnet_obs import health

    healthy = crossval.Canary(
        _llama(tiny_bitnet.tq2_0), tiny_bitnet.golden, interval_s=3600, name="healthy",
        **lm.CROSS_IMPL,
    )  # fmt: skip
    broken = crossval.Canary(
        _llama(broken_bitnet("swap")), tiny_bitnet.golden, interval_s=3600, name="broken",
        **lm.CROSS_IMPL,
    )  # fmt: skip
    with healthy, broken:
        _wait(lambda: healthy.runs >= 1 and broken.runs >= 1, "both canaries' first run")
        assert healthy.last_report is not None and healthy.last_report.passed
        assert broken.last_report is not None and not broken.last_report.passed
        report = health.evaluate("readiness")
        status = {c.name: c.status.value for c in report.components}
        assert status["healthy"] == "healthy", report.to_dict()
        assert status["broken"] == "unhealthy", report.to_dict()
        assert report.http_status == 503


def test_a_constant_token_model_is_flagged_degenerate(
    tiny_bitnet: lm.TinyBitnetFiles, broken_bitnet: Callable[..., Path]
) -> None:
    prompt = list(tiny_bitnet.prompts[0])
    ids, logits = _llama(broken_bitnet("constant"))(prompt, 64)
    assert set(ids) == {0}  # every logit 0: the first token wins, every step
    assert not logits.any()
    verdict = output.detect_degenerate(ids)
    assert verdict.degenerate
    assert verdict.reason == "repeat_run"


def test_relu2_the_2b4t_activation_is_run_as_silu_by_llama_cpp_and_crossval_catches_it(
    llama_engine: Any,
) -> None:
    """2B-4T declares ``hidden_act: relu2``; llama.cpp's converter drops it and its ``bitnet``
    graph applies SiLU (microsoft/BitNet#588, #602): the golden from transformers catches it."""
    files = lm.build(llama_engine, relu2=True)
    report = crossval.check(_llama(files.tq2_0), files.golden, **lm.CROSS_IMPL)
    print(f"\nrelu2: token agreement {report.token_agreement:.4f} KL {report.kl:.3g}")
    assert not report.passed


@pytest.mark.parametrize("fmt", TQ)
def test_llama_cpp_against_its_own_golden_is_exact(
    tiny_bitnet: lm.TinyBitnetFiles, fmt: str
) -> None:
    """The same engine on the same ternary codes (TQ1_0 and TQ2_0 decode to the same values):
    identical tokens, with the defaults (token agreement 1)."""
    report = crossval.check(_llama(tiny_bitnet.gguf(fmt)), tiny_bitnet.golden_llama)
    assert report.passed, report.reason
    assert report.token_agreement == 1.0
    assert report.top1 == 1.0
