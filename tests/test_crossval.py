"""Cross-validation (bitnet_obs.crossval): golden files, check() against faithful and broken
candidates (a kernel with a flipped sign, one that emits a constant token), and its metrics."""

from __future__ import annotations

import io
import json
import os
import threading
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
    cases.append((tmp_path / "pickled.npz", "member header.npy holds object; accepted: numbers"))
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


# ------------------------------------------------------------------ every failure is a failed run


class _Hang:
    """A candidate that blocks until released (a hung kernel)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, prompt: list[int], n: int) -> list[int]:
        self.release.wait(60)
        return [0] * n


class _Odd(BaseException):
    """Neither an Exception nor an exit: still a failure of the candidate."""


def _returning(value: Any) -> Any:
    return lambda prompt, n: value


def _logits_with(value: float) -> Any:
    def generate(prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
        ids, logits = tiny_model.generate(prompt, n)
        logits[n // 2, 3] = value
        return ids, logits

    return generate


def _raising(exc: BaseException) -> Any:
    def generate(prompt: list[int], n: int) -> list[int]:
        raise exc

    return generate


FAILURES = [
    (_raising(ValueError("x")), "raised", "the candidate raised ValueError", False),
    (_raising(_Odd()), "raised", "the candidate raised _Odd", False),
    (tiny_model.generate_exits, "exited", "the candidate raised SystemExit(0)", True),
    (_raising(SystemExit("bye")), "exited", "raised SystemExit('bye')", True),
    (tiny_model.generate_interrupted, "interrupted", "raised KeyboardInterrupt", True),
    (tiny_model.generate_nan, "non_finite", "the candidate returned 768 NaN/infinite logits",
     False),
    (_logits_with(np.inf), "non_finite", "returned 1 NaN/infinite logits", False),
    (_logits_with(-np.inf), "non_finite", "returned 1 NaN/infinite logits", False),
    (_returning([-1] * MAX_NEW), "out_of_range", "returned token id -1; accepted: 0..63", False),
    (_returning([64] * MAX_NEW), "out_of_range", "returned token id 64; accepted: 0..63", False),
    (_returning(np.full(MAX_NEW, 2**63, np.uint64)), "out_of_range", "beyond int64", False),
    (_returning([1] * (MAX_NEW + 1)), "bad_output", "returned 13 ids for max_new_tokens=12",
     False),
    (_returning(["a", "b"]), "bad_output", "returned ids 1-D <U1 (2,)", False),
    (_returning([[1, 2], [3, 4]]), "bad_output", "returned ids 2-D", False),
    (_returning(([1] * MAX_NEW, np.zeros((MAX_NEW, 64, 2)))), "bad_output",
     "returned logits 3-D", False),
    (_returning(([1] * MAX_NEW, np.zeros((MAX_NEW, 10)))), "bad_output",
     "returned logits of vocab 10, the golden 64", False),
    (lambda p, n: _raising(crossval.CandidateError("unavailable", "http://127.0.0.1:1: refused"))(
        p, n), "unavailable", "http://127.0.0.1:1: refused", False),
]  # fmt: skip


@pytest.mark.parametrize(("candidate", "kind", "detail", "stops"), FAILURES)
def test_every_failure_of_a_candidate_fails_the_run_with_its_reason(
    golden: GoldenSet, candidate: Any, kind: str, detail: str, stops: bool
) -> None:
    """An exception, an exit, an interrupt, NaN/Inf logits, ids out of the vocabulary and
    mis-shaped answers are all a failed run with a typed reason -- never an exception out of
    check(), never a pass."""
    report = crossval.check(candidate, golden, record_metrics=False)
    assert not report.passed
    assert report.failure is not None and report.failure.kind == crossval.FailureKind(kind)
    assert report.reason.startswith("case 0: ") and detail in report.reason
    case = report.cases[0]
    assert case.failure is not None and case.failure.kind.value == kind
    assert case.error == case.failure.detail
    # an exit or an interrupt ends the run: nothing else is started on a candidate that left
    assert (len(report.cases), report.cases_skipped) == ((1, 4) if stops else (5, 0))
    from bitnet_obs._untrusted import strict_json

    assert json.loads(strict_json(report.to_dict()))["failure"]["kind"] == kind


def test_a_call_past_timeout_s_fails_the_run_and_is_abandoned(golden: GoldenSet) -> None:
    hang = _Hang()
    try:
        report = crossval.check(hang, golden, timeout_s=0.05, record_metrics=False)
    finally:
        hang.release.set()
    assert not report.passed and report.failure is not None
    assert report.failure.kind == crossval.FailureKind.TIMEOUT
    assert report.reason == "case 0: the candidate did not answer within 0.05s"
    assert len(report.cases) == 1 and report.cases_skipped == 4


def test_a_reference_that_exits_stops_the_run_and_fails_it(golden: GoldenSet) -> None:
    report = crossval.check(
        tiny_model.generate, golden, reference=tiny_model.generate_exits, record_metrics=False
    )
    assert not report.passed and report.failure is not None
    assert report.failure.kind == crossval.FailureKind.EXITED
    assert report.reason == "case 0: the reference raised SystemExit(0); the run stopped"


def test_a_nan_kernel_after_a_good_start_fails(golden: GoldenSet) -> None:
    """The canary's own case: a kernel that breaks into NaN logits."""
    model = tiny_model.TinyModel()
    assert crossval.check(model.generate, golden, record_metrics=False).passed
    model.fault = "nan"
    report = crossval.check(model.generate, golden, record_metrics=False)
    assert not report.passed and report.failure is not None
    assert report.failure.kind == crossval.FailureKind.NON_FINITE


def test_candidate_error_kinds_are_checked() -> None:
    with pytest.raises(ValueError, match="kind='slow'; accepted: raised, exited"):
        crossval.CandidateError("slow", "x")
    error = crossval.CandidateError(crossval.FailureKind.TIMEOUT, "no answer in 5 s")
    assert error.failure == crossval.Failure(crossval.FailureKind.TIMEOUT, "no answer in 5 s")
    assert str(error.failure) == "no answer in 5 s" and error.failure.kind.value == "timeout"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_s": float("inf")}, "budget_s=inf is not valid; accepted: a number in (0, 86400]"),
        ({"budget_s": 0}, "budget_s=0 is not valid"),
        ({"timeout_s": 1e10}, "timeout_s=10000000000.0 is not valid"),
        ({"timeout_s": float("nan")}, "timeout_s=nan is not valid"),
        ({"max_kl": float("inf")}, "max_kl=inf is not valid; accepted: a number in [0, 1000]"),
        ({"min_agreement": float("nan")}, "min_agreement=nan is not valid"),
        ({"model": 3}, "model=3; accepted: a string"),
    ],
)
def test_every_number_of_check_is_bounded(
    golden: GoldenSet, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        crossval.check(tiny_model.generate, golden, record_metrics=False, **kwargs)
    assert message in str(info.value)


# ------------------------------------------------------------------ hostile golden files


def _zip_member(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _npy(header: str, data: bytes = b"") -> bytes:
    text = header.encode() + b" " * (118 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def _members(golden_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(golden_path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_hostile_golden_files_are_a_golden_error_before_any_allocation(
    golden_path: Path, tmp_path: Path
) -> None:
    good = _members(golden_path)
    huge = "{'descr': '<f8', 'fortran_order': False, 'shape': (65536, 65536), }"  # 32 GiB
    deep = "[" * 100_000 + "]" * 100_000
    nan_header = json.loads(good_header(golden_path)) | {"x": 1}
    cases = {
        "a 32 GiB array": (
            {**good, "logits.npy": _npy(huge)},
            "declares float64 (65536, 65536) but holds 0 bytes",
        ),
        "a 2**40 dimension": (
            {**good, "prompt_ids.npy": _npy(
                "{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776, 0), }")},
            "each dimension at most 2147483648",
        ),
        "a deeply nested header": (
            {**good, "header.npy": _array_bytes(np.frombuffer(deep.encode(), np.uint8))},
            "nests arrays/objects deeper than 16 levels",
        ),
        "NaN in the header": (
            {**good, "header.npy": _array_bytes(np.frombuffer(
                json.dumps(nan_header).replace('"x": 1', '"x": NaN').encode(),
                np.uint8))},
            "NaN is not JSON",
        ),
        "a billion cases": (
            {**good, "header.npy": _array_bytes(np.frombuffer(
                json.dumps(json.loads(good_header(golden_path)) | {"cases": 10**9}).encode(),
                np.uint8))},
            "header cases=1000000000; accepted: an integer in [1, 100000]",
        ),
        "negative ids": (
            {**good, "output_ids.npy": _array_bytes(-np.ones(5 * MAX_NEW, np.int64))},
            "output_ids holds ids outside [0, 64)",
        ),
    }  # fmt: skip
    for what, (members, message) in cases.items():
        path = _zip_member(tmp_path / f"{what}.npz", members)
        with pytest.raises(GoldenError) as info:
            crossval.load(path)
        assert message in str(info.value), what
        assert "\n" not in str(info.value)


def good_header(golden_path: Path) -> str:
    with np.load(golden_path) as raw:
        return raw["header"].tobytes().decode()


def _array_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


def test_a_golden_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "golden.npz"
    os.mkfifo(fifo)
    with pytest.raises(GoldenError, match="is a FIFO, not a regular file"):
        crossval.load(fifo)  # never blocks waiting for a writer


def test_record_into_a_missing_directory_is_a_golden_error(tmp_path: Path) -> None:
    with pytest.raises(GoldenError, match=r"nowhere/g.npz: cannot write \(No such file"):
        crossval.record(tiny_model.generate, PROMPTS, tmp_path / "nowhere" / "g.npz")


def test_record_bounds_its_numbers(tmp_path: Path) -> None:
    for kwargs, message in (
        ({"max_new_tokens": 10**12}, "max_new_tokens=1000000000000 is not valid"),
        ({"logits_steps": 10**6}, "logits_steps=1000000 is not valid"),
    ):
        with pytest.raises(ConfigError, match=message):
            crossval.record(tiny_model.generate, PROMPTS, tmp_path / "g.npz", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"prompts\[0\]: accepted"):
        crossval.record(tiny_model.generate, [[2**64 - 1]], tmp_path / "g.npz")


def test_corrupted_golden_files_are_a_golden_error_or_a_usable_set(
    golden_path: Path, tmp_path: Path
) -> None:
    """A second hostile round, fuzz-style: any bytes changed or cut give a GoldenError (one
    line) or a set check() can run -- never another exception, a hang or a huge allocation."""
    import random

    rng = random.Random(23)
    original = golden_path.read_bytes()
    stored = tmp_path / "stored.npz"
    with np.load(golden_path) as raw:
        np.savez(stored, **{name: raw[name] for name in raw.files})  # uncompressed members
    sources = [original, stored.read_bytes()]
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(int(os.environ.get("FUZZ_EXAMPLES", "300"))):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            data[at] = rng.choice([0, 0xFF, 0x7F, rng.randrange(256)])
        if rng.random() < 0.2:
            data = data[: rng.randrange(1, len(data))]
        path = tmp_path / f"g{i % 4}.npz"
        path.write_bytes(bytes(data))
        try:
            gs = crossval.load(path)
        except GoldenError as exc:
            refused = str(exc)
            outcomes["refused"] += 1
            assert "\n" not in refused
            continue
        outcomes["loaded"] += 1
        report = crossval.check(tiny_model.generate, gs, record_metrics=False)
        assert isinstance(report.passed, bool)
    assert outcomes["refused"] > 20, outcomes
    # the zip's CRCs refuse most byte changes: change the arrays themselves too
    with np.load(golden_path) as raw:
        arrays = {name: raw[name] for name in raw.files}
    header = json.loads(arrays["header"].tobytes())
    choices: list[Any] = [
        lambda: rng.randint(-(2**63), 2**63 - 1), lambda: rng.randint(-3, 70),
        lambda: float("nan"), lambda: rng.random(), lambda: "x\x1b[2J", lambda: None,
        lambda: [1] * rng.randint(0, 3), lambda: {"a": {"b": []}}, lambda: True,
    ]  # fmt: skip
    loaded = 0
    for i in range(int(os.environ.get("FUZZ_EXAMPLES", "300"))):
        changed = dict(arrays)
        name = rng.choice(sorted(arrays))
        if name == "header":
            h = dict(header)
            h[rng.choice([*sorted(h), "vocab_size", "cases"])] = rng.choice(choices)()
            text = json.dumps(h, allow_nan=True)
            changed[name] = np.frombuffer(text.encode(), np.uint8)
        else:
            a = arrays[name].copy()
            kind = rng.randrange(4)
            if kind == 0 and a.size:
                bad = [-1, 64, 2**40, 0] if a.dtype.kind in "iu" else [np.nan, np.inf, 1e38]
                a.flat[rng.randrange(a.size)] = rng.choice(bad)
            elif kind == 1:
                a = a[: rng.randrange(a.shape[0] + 1)]
            elif kind == 2:
                a = a.astype(rng.choice([np.float32, np.int8, np.uint64, np.int64]))
            else:
                a = a.reshape(-1)[None, :] if a.ndim == 1 else a.reshape(-1)
            changed[name] = a
        path = tmp_path / f"a{i % 4}.npz"
        np.savez(path, **changed)
        try:
            gs = crossval.load(path)
        except GoldenError as exc:
            refused = str(exc)
            assert "\n" not in refused
            continue
        loaded += 1
        report = crossval.check(tiny_model.generate, gs, record_metrics=False)
        assert isinstance(report.passed, bool)
    assert loaded > 5


class _HostileAnswer:
    """An answer whose reading runs code that raises, exits or is interrupted."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise self.exc


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@pytest.mark.parametrize(
    ("answer", "kind", "detail"),
    [
        (_HostileAnswer(ValueError("x")), "bad_output", "returned ids of type _HostileAnswer"),
        (_HostileAnswer(SystemExit(0)), "exited", "SystemExit(0) while its answer was read"),
        (_HostileAnswer(KeyboardInterrupt()), "interrupted", "while its answer was read"),
    ],
)
def test_an_answer_that_raises_when_read_is_a_failure(
    golden: GoldenSet, answer: Any, kind: str, detail: str
) -> None:
    report = crossval.check(_returning(answer), golden, record_metrics=False)
    assert report.failure is not None and report.failure.kind.value == kind
    assert detail in report.reason


def test_hostile_exit_codes_and_candidate_details_stay_one_line(golden: GoldenSet) -> None:
    report = crossval.check(_raising(SystemExit(_BadRepr())), golden, record_metrics=False)
    assert report.reason == "case 0: the candidate raised SystemExit(_BadRepr)"
    error = crossval.CandidateError("unavailable", "refused\n\x1b[2Jfake log line")
    assert error.failure.detail == "refused\\x0a\\x1b[2Jfake log line"


def test_a_golden_set_built_in_code_is_checked(golden: GoldenSet) -> None:
    for bad in (
        GoldenSet(golden.cases, {"model": "x"}),  # no max_new_tokens
        GoldenSet((), dict(golden.header)),
        GoldenSet((crossval.GoldenCase(np.zeros(0, np.int64), np.zeros(1, np.int64)),),
                  dict(golden.header)),
    ):  # fmt: skip
        with pytest.raises(GoldenError, match="golden set: "):
            crossval.check(tiny_model.generate, bad, record_metrics=False)
        with pytest.raises(GoldenError, match="golden set: "):
            crossval.Canary(tiny_model.generate, bad)
