"""The instrumentors' options, validated once by ``instrument()``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    operation: str = "text_completion"
    provider: str = "transformers"
    layer_fidelity: bool = True
    fidelity_sample_rate: float | None = None  # None: BITNET_OBS_QUANT_SAMPLE_RATE
    fidelity_layers: int | None = 1  # None: every BitNet layer of a sampled call
    weight_accuracy: bool = True
    server_address: str | None = None  # server.address / server.port: the endpoint served,
    server_port: int | None = None  # when the application tells us (we cannot see it)


@dataclass(frozen=True)
class LlamaOptions:
    """``LlamaCppInstrumentor.instrument()``'s options (see its docstring)."""

    provider: str = "llama_cpp"
    model_load: bool = True  # Llama() through monitor_model_load
    mark_ready: bool = True  # a successful load makes the process ready
    hash_content: bool = True  # SHA-256 of the GGUF, in the background
    server_address: str | None = None
    server_port: int | None = None
