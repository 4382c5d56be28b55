"""The usage examples in the quant docstrings run and show what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import bitnet_obs.quant

MODULES = [
    f"bitnet_obs.quant.{info.name}"
    for info in pkgutil.iter_modules(bitnet_obs.quant.__path__)
    if info.name != "_record"  # its examples record metrics: covered by test_record.py
] + ["bitnet_obs.quant"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
