"""Instrumentors that monitor third-party inference libraries with no code change.

- :mod:`bitnet_obs.instrumentation.transformers`: ``TransformersInstrumentor``, every Hugging
  Face ``generate()`` call (``pip install 'bitnet-obs[hf]'``).
- :mod:`bitnet_obs.instrumentation.llama_cpp`: ``LlamaCppInstrumentor``, every llama-cpp-python
  ``Llama`` call and model load (``pip install 'bitnet-obs[llamacpp]'``).

Each is an OpenTelemetry ``BaseInstrumentor`` registered as an ``opentelemetry_instrumentor``
entry point, so ``opentelemetry-instrument python app.py`` loads it.
"""
