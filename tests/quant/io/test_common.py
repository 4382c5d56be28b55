"""What every reader shares (bitnet_obs.quant.io._common and the package's helpers)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bitnet_obs.quant import io
from bitnet_obs.quant.io._common import bf16_to_f32


def test_printable_escapes_control_characters_and_backslashes() -> None:
    assert io.printable("layers.0.q_proj.weight") == "layers.0.q_proj.weight"
    assert io.printable("a\x1b[2Jb\nc\\d") == "a\\x1b[2Jb\\x0ac\\\\d"
    assert io.printable("w\u200b\u00e9") == "w\\u200bé"


@given(st.text())
def test_printable_output_is_always_printable(text: str) -> None:
    assert io.printable(text).isprintable()


def test_bf16_widening_is_exact() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(4096).to(torch.bfloat16)
    x[:4] = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0])
    raw = x.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_to_f32(raw), x.float().numpy())


@pytest.mark.parametrize("suffix", [".npz", ".gguf", ".safetensors"])
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, suffix: str) -> None:
    fifo = tmp_path / f"x{suffix}"
    os.mkfifo(fifo)
    result: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(result, fifo), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "opening a FIFO blocked"
    assert isinstance(result[0], io.ReadError) and "is a FIFO" in str(result[0])


def _catch(out: list[BaseException], path: Path) -> None:
    try:
        io.open_checkpoint(path)
    except BaseException as exc:
        out.append(exc)


def test_empty_missing_and_unknown_files(tmp_path: Path) -> None:
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(io.ReadError, match="empty"):
        io.open_checkpoint(tmp_path / "e.npz")
    with pytest.raises(io.ReadError, match="no such file"):
        io.open_checkpoint(tmp_path / "missing.gguf")
    (tmp_path / "x.pt").write_bytes(b"x")
    with pytest.raises(io.ReadError, match=r"accepted: \.gguf, \.safetensors"):
        io.open_checkpoint(tmp_path / "x.pt")
    with pytest.raises(io.ReadError, match="unknown I2_S layout"):
        io.open_checkpoint(tmp_path / "x.pt", layout="riscv")


def test_summary_and_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(
        path, a=np.ones((2, 2), np.float32), b=np.ones(3, np.float16), c=np.ones(1, np.float16)
    )
    summary = io.summarize(path)
    assert summary == io.FileSummary("npz", {"float16": 2, "float32": 1}, path.stat().st_size)
    assert io.content_hash(path, chunk=7) == hashlib.sha256(path.read_bytes()).hexdigest()
