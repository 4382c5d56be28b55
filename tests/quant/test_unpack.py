"""The 2-bit group decoder shared by I2_S and TQ2_0 (bitnet_obs.quant._unpack)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_obs.quant import QuantInputError
from bitnet_obs.quant._unpack import spread_2bit


@settings(max_examples=50, deadline=None)
@given(
    blocks=st.integers(1, 70),
    group=st.sampled_from([16, 32]),
    shifts=st.sampled_from([(6, 4, 2, 0), (0, 2, 4, 6)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_field_lands_where_the_layout_says(
    blocks: int, group: int, shifts: tuple[int, ...], seed: int
) -> None:
    fields = np.random.default_rng(seed).integers(0, 3, (blocks, 4, group)).astype(np.uint8)
    packed = np.zeros((blocks, group), np.uint8)
    for i, s in enumerate(shifts):
        packed |= fields[:, i] << s
    out = spread_2bit(packed, shifts, "test")
    np.testing.assert_array_equal(out, fields.reshape(-1).astype(np.int8) - 1)


def test_chunk_boundaries_and_the_unused_value() -> None:
    rng = np.random.default_rng(0)
    fields = rng.integers(0, 3, (9000, 4, 32)).astype(np.uint8)  # > one 1 MiB chunk of output
    packed = (fields[:, 0] << 6) | (fields[:, 1] << 4) | (fields[:, 2] << 2) | fields[:, 3]
    np.testing.assert_array_equal(
        spread_2bit(packed, (6, 4, 2, 0), "I2_S"), fields.reshape(-1).astype(np.int8) - 1
    )
    packed[8999, 5] |= 0b0000_1100  # field at shift 2 of the last block's byte 5 becomes 3
    message = f"byte {8999 * 32 + 5} holds the unused 2-bit value 3 at shift 2"
    with pytest.raises(QuantInputError, match=message):
        spread_2bit(packed, (6, 4, 2, 0), "I2_S")
