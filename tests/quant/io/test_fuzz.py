"""Corrupted checkpoints: any bytes changed or any cut give a ReadError (or read), never another
exception, a hang or a huge allocation."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import numpy as np
import pytest

from bitnet_obs import quant
from bitnet_obs.quant import io
from tests._support import checkpoints as cp

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("orig")
    rng = np.random.default_rng(0)
    codes, scale = quant.quantize_weights(rng.standard_normal((8, 256), dtype=np.float32))
    w = rng.standard_normal((4, 256), dtype=np.float32)
    gguf_path = cp.write_gguf(
        d / "m.gguf",
        {
            "blk.0.attn_q.weight": ("I2_S", (codes, scale, "x86")),
            "blk.0.ffn_up.weight": ("TQ2_0", codes.astype(np.float32) * np.float32(scale)),
            "n": ("F32", w[0]),
            "e": ("BF16", w),
        },
    )
    st_path = cp.save_safetensors(d / "m.safetensors", {"a.q_proj.weight": w, "b": w[0]})
    np.savez(d / "m.npz", w=w, v=w[0])
    np.savez_compressed(d / "c.npz", w=w)
    return {
        "m.gguf": gguf_path.read_bytes(),
        "m.safetensors": st_path.read_bytes(),
        "m.npz": (d / "m.npz").read_bytes(),
        "c.npz": (d / "c.npz").read_bytes(),
    }


def test_corruption_is_a_read_error(originals: dict[str, bytes], tmp_path: Path) -> None:
    rng = random.Random(0)
    outcomes: dict[str, int] = {}
    for _ in range(2000):
        name = rng.choice(sorted(originals))
        data = bytearray(originals[name])
        for _ in range(rng.randint(1, 4)):  # an offset in the header half the time
            at = rng.randint(0, 700) if rng.random() < 0.5 else rng.randrange(len(data))
            data[min(at, len(data) - 1)] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        path = tmp_path / name
        path.write_bytes(bytes(data))
        outcome = "refused"
        with contextlib.suppress(io.ReadError), io.open_checkpoint(path) as ckpt:
            outcome = "read"
            for info in ckpt.weights():
                with contextlib.suppress(io.ReadError):
                    ckpt.read(info)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes["refused"] > 200 and outcomes["read"] > 200  # both paths exercised
