"""The request's span at its end: usage, stream, outcome, finish reason and (opt-in) content.

Content (prompt, response, exception messages and stacks) goes on a span only when content
capture is on, and every text is clipped to :data:`CONTENT_LIMIT` characters.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from bitnet_obs import _semconv as sc
from bitnet_obs._facts import Outcome, RequestFacts
from bitnet_obs._tally import AttrValue

#: Most characters of prompt, response or exception text put on a span (content capture on).
CONTENT_LIMIT = 8192


def clip(text: str) -> str:
    return text if len(text) <= CONTENT_LIMIT else text[:CONTENT_LIMIT] + "…"


def prompt_text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """The prompt among a call's arguments: a ``prompt``/``messages``/``text``/``input``
    keyword, else the first str argument."""
    for name in ("prompt", "messages", "text", "input"):
        if name in kwargs:
            return clip(str(kwargs[name]))
    for arg in args:
        if isinstance(arg, str):
            return clip(arg)
    return None


def annotate(
    span: Span,
    facts: RequestFacts,
    outcome: Outcome,
    capture: Callable[[], bool],
    outputs: Mapping[str, AttrValue] | None,
    reported: Mapping[str, AttrValue] | None = None,
) -> None:
    """What the request learned, on its (recording) span, in one call; ``outputs``: its
    judged outputs; ``reported``: the call's own ``set_attribute()`` values (ours win over
    theirs, as when they were set first); ``capture``: whether content may go on it (asked
    only for an exception)."""
    extra: dict[str, AttrValue | list[str]] = dict(reported) if reported else {}
    if facts.input_tokens:
        extra[sc.USAGE_INPUT_TOKENS] = facts.input_tokens
    if facts.output_tokens:
        extra[sc.USAGE_OUTPUT_TOKENS] = facts.output_tokens
    if outcome.kind != "ok":
        extra["bitnet.outcome"] = outcome.kind
    if facts.finish_reason is not None:
        extra[sc.RESPONSE_FINISH_REASONS] = [facts.finish_reason]
    declared = facts.stream_declared
    streamed = facts.streamed if declared is None else declared
    extra[sc.REQUEST_STREAM] = streamed
    if streamed and facts.first_token_at is not None:
        extra[sc.RESPONSE_TIME_TO_FIRST_CHUNK] = facts.first_token_at - facts.arrival
    if outcome.error_type:
        extra[sc.ERROR_TYPE] = outcome.error_type
    if facts.prompt is not None:
        extra[sc.INPUT_MESSAGES] = _messages("user", facts.prompt)
    if facts.response:
        extra[sc.OUTPUT_MESSAGES] = _messages("assistant", "".join(facts.response))
    if outputs:
        extra.update(outputs)
    span.set_attributes(extra)
    exc = outcome.exception
    if exc is not None and outcome.kind == "error":
        event: dict[str, AttrValue] = {"exception.type": outcome.error_type}
        if capture():  # messages and stacks may quote the prompt: opt-in, clipped
            event["exception.message"] = clip(str(exc))
            stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            event["exception.stacktrace"] = clip(stack)
        span.add_event("exception", event)
        span.set_status(Status(StatusCode.ERROR, outcome.error_type))


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": clip(text)}]}])
