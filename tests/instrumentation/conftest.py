"""Fixtures for the transformers instrumentor: tiny random models, an instrumented capture.

(The llama.cpp instrumentor's tests keep their fixtures in their module: the engine they need
comes from tests/conftest.py, and they must not be skipped when torch is missing.)"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_NEEDED = ("torch", "transformers", "opentelemetry.instrumentation")
if any(importlib.util.find_spec(name) is None for name in _NEEDED):  # pragma: no cover
    # the [hf] extra is not installed
    collect_ignore_glob = [
        "test_transformers.py", "test_layers.py", "test_calls.py", "test_zero_code.py"
    ]  # fmt: skip
else:
    import torch

    from bitnet_obs.instrumentation.transformers import TransformersInstrumentor
    from bitnet_obs.testing import TelemetryCapture, capture_telemetry, override_settings

    @pytest.fixture(autouse=True, scope="session")
    def _eager_one_thread() -> Iterator[None]:
        """BitLinear's methods carry @torch.compile: its first call compiles for ~30 s on
        these machines; eager runs the same operations. One thread: a 2-core shared box."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        with torch.compiler.set_stance("force_eager"):
            yield
        torch.set_num_threads(threads)

    Instrument = Callable[..., TransformersInstrumentor]

    @pytest.fixture
    def cap() -> Iterator[TelemetryCapture]:
        with capture_telemetry() as capture:
            yield capture

    @pytest.fixture
    def instrument(cap: TelemetryCapture) -> Iterator[Instrument]:
        """``instrument(**options)`` inside a telemetry capture, with an ample quant time budget
        (the sample rate is each test's ``fidelity_sample_rate``, 0 unless given); undone at
        teardown."""
        instrumentor = TransformersInstrumentor()

        def start(**options: Any) -> TransformersInstrumentor:
            options.setdefault("fidelity_sample_rate", 0.0)
            instrumentor.instrument(**options)
            return instrumentor

        with override_settings(quant_budget=1.0):
            yield start
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.flush(60)
                instrumentor.uninstrument()
