"""Cross-validation (bitnet_obs.crossval): golden files, check() against faithful and broken
candidates (a kernel with a flipped sign, one that emits a constant token), and its metrics."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_obs import ConfigError, crossval, quant
from bitnet_obs.crossval import CrossvalError, GoldenError, GoldenSet
from bitnet_obs.testing import TelemetryCapture, capture_telemetry
from tests._support import tiny_model
from tests._support.tiny_model import PROMPTS

MAX_NEW = 12


@pytest.fixture(scope="module")
def golden_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "golden.npz"
    crossval.record(
        tiny_model.generate,
        PROMPTS,
        path,
        max_new_tokens=MAX_NEW,
        logits_steps=4,
        model="tiny",
        quant_format="i2_s",
        created_by="tester@ci",
    )
    return path


@pytest.fixture
def golden(golden_path: Path) -> GoldenSet:
    return crossval.load(golden_path)


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


# ------------------------------------------------------------------ the golden file


def test_record_writes_one_file_with_a_header(golden_path: Path, golden: GoldenSet) -> None:
    assert [p.name for p in golden_path.parent.iterdir()] == ["golden.npz"]  # no temp left
    with np.load(golden_path, allow_pickle=False) as raw:
        assert set(raw.files) == {
            "header",
            "prompt_ids",
            "prompt_offsets",
            "output_ids",
            "output_offsets",
            "logits",
            "logits_offsets",
        }
        header = json.loads(raw["header"].tobytes())
    assert header == dict(golden.header)
    assert header["format"] == "bitnet-obs-golden" and header["version"] == 1
    assert header["model"] == "tiny" and header["quant_format"] == "i2_s"
    assert header["created_by"] == "tester@ci"
    assert header["implementation"] == "tests._support.tiny_model:generate"
    assert header["max_new_tokens"] == MAX_NEW and header["cases"] == len(PROMPTS)
    assert header["created_at"].endswith("+00:00")
    assert header["runtime"]["bitnet.cpu.simd"]  # where the golden outputs were made
    for prompt, case in zip(PROMPTS, golden.cases, strict=True):
        ids, logits = tiny_model.generate(prompt, MAX_NEW)
        assert case.prompt_ids.tolist() == prompt
        assert case.output_ids.tolist() == ids
        assert case.logits is not None
        np.testing.assert_array_equal(case.logits, logits[:4])


def test_record_without_logits(tmp_path: Path) -> None:
    golden = crossval.record(tiny_model.generate_ids_only, PROMPTS[:2], tmp_path / "g.npz")
    assert all(c.logits is None for c in golden.cases)
    assert crossval.load(tmp_path / "g.npz").cases[1].output_ids.shape == (32,)
    assert "logits" not in np.load(tmp_path / "g.npz").files


@pytest.mark.parametrize(
    ("prompts", "kwargs", "message"),
    [
        ([], {}, "non-empty sequence"),
        ([[1, 2], []], {}, r"prompts\[1\]"),
        ([[1, -2]], {}, r"prompts\[0\]"),
        ("1 2 3", {}, "non-empty sequence"),
        ([[1.5]], {}, r"prompts\[0\]"),
        ([[1]], {"max_new_tokens": 0}, "max_new_tokens=0"),
        ([[1]], {"logits_steps": -1}, "logits_steps=-1"),
    ],
)
def test_record_rejects_bad_arguments(
    tmp_path: Path, prompts: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        crossval.record(tiny_model.generate, prompts, tmp_path / "g.npz", **kwargs)
    assert not (tmp_path / "g.npz").exists()


def test_record_reports_a_failing_or_misbehaving_implementation(tmp_path: Path) -> None:
    with pytest.raises(CrossvalError, match="prompt 0: the implementation raised RuntimeError"):
        crossval.record(tiny_model.Broken.generate, PROMPTS, tmp_path / "g.npz")
    with pytest.raises(CrossvalError, match="returned ids 1-D <U3"):
        crossval.record(tiny_model.generate_noisy, PROMPTS, tmp_path / "g.npz")

    def echo_prompt(prompt: list[int], n: int) -> list[int]:
        return prompt + [0] * n

    with pytest.raises(CrossvalError, match="the new ids only, not the prompt"):
        crossval.record(echo_prompt, PROMPTS, tmp_path / "g.npz")
    assert not (tmp_path / "g.npz").exists()


def _rewrite(src: Path, dst: Path, **changes: Any) -> Path:
    with np.load(src) as raw:
        arrays = {name: raw[name] for name in raw.files}
    for name, value in changes.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    np.savez(dst, **arrays)
    return dst


def _header(src: Path, **changes: Any) -> np.ndarray:
    with np.load(src) as raw:
        header = json.loads(raw["header"].tobytes())
    header.update(changes)
    return np.frombuffer(json.dumps(header).encode(), np.uint8)


def test_bad_golden_files_are_one_clear_error(golden_path: Path, tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = [
        (tmp_path / "missing.npz", "no such file"),
        (tmp_path / "text.npz", "not a golden .npz file"),
        (_rewrite(golden_path, tmp_path / "a.npz", output_ids=None), "missing output_ids"),
        (
            _rewrite(golden_path, tmp_path / "b.npz", header=_header(golden_path, version=9)),
            "version 9",
        ),
        (
            _rewrite(golden_path, tmp_path / "c.npz", header=_header(golden_path, format="x")),
            "not a bitnet-obs-golden file",
        ),
        (
            _rewrite(golden_path, tmp_path / "d.npz", output_offsets=np.array([0, 1, 2])),
            "output_offsets do not describe 5 cases",
        ),
        (
            _rewrite(golden_path, tmp_path / "e.npz", prompt_ids=np.zeros(13, np.float32)),
            "prompt_ids must be 1-D integer ids",
        ),
        (
            _rewrite(golden_path, tmp_path / "f.npz", header=np.array([1, 2, 255], np.uint8)),
            "unreadable header",
        ),
    ]
    (tmp_path / "text.npz").write_text("not a zip")
    np.save(tmp_path / "single.npy", np.zeros(3))
    cases.append((tmp_path / "single.npy", "a single array"))
    # an object array needs pickle: refused, never executed
    objects = np.array([{"x": 1}], dtype=object)
    with (
        zipfile.ZipFile(tmp_path / "pickled.npz", "w") as archive,
        archive.open("header.npy", "w") as f,
    ):
        np.lib.format.write_array(f, objects, allow_pickle=True)
    cases.append((tmp_path / "pickled.npz", "unreadable archive .*allow_pickle=False"))
    for path, message in cases:
        with pytest.raises(GoldenError, match=message) as info:
            crossval.load(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ConfigError)


# ------------------------------------------------------------------ check()


def test_a_faithful_candidate_passes(golden: GoldenSet, cap: TelemetryCapture) -> None:
    report = crossval.check(tiny_model.generate, golden, reference=tiny_model.generate_ids_only)
    assert report.passed and report.reason == ""
    assert report.token_agreement == 1.0
    assert report.kl == 0.0 and report.top1 == 1.0  # the same code: bit for bit
    assert report.model == "tiny"
    assert report.cases_skipped == 0
    for case in report.cases:
        assert case.first_divergence is None and case.error is None
        assert case.logits_steps == 4
        assert case.reference_agreement == 1.0 and case.reference_tokens == MAX_NEW
    assert report.candidate_tokens_per_s is not None and report.candidate_tokens_per_s > 0
    assert report.reference_tokens_per_s is not None and report.throughput_ratio is not None
    model = {"gen_ai.request.model": "tiny"}
    assert cap.value("bitnet.crossval.runs", **{"bitnet.crossval.outcome": "pass"}) == 1
    assert cap.value("bitnet.crossval.runs", **{"bitnet.crossval.outcome": "fail"}) == 0
    assert cap.value("bitnet.crossval.passing", **model) == 1
    assert cap.value("bitnet.crossval.token_agreement", **model) == 1.0
    assert cap.value("bitnet.crossval.kl", **model) == 0.0
    for implementation, rate in (
        ("candidate", report.candidate_tokens_per_s),
        ("reference", report.reference_tokens_per_s),
    ):
        got = cap.value(
            "bitnet.crossval.throughput", **{"bitnet.crossval.implementation": implementation}
        )
        assert got == pytest.approx(rate)
    json.dumps(report.to_dict())  # JSON-ready


@pytest.mark.parametrize(
    "broken",
    [tiny_model.generate_sign_flipped, tiny_model.generate_constant],
    ids=["sign", "constant"],
)
def test_broken_kernels_fail(golden: GoldenSet, cap: TelemetryCapture, broken: Any) -> None:
    report = crossval.check(broken, golden)
    assert not report.passed
    assert report.token_agreement < 0.5
    assert "diverges at token" in report.reason
    diverged = [c for c in report.cases if c.first_divergence is not None]
    assert diverged
    for case in diverged:
        # logits are compared up to and including the divergence, never past it
        assert case.logits_steps == min(4, case.first_divergence + 1)
    assert report.kl is not None and report.kl > 0.1
    assert report.top1 is not None and report.top1 < 1
    assert cap.value("bitnet.crossval.runs", **{"bitnet.crossval.outcome": "fail"}) == 1
    assert cap.value("bitnet.crossval.passing") == 0
    assert cap.value("bitnet.crossval.token_agreement") == pytest.approx(report.token_agreement)


def test_agreement_counts_the_common_prefix(golden: GoldenSet) -> None:
    expected = {tuple(c.prompt_ids.tolist()): c.output_ids.tolist() for c in golden.cases}

    def last_token_off(prompt: list[int], n: int) -> list[int]:
        ids = list(expected[tuple(prompt)])
        ids[-1] = (ids[-1] + 1) % 64
        return ids

    def one_short(prompt: list[int], n: int) -> list[int]:
        return expected[tuple(prompt)][:-1]

    for fn in (last_token_off, one_short):
        report = crossval.check(fn, golden, record_metrics=False)
        assert not report.passed
        assert report.token_agreement == pytest.approx((MAX_NEW - 1) / MAX_NEW)
        assert {c.first_divergence for c in report.cases} == {MAX_NEW - 1}
        assert crossval.check(fn, golden, min_agreement=0.9, record_metrics=False).passed


def test_max_kl_catches_drift_that_keeps_the_tokens(golden: GoldenSet) -> None:
    def drifting(prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
        ids, logits = tiny_model.generate(prompt, n)
        return ids, logits * 0.9  # flatter distributions, same argmax

    report = crossval.check(drifting, golden, record_metrics=False)
    assert report.passed and report.top1 == 1.0
    assert report.kl is not None and 0 < report.kl < 0.5
    strict = crossval.check(drifting, golden, max_kl=report.kl / 2, record_metrics=False)
    assert not strict.passed and strict.reason.startswith("logits KL")
    # independently: the KL of the first case's compared steps
    case = golden.cases[0]
    assert case.logits is not None
    _, logits = drifting(case.prompt_ids.tolist(), MAX_NEW)
    expected = quant.logits_agreement(case.logits, logits[:4]).kl_mean
    assert report.cases[0].kl == pytest.approx(expected)


def test_a_candidate_that_raises_or_returns_garbage_fails_without_raising(
    golden: GoldenSet,
) -> None:
    report = crossval.check(tiny_model.Broken.generate, golden, record_metrics=False)
    assert not report.passed
    assert report.reason == "case 0: the candidate raised RuntimeError"
    assert report.token_agreement == 0.0 and report.candidate_tokens_per_s is None
    garbage = crossval.check(tiny_model.generate_noisy, golden, record_metrics=False)
    assert "returned ids 1-D" in garbage.reason

    def wrong_vocab(prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
        ids, logits = tiny_model.generate(prompt, n)
        return ids, logits[:, :10]

    assert "vocab 10" in crossval.check(wrong_vocab, golden, record_metrics=False).reason


def test_a_broken_reference_is_reported_not_judged(golden: GoldenSet) -> None:
    report = crossval.check(
        tiny_model.generate, golden, reference=tiny_model.Broken.generate, record_metrics=False
    )
    assert report.passed
    assert report.reference_tokens_per_s is None
    assert all(c.reference_error == "the reference raised RuntimeError" for c in report.cases)


def test_budget_stops_starting_cases(golden: GoldenSet) -> None:
    report = crossval.check(tiny_model.generate, golden, budget_s=1e-9, record_metrics=False)
    assert len(report.cases) == 1 and report.cases_skipped == len(PROMPTS) - 1
    assert report.passed


def test_check_validates_its_arguments(golden: GoldenSet, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_agreement"):
        crossval.check(tiny_model.generate, golden, min_agreement=1.5)
    with pytest.raises(ConfigError, match="max_kl"):
        crossval.check(tiny_model.generate, golden, max_kl=-1)
    with pytest.raises(ConfigError, match="accepted: fn"):
        crossval.check("generate", golden)  # type: ignore[arg-type]
    with pytest.raises(GoldenError, match="no such file"):
        crossval.check(tiny_model.generate, tmp_path / "nope.npz")
