"""``bitnet-obs quant-report`` against hostile files, the way a second hostile round tries them:
random headers (hypothesis) and corrupted real checkpoints, through the whole command (readers,
analysis, table, strict JSON, HTML).  Every file ends as the exit table says -- 0, or 2 with one
line on stderr -- never 1 (a bug of ours), never a traceback, a hang or a huge allocation, and
no file-derived byte reaches the terminal or the page unescaped.
``FUZZ_EXAMPLES=3000 pytest tests/test_quant_report_fuzz.py`` hunts harder."""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnet_obs import quant
from bitnet_obs.cli import main
from tests._support import checkpoints as cp

pytest.importorskip("gguf")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=20),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
RAW = ("\x1b", "\x07", "\r", "\x9b", "\x00")


def _run(path: Path, tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> int:
    """The command three ways; the same status each time, every output clean."""
    html = tmp / "fuzz.html"
    html.unlink(missing_ok=True)
    status = main(["quant-report", str(path), *extra, "--html", str(html)])
    text = capsys.readouterr()
    assert main(["quant-report", str(path), *extra, "--json"]) == status
    js = capsys.readouterr()
    assert status in ((0, 2, 3) if "--reference" in extra else (0, 2)), (status, text.err)
    for out in (text.out, text.err, js.err, html.read_text() if html.exists() else ""):
        assert "Traceback" not in out and "internal error" not in out, out[-2000:]
        assert not any(ch in out for ch in RAW), "a raw control character reached the output"
    if status == 2 and not text.out:  # refused at open: one line, nothing else
        assert len(text.err.splitlines()) == 1 and js.out == ""
    else:
        report = json.loads(js.out, parse_constant=lambda c: pytest.fail(f"{c} in --json"))
        assert report["summary"]["exit_status"] == status
    return status


_DIMS = st.one_of(
    st.integers(0, 300),
    st.sampled_from([0, 1, 32, 128, 256, 2**31, 2**32, 2**40, 2**40 + 1, 2**63, 2**64 - 1]),
)
_TYPES = st.sampled_from([0, 1, 8, 24, 26, 30, 34, 35, 36, 37, 38, 39, 12, 99, 2**31])
_NAMES = st.one_of(
    st.sampled_from(
        ["blk.0.attn_q.weight", "blk.1.ffn_down.weight", "token_embd.weight", "output_norm.weight",
         "blk.0.attn_q.weight_scale", f"blk.{'9' * 300}.attn_k.weight"]
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=24),
)  # fmt: skip


@st.composite
def _tensors(draw: Any) -> list[cp.RawTensor]:
    out: list[cp.RawTensor] = []
    names: set[str] = set()
    for _ in range(draw(st.integers(1, 4))):
        name = draw(_NAMES.filter(lambda n: n not in names))
        names.add(name)
        shape = tuple(draw(st.lists(_DIMS, min_size=1, max_size=4)))
        data = draw(st.binary(max_size=600)) if draw(st.booleans()) else bytes(draw(
            st.sampled_from([0, 32, 66, 132, 288, 1024, 4096])))  # fmt: skip
        out.append((name, shape, draw(_TYPES), data))
    return out


@given(
    tensors=_tensors(),
    arch=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=16),
    measure_all=st.booleans(),
)
@FUZZ
def test_random_gguf_headers(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tensors: list[cp.RawTensor],
    arch: str,
    measure_all: bool,
) -> None:
    path = cp.raw_gguf(tmp_path / "f.gguf", tensors, {"general.architecture": arch})
    _run(path, tmp_path, capsys, *(["--all"] if measure_all else []))


@st.composite
def _safetensors_header(draw: Any) -> dict[str, Any]:
    values = st.recursive(
        st.one_of(st.integers(-3, 2**65), st.text(max_size=8), st.none(), st.floats()),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                     max_size=3),
        max_leaves=8,
    )  # fmt: skip
    header: dict[str, Any] = {}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(_NAMES)
        header[name] = {
            "dtype": draw(st.one_of(st.sampled_from(["F32", "BF16", "U8", "I8", "F16"]), values)),
            "shape": draw(st.one_of(st.lists(_DIMS, max_size=3), values)),
            "data_offsets": draw(st.one_of(st.lists(st.integers(-2, 5000), max_size=3), values)),
        }
    return header


@given(header=_safetensors_header(), data=st.binary(max_size=512))
@FUZZ
def test_random_safetensors_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: dict[str, Any], data: bytes
) -> None:
    text = json.dumps(header).encode()
    path = tmp_path / "f.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    _run(path, tmp_path, capsys)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("orig")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256), dtype=np.float32)
    codes, scale = quant.quantize_weights(w)
    paths = [
        cp.write_gguf(
            d / "m.gguf",
            {
                "blk.0.attn_q.weight": ("I2_S", (codes, scale, "x86")),
                "blk.0.ffn_up.weight": ("TQ2_0", codes.astype(np.float32) * np.float32(scale)),
                "blk.0.ffn_down.weight": ("TQ1_0", codes.astype(np.float32) * np.float32(scale)),
                "blk.0.attn_k.weight": ("Q8_0", w),
                "output_norm.weight": ("F32", w[0]),
            },
        ),
        cp.save_safetensors(d / "m.safetensors", {"a.q_proj.weight": w, "b": w[0]}, "bf16"),
        cp.save_safetensors(
            d / "master.safetensors",
            {
                "model.layers.0.self_attn.q_proj.weight": w,
                "model.layers.0.mlp.up_proj.weight": w,
                "model.layers.0.mlp.down_proj.weight": w,
                "model.norm.weight": w[0],
            },
        ),
    ]
    np.savez(d / "m.npz", **{"l.0.q_proj.weight": w, "v": w[0]})
    np.savez_compressed(d / "c.npz", **{"l.0.up_proj.weight": w})
    paths += [d / "m.npz", d / "c.npz"]
    return {p.name: p.read_bytes() for p in paths}


def test_corrupted_checkpoints_through_the_whole_report(
    originals: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(23)
    statuses: dict[int, int] = {}
    for _ in range(max(60, EXAMPLES)):
        name = rng.choice(sorted(originals))
        data = bytearray(originals[name])
        for _ in range(rng.randint(1, 6)):  # the header half the time: where the counts are
            at = rng.randint(0, 900) if rng.random() < 0.5 else rng.randrange(len(data))
            data[min(at, len(data) - 1)] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        if rng.random() < 0.2:
            data = data[: rng.randrange(1, len(data))]
        path = tmp_path / name
        path.write_bytes(bytes(data))
        status = _run(path, tmp_path, capsys)
        statuses[status] = statuses.get(status, 0) + 1
        if name in ("m.gguf", "master.safetensors"):  # the comparison, either side corrupted
            other = "master.safetensors" if name == "m.gguf" else "m.gguf"
            pristine = tmp_path / f"pristine-{other}"
            pristine.write_bytes(originals[other])
            pair = (path, pristine) if name == "m.gguf" else (pristine, path)
            status = _run(pair[0], tmp_path, capsys, "--reference", str(pair[1]))
            statuses[status] = statuses.get(status, 0) + 1
    assert statuses.get(0, 0) > 5 and statuses.get(2, 0) > 5, statuses  # both paths exercised
