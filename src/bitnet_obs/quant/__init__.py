"""Pure-numpy model of bitnet.cpp's ternary weight formats (I2_S, TL1, TL2) and their accuracy.

Two different questions, never to be confused:

* **quantization error** -- how far the quantized model is from FP32 (``weight_report``,
  ``accuracy(x @ W.T, matmul(x, codes, s))``); large by nature for ternary weights;
* **kernel fidelity** -- whether a format's kernel reproduces the quantized reference
  (``kernel_dot(q, codes, f) == integer_dot(q, codes)``); exact, so any drift is a bug.

>>> import numpy as np
>>> w = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
>>> rep = weight_report(w, "i2_s")
>>> round(rep.accuracy.cosine, 2)
0.89
>>> codes, s = quantize_weights(w)  # bitnet.cpp's converter to the bit; s is the stored scale
>>> data = pack_i2s(codes, s)
>>> (unpack_i2s(data, codes.shape)[0] == codes).all()
np.True_

TL1/TL2 bytes follow the converter's tiling for a ``kernel_config.ini`` entry
(:func:`read_kernel_config`, :func:`pack_tl2` / :func:`unpack_tl2`), and ``kernel="avx2"``
reproduces the 16-bit wrap of bitnet.cpp's x86 I2_S kernel (:func:`kernel_overflows`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._formats import (
    I2S_BLOCK,
    I2S_TAIL_BYTES,
    code_fractions,
    pack_i2s,
    quantize_activations,
    quantize_weights,
    unpack_i2s,
)
from ._kernels import (
    KERNELS,
    Kernel,
    MatmulReport,
    integer_dot,
    kernel_dot,
    kernel_overflows,
    matmul,
    matmul_report,
)
from ._lut import TL2_DEFAULT_BK, Tl2Packed, decode_tl1, decode_tl2, encode_tl1, encode_tl2
from ._stats import (
    Accuracy,
    LogitsAgreement,
    WeightReport,
    accuracy,
    logits_agreement,
    weight_report,
)
from ._tiled import (
    KernelConfig,
    pack_tl1,
    pack_tl2,
    packed_nbytes,
    read_kernel_config,
    unpack_tl1,
    unpack_tl2,
)
from ._validate import FORMATS, LAYOUTS, Format, Layout, QuantInputError

if TYPE_CHECKING:
    from ._record import (
        admit_runtime_sample,
        compare_outputs,
        record_activation_quantization,
        record_weight_quantization,
    )

# Recording needs OpenTelemetry: loaded on first use, so the math stays numpy only.
_RECORDING = (
    "admit_runtime_sample",
    "compare_outputs",
    "record_activation_quantization",
    "record_weight_quantization",
)


def __getattr__(name: str) -> Any:
    if name in _RECORDING:
        from . import _record

        value = getattr(_record, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "I2S_BLOCK",
    "I2S_TAIL_BYTES",
    "KERNELS",
    "LAYOUTS",
    "TL2_DEFAULT_BK",
    "Accuracy",
    "Format",
    "Kernel",
    "KernelConfig",
    "Layout",
    "LogitsAgreement",
    "MatmulReport",
    "QuantInputError",
    "Tl2Packed",
    "WeightReport",
    "accuracy",
    "admit_runtime_sample",
    "code_fractions",
    "compare_outputs",
    "decode_tl1",
    "decode_tl2",
    "encode_tl1",
    "encode_tl2",
    "integer_dot",
    "kernel_dot",
    "kernel_overflows",
    "logits_agreement",
    "matmul",
    "matmul_report",
    "pack_i2s",
    "pack_tl1",
    "pack_tl2",
    "packed_nbytes",
    "quantize_activations",
    "quantize_weights",
    "read_kernel_config",
    "record_activation_quantization",
    "record_weight_quantization",
    "unpack_i2s",
    "unpack_tl1",
    "unpack_tl2",
    "weight_report",
]
