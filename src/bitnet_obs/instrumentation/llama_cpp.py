"""Zero-code instrumentation of llama.cpp in process (llama-cpp-python): every call monitored.

One line in code, or none with ``opentelemetry-instrument`` (this instrumentor is registered
under the ``opentelemetry_instrumentor`` entry points)::

    from bitnet_obs.instrumentation.llama_cpp import LlamaCppInstrumentor

    LlamaCppInstrumentor().instrument()
    llm = Llama("ggml-model-tq2_0.gguf")          # a monitored model load
    llm("Hello", max_tokens=64)                    # a monitored inference

    # or, unchanged code:  opentelemetry-instrument python app.py

``Llama.__call__``, ``create_completion`` and ``create_chat_completion`` (plain and
``stream=True``) are each one monitored inference, ``create_embedding`` and ``embed`` one
``embeddings`` inference: input and output tokens from the ids the engine evaluated and sampled,
time to first token and every inter-token gap from the decoding loop, the finish reason, the
sampling parameters on the span, degenerate-output detection on the sampled ids and, at the
logits sample rate, the last step's logits. ``Llama()`` is a monitored model load with the GGUF's
provenance (architecture, stored types, size, SHA-256 in the background), and llama.cpp's own
build features join ``bitnet.runtime.info``. See docs/llama_cpp.md.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from bitnet_obs import ConfigError
from bitnet_obs._attributes import check_provider, endpoint
from bitnet_obs._parsers import Flag
from bitnet_obs.instrumentation._options import LlamaOptions

try:
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
        BaseInstrumentor,
    )
except ImportError as _exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the llama.cpp instrumentor needs opentelemetry-instrumentation ({_exc}); install "
        "the extra: pip install 'bitnet-obs[llamacpp]'"
    ) from None

__all__ = ["LlamaCppInstrumentor"]

_OPTIONS = ("provider", "model_load", "mark_ready", "hash_content", "server_address", "server_port")
_FLAGS = ("model_load", "mark_ready", "hash_content")


class LlamaCppInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Monitors every llama-cpp-python ``Llama`` call and load; ``uninstrument()`` undoes it
    exactly (every patched attribute is the original object again).

    ``instrument()`` accepts, all optional:

    - ``provider`` (``"llama_cpp"``): the ``gen_ai.provider.name`` of every call;
    - ``model_load`` (True): ``Llama()`` through ``monitor_model_load`` (duration, size,
      ``bitnet.model.loaded``, the file's provenance); ``mark_ready`` (True): a successful load
      makes the process ready (``/health/ready``); ``hash_content`` (True): the file's SHA-256,
      computed in a background thread;
    - ``server_address`` / ``server_port``: the endpoint your server listens on, when it serves
      the model (``server.address`` / ``server.port``).

    A wrong option raises :class:`bitnet_obs.ConfigError`; nothing raises inside a call::

        LlamaCppInstrumentor().instrument(mark_ready=False)
    """

    _state: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("llama-cpp-python >= 0.3",)

    def _instrument(self, **kwargs: Any) -> None:
        options = _options(kwargs)
        _require()
        from bitnet_obs import runtime
        from bitnet_obs.instrumentation._llama import Instrumentation

        state = Instrumentation(options)
        state.install()
        type(self)._state = state
        runtime.enable()  # bitnet.runtime.info with llama.cpp's build (idempotent)
        runtime.refresh()  # llama_cpp may have been imported after the first collection

    def _uninstrument(self, **kwargs: Any) -> None:
        state, type(self)._state = type(self)._state, None
        if state is not None:
            state.uninstall()


def _options(kwargs: dict[str, Any]) -> LlamaOptions:
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        hint = ""
        if {"tracer_provider", "meter_provider"} & set(unknown):
            hint = (
                "; bitnet-obs records through the providers of bitnet_obs.configure() or the "
                "global ones (opentelemetry-instrument sets those)"
            )
        raise ConfigError(
            f"LlamaCppInstrumentor.instrument() got {', '.join(unknown)}; accepted: "
            f"{', '.join(_OPTIONS)}{hint}"
        )
    # the checks every monitor makes (ConfigError naming what is accepted), without building
    # one: a monitor declares its request series, and these options have no model yet
    provider = check_provider(kwargs.get("provider", "llama_cpp"))
    address, port = kwargs.get("server_address"), kwargs.get("server_port")
    endpoint(None, address, port)
    flags = {name: Flag().check(name, kwargs.get(name, True)) for name in _FLAGS}
    return LlamaOptions(provider=provider, server_address=address, server_port=port, **flags)


def _require() -> None:
    """llama_cpp (and its library), or a ModuleNotFoundError naming the extra (which the
    ``opentelemetry-instrument`` loader takes as "library not installed: skip")."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"the llama.cpp instrumentor needs llama-cpp-python ({exc}); install the extra: "
            "pip install 'bitnet-obs[llamacpp]'",
            name=getattr(exc, "name", None),
        ) from None
    except (OSError, RuntimeError) as exc:  # installed, but its shared library did not load
        raise ModuleNotFoundError(
            f"llama-cpp-python is installed but its llama.cpp library did not load ({exc}); "
            "see LLAMA_CPP_LIB_PATH in llama-cpp-python's documentation",
            name="llama_cpp",
        ) from None
