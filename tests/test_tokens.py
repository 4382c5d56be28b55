"""What a token count is and how results and streamed items are counted (bitnet_obs._tokens)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from bitnet_obs._tokens import MAX_COUNT, as_count, default_item_count, default_output_count


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (7, 7),
        (np.int64(7), 7),
        (np.uint8(3), 3),
        (torch.tensor(4), 4),
        (MAX_COUNT - 1, MAX_COUNT - 1),
        (MAX_COUNT, None),  # 2**53 and above cannot be exported exactly
        (2**64, None),  # once stopped every OTLP export ("Value out of range")
        (-5, None),
        (2.9, None),
        (2.0, None),
        (True, None),
        (np.bool_(True), None),
        ("3", None),
        (None, None),
        (torch.tensor([1, 2]), None),
    ],
)
def test_a_count_is_an_integer_in_range(value: Any, expected: int | None) -> None:
    assert as_count(value) == expected


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (4, 4),
        (np.int64(7), 7),  # counted 1 before
        ([1, 2, 3], 3),
        ((1, 2), 2),
        ([[1, 2], [3]], 3),  # a batch of id sequences
        (np.arange(12, dtype=np.int32).reshape(3, 4), 12),
        (torch.arange(20), 20),  # a torch tensor of ids counted 0 before
        (torch.arange(6, dtype=torch.int32).reshape(2, 3), 6),
        (np.zeros((1, 32000), np.float32), None),  # logits: counted 32,000 before
        (torch.zeros(8), None),
        (np.zeros(3, np.bool_), None),
        ({"usage": {"completion_tokens": 9, "prompt_tokens": 2}}, 9),
        (SimpleNamespace(usage=SimpleNamespace(output_tokens=5)), 5),
        ({"usage": {"completion_tokens": -1}}, None),
        ("some text", None),
        (-5, None),
        (2.9, None),
        (None, None),
        (True, None),
    ],
)
def test_default_output_count(result: Any, expected: int | None) -> None:
    assert default_output_count(result) == expected


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("tok", 1),
        (17, 1),
        (b"x", 1),
        ([1, 2, 3], 3),
        (np.array([5, 6], np.int64), 2),
        (torch.tensor([5, 6, 7]), 3),
        (np.zeros(32000, np.float32), 1),  # a step's logits: one step
        (object(), 1),
    ],
)
def test_default_item_count(item: Any, expected: int) -> None:
    assert default_item_count(item) == expected
