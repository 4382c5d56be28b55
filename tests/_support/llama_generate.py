"""``tests._support.llama_generate:generate`` for ``bitnet-obs crossval check``: llama.cpp's
greedy generation (llama-cpp-python) on the GGUF named by ``$BITNET_OBS_TEST_GGUF``."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from tests._support import llama_model


@cache
def _generate(path: str) -> Any:
    return llama_model.llama_greedy(llama_model.load_llama(llama_model.Path(path)))


def generate(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], Any]:
    return _generate(os.environ["BITNET_OBS_TEST_GGUF"])(prompt_ids, max_new_tokens)  # type: ignore[no-any-return]
