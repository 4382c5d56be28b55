"""BitNet linear layers of a transformers model: sampled fidelity checks, weight accuracy.

transformers runs BitNet b1.58 through three kinds of layer (``transformers.integrations.bitnet``):

* ``BitLinear``: 2-bit packed ternary weights (four output rows per byte, row ``r`` in bits
  ``2 * (r // rows)`` of byte row ``r % rows``) and a ``weight_scale`` it *divides* by;
* ``AutoBitLinear`` offline: the ternary values as floats and a ``weight_scale`` it multiplies
  the output (bias included) by;
* ``AutoBitLinear`` online: float master weights, quantized (absmean) in every forward pass.

Each quantizes its input per token to int8 (absmax), after an optional RMSNorm. A check takes a
few tokens of one forward pass (input and output), recomputes them with the bitnet.cpp I2_S
emulation of the same ternary weights (``quant.matmul``) and records the agreement as kernel
fidelity (``reference_kind="quantized"``); with master weights also the float product, as
quantization error (``reference_kind="fp32"``). The recomputation runs on the background worker.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.hooks import RemovableHandle
from transformers.integrations.bitnet import AutoBitLinear, BitLinear

from bitnet_obs import quant
from bitnet_obs._selfmon import internal_error

#: Tokens (rows) of one forward pass recomputed per check: bounds its cost for long prompts.
ROWS_PER_CHECK = 16
#: Weight elements recomputed per check at most: bounds its cost for large layers.
MAX_CHECK_WEIGHTS = 1 << 18

Submit = Callable[[Callable[[], object]], bool]
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Layer:
    """One BitNet linear module and how it stores its weights."""

    name: str
    module: Any  # BitLinear | AutoBitLinear (transformers does not type their attributes)
    kind: str  # "packed" (BitLinear), "offline" or "online" (AutoBitLinear)


def find_layers(model: torch.nn.Module) -> tuple[Layer, ...]:
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, BitLinear):
            layers.append(Layer(name, module, "packed"))
        elif isinstance(module, AutoBitLinear):
            layers.append(Layer(name, module, "online" if module.online_quant else "offline"))
    return tuple(layers)


def master_weights(model: torch.nn.Module, layers: Sequence[Layer]) -> list[tuple[str, Any]]:
    """The float weights whose ternary quantization error is worth one report at first sight.

    Online ``AutoBitLinear`` layers hold them; so does a BitNet model loaded from its float
    (master) checkpoint, whose plain linear layers are what a converter would make ternary (the
    LM head stays in high precision, as in BitNet b1.58). Packed or offline layers hold no float
    weights: there is nothing to compare with.
    """
    if layers:
        return [(layer.name, layer.module.weight) for layer in layers if layer.kind == "online"]
    if getattr(getattr(model, "config", None), "model_type", None) != "bitnet":
        return []
    return [
        (name, module.weight)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and not name.endswith("lm_head")
    ]


def record_weight_accuracy(
    weights: Sequence[tuple[str, Any]], fmt: str, stopping: Callable[[], bool]
) -> None:
    """One weight report per tensor (background; stops early when the instrumentor does)."""
    for name, weight in weights:
        if stopping():
            return
        w = weight.detach().to("cpu", torch.float32, copy=True).numpy()
        quant.record_weight_quantization(name, w, formats=(fmt,))


class Sampler:
    """Picks the layers of each sampled call (round robin) and hooks them for one forward."""

    def __init__(self, layers: tuple[Layer, ...], fmt: str, submit: Submit) -> None:
        self.layers = layers
        self._fmt = fmt
        self._submit = submit
        self._turn = itertools.count()

    def attach(self, count: int | None) -> list[RemovableHandle]:
        """Hook ``count`` layers (all when None); each hook removes itself once it has fired."""
        layers = self.layers
        if count is not None and count < len(layers):
            start = next(self._turn) * count
            layers = tuple(layers[(start + i) % len(layers)] for i in range(count))
        return [self._hook(layer) for layer in layers]

    def _hook(self, layer: Layer) -> RemovableHandle:
        handle: RemovableHandle | None = None

        def once(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if handle is not None:
                handle.remove()
            try:
                x, y = capture(module, args, output)
                if not self._submit(lambda: check(layer, x, y, self._fmt)):
                    internal_error("hf_fidelity_backlog", detail="background queue full")
            except Exception as exc:
                internal_error("hf_fidelity_capture", exc)

        handle = layer.module.register_forward_hook(once)
        return handle


def capture(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> tuple[Floats, Floats]:
    """Copies of a few evenly spaced tokens' input (after the layer's RMSNorm) and output."""
    x, y = args[0], output
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.reshape(-1, y.shape[-1])
    n = x2.shape[0]
    if n > ROWS_PER_CHECK:
        index = torch.linspace(0, n - 1, ROWS_PER_CHECK, device=x2.device).round().long()
        x2, y2 = x2[index], y2[index]
    norm = getattr(module, "rms_norm", None)
    if norm is not None:
        x2 = norm(x2)  # per token, so a subset of rows normalizes as the whole would
    return _numpy(x2), _numpy(y2)


def _numpy(t: torch.Tensor) -> Floats:
    out: Floats = t.detach().to("cpu", torch.float32, copy=True).numpy()
    return out


def output_channels(out_features: int, in_features: int) -> npt.NDArray[np.intp]:
    """The output channels one check recomputes: all of them when the weights are small, else
    ``MAX_CHECK_WEIGHTS // K`` evenly spaced ones, at a random offset so that over many checks
    every channel is covered (each output is its own dot product: a subset checks the same
    kernel path, at a fraction of the cost)."""
    n = max(1, min(out_features, MAX_CHECK_WEIGHTS // max(1, in_features)))
    if n == out_features:
        return np.arange(out_features, dtype=np.intp)
    step = out_features / n
    picked: npt.NDArray[np.intp] = np.floor(random.random() * step + np.arange(n) * step).astype(
        np.intp
    )
    return np.minimum(picked, out_features - 1)


def unpack_packed(
    byte_rows: npt.NDArray[np.uint8], channels: npt.NDArray[np.intp], stored_rows: int
) -> npt.NDArray[np.int8]:
    """Ternary codes of output ``channels`` from their bytes ``packed[channels % stored_rows]``:
    BitLinear keeps output row ``r`` in byte row ``r % rows`` at bits ``2 * (r // rows)``, as
    code + 1."""
    shifts = (2 * (channels // stored_rows)).astype(np.uint8)[:, None]
    codes: npt.NDArray[np.int8] = ((byte_rows >> shifts) & 3).astype(np.int8) - 1
    return codes  # a stored 3 becomes 2: quant.matmul rejects it as corrupt (counted skip)


def _rows(t: torch.Tensor, rows: npt.NDArray[np.intp]) -> torch.Tensor:
    """``t[rows]``, gathered where ``t`` lives (only those rows travel to the CPU)."""
    return t.detach()[torch.as_tensor(rows, device=t.device)]


def _bias(module: Any, channels: npt.NDArray[np.intp]) -> Floats | None:
    bias = getattr(module, "bias", None)
    return None if bias is None else _numpy(_rows(bias, channels))


Ternary = tuple[npt.NDArray[np.int8], float, "Floats | None"]  # codes, scale, bias to add


def ternary_weights(layer: Layer, channels: npt.NDArray[np.intp]) -> Ternary:
    """The ternary codes of the layer's ``channels`` outputs, the float32 scale bitnet.cpp
    would store, and the bias as it adds to the output."""
    module = layer.module
    bias = _bias(module, channels)
    if layer.kind == "packed":
        stored = int(module.weight.shape[0])
        byte_rows = _rows(module.weight, channels % stored).cpu().numpy()
        codes = unpack_packed(byte_rows, channels, stored)
        return codes, 1.0 / float(module.weight_scale.reshape(-1)[0]), bias  # BitLinear divides
    if layer.kind == "offline":
        values = _numpy(_rows(module.weight, channels))
        codes = np.rint(values).astype(np.int8)
        if not np.array_equal(codes, values):
            raise quant.QuantInputError(f"{layer.name}: offline weights are not ternary values")
        scale = float(module.weight_scale.reshape(-1)[0])  # it scales the biased output
        return codes, scale, None if bias is None else bias * np.float32(scale)
    # online: quantized from the master weights as a converter would (the scale is the whole
    # tensor's mean, so the whole tensor is quantized)
    all_codes, scale = quant.quantize_weights(_numpy(module.weight))
    return all_codes[channels], scale, bias


def quantized_reference(layer: Layer, x: Floats, weights: Ternary) -> Floats:
    """The layer's outputs for ``x`` by the bitnet.cpp I2_S emulation of its ternary weights."""
    codes, scale, bias = weights
    out = quant.matmul(x, codes, scale)
    return out if bias is None else out + bias


def float_reference(layer: Layer, x: Floats, channels: npt.NDArray[np.intp]) -> Floats:
    """The unquantized product with the master weights (online layers only)."""
    bias = _bias(layer.module, channels)
    out: Floats = x @ _numpy(_rows(layer.module.weight, channels)).T
    return out if bias is None else out + bias


def check(layer: Layer, x: Floats, y: Floats, fmt: str) -> None:
    """Record the layer's fidelity (and quantization error) on one captured sample.

    The references are callables: their cost counts against the quant time budget. The
    fidelity sample also counts the outputs where bitnet.cpp's AVX2 kernel would overflow on
    these activations (``bitnet.quant.kernel_overflows``, for K a multiple of 128).
    """
    channels = output_channels(y.shape[1], x.shape[1])
    candidate = y if len(channels) == y.shape[1] else y[:, channels]
    weights = functools.cache(functools.partial(ternary_weights, layer, channels))
    quant.compare_outputs(
        layer.name,
        lambda: quantized_reference(layer, x, weights()),
        candidate,
        format=fmt,
        reference_kind="quantized",
        kind="output",
        activations=x,
        codes=lambda: weights()[0],
        admitted=True,
    )
    if layer.kind == "online":
        quant.compare_outputs(
            layer.name,
            functools.partial(float_reference, layer, x, channels),
            candidate,
            format=fmt,
            reference_kind="fp32",
            kind="output",
            admitted=True,
        )
