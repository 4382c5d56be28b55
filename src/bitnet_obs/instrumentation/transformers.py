"""Zero-code instrumentation of Hugging Face transformers: every ``generate()`` monitored.

One line in code, or none with ``opentelemetry-instrument`` (this instrumentor is registered
under the ``opentelemetry_instrumentor`` entry points)::

    from bitnet_obs.instrumentation.transformers import TransformersInstrumentor

    TransformersInstrumentor().instrument()
    model.generate(input_ids, max_new_tokens=64)   # a monitored inference

    # or, unchanged code:  opentelemetry-instrument python app.py

Every ``generate()`` call of any model (``GenerationMixin``, so ``pipeline("text-generation")``
too) records what ``@monitored_inference`` records: model, format, device, a span, input and
output tokens counted exactly per batch row, time to first token and per output token from the
decoding loop itself. On BitNet models (``BitLinear``/``AutoBitLinear`` layers) a sampled call
also checks a layer's output against the bitnet.cpp I2_S emulation of the same weights, and a
model's float master weights get one quantization-accuracy report, in a background thread.
See docs/transformers.md.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from bitnet_obs import ConfigError
from bitnet_obs._attributes import check_operation, check_provider, endpoint
from bitnet_obs._parsers import Flag, Integer, Maybe, Number, Parser
from bitnet_obs.instrumentation._options import Options

try:
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
        BaseInstrumentor,
    )
except ImportError as _exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the transformers instrumentor needs opentelemetry-instrumentation ({_exc}); install "
        "the extra: pip install 'bitnet-obs[hf]'"
    ) from None

__all__ = ["TransformersInstrumentor"]

_FLAG = Flag()
#: None: BITNET_OBS_QUANT_SAMPLE_RATE
_RATE: Parser[float | None] = Maybe(Number(0.0, 1.0))
#: layers checked per sampled call; None: all of them (a model has a few hundred at most)
_LAYERS: Parser[int | None] = Maybe(Integer(1, 100_000))

_OPTIONS = (
    "operation",
    "provider",
    "layer_fidelity",
    "fidelity_sample_rate",
    "fidelity_layers",
    "weight_accuracy",
    "server_address",
    "server_port",
)
_FLAGS = ("layer_fidelity", "weight_accuracy")


class TransformersInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Monitors every transformers ``generate()`` call; ``uninstrument()`` undoes it exactly.

    ``instrument()`` accepts, all optional:

    - ``operation`` (``"text_completion"``) and ``provider`` (``"transformers"``): the
      ``gen_ai.operation.name`` and ``gen_ai.provider.name`` of every call;
    - ``layer_fidelity`` (True): sampled checks of BitNet layers against the I2_S emulation;
    - ``fidelity_sample_rate`` (None: ``BITNET_OBS_QUANT_SAMPLE_RATE``): fraction of calls
      checked, always within ``BITNET_OBS_QUANT_BUDGET``;
    - ``fidelity_layers`` (1): layers checked per sampled call, in turn (None: all of them);
    - ``weight_accuracy`` (True): one report of each float master weight, the first time a
      model generates.

    A wrong option raises :class:`bitnet_obs.ConfigError`; nothing raises inside ``generate()``::

        TransformersInstrumentor().instrument(fidelity_sample_rate=0.05)
    """

    _state: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("transformers >= 4.52", "torch >= 2.6")

    def _instrument(self, **kwargs: Any) -> None:
        options = _options(kwargs)
        _require()
        from bitnet_obs.instrumentation._generate import Instrumentation

        state = Instrumentation(options)
        state.install()
        type(self)._state = state

    def _uninstrument(self, **kwargs: Any) -> None:
        state, type(self)._state = type(self)._state, None
        if state is not None:
            state.uninstall()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait for the background checks queued so far (layer fidelity, weight accuracy).

        True when they are all done, False if ``timeout`` seconds passed first. For tests and
        before a clean shutdown; serving never needs it.
        """
        state = type(self)._state
        return True if state is None else bool(state.worker.flush(timeout))


def _options(kwargs: dict[str, Any]) -> Options:
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        hint = ""
        if {"tracer_provider", "meter_provider"} & set(unknown):
            hint = (
                "; bitnet-obs records through the providers of bitnet_obs.configure() or the "
                "global ones (opentelemetry-instrument sets those)"
            )
        raise ConfigError(
            f"TransformersInstrumentor.instrument() got {', '.join(unknown)}; accepted: "
            f"{', '.join(_OPTIONS)}{hint}"
        )
    # the checks every monitor makes (ConfigError naming what is accepted), without building
    # one: a monitor declares its request series, and these options have no model yet
    operation = check_operation(kwargs.get("operation", "text_completion"))
    provider = check_provider(kwargs.get("provider", "transformers"))
    address, port = kwargs.get("server_address"), kwargs.get("server_port")
    endpoint(None, address, port)
    # the same bounded parsers as every setting (bitnet_obs._parsers): same ranges, same words
    flags = {name: _FLAG.check(name, kwargs.get(name, True)) for name in _FLAGS}
    return Options(
        operation=operation,
        provider=provider,
        fidelity_sample_rate=_RATE.check(
            "fidelity_sample_rate", kwargs.get("fidelity_sample_rate")
        ),
        fidelity_layers=_LAYERS.check("fidelity_layers", kwargs.get("fidelity_layers", 1)),
        server_address=address,
        server_port=port,
        **flags,
    )


def _require() -> None:
    """torch and transformers, or a ModuleNotFoundError naming the extra (which the
    ``opentelemetry-instrument`` loader takes as "library not installed: skip")."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"the transformers instrumentor needs torch and transformers ({exc}); install the "
            "extra: pip install 'bitnet-obs[hf]'",
            name=getattr(exc, "name", None),
        ) from None
