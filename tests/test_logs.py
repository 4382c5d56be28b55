"""Trace-correlated logs (bitnet_obs.logs)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

import bitnet_obs
from bitnet_obs import logs
from bitnet_obs.testing import capture_telemetry


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    logs.instrument_logging()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter(extra_fields=("request_id",)))
    logger = logging.getLogger("test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with capture_telemetry():
        yield out
    logger.removeHandler(handler)
    logs.uninstrument_logging()


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_records_carry_the_active_span_ids_and_model(stream: io.StringIO) -> None:
    log = logging.getLogger("test_logs")

    @bitnet_obs.monitored_inference(model="bitnet-2b", operation="chat", device="cpu")
    def generate(prompt: str) -> str:
        log.info("generating", extra={"request_id": "r-1"})
        ctx = bitnet_obs.current_inference().span_context
        assert ctx is not None
        generate.ids = (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))  # type: ignore[attr-defined]
        return "the secret answer"

    generate("the secret prompt")
    log.info("outside")
    inside, outside = _lines(stream)
    assert (inside["trace_id"], inside["span_id"]) == generate.ids  # type: ignore[attr-defined]
    assert inside["model"] == "bitnet-2b" and inside["operation"] == "chat"
    assert inside["device"] == "cpu" and inside["request_id"] == "r-1"
    assert inside["trace_sampled"] is True
    assert "trace_id" not in outside and "model" not in outside
    assert "secret" not in stream.getvalue()


def test_exceptions_and_idempotent_install(stream: io.StringIO) -> None:
    logs.instrument_logging()  # twice: still one factory
    log = logging.getLogger("test_logs")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    (line,) = _lines(stream)
    assert "ValueError: boom" in str(line["exception"]) and line["level"] == "ERROR"
