"""bitnet-obs: OpenTelemetry observability for 1-bit (BitNet b1.58) LLM inference."""

from __future__ import annotations

__all__: list[str] = []
