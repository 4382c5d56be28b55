"""``bitnet-obs quant-report`` (bitnet_obs._quant_report) on real checkpoints: GGUF written by
the gguf package, safetensors master weights, HF packed weights from transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_obs import quant
from bitnet_obs.cli import main
from bitnet_obs.quant import io
from tests._support import checkpoints as cp

pytest.importorskip("gguf")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
TAMPERED = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    master_path = cp.save_safetensors(d / "master.safetensors", cp.master_weights(3), "bf16")
    with io.open_checkpoint(master_path) as ckpt:  # the converter sees the bf16 values
        master = {t.name: np.array(ckpt.read(t).values) for t in ckpt.weights()}
    return {
        "master": master_path,
        "gguf": cp.convert_to_gguf(d / "model.gguf", master),
        "bad_gguf": cp.convert_to_gguf(d / "bad.gguf", master, tamper={TAMPERED: 0.1}),
        "tq2": cp.convert_to_gguf(d / "tq2.gguf", master, ternary="TQ2_0"),
        "tq1": cp.convert_to_gguf(d / "tq1.gguf", master, ternary="TQ1_0"),
        "arm": cp.convert_to_gguf(d / "arm.gguf", master, layout="arm"),
        "packed": cp.packed_checkpoint(d / "packed", master),
        "bad_packed": cp.packed_checkpoint(d / "bad_packed", master, tamper={TAMPERED: 0.1}),
        "auto": cp.packed_checkpoint(d / "auto", master, linear_class="autobitlinear"),
    }


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    status = main(["quant-report", *args, "--json"])
    return status, json.loads(capsys.readouterr().out)


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in report["tensors"]}


def test_master_weights_one_row_per_projection_with_the_shared_error(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = _json(capsys, str(files["master"]))
    assert status == 0
    rows = _rows(report)
    measured = [r for r in report["tensors"] if r["status"] == "measured"]
    assert len(measured) == 21 and {r["format"] for r in measured} == {"i2_s/tl1/tl2"}
    assert rows["model.embed_tokens.weight"]["status"] == "kept in float"
    assert "embedding" in rows["model.embed_tokens.weight"]["reason"]
    assert rows["model.norm.weight"]["status"] == "kept in float"
    with io.open_checkpoint(files["master"]) as ckpt:
        info = next(t for t in ckpt.tensors if t.name == TAMPERED)
        expected = quant.weight_report(ckpt.read(info).values)  # type: ignore[union-attr]
    row = rows[TAMPERED]
    assert row["cosine"] == expected.accuracy.cosine
    assert row["sqnr_db"] == expected.accuracy.sqnr_db
    assert row["scale"] == expected.scale and row["code_fractions"] == list(expected.code_fractions)
    assert (row["layer"], row["projection"]) == (1, "up")


def test_all_measures_what_bitnet_cpp_keeps_in_float(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, report = _json(capsys, str(files["master"]), "--all")
    rows = _rows(report)
    assert rows["model.embed_tokens.weight"]["status"] == "measured"
    assert rows["model.norm.weight"]["status"] == "kept in float"  # 1-D: not a linear weight


def test_gguf_i2s_rows_show_the_stored_format(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quant-report", str(files["gguf"])]) == 0
    out = capsys.readouterr().out
    assert "blk.1.ffn_up.weight" in out and "i2_s" in out
    assert "token_embd.weight" in out and "kept in float (8)" in out
    assert "--reference MASTER" in out


@pytest.mark.parametrize("kind", ["gguf", "tq2", "tq1", "packed", "auto"])
def test_a_faithful_conversion_exits_0(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    status, report = _json(capsys, str(files[kind]), "--reference", str(files["master"]))
    assert status == 0, report["summary"]
    compared = [r for r in report["tensors"] if r["code_mismatch"] is not None]
    assert len(compared) == 21
    assert all(r["code_mismatch"] == 0 and r["faithful"] for r in compared)
    assert report["summary"]["faithful"] is True
    assert report["reference"]["missing_in_file"] == []
    scale_tolerance = {"gguf": 1e-6, "tq2": 2**-11, "tq1": 2**-11}.get(kind, 2**-8)
    assert all(r["scale_rel_diff"] <= scale_tolerance for r in compared)
    assert all(0.88 < r["cosine"] < 0.89 for r in compared)


@pytest.mark.parametrize("kind", ["bad_gguf", "bad_packed"])
def test_codes_flipped_in_10_percent_of_one_tensor_exit_3_naming_it(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    status = main(["quant-report", str(files[kind]), "--reference", str(files["master"])])
    out = capsys.readouterr().out
    assert status == 3
    name = "blk.1.ffn_up.weight" if kind == "bad_gguf" else TAMPERED
    assert "NOT FAITHFUL: 1 tensor" in out and f"  {name}\n" in out
    status, report = _json(capsys, str(files[kind]), "--reference", str(files["master"]))
    assert status == 3 and report["summary"]["unfaithful"] == [name]
    assert _rows(report)[name]["code_mismatch"] == pytest.approx(0.1, abs=1e-4)
    allowed = main(
        [
            "quant-report",
            str(files[kind]),
            "--reference",
            str(files["master"]),
            "--max-code-mismatch",
            "0.2",
        ]
    )
    assert allowed == 0


def test_drift_matches_an_independent_accuracy_of_the_dequantized_weights(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, report = _json(capsys, str(files["bad_gguf"]), "--reference", str(files["master"]))
    row = _rows(report)["blk.1.ffn_up.weight"]
    with io.open_checkpoint(files["bad_gguf"]) as g, io.open_checkpoint(files["master"]) as m:
        t = g.read(next(i for i in g.tensors if i.name == "blk.1.ffn_up.weight"))
        w = m.read(next(i for i in m.tensors if i.name == TAMPERED))
    assert isinstance(t, io.TernaryTensor) and isinstance(w, io.FloatTensor)
    expected = quant.accuracy(w.values.astype(np.float64), t.codes * np.float64(t.scale))
    assert row["cosine"] == pytest.approx(expected.cosine, rel=1e-12)
    assert row["sqnr_db"] == pytest.approx(expected.sqnr_db, rel=1e-10)
    assert row["rel_l2"] == pytest.approx(expected.rel_l2, rel=1e-10)


def test_the_arm_layout_needs_layout_arm(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ref = ["--reference", str(files["master"])]
    assert main(["quant-report", str(files["arm"]), *ref, "--layout", "arm"]) == 0
    assert main(["quant-report", str(files["arm"]), *ref]) == 3
    capsys.readouterr()


def test_projections_missing_on_either_side_exit_3(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with io.open_checkpoint(files["master"]) as ckpt:
        master = {t.name: np.array(ckpt.read(t).values) for t in ckpt.weights()}
    del master["model.layers.2.self_attn.v_proj.weight"]
    partial = cp.convert_to_gguf(tmp_path / "partial.gguf", master)
    status, report = _json(capsys, str(partial), "--reference", str(files["master"]))
    assert status == 3
    assert report["reference"]["missing_in_file"] == ["model.layers.2.self_attn.v_proj.weight"]


def test_json_schema_is_stable(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    keys = {
        "name", "shape", "dtype", "format", "status", "reason", "layer", "projection", "scale",
        "code_fractions", "cosine", "sqnr_db", "rel_l2", "mse", "max_abs_error", "kernel_notes",
        "kernel_overflow_rows",
        "reference_name", "code_mismatch", "scale_rel_diff", "faithful",
    }  # fmt: skip
    for args in ([str(files["master"])], [str(files["gguf"]), "--reference", str(files["master"])]):
        _, report = _json(capsys, *args)
        assert set(report) == {
            "schema_version", "file", "format", "layout", "notes", "reference", "tensors", "summary"
        }  # fmt: skip
        assert report["schema_version"] == 1
        assert all(set(t) == keys for t in report["tensors"])
        assert set(report["summary"]) >= {"measured", "kept_in_float", "skipped", "exit_status"}


def test_master_weights_in_npz_and_names_that_are_not_projections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "m.npz"
    np.savez(path, **{"w1": rng.standard_normal((8, 33)).astype(np.float32), "ids": np.arange(3)})
    assert main(["quant-report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 tensors measured" in out and "--all measures every 2-D tensor" in out
    assert "ids  3 int64: dtype int64 is not float" in out
    assert main(["quant-report", str(path), "--all"]) == 0
    out = capsys.readouterr().out
    assert "1 tensor measured" in out and "K=33 is not a multiple of 128" in out
    assert "TL1 cannot tile K=33" in out


def test_control_characters_in_names_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, **{"evil\x1b[2J\rname.q_proj.weight": np.ones((4, 128), np.float32)})
    assert main(["quant-report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert "evil\\x1b[2J\\x0dname.q_proj.weight" in out
    _, report = _json(capsys, str(path))
    assert report["tensors"][0]["name"] == "evil\x1b[2J\rname.q_proj.weight"


def _cli(
    *args: str, env_extra: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "bitnet_obs", "quant-report", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


def test_an_npz_header_declaring_a_huge_array_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from tests.quant.io.test_npz import _npz_with_header

    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 100000000), }"
    path = _npz_with_header(tmp_path / "x.npz", header, b"\x00" * 64, 0)
    proc = _cli(str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "declares float32 (100000000, 100000000)" in proc.stderr


def test_a_fifo_named_like_a_checkpoint_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "x.npz"
    os.mkfifo(fifo)
    proc = _cli(str(fifo))  # would block forever before; the timeout fails the test instead
    assert proc.returncode == 2 and "is a FIFO" in proc.stderr and "Traceback" not in proc.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.npz"
    np.savez(
        path, **{f"layers.{i}.q_proj.weight": np.ones((1, 128), np.float32) for i in range(1500)}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitnet_obs", "quant-report", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception" not in err


def test_tl1_without_kernel_config_is_a_clear_exit_2(tmp_path: Path) -> None:
    import struct

    path = cp.write_gguf(tmp_path / "m.gguf", {"blk.0.attn_q.weight": ("F32", np.ones((4, 128)))})
    data = bytearray(path.read_bytes())
    at = data.index(b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight") + 4 + 16
    struct.pack_into("<I", data, at, 38)
    path.write_bytes(bytes(data))
    proc = _cli(str(path))
    assert proc.returncode == 2
    assert "--kernel-config" in proc.stdout and "could not be read" in proc.stderr


def test_bad_arguments_are_exit_2(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (
        ["--max-code-mismatch", "nan"],
        ["--max-code-mismatch", "2"],
        ["--layout", "riscv"],
    ):
        assert main(["quant-report", str(files["gguf"]), *args]) == 2  # returned, not raised
        (line,) = capsys.readouterr().err.splitlines()  # one line, no usage block
        assert line.startswith("bitnet-obs quant-report: error: argument ")
    assert (
        main(["quant-report", str(files["gguf"]), "--reference", "/nonexistent.safetensors"]) == 2
    )
    assert "no such file" in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal() -> None:
    import io as stdio

    from bitnet_obs._quant_report._progress import progress_bar

    class Tty(stdio.StringIO):
        def isatty(self) -> bool:
            return True

    with progress_bar(100, stdio.StringIO()) as advance:
        assert advance is None
    tty = Tty()
    with progress_bar(100, tty) as advance:
        assert advance is not None
        advance(100)
    assert "/100" in tty.getvalue() and "param" in tty.getvalue()


def test_html_is_self_contained(files: dict[str, Path], tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    main(
        [
            "quant-report",
            str(files["bad_gguf"]),
            "--reference",
            str(files["master"]),
            "--html",
            str(page),
        ]
    )
    text = page.read_text()
    assert text.count("<svg") >= 4 and "<script" not in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    assert "blk.1.ffn_up.weight: 9.99" in text


@pytest.mark.parametrize("fmt", ["TL1", "TL2"])
def test_tl_files_with_their_kernel_config(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    ini = cp.kernel_config_ini(tmp_path / "kernel_config.ini", fmt)
    table = quant.read_kernel_config(ini)
    with io.open_checkpoint(files["master"]) as ckpt:
        master = {t.name: np.array(ckpt.read(t).values) for t in ckpt.weights()}
    path = cp.convert_to_gguf(tmp_path / "tl.gguf", master, ternary=fmt, kernel_config=table)
    ref = ["--reference", str(files["master"])]
    status, report = _json(capsys, str(path), *ref, "--kernel-config", str(ini))
    assert status == 0, report["summary"]
    compared = [t for t in report["tensors"] if t["code_mismatch"] is not None]
    assert len(compared) == 21 and {t["format"] for t in compared} == {fmt.lower()}
    assert all(t["code_mismatch"] == 0 and t["scale_rel_diff"] == 0 for t in compared)
    assert not any(t["name"].endswith("_scale") for t in report["tensors"])
    assert main(["quant-report", str(path), *ref]) == 2  # no kernel configuration: say why
    assert "--kernel-config" in capsys.readouterr().out


def test_rows_where_the_avx2_kernel_wraps_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    codes = np.full((8, 4096), -1, np.int8)  # stored as 0: nothing to add up
    codes[:3] = 1  # stored as 2: 256 * 2 * 127 per lane wraps the int16 lanes
    path = cp.write_gguf(
        tmp_path / "m.gguf", {"blk.0.ffn_down.weight": ("I2_S", (codes, 0.5, "x86"))}
    )
    status, report = _json(capsys, str(path))
    (row,) = report["tensors"]
    assert status == 0 and row["kernel_overflow_rows"] == 3
    assert report["summary"]["kernel_overflow_rows"] == [3, 8]
    main(["quant-report", str(path)])
    assert "wraps the int16 lanes of 3 of 8 rows" in capsys.readouterr().out
    q = np.full((1, 4096), 127, np.int8)
    assert quant.kernel_overflows(q, codes)[0].tolist() == [True] * 3 + [False] * 5


def test_export_sends_the_figures_as_metrics(files: dict[str, Path]) -> None:
    proc = _cli(
        str(files["master"]),
        "--export",
        env_extra={"OTEL_METRICS_EXPORTER": "console", "OTEL_TRACES_EXPORTER": "none"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"name": "bitnet.quant.accuracy"' in proc.stdout
    assert '"bitnet.tensor": "model.layers.1.mlp.up_proj.weight"' in proc.stdout


# ------------------------------------------------------------------ hostile files, round two

_I2S, _TQ2, _F32 = 36, 35, 0


def _tq2_block(scale: bytes) -> bytes:
    return bytes([0xAA]) * 64 + scale  # every code +1, then the float16 scale


def _report(
    capsys: pytest.CaptureFixture[str], path: Path, tmp_path: Path, *extra: str
) -> tuple[int, str, str, dict[str, Any] | None, str]:
    """Table, JSON (strict: NaN/Infinity fail) and HTML of one file: status, out, err, json,
    html.  The three runs must agree on the exit status."""
    html = tmp_path / "r.html"
    status = main(["quant-report", str(path), *extra, "--html", str(html)])
    captured = capsys.readouterr()
    json_status = main(["quant-report", str(path), *extra, "--json"])
    text = capsys.readouterr().out
    report = (
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in --json")) if text else None
    )
    assert json_status == status
    page = html.read_text() if html.exists() else ""
    return status, captured.out, captured.err, report, page


def _clean(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and "internal error" not in text
        assert not any(ch in text for ch in "\x1b\x07\r\x9b"), "raw control characters"


def test_zero_size_and_1d_ternary_tensors_have_a_defined_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    i2s_row = quant.pack_i2s(np.ones((1, 128), np.int8), 0.5)
    path = cp.raw_gguf(
        tmp_path / "odd.gguf",
        [
            ("blk.0.attn_q.weight", (0, 128), _I2S, bytes(32)),  # zero-size I2_S
            ("blk.0.attn_k.weight", (0, 256), _TQ2, b""),  # zero-size TQ2_0
            ("blk.0.attn_v.weight", (128,), _I2S, i2s_row),  # 1-D, named like a projection
            ("blk.0.ffn_up.weight", (256,), _TQ2, _tq2_block(np.float16(0.25).tobytes())),
        ],
    )
    status, out, err, report, page = _report(capsys, path, tmp_path)
    assert status == 0, err
    _clean(out, err, page)
    assert report is not None
    rows = _rows(report)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
        assert rows[name]["status"] == "skipped" and rows[name]["reason"].startswith("empty")
    v, up = rows["blk.0.attn_v.weight"], rows["blk.0.ffn_up.weight"]
    assert v["status"] == up["status"] == "measured"
    assert v["scale"] == 0.5 and v["code_fractions"] == [0.0, 0.0, 1.0]
    assert up["scale"] == 0.25 and up["code_fractions"] == [0.0, 0.0, 1.0]
    assert "1-D: not an (M, K) linear weight" in v["kernel_notes"][-1]
    assert v["kernel_overflow_rows"] is None


def test_packed_weights_with_zero_rows_have_a_defined_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.safetensors"
    header = {
        "l.q_proj.weight": {"dtype": "U8", "shape": [0, 256], "data_offsets": [0, 0]},
        "l.q_proj.weight_scale": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + np.float32(2).tobytes())
    status, _, err, report, _ = _report(capsys, path, tmp_path)
    assert status == 0, err
    assert report is not None
    assert _rows(report)["l.q_proj.weight"]["reason"] == "empty (shape 0x256): no values"


@pytest.mark.parametrize("scale", [np.inf, -np.inf, np.nan, -1.0])
def test_non_finite_tq_block_scales_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scale: float
) -> None:
    good = _tq2_block(np.float16(0.5).tobytes())
    path = cp.raw_gguf(
        tmp_path / "tq.gguf",
        [("blk.0.attn_q.weight", (2, 256), _TQ2, good + _tq2_block(np.float16(scale).tobytes()))],
    )
    status, out, err, report, page = _report(capsys, path, tmp_path)
    assert status == 2, err  # refused (as I2_S and Q8_0 refuse theirs), never "measured"
    _clean(out, err, page)
    assert report is not None
    row = _rows(report)["blk.0.attn_q.weight"]
    assert row["status"] == "skipped" and "block 1 has scale" in row["reason"]


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [((1 << 63, 0), "declares a dimension of 9223372036854775808"),
     ((0, (1 << 64) - 1), "declares a dimension of 18446744073709551615")],
)  # fmt: skip
def test_a_huge_dimension_of_an_empty_tensor_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: tuple[int, int], fragment: str
) -> None:
    gguf_path = cp.raw_gguf(tmp_path / "dims.gguf", [("blk.0.attn_q.weight", shape, _F32, b"")])
    st = tmp_path / "dims.safetensors"
    text = json.dumps({"w": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 0]}})
    st.write_bytes(len(text).to_bytes(8, "little") + text.encode())
    from tests.quant.io.test_npz import _npz_with_header

    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
    npz = _npz_with_header(tmp_path / "dims.npz", header, b"", 0)
    for path in (gguf_path, st, npz):
        assert main(["quant-report", str(path)]) == 2, path
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert fragment in line and captured.out == ""


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}},
         "unknown dtype ['F32']"),
        ({"w": {"dtype": {"x": 1}, "shape": [1], "data_offsets": [0, 4]}}, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]}},
         "is not a list of ints"),
    ],
)  # fmt: skip
def test_hostile_safetensors_headers_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: dict[str, Any], fragment: str
) -> None:
    path = tmp_path / "x.safetensors"
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(4))
    assert main(["quant-report", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert fragment in line


def test_deeply_nested_headers_and_nul_shard_names_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "deep.safetensors"
    text = b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep.write_bytes(len(text).to_bytes(8, "little") + text)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "a\x00b.safetensors"}}))
    config_dir = tmp_path / "packed"
    config_dir.mkdir()
    (config_dir / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    header = {
        "l.q_proj.weight": {"dtype": "U8", "shape": [1, 128], "data_offsets": [0, 128]},
        "l.q_proj.weight_scale": {"dtype": "F32", "shape": [1], "data_offsets": [128, 132]},
    }
    raw = json.dumps(header).encode()
    (config_dir / "model.safetensors").write_bytes(
        len(raw).to_bytes(8, "little") + raw + bytes([0x55]) * 128 + np.float32(2).tobytes()
    )
    for path, fragment in (
        (deep, "nests arrays/objects deeper than 4 levels"),
        (index, r"maps to 'a\x00b.safetensors'; accepted: a file name"),
        (config_dir, "config.json nests arrays/objects deeper than 64 levels"),
    ):
        assert main(["quant-report", str(path)]) == 2, path
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert fragment in line and "Recursion" not in line


def test_a_projection_of_an_unknown_type_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cp.raw_gguf(
        tmp_path / "u.gguf",
        [("blk.0.attn_q.weight", (4, 256), 99, b""), ("token_embd.weight", (4, 8), 99, b"")],
    )
    status, _, err, report, _ = _report(capsys, path, tmp_path)
    assert status == 2 and "could not be read" in err
    assert report is not None and report["summary"]["exit_status"] == 2
    rows = _rows(report)
    assert rows["blk.0.attn_q.weight"]["reason"] == "unknown GGUF type id 99"
    assert rows["token_embd.weight"]["status"] == "skipped"  # not measured anyway: listed only


def test_metadata_and_names_never_reach_the_terminal_or_page_raw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = "bitnet\x1b]0;owned\x07\x1b[2J\r\x9b31m"
    path = cp.raw_gguf(
        tmp_path / "e.gguf",
        [(f"blk.0.attn_q.weight\x1b[1A{evil}", (4, 128), _F32, np.ones(512, "<f4").tobytes())],
        metadata={"general.architecture": evil, "general.name": evil},
    )
    status, out, err, report, page = _report(capsys, path, tmp_path, "--all")
    assert status == 0, err
    _clean(out, err, page)
    assert "architecture bitnet\\x1b]0;owned\\x07\\x1b[2J\\x0d\\x9b31m" in out
    assert report is not None and report["notes"][0] == f"architecture {evil}"


def test_layer_numbers_of_hundreds_of_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    names = [f"blk.{'9' * 400}.attn_q.weight", f"model.layers.{'7' * 5000}.mlp.up_proj.weight"]
    path = tmp_path / "big.npz"
    np.savez(path, **{n: rng.standard_normal((4, 128)).astype(np.float32) for n in names})
    status, out, err, report, page = _report(capsys, path, tmp_path)
    assert status == 0, err
    _clean(out, err, page)
    assert report is not None
    assert [t["layer"] for t in report["tensors"]] == [None, None]
    assert io.role(f"blk.{'9' * 6}.attn_q.weight").layer == 999_999


def test_a_master_named_with_layer_1000000_allocates_nothing(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """--reference maps names with the gguf package's per-block table: its size must not follow
    a layer number a file chose (the docs: hostile headers are refused before allocation).  Run
    under a 1 GiB address-space limit: building the table for a million layers would not fit."""
    master = cp.save_safetensors(
        tmp_path / "m.safetensors",
        {"model.layers.1000000.self_attn.q_proj.weight": np.ones((4, 128), np.float32),
         "model.layers.999999.self_attn.q_proj.weight": np.ones((4, 128), np.float32)},
    )  # fmt: skip
    assert io.gguf_names_for(["model.layers.999999.self_attn.q_proj.weight"]) == {
        "model.layers.999999.self_attn.q_proj.weight": "blk.999999.attn_q.weight"
    }
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30));"
        "from bitnet_obs.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "quant-report", str(files["gguf"]), "--reference",
         str(master), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr  # the model's projections are missing: unfaithful
    report = json.loads(proc.stdout)
    assert len(report["reference"]["missing_in_file"]) == 2


def test_export_settings_that_cannot_be_used_are_one_line_and_exit_2(
    files: dict[str, Path],
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for env, fragment in (
            ({"OTEL_METRICS_EXPORTER": "bogus"}, "OTEL_METRICS_EXPORTER="),
            ({"OTEL_EXPORTER_PROMETHEUS_PORT": port}, port),
        ):
            proc = _cli(str(files["gguf"]), "--export", env_extra=env)
            assert proc.returncode == 2, proc.stderr
            (line,) = proc.stderr.splitlines()
            assert line.startswith("bitnet-obs quant-report: ") and fragment in line
            assert proc.stdout == ""  # refused before any work
