"""The value type the semantic conventions give each attribute we emit, for tests that check
spans and points against them.

Types as the conventions' registries state them (``type:`` of each ``key:``; an enum's members
are strings): open-telemetry/semantic-conventions-genai ``model/gen-ai/registry.yaml`` at the
commit docs/metrics.md claims (``gen_ai.request.top_k`` is an int since #217), and
open-telemetry/semantic-conventions v1.44.0 ``model/*/registry.yaml`` for the rest. Written out
here because the Python package ships the names but not their types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VALUE_TYPES: dict[str, str] = {
    # GenAI registry
    "gen_ai.operation.name": "string",
    "gen_ai.request.model": "string",
    "gen_ai.provider.name": "string",
    "gen_ai.response.model": "string",
    "gen_ai.usage.input_tokens": "int",
    "gen_ai.usage.output_tokens": "int",
    "gen_ai.response.finish_reasons": "string[]",
    "gen_ai.request.stream": "boolean",
    "gen_ai.response.time_to_first_chunk": "double",
    "gen_ai.request.max_tokens": "int",
    "gen_ai.request.choice.count": "int",
    "gen_ai.request.temperature": "double",
    "gen_ai.request.top_p": "double",
    "gen_ai.request.top_k": "int",
    "gen_ai.request.frequency_penalty": "double",
    "gen_ai.request.presence_penalty": "double",
    "gen_ai.request.seed": "int",
    "gen_ai.input.messages": "any",
    "gen_ai.output.messages": "any",
    # core registry, v1.44.0
    "server.address": "string",
    "server.port": "int",
    "error.type": "string",
    "hw.id": "string",
    "hw.type": "string",
    "hw.name": "string",
    "cpu.mode": "string",
    "system.memory.state": "string",
    "disk.io.direction": "string",
    "network.io.direction": "string",
    "host.arch": "string",
    "host.cpu.model.name": "string",
    "host.cpu.vendor.id": "string",
    "os.type": "string",
    "process.runtime.version": "string",
    # the metrics SDK specification
    "otel.metric.overflow": "boolean",
}


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return type(value) is str
    if kind == "int":
        return type(value) is int
    if kind == "double":
        return type(value) is float
    if kind == "boolean":
        return type(value) is bool
    if kind == "string[]":
        return isinstance(value, (tuple, list)) and all(type(v) is str for v in value)
    return kind == "any" and type(value) is str  # structured content: we send JSON text


def wrong_types(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    """The convention attributes among ``attributes`` whose value is not of the conventions'
    type: name -> what it was and what the conventions ask (empty: all agree)."""
    wrong = {}
    for name, value in (attributes or {}).items():
        kind = VALUE_TYPES.get(name)
        if kind is not None and not _is(kind, value):
            wrong[name] = f"{type(value).__name__} {value!r}, the conventions: {kind}"
    return wrong
