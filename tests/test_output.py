"""Degenerate-output detection and logits signals (bitnet_obs.output) on real token streams.

Healthy streams: public-domain prose, code, Markdown and deliberately repetitive answers
(tests/fixtures/text) through three real tokenizers that need no download -- ByT5 (bytes),
Canine (code points) and byte-level BPEs trained here on the same texts. Degenerate streams:
the failure shapes reported against bitnet.cpp ("!!!!", "GGGG", a few tokens cycling,
nonsense from a handful of ids), alone and after a healthy start.
"""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_obs import ConfigError, _config, output
from bitnet_obs._degenerate import judge_list
from bitnet_obs.output import (
    DegenerateDetector,
    DegenerateThresholds,
    OutputInputError,
    OutputVerdict,
    detect_degenerate,
    logits_stats,
    thresholds_from_env,
)

TEXTS = Path(__file__).parent / "fixtures" / "text"
Tokenize = Callable[[str], list[int]]


def _texts() -> dict[str, str]:
    paths = [p for p in sorted(TEXTS.iterdir()) if p.name != "README.md"]
    return {p.name: p.read_text(encoding="utf-8") for p in paths}


def _bpe(vocab: int) -> Tokenize:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts().values(), trainer)
    return lambda text: tok.encode(text).ids


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenize]:
    from transformers import ByT5Tokenizer, CanineTokenizer

    byt5, canine = ByT5Tokenizer(), CanineTokenizer()
    return {
        "byt5": lambda t: byt5(t, add_special_tokens=False)["input_ids"],
        "canine": lambda t: canine(t, add_special_tokens=False)["input_ids"],
        "bpe1k": _bpe(1000),
        "bpe4k": _bpe(4000),
    }


def _stream(ids: Sequence[int], **kwargs: object) -> OutputVerdict:
    detector = DegenerateDetector(**kwargs)  # type: ignore[arg-type]
    for token in ids:
        detector.add(token)
    return detector.result()


# ------------------------------------------------------------------ healthy: no false positive


def test_healthy_texts_do_not_trip_any_tokenizer(tokenizers: dict[str, Tokenize]) -> None:
    texts = _texts()
    assert len(texts) >= 8
    th = output.DEFAULT_THRESHOLDS
    worst = {"run": 0, "cycle": 0, "fraction": 1.0}
    for tok_name, tokenize in tokenizers.items():
        streams = {name: tokenize(text) for name, text in texts.items()}
        streams["all"] = tokenize("\n\n".join(texts.values()))
        for name, ids in streams.items():
            assert len(ids) >= 200, (tok_name, name)
            verdict = detect_degenerate(ids)
            assert verdict == _stream(ids), (tok_name, name)
            assert verdict.judged and not verdict.degenerate, (tok_name, name, verdict)
            worst["run"] = max(worst["run"], verdict.longest_run)
            worst["cycle"] = max(worst["cycle"], verdict.cycle_span)
            worst["fraction"] = min(worst["fraction"], verdict.distinct_fraction)
    # the margins the defaults' docstring states: healthy text stays >= 1.5x away
    assert worst["run"] * 1.5 <= th.repeat_run
    assert worst["cycle"] * 1.5 <= th.cycle_span
    assert worst["fraction"] >= 1.5 * th.min_distinct_fraction


def test_every_prefix_of_a_healthy_answer_is_healthy(tokenizers: dict[str, Tokenize]) -> None:
    """A stream is judged as it grows too (a detector peeked at every token)."""
    ids = tokenizers["byt5"](_texts()["assistant_markdown.md"])
    detector = DegenerateDetector(chunk_tokens=256)
    for token in ids:
        detector.add(token)
        assert not detector.result().degenerate


# ------------------------------------------------------------------ degenerate: each reason


def _ids_of(tokenize: Tokenize, piece: str) -> list[int]:
    ids = tokenize(piece)
    assert len(ids) == 1, (piece, ids)
    return ids


def test_exclamation_collapse_is_a_repeat_run(tokenizers: dict[str, Tokenize]) -> None:
    """microsoft/BitNet#547: kernels with empty bodies answer "!!!!"."""
    for name, tokenize in tokenizers.items():
        bang = _ids_of(tokenize, "!")
        for ids in (bang * 200, tokenize("The answer is") + bang * 100):
            verdict = detect_degenerate(ids)
            assert verdict.reason == "repeat_run", (name, verdict)
            assert verdict.longest_run >= 100


def test_gggg_after_a_healthy_start_is_a_repeat_run(tokenizers: dict[str, Tokenize]) -> None:
    """microsoft/BitNet#328: "GGGG..." -- here after 300 healthy tokens (a late collapse)."""
    tokenize = tokenizers["bpe4k"]
    healthy = tokenize(_texts()["melville_moby_dick.txt"])[:300]
    g = _ids_of(tokenize, "G")
    verdict = _stream(healthy + g * 40)
    assert verdict.reason == "repeat_run"
    assert verdict.longest_run == 40
    assert not _stream(healthy + g * 20).degenerate  # below the threshold


@pytest.mark.parametrize(("pattern", "period"), [(" of the", 2), (" it was the", 3)])
def test_short_cycles(tokenizers: dict[str, Tokenize], pattern: str, period: int) -> None:
    tokenize = tokenizers["bpe1k"]
    unit = tokenize(pattern)
    assert len(unit) == period and len(set(unit)) == period
    healthy = tokenize(_texts()["carroll_alice.txt"])[:200]
    verdict = detect_degenerate(healthy + unit * (240 // period))
    assert verdict.reason == "cycle", verdict
    assert verdict.cycle_period == period
    assert verdict.cycle_span >= 238
    assert verdict.longest_run < 3  # not a run: a cycle


def test_byte_level_cycle(tokenizers: dict[str, Tokenize]) -> None:
    ids = tokenizers["byt5"]("Sure! " + "ha" * 120)
    verdict = detect_degenerate(ids)
    assert (verdict.reason, verdict.cycle_period) == ("cycle", 2)


def test_low_diversity_nonsense(tokenizers: dict[str, Tokenize]) -> None:
    """A handful of ids in no order: no long run, no cycle, only the distinct fraction."""
    rng = random.Random(7)
    pieces = {"bpe1k": (" the", " and", ",", ".", " of", " a"), "byt5": tuple("et ao.")}
    for name, six in pieces.items():
        tokenize = tokenizers[name]
        words = [i for w in six for i in _ids_of(tokenize, w)]
        nonsense = [rng.choice(words) for _ in range(400)]
        verdict = detect_degenerate(nonsense)
        assert verdict.reason == "low_diversity", (name, verdict)
        assert verdict.distinct_fraction <= 8 / 256
        assert verdict.longest_run < 32 and verdict.cycle_span < 192
        # after a healthy start, the collapsed window still counts
        healthy = tokenize(_texts()["lincoln_gettysburg.txt"])[:512]
        assert detect_degenerate(healthy + nonsense).reason == "low_diversity"


def test_reason_priority_and_switches() -> None:
    run_and_low = [3] * 300
    assert detect_degenerate(run_and_low).reason == "repeat_run"
    off = DegenerateThresholds(repeat_run=0)
    assert detect_degenerate(run_and_low, off).reason == "low_diversity"
    cycle = [1, 2] * 150
    assert detect_degenerate(cycle).reason == "cycle"
    assert detect_degenerate(cycle, DegenerateThresholds(cycle_span=0)).reason == "low_diversity"
    none = DegenerateThresholds(repeat_run=0, cycle_span=0, min_distinct_fraction=0)
    assert detect_degenerate(cycle, none).reason is None
    assert output.REASONS == ("repeat_run", "cycle", "low_diversity")


# ------------------------------------------------------------------ short outputs


@pytest.mark.parametrize("ids", [[], [5], [9] * 31, [1, 2] * 15, [4] * 20 + [5] * 11])
def test_short_outputs_are_measured_not_judged(ids: list[int]) -> None:
    for verdict in (detect_degenerate(ids), _stream(ids)):
        assert not verdict.judged and verdict.reason is None
        assert verdict.tokens == len(ids)
        assert verdict.longest_run == _longest_run(ids)
        assert verdict.distinct_fraction == (len(set(ids)) / len(ids) if ids else 1.0)
        assert (verdict.cycle_span, verdict.cycle_period) == (0, 0)


def test_the_min_tokens_boundary() -> None:
    assert detect_degenerate([9] * 32).reason == "repeat_run"
    lax = DegenerateThresholds(repeat_run=4, min_tokens=10)
    assert detect_degenerate([9] * 9, lax).reason is None
    assert detect_degenerate([9] * 10, lax).reason == "repeat_run"


# ------------------------------------------------------------------ same answer for any chunking


def _longest_run(ids: Sequence[int]) -> int:
    best = run = 0
    for i, token in enumerate(ids):
        run = run + 1 if i and token == ids[i - 1] else 1
        best = max(best, run)
    return best


def reference(ids: Sequence[int], th: DegenerateThresholds) -> OutputVerdict:
    """The definitions, written the obvious way (quadratic, no chunks, no carried state)."""
    n = len(ids)
    if n < th.min_tokens:
        fraction = len(set(ids)) / n if n else 1.0
        return OutputVerdict(n, _longest_run(ids), fraction, 0, 0, False, None)
    span = period = 0
    for p in range(2, th.max_period + 1):
        stretch = 0
        for j in range(p, n):
            window = ids[j - p + 1 : j + 1]
            if ids[j] == ids[j - p] and len(set(window)) > 1:
                stretch += 1
                if stretch + p > span:
                    span, period = stretch + p, p
            else:
                stretch = 0
    fractions = []
    for start in range(0, n, th.window):
        window = ids[start : start + th.window]
        if len(window) == th.window or len(window) >= th.min_tokens:
            fractions.append(len(set(window)) / len(window))
    fraction = min(fractions)
    run = _longest_run(ids)
    reason = None
    if th.repeat_run and run >= th.repeat_run:
        reason = "repeat_run"
    elif th.cycle_span and span >= th.cycle_span:
        reason = "cycle"
    elif fraction < th.min_distinct_fraction:
        reason = "low_diversity"
    return OutputVerdict(n, run, fraction, span, period, True, reason)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[int], DegenerateThresholds, int, list[int]]:
    window = draw(st.sampled_from([8, 16, 24]))
    th = DegenerateThresholds(
        repeat_run=draw(st.sampled_from([0, 2, 3, 5, 8, 12])),
        cycle_span=draw(st.sampled_from([0, 9, 12, 20, 30])),
        max_period=draw(st.integers(2, 8)),
        min_distinct_fraction=draw(st.sampled_from([0.0, 0.2, 0.4])),
        window=window,
        min_tokens=draw(st.integers(1, window)),
    )
    # runs, cycles and noise from a small alphabet, so every measure is exercised
    pieces = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("run"), st.integers(0, 4), st.integers(1, 20)),
                st.tuples(st.just("cycle"), st.lists(st.integers(0, 4), min_size=2, max_size=9),
                          st.integers(1, 8)),
                st.tuples(st.just("noise"), st.lists(st.integers(-3, 40), max_size=20)),
            ),
            max_size=12,
        )
    )  # fmt: skip
    ids: list[int] = []
    for piece in pieces:
        if piece[0] == "run":
            ids += [piece[1]] * piece[2]
        elif piece[0] == "cycle":
            ids += piece[1] * piece[2]
        else:
            ids += piece[1]
    chunk = window * draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, len(ids)), max_size=6)))
    return ids, th, chunk, cuts


@settings(max_examples=300, deadline=None)
@given(cases())
def test_streaming_and_whole_sequence_agree_with_the_definitions(
    case: tuple[list[int], DegenerateThresholds, int, list[int]],
) -> None:
    ids, th, chunk, cuts = case
    expected = reference(ids, th)
    assert judge_list(ids, th) == expected  # the request path's whole short outputs
    assert detect_degenerate(ids, th, chunk_tokens=chunk) == expected
    assert detect_degenerate(np.array(ids, np.int32), th, chunk_tokens=chunk) == expected
    one_by_one = DegenerateDetector(th, chunk_tokens=chunk)
    for token in ids:
        one_by_one.add(token)
    in_pieces = DegenerateDetector(th, chunk_tokens=chunk)  # lists, arrays and single ids
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(ids)], strict=True)):
        if i % 4 == 0:
            in_pieces.extend(ids[a:b])
        elif i % 4 == 1:
            in_pieces.extend(np.array(ids[a:b], np.int64))
        elif i % 4 == 2:
            for token in ids[a:b]:
                in_pieces.add(token)
        else:  # the raw append, pumped only now and then (late: more than a chunk waits)
            for token in ids[a:b]:
                in_pieces.append(token)
            if b % 2:
                in_pieces.pump()
    assert one_by_one.result() == expected
    assert in_pieces.result() == expected
    assert one_by_one.tokens == in_pieces.tokens == len(ids)
    assert one_by_one.result() == expected  # result() does not consume


def test_2d_batches_are_judged_row_by_row_and_padding_is_stripped() -> None:
    healthy = list(range(100, 300))
    batch = np.array([[7] * 200, healthy, [1, 2] * 100])
    verdicts = detect_degenerate(batch)
    assert isinstance(verdicts, tuple)
    assert [v.reason for v in verdicts] == ["repeat_run", None, "cycle"]
    healthy = healthy[:80]
    padded = np.array([healthy[:40] + [0] * 40, healthy])
    assert detect_degenerate(padded)[0].reason == "repeat_run"  # padding looks like "!!!!"
    unpadded = detect_degenerate(padded, pad_id=0)
    assert [v.tokens for v in unpadded] == [40, 80]
    assert not any(v.degenerate for v in unpadded)
    assert detect_degenerate([[1, 2, 3], [4, 5, 6]])[1].tokens == 3
    assert detect_degenerate(np.zeros((2, 0), np.int64)) == (_stream([]), _stream([]))


def test_reset_starts_a_new_output() -> None:
    detector = DegenerateDetector(chunk_tokens=256)
    add, append = detector.add, detector.append
    for _ in range(600):
        add(1)
    assert detector.result().reason == "repeat_run"
    detector.reset()
    assert detector.tokens == 0
    for token in range(600):
        add(token)  # still valid after reset()
    assert not detector.result().degenerate
    detector.reset()
    for _ in range(300):
        append(2)
    assert detector.tokens == 300
    detector.pump()
    assert detector.tokens == 300 and detector.result().longest_run == 300


# ------------------------------------------------------------------ bounded memory


def test_three_million_tokens_stream_in_bounded_memory() -> None:
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 128_000, 1_000)
    some = chunk[:700].tolist()
    detector = DegenerateDetector()
    tracemalloc.start()
    try:
        for _ in range(3_000):
            detector.extend(chunk)
        for _ in range(300):  # and 210k ids one at a time
            for i, token in enumerate(some):
                if i % 2:
                    detector.add(token)
                else:  # the raw append, pumped as its callers do
                    detector.append(token)
                    if i % 512 == 0:
                        detector.pump()
        verdict = detector.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict.tokens == 3_210_000
    assert not verdict.degenerate
    assert peak < 1_000_000, peak  # a few chunks of 4096 ids, never the stream (24 MB)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "ids",
    [[1.5, 2.0], np.zeros((2, 2, 2), np.int64), ["a", "b"], [True, False], [1, 2**70], 7],
    ids=["floats", "3-D", "strings", "bools", "too-big", "scalar"],
)
def test_bad_ids_raise_one_error_type(ids: object) -> None:
    with pytest.raises(OutputInputError, match="accepted"):
        detect_degenerate(ids)  # type: ignore[call-overload]
    with pytest.raises(OutputInputError, match="accepted"):
        DegenerateDetector().extend(ids)  # type: ignore[arg-type]


def test_add_rejects_non_ids_like_array_append() -> None:
    detector = DegenerateDetector()
    with pytest.raises(TypeError):
        detector.add("x")  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        detector.add(2**70)
    detector.add(3)
    assert detector.tokens == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeat_run": 1}, "repeat_run=1"),
        ({"repeat_run": True}, "repeat_run=True"),
        ({"cycle_span": 5}, "cycle_span=5"),  # must exceed max_period
        ({"max_period": 1}, "max_period=1"),
        ({"max_period": 65}, "max_period=65"),
        ({"min_distinct_fraction": 1.0}, "min_distinct_fraction=1.0"),
        ({"min_distinct_fraction": -0.1}, "min_distinct_fraction=-0.1"),
        ({"min_distinct_fraction": "0.1"}, "min_distinct_fraction='0.1'"),
        ({"window": 4}, "window=4"),
        ({"min_tokens": 0}, "min_tokens=0"),
        ({"min_tokens": 300}, "min_tokens=300"),  # above the window
    ],
)
def test_thresholds_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="accepted") as info:
        DegenerateThresholds(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_constructor_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match="multiple of the window"):
        DegenerateDetector(chunk_tokens=100)
    with pytest.raises(ConfigError, match="DegenerateThresholds"):
        DegenerateDetector({"repeat_run": 3})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="chunk_tokens"):
        detect_degenerate([1, 2], chunk_tokens=0)


def test_thresholds_from_env() -> None:
    assert thresholds_from_env({}) == output.DEFAULT_THRESHOLDS
    th = thresholds_from_env(
        {
            "BITNET_OBS_DEGENERATE_REPEAT_RUN": "64",
            "BITNET_OBS_DEGENERATE_MIN_DISTINCT_FRACTION": "0.1",
            "BITNET_OBS_DEGENERATE_WINDOW": " 128 ",
            "BITNET_OBS_DEGENERATE_CYCLE_SPAN": "",
        }
    )
    got = (th.repeat_run, th.min_distinct_fraction, th.window, th.cycle_span)
    assert got == (64, 0.1, 128, 192)
    with pytest.raises(ConfigError, match=r"BITNET_OBS_DEGENERATE_WINDOW='x' is not valid; acc"):
        thresholds_from_env({"BITNET_OBS_DEGENERATE_WINDOW": "x"})
    with pytest.raises(ConfigError, match="BITNET_OBS_DEGENERATE_MIN_TOKENS='0' is not valid"):
        thresholds_from_env({"BITNET_OBS_DEGENERATE_MIN_TOKENS": "0"})
    with pytest.raises(ConfigError, match=r"BITNET_OBS_DEGENERATE_CYCLE_SPAN \(degenerate_cycle"):
        thresholds_from_env({"BITNET_OBS_DEGENERATE_CYCLE_SPAN": "4"})  # not above max period
    with pytest.raises(ConfigError, match="BITNET_OBS_DEGENERATE_REPEAT_RUN"):
        thresholds_from_env({"BITNET_OBS_DEGENERATE_REPEAT_RUN": "1"})
    # every field of the thresholds is one declared setting
    declared = {n for n, _ in _config.rows(_config.Settings) if n.startswith("degenerate_")}
    declared.discard("degenerate_detection")  # the switch, not a threshold
    assert declared == {f"degenerate_{f}" for f in DegenerateThresholds.__dataclass_fields__}


def test_span_attributes_are_content_free() -> None:
    verdict = detect_degenerate([5, 6] * 100)
    attrs = verdict.span_attributes()
    assert attrs == {
        "bitnet.output.repeat_run": 1,
        "bitnet.output.distinct_fraction": 0.01,
        "bitnet.output.cycle_span": 200,
        "bitnet.degenerate.reason": "cycle",
    }
    assert "bitnet.degenerate.reason" not in detect_degenerate(list(range(50))).span_attributes()


# ------------------------------------------------------------------ logits


def _torch_stats(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An independent formula: torch's Categorical entropy and softmax top-2, in float64."""
    t = torch.from_numpy(np.atleast_2d(logits).astype(np.float64))
    entropy = torch.distributions.Categorical(logits=t).entropy()
    top2 = torch.softmax(t, dim=-1).topk(2, dim=-1).values
    return entropy.numpy(), (top2[:, 0] - top2[:, 1]).numpy()


@settings(max_examples=150, deadline=None)
@given(
    steps=st.integers(1, 6),
    vocab=st.integers(2, 300),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    shift=st.sampled_from([0.0, -1e5, 1e6]),
    masked=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
)
def test_logits_stats_match_an_independent_formula(
    steps: int, vocab: int, scale: float, shift: float, masked: float, seed: int, dtype: type
) -> None:
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):
        logits = (rng.standard_normal((steps, vocab)) * scale + shift).astype(dtype)
    if not np.isfinite(logits).all():
        return  # out of float16's range: not a case
    mask = rng.random((steps, vocab)) < masked
    mask[:, 0] = False  # one finite logit per row
    logits[mask] = -np.inf
    stats = logits_stats(logits)
    entropy, margin = _torch_stats(logits)
    np.testing.assert_allclose(stats.entropy, entropy, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.top1_margin, margin, rtol=1e-9, atol=1e-12)
    assert (stats.entropy >= 0).all() and (stats.entropy <= math.log(vocab) + 1e-9).all()
    assert ((stats.top1_margin >= 0) & (stats.top1_margin <= 1)).all()


def test_logits_stats_known_values_and_shapes() -> None:
    uniform = logits_stats(np.zeros(1000))
    assert uniform.entropy.shape == (1,)
    assert uniform.entropy[0] == pytest.approx(math.log(1000), rel=1e-12)
    assert uniform.top1_margin[0] == 0.0
    certain = logits_stats(np.array([[1e4, 0.0, -1e4], [0.0, -np.inf, -np.inf]]))
    np.testing.assert_array_equal(certain.entropy, [0.0, 0.0])
    np.testing.assert_array_equal(certain.top1_margin, [1.0, 1.0])
    big = np.random.default_rng(0).standard_normal((3, 200_000)).astype(np.float32)
    blocked = logits_stats(big)  # spans several blocks
    rows = [logits_stats(row) for row in big]
    np.testing.assert_allclose(blocked.entropy, [r.entropy[0] for r in rows], rtol=1e-12)
    assert logits_stats(torch.zeros(2, 4)).entropy.shape == (2,)  # a tensor, through __array__


@pytest.mark.parametrize(
    ("logits", "match"),
    [
        (np.array([[0.0, np.nan]]), "row 0 has NaN"),
        (np.array([[0.0, 1.0], [np.inf, 0.0]]), "row 1 has NaN, \\+inf"),
        (np.array([-np.inf, -np.inf]), "only -inf"),
        (np.zeros((2, 1)), "vocab >= 2"),
        (np.zeros((2, 2, 2)), "accepted"),
        (np.array(["a", "b"]), "real numbers"),
        (np.zeros((0, 5)), "accepted"),
    ],
)
def test_bad_logits_raise(logits: np.ndarray, match: str) -> None:
    with pytest.raises(OutputInputError, match=match):
        logits_stats(logits)


# ------------------------------------------------------------------ real tokenizers: the claim

TOKENS = Path(__file__).parent / "fixtures" / "tokens"
BITNET_TOKENIZERS = ("llama-bpe", "llama-spm")  # BitNet b1.58 2B4T's, 1bitLLM's
#: Answers repetitive by nature that must stay healthy with >= 1.5x margins (issue 23)
STRUCTURED_HEALTHY = (
    "forty_zeros",
    "markdown_table_template",
    "markdown_table_uniform",
    "box_rule",
    "box_frame",
)


def _real(name: str) -> dict[str, Any]:
    """Ids from real tokenizers rebuilt from llama.cpp's vocabulary files and checked against
    llama.cpp's own test vectors (tests/fixtures/tokens/make_tokens.py says how)."""
    data: dict[str, Any] = json.loads((TOKENS / f"{name}.json").read_text())
    assert data["tokenizer"] == name and data["checked_vectors"] >= 40
    return data


def _margins(verdict: OutputVerdict, th: DegenerateThresholds) -> tuple[float, float, float]:
    return (
        th.repeat_run / max(1, verdict.longest_run),
        th.cycle_span / max(1, verdict.cycle_span),
        verdict.distinct_fraction / th.min_distinct_fraction,
    )


@pytest.mark.parametrize("name", ["llama-bpe", "llama-spm", "gpt-2"])
def test_healthy_texts_are_15x_away_with_real_tokenizers(name: str) -> None:
    data, th = _real(name), output.DEFAULT_THRESHOLDS
    streams = {**data["healthy"], "all": data["healthy_all"]}
    assert len(streams) >= 9
    for text, ids in streams.items():
        verdict = detect_degenerate(ids)
        assert verdict.judged and not verdict.degenerate, (name, text, verdict)
        assert min(_margins(verdict, th)) >= 1.5, (name, text, verdict)


@pytest.mark.parametrize("name", BITNET_TOKENIZERS)
@pytest.mark.parametrize("case", STRUCTURED_HEALTHY)
def test_legit_structured_answers_are_not_degenerate(name: str, case: str) -> None:
    """A list of 40 zeros, an empty Markdown table template, an 80-column box rule or frame,
    as an assistant writes them: healthy, and at least 1.5x from every threshold."""
    ids = _real(name)["structured"][case]
    verdict = detect_degenerate(ids)
    assert not verdict.degenerate, verdict  # judged unless shorter than min_tokens (32)
    assert verdict.judged or len(ids) < output.DEFAULT_THRESHOLDS.min_tokens
    assert verdict == _stream(ids)
    assert min(_margins(verdict, output.DEFAULT_THRESHOLDS)) >= 1.5, verdict


def test_the_structured_figures_the_docs_give() -> None:
    """The worst figures and boundaries of DegenerateThresholds' docstring and the README."""
    bpe, spm, gpt2 = (_real(n)["structured"] for n in ("llama-bpe", "llama-spm", "gpt-2"))
    zeros = {detect_degenerate(t["forty_zeros"]).cycle_span for t in (bpe, spm)}
    assert zeros == {118}  # "0", ",", " " forty times
    assert detect_degenerate(spm["box_rule"]).longest_run == 20  # 80 columns, 4 per token
    assert detect_degenerate(bpe["box_rule"]).longest_run == 10  # 8 per token
    assert detect_degenerate(spm["markdown_table_uniform"]).distinct_fraction == pytest.approx(
        0.069, abs=5e-4
    )
    # the boundaries: past them structure and a loop look the same, and are judged degenerate
    for t in (bpe, spm):
        assert detect_degenerate(t["seventy_zeros"]).reason == "cycle"
        bare = detect_degenerate(t["forty_zeros_bare"])  # no other text: 5 distinct ids
        assert not bare.degenerate and bare.distinct_fraction == pytest.approx(5 / 120)
    rule = detect_degenerate(spm["box_rule_120"])  # healthy, but 30 of 32
    assert not rule.degenerate and rule.longest_run == 30
    frame = detect_degenerate(gpt2["box_frame"])  # GPT-2 has no merged runs of "─"
    assert frame.reason == "repeat_run" and frame.longest_run == 63


@pytest.mark.parametrize("name", ["llama-bpe", "llama-spm", "gpt-2"])
def test_the_failure_shapes_are_caught_with_real_tokenizers(name: str) -> None:
    """The reported collapses, in real token ids: "!!!!", "GGGG" after a healthy start, a
    short cycle after a healthy start."""
    data = _real(name)
    pieces, healthy = data["pieces"], data["healthy"]["melville_moby_dick.txt"][:300]
    bang, g, the = pieces["!"][-1:], pieces["G"][-1:], pieces[" the"]
    assert detect_degenerate(bang * 100).reason == "repeat_run"
    assert detect_degenerate(healthy + g * 40).reason == "repeat_run"
    comma = pieces[", "][:1]
    assert detect_degenerate(healthy + (the + comma) * 120).reason == "cycle"
