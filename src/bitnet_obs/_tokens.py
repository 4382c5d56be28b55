"""Token counting: what a count is, and how a result or a streamed item is counted by default.

The rule, documented in the README:

- a **count** is a Python or numpy integer (not a bool) in ``[0, 2**53)``; anything else is an
  internal error, counted and not recorded, so one bad value cannot poison later exports;
- a **returned result** counts: an integer as itself; an integer numpy array or torch tensor as
  its number of elements (token ids); a list/tuple of ids as its length (of id sequences: their
  total length); ``usage.completion_tokens`` / ``output_tokens`` of an object or dict (and input
  from ``prompt_tokens`` / ``input_tokens``). A float array is logits or embeddings, not
  tokens: it counts nothing. Text counts nothing (we never tokenize);
- a **streamed item** counts 1 (a str, an int, any object, a float array: one step), or its
  length when it is a chunk of ids (an integer array/tensor, a list/tuple).

The fast path (str/int items) never reaches these functions.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

#: Counts at or above this cannot be represented exactly by every exporter (float64 mantissa).
MAX_COUNT = 2**53


def as_count(n: object) -> int | None:
    """``n`` as a valid token count, or None."""
    if isinstance(n, bool) or type(n).__name__ == "bool_":
        return None
    if isinstance(n, int):
        value = n
    else:
        if isinstance(n, float) or not hasattr(type(n), "__index__"):
            return None
        try:
            value = operator.index(n)  # type: ignore[arg-type]  # numpy ints, 0-d tensors
        except TypeError:
            return None
    return value if 0 <= value < MAX_COUNT else None


def id_array_size(value: Any) -> int | None:
    """Elements of an integer numpy array or torch tensor (token ids); None for anything else
    (a float array is logits, not ids)."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or not hasattr(value, "shape"):
        return None
    kind = getattr(dtype, "kind", None)
    if isinstance(kind, str):  # numpy
        return int(value.size) if kind in "iu" else None
    if getattr(dtype, "is_floating_point", True) or getattr(dtype, "is_complex", True):
        return None  # torch float/complex, or an unknown array type
    if str(dtype) == "torch.bool":
        return None
    numel = getattr(value, "numel", None)
    return int(numel()) if callable(numel) else None


def sequence_count(items: list[Any] | tuple[Any, ...]) -> int:
    """Tokens of a list/tuple: its length, or the total of a batch of id sequences."""
    if items and type(items[0]) in (list, tuple) and all(type(x) in (list, tuple) for x in items):
        return sum(len(x) for x in items)  # a batch of id sequences
    return len(items)


def default_output_count(result: Any) -> int | None:
    """Output tokens of a whole result (see the module docstring), or None."""
    kind = type(result)
    if kind is list or kind is tuple:  # the common shapes first
        return sequence_count(result)
    if kind is int:
        return result if 0 <= result < MAX_COUNT else None
    if result is None or isinstance(result, (bool, str, bytes, float)):
        return None
    count = as_count(result)
    if count is not None:
        return count
    usage = _usage(result)
    if usage is not None:
        return _usage_field(usage, "completion_tokens", "output_tokens")
    size = id_array_size(result)
    if size is not None:
        return size
    if isinstance(result, (list, tuple)):
        return sequence_count(result)
    return None


def default_input_count(result: Any) -> int | None:
    """Input tokens of a whole result: only a ``usage`` says (of an object or dict)."""
    if type(result) in _NO_USAGE:
        return None
    usage = _usage(result)
    if usage is None:
        return None
    return _usage_field(usage, "prompt_tokens", "input_tokens")


def default_item_count(item: Any) -> int:
    """Output tokens of one streamed item: 1, or the length of a chunk of ids."""
    if isinstance(item, (str, int, bytes)):
        return 1
    size = id_array_size(item)
    if size is not None:
        return size
    if isinstance(item, (list, tuple)):
        return sequence_count(item)
    return 1


_NO_USAGE = frozenset({list, tuple, int, str, bytes, float, bool, type(None)})


def _usage(result: Any) -> Any:
    if isinstance(result, Mapping):
        return result.get("usage")
    return getattr(result, "usage", None)


def _usage_field(usage: Any, *names: str) -> int | None:
    for name in names:
        value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        count = as_count(value)
        if count is not None:
            return count
    return None
