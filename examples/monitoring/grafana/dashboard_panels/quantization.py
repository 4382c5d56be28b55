"""The Quantization row: ternary weights and kernels against FP32 and the quantized
reference."""

from __future__ import annotations

from .panel import INST, Panel, mean_since_start, sum_increase, sum_rate


def panels() -> list[Panel]:
    acc = "instance_format:bitnet_quant_accuracy"
    return [
        Panel(
            "Weight accuracy vs FP32, by format",
            [
                (
                    f'{acc}:mean{{bitnet_quant_kind="weight", '
                    f'bitnet_quant_reference="fp32", {INST}}}',
                    "{{bitnet_quant_format}} {{instance}}",
                ),
                ("bitnet:quant_accuracy_fp32:baseline", "baseline"),
            ],
            unit="none",
            min=None,
            description="Mean cosine of the ternary weights against FP32, measured at load "
            "(~0.887 for Gaussian weights). Alert below the baseline recording rule.",
        ),
        Panel(
            "Runtime accuracy by format and reference",
            [
                (
                    f'{acc}:p50_10m{{bitnet_quant_kind!="weight", {INST}}}',
                    "{{bitnet_quant_format}} {{bitnet_quant_kind}} vs {{bitnet_quant_reference}}",
                )
            ],
            unit="none",
            min=None,
            description="Median of the sampled layer outputs, activations and logits over 10 "
            "minutes: against FP32 (quantization error) and against the quantized reference "
            "(kernel fidelity).",
        ),
        Panel(
            "Kernel fidelity (vs quantized reference)",
            [
                (
                    f'{acc}:p05_10m{{bitnet_quant_reference="quantized", {INST}}}',
                    "p05 {{bitnet_quant_format}} {{bitnet_quant_kind}}",
                )
            ],
            unit="none",
            min=None,
            max=1,
            thresholds=[(0, "red"), (0.999, "green")],
            description="5th percentile of accuracy against the quantized reference: should be "
            "1. Anything at or below 0.999 is a kernel bug (alert BitNetQuantKernelDrift).",
        ),
        Panel(
            "Samples below 0.999 vs quantized reference",
            [
                (
                    sum_increase(
                        "bitnet_quant_accuracy_bucket",
                        f'bitnet_quant_reference="quantized", le="0.999", {INST}',
                        by="bitnet_quant_format",
                    ),
                    "{{bitnet_quant_format}}",
                )
            ],
            thresholds=[(0, "green"), (1, "red")],
            description="Drifted kernel samples (should stay 0).",
        ),
        Panel(
            "Least accurate weight tensors vs FP32",
            [
                (
                    "bottomk(10, min by (bitnet_tensor) ("
                    f'bitnet_quant_accuracy_sum{{bitnet_quant_kind="weight", {INST}}}'
                    f' / bitnet_quant_accuracy_count{{bitnet_quant_kind="weight", {INST}}}))',
                    "{{bitnet_tensor}}",
                )
            ],
            kind="bargauge",
            unit="none",
            min=0.8,
            max=1,
            description="The ten tensors whose ternary weights are furthest from FP32.",
        ),
        Panel(
            "SQNR by format and reference",
            [
                (
                    mean_since_start(
                        "bitnet_quant_sqnr", INST, by="bitnet_quant_format, bitnet_quant_reference"
                    ),
                    "{{bitnet_quant_format}} vs {{bitnet_quant_reference}}",
                )
            ],
            unit="dB",
            min=None,
            description="Mean signal-to-quantization-noise ratio since start.",
        ),
        Panel(
            "Accuracy measurements and skipped samples",
            [
                (
                    sum_rate("bitnet_quant_operations_total", INST, by="bitnet_quant_kind"),
                    "measured {{bitnet_quant_kind}}",
                ),
                (
                    sum_rate(
                        "bitnet_quant_samples_skipped_total", INST, by="bitnet_quant_skip_reason"
                    ),
                    "skipped: {{bitnet_quant_skip_reason}}",
                ),
            ],
            unit="ops",
            description="Samples measured per second, and those skipped (time budget, shape, "
            "bad input).",
        ),
    ]
