"""The demo's model (bitnet_obs._demo): a slowed kernel (``--slow-kernel``) is slower only;
its numbers are those of the kernel at full speed. How much slower shows live, where
tests/ops/test_live_fleet.py watches BitNetReplicaOutlier pick the slowed replica out."""

from __future__ import annotations

import numpy as np

from bitnet_obs._demo import TinyBitNet


def test_a_slowed_kernel_computes_the_same_numbers() -> None:
    fast, slow = TinyBitNet(layers=2), TinyBitNet(layers=2)
    slow.slowdown = 3.0
    for token in (0, 17, 511):
        np.testing.assert_array_equal(slow.logits(token), fast.logits(token))
        np.testing.assert_array_equal(slow.logits(token, "tl2"), fast.logits(token, "tl2"))
    slow.fault = fast.fault = "sign"  # a slowed and broken kernel is still only broken
    np.testing.assert_array_equal(slow.logits(5), fast.logits(5))
