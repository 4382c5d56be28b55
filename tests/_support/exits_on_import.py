"""A candidate module whose import calls ``sys.exit(0)``: ``crossval check`` must not exit 0."""

import sys

sys.exit(0)


def generate(prompt_ids: list[int], max_new_tokens: int) -> list[int]:  # pragma: no cover
    return [0] * max_new_tokens
