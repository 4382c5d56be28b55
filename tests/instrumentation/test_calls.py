"""Per-row counting of generated tokens (bitnet_obs.instrumentation._calls.new_tokens)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from bitnet_obs.instrumentation._calls import finish_reason, new_tokens


def expected(row: list[int], eos: list[int], pad: int | None) -> list[int]:
    """Plain iteration: through the first EOS; with none, less trailing padding (pad != EOS)."""
    for i, token in enumerate(row):
        if token in eos:
            return row[: i + 1]
    if eos and pad is not None and pad not in eos:
        while row and row[-1] == pad:
            row = row[:-1]
    return row


@given(
    rows=st.lists(st.lists(st.integers(0, 5), min_size=6, max_size=6), min_size=1, max_size=4),
    eos=st.lists(st.integers(0, 5), max_size=2),
    pad=st.one_of(st.none(), st.integers(0, 5)),
)
def test_matches_plain_iteration(rows: list[list[int]], eos: list[int], pad: int | None) -> None:
    got = new_tokens(torch.tensor(rows), eos, pad)
    assert [r.tolist() for r in got] == [expected(r, eos, pad) for r in rows]


def test_the_usual_cases() -> None:
    eos, pad = [2], 0
    rows = torch.tensor(
        [
            [7, 8, 2, 0, 0],  # stopped on EOS: its padding is not generated
            [7, 8, 9, 9, 9],  # ran to max_new_tokens
            [7, 8, 9, 0, 0],  # stopped by a stop string: padded without an EOS
        ]
    )
    assert [len(r) for r in new_tokens(rows, eos, pad)] == [3, 5, 3]
    # no pad token: generate() pads with EOS, and the first EOS ends the row
    assert [len(r) for r in new_tokens(torch.tensor([[7, 2, 2, 2]]), eos, 2)] == [2]
    # several EOS ids
    assert [len(r) for r in new_tokens(torch.tensor([[7, 5, 2]]), [2, 5], 0)] == [2]
    # nothing generated
    assert [len(r) for r in new_tokens(torch.zeros((2, 0), dtype=torch.long), eos, pad)] == [0, 0]


def test_finish_reason() -> None:
    eos, pad = [2], 0
    rows = new_tokens(torch.tensor([[7, 2, 0], [7, 8, 9]]), eos, pad)
    assert finish_reason(rows, 3, eos, limit=3) == "length"  # the second row ran out
    rows = new_tokens(torch.tensor([[7, 2, 0], [7, 8, 2]]), eos, pad)
    assert finish_reason(rows, 3, eos, limit=3) == "stop"  # both ended on EOS
    rows = new_tokens(torch.tensor([[7, 8, 0], [7, 2, 0]]), eos, pad)
    assert finish_reason(rows, 3, eos, limit=3) == "stop"  # a stop string, then padding
    rows = new_tokens(torch.tensor([[7, 8, 9]]), eos, pad)
    assert finish_reason(rows, 3, eos, limit=10) == "stop"  # stopped before the limit
