"""Quantization accuracy of a model's weights: each 2-D tensor as I2_S, TL1 and TL2 vs FP32.

    python examples/weight_accuracy.py               # a random model with BitNet-like shapes
    python examples/weight_accuracy.py model.npz     # your checkpoint (.npz, or .safetensors
                                                     # with the [safetensors] extra)

Each tensor is recorded once, at load, as ``bitnet.quant.accuracy`` / ``sqnr`` /
``relative_error`` with ``bitnet.quant.kind="weight"`` and ``reference="fp32"``: the
dashboard's Quantization row, and the BitNetQuantAccuracyBelowBaseline alert, which compares
the mean with a baseline (0.85 in bitnet-recording.yml). ``bitnet-obs quant-report`` prints
the same figures without exporting them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import bitnet_obs
from bitnet_obs import quant

BASELINE = 0.85  # keep in step with bitnet:quant_accuracy_fp32:baseline


def load(path: Path | None) -> dict[str, np.ndarray]:
    if path is None:  # BitNet b1.58 2B's layer shapes, divided by 10
        rng = np.random.default_rng(0)
        shapes = {"q_proj": (256, 256), "k_proj": (64, 256), "v_proj": (64, 256),
                  "o_proj": (256, 256), "gate_proj": (688, 256), "up_proj": (688, 256),
                  "down_proj": (256, 688)}  # fmt: skip
        return {
            f"layers.{i}.{name}.weight": (0.02 * rng.standard_normal(shape)).astype(np.float32)
            for i in range(2)
            for name, shape in shapes.items()
        }
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def main() -> None:
    bitnet_obs.configure()
    weights = load(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"{'tensor':32} {'shape':>12} {'formats':14} {'cosine':>7} {'SQNR dB':>8}")
    for name, w in weights.items():
        if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
            continue  # embeddings' ids, norms, biases: not ternary
        by_format = quant.record_weight_quantization(name, w)
        if not by_format:
            continue
        acc = next(iter(by_format.values()))  # the formats share the ternary values
        flag = "  <- below baseline" if acc.cosine < BASELINE else ""
        shape = "x".join(map(str, w.shape))
        formats = ",".join(by_format)
        print(f"{name:32} {shape:>12} {formats:14} {acc.cosine:7.4f} {acc.sqnr_db:8.2f}{flag}")
    bitnet_obs.shutdown()


if __name__ == "__main__":
    main()
