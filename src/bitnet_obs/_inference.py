"""``@monitored_inference`` / ``monitor_inference``: the hot path.

One object (:class:`InferenceMonitor`) is both decorator and context manager. Everything that
can be decided once (attribute dicts, tally keys, token counters) is decided when it is built;
a call does: one span, one or two histogram records, and one locked tally update at the end.
Tokens of a stream are counted locally and recorded once.

Anything that goes wrong in here is swallowed and counted (``bitnet.obs.internal_errors``);
the caller's own exceptions propagate unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from typing import Any, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from bitnet_obs import _instruments, _pipeline
from bitnet_obs._config import ConfigError
from bitnet_obs._instruments import TALLIES
from bitnet_obs._queue import check_priority
from bitnet_obs._queue import pending as _queue_pending
from bitnet_obs._selfmon import internal_error
from bitnet_obs._tally import AttrValue, key_of

F = TypeVar("F", bound=Callable[..., Any])
TokenCounter = Callable[[Any], int]

OPERATIONS = (
    "chat",
    "text_completion",
    "generate_content",
    "embeddings",
    "invoke_agent",
    "execute_tool",
)
QUANT_FORMATS = ("i2_s", "tl1", "tl2", "fp32", "fp16", "bf16", "q8_0", "q4_0", "int8", "other")
_DEVICE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}(:[0-9]{1,3})?$")
_CONTENT_LIMIT = 8192

_REQUESTS = TALLIES["bitnet.inference.requests"]
_ACTIVE = TALLIES["bitnet.inference.active_requests"]
_TOKENS = TALLIES["bitnet.inference.tokens"]
_FALLBACKS = TALLIES["bitnet.device.fallbacks"]

# Called at the end of every request with (duration_s, ttft_s or None, output_tokens, outcome);
# each must be O(1) and never raise (the SLA tracker is one).
RequestObserver = Callable[[float, "float | None", int, str], None]
_observers: list[RequestObserver] = []


def add_request_observer(observer: RequestObserver) -> None:
    if observer not in _observers:
        _observers.append(observer)


def remove_request_observer(observer: RequestObserver) -> None:
    if observer in _observers:
        _observers.remove(observer)


_current: contextvars.ContextVar[InferenceContext | None] = contextvars.ContextVar(
    "bitnet_obs_inference", default=None
)


def error_type(exc: BaseException) -> str:
    """Low-cardinality ``error.type``: the exception class, qualified unless builtin."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def default_output_count(result: Any) -> int | None:
    """Output tokens of a whole result: int, sequence/array of ids, or ``usage`` objects."""
    if isinstance(result, bool) or result is None:
        return None
    if isinstance(result, int):
        return result
    usage = _usage(result)
    if usage is not None:
        return _usage_field(usage, "completion_tokens", "output_tokens")
    if isinstance(result, (str, bytes)):
        return None  # text: we cannot know its tokens
    size = getattr(result, "size", None)
    if isinstance(size, int) and hasattr(result, "shape"):
        return size
    if isinstance(result, (list, tuple)):
        return len(result)
    return None


def default_input_count(result: Any) -> int | None:
    usage = _usage(result)
    if usage is None:
        return None
    return _usage_field(usage, "prompt_tokens", "input_tokens")


def default_item_count(item: Any) -> int:
    """Output tokens of one streamed item: 1, or the length of a chunk of ids."""
    if isinstance(item, (str, int, bytes)):
        return 1
    size = getattr(item, "size", None)
    if isinstance(size, int) and hasattr(item, "shape"):
        return size
    if isinstance(item, (list, tuple)):
        return len(item)
    return 1


def _usage(result: Any) -> Any:
    if isinstance(result, Mapping):
        return result.get("usage")
    return getattr(result, "usage", None)


def _usage_field(usage: Any, *names: str) -> int | None:
    for name in names:
        value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _clip(text: str) -> str:
    return text if len(text) <= _CONTENT_LIMIT else text[:_CONTENT_LIMIT] + "…"


class _Site:
    """What one decorated function (or monitor object) resolved once."""

    __slots__ = (
        "attrs",
        "capture_content",
        "client_token_usage",
        "count_input",
        "count_item",
        "count_output",
        "keys",
        "span_name",
    )

    def __init__(
        self,
        attrs: dict[str, AttrValue],
        span_name: str,
        count_input: TokenCounter | None,
        count_output: TokenCounter | None,
        count_item: TokenCounter | None,
        capture_content: bool | None,
        client_token_usage: bool,
    ) -> None:
        self.attrs = attrs
        self.span_name = span_name
        self.count_input = count_input
        self.count_output = count_output
        self.count_item = count_item
        self.capture_content = capture_content
        self.client_token_usage = client_token_usage
        self.keys: dict[tuple[str, str, str, str | None], _Variant] = {}

    def variant(self, device: str, outcome: str, err: str, priority: str | None) -> _Variant:
        """Tally keys and histogram attributes of one (device, outcome, error, priority)."""
        key = (device, outcome, err, priority)
        variant = self.keys.get(key)
        if variant is None:
            variant = _Variant(self.attrs, device, outcome, err, priority)
            if len(self.keys) < 256:
                self.keys[key] = variant
        return variant


class _Variant:
    """Everything recorded for one outcome, built once and reused by every later call."""

    __slots__ = ("attrs", "base_key", "in_key", "out_key", "req_key")

    def __init__(
        self,
        site_attrs: dict[str, AttrValue],
        device: str,
        outcome: str,
        err: str,
        priority: str | None,
    ) -> None:
        base = dict(site_attrs)
        base["bitnet.device"] = device
        if priority is not None:
            base["bitnet.request.priority"] = priority
        req = dict(base, **{"bitnet.outcome": outcome})
        self.attrs = dict(base)
        if err:
            req["error.type"] = err
            self.attrs["error.type"] = err
        self.req_key = key_of(req)
        self.in_key = key_of(dict(base, **{"gen_ai.token.type": "input"}))
        self.out_key = key_of(dict(base, **{"gen_ai.token.type": "output"}))
        self.base_key = key_of(base)


class InferenceContext:
    """One request in flight: what ``current_inference()`` returns inside a monitored call.

    Nested code reports what only it knows (tokens, first token, device, fallbacks,
    quantization samples). Every method is safe to call and never raises.
    """

    __slots__ = (
        "_ctx_token",
        "_otel_token",
        "active_key",
        "content_in",
        "content_out",
        "device",
        "explicit_input",
        "explicit_output",
        "first_token_at",
        "input_tokens",
        "output_tokens",
        "priority",
        "queue_wait",
        "site",
        "span",
        "start",
    )

    def __init__(self, site: _Site) -> None:
        self.site = site
        self.device = cast(str, site.attrs["bitnet.device"])
        self.input_tokens = 0
        self.output_tokens = 0
        self.explicit_input = False
        self.explicit_output = False
        self.first_token_at: float | None = None
        self.content_in: str | None = None
        self.content_out: list[str] | None = None
        self.span: Span | None = None
        self._ctx_token: contextvars.Token[InferenceContext | None] | None = None
        self._otel_token: object = None
        queued = _queue_pending.get()
        if queued is None:
            self.queue_wait: float | None = None
            self.priority: str | None = None
        else:  # this request just left a RequestQueue in this context
            self.queue_wait, self.priority = queued
            _queue_pending.set(None)
        self.active_key = site.variant(self.device, "ok", "", self.priority).base_key
        self.start = time.perf_counter()

    # ----- the public context API -----
    def add_input_tokens(self, n: int) -> None:
        """Report prompt tokens (turns off automatic input counting for this call)."""
        if _valid_count(n, "add_input_tokens"):
            self.input_tokens += n
            self.explicit_input = True

    def add_output_tokens(self, n: int) -> None:
        """Report generated tokens (turns off automatic output counting for this call)."""
        if _valid_count(n, "add_output_tokens"):
            if self.first_token_at is None and n > 0:
                self.first_token_at = time.perf_counter()
            self.output_tokens += n
            self.explicit_output = True

    def first_token(self) -> None:
        """Mark the first output token now (for non-streaming code that knows the moment)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def set_device(self, name: str) -> None:
        if not isinstance(name, str) or not _DEVICE_RE.match(name):
            internal_error("bad_device", detail=f"set_device({name!r})")
            return
        self.device = name
        if self.span is not None:
            self.span.set_attribute("bitnet.device", name)

    def fallback(self, from_device: str, to_device: str, reason: str) -> None:
        """Record a device fallback (counter + span event) and switch the call's device."""
        record_fallback(
            from_device,
            to_device,
            reason,
            model=str(self.site.attrs.get("gen_ai.request.model", "")),
            span=self.span,
        )
        self.set_device(to_device)

    def set_attribute(self, key: str, value: AttrValue) -> None:
        """A span attribute only: metric attributes stay fixed to bound cardinality."""
        if not isinstance(key, str) or not isinstance(value, (str, bool, int, float)):
            internal_error("bad_attribute", detail=f"set_attribute({key!r}, {type(value)})")
            return
        if self.span is not None:
            self.span.set_attribute(key, value)

    def record_quantization(
        self,
        name: str,
        reference: Any,
        candidate: Any,
        *,
        format: str | None = None,
        reference_kind: str = "quantized",
        kind: str = "output",
    ) -> None:
        """Compare a tensor with its reference as a sampled, budgeted quantization sample.

        Defaults to kernel fidelity (against the quantized reference) in the call's format.
        ``reference``/``candidate`` may be zero-argument callables: they run only when the
        sample is taken, so an expensive reference costs nothing on skipped calls.
        Never raises: bad input is a counted skip.
        """
        call = None if self is _NULL else self
        _record_quantization(call, name, reference, candidate, format, reference_kind, kind)

    def record_cache(self, hits: int = 0, misses: int = 0, *, cache: str = "kv") -> None:
        """Count KV/prefix cache hits and misses for this request's model."""
        from bitnet_obs._cache import record_cache

        model = "" if self is _NULL else str(self.site.attrs.get("gen_ai.request.model", ""))
        record_cache(hits, misses, cache=cache, model=model)

    @property
    def span_context(self) -> trace.SpanContext | None:
        return self.span.get_span_context() if self.span is not None else None

    # ----- lifecycle (never raises) -----
    def begin(
        self,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        attach: bool = True,
    ) -> None:
        try:
            _ACTIVE.add(self.active_key, 1)
            site = self.site
            span = _instruments.active().tracer.start_span(
                site.span_name, kind=SpanKind.INTERNAL, attributes=site.attrs
            )
            if span.get_span_context().is_valid:
                self.span = span
                if self.queue_wait is not None and span.is_recording():
                    span.set_attributes(
                        {
                            "bitnet.queue.wait_duration": self.queue_wait,
                            "bitnet.request.priority": str(self.priority),
                        }
                    )
                if attach:
                    self._otel_token = otel_context.attach(trace.set_span_in_context(span))
            if self._capture() and (args or kwargs):
                self.content_in = _prompt_text(args, kwargs or {})
        except Exception as exc:
            internal_error("begin", exc)

    def enter_context(self) -> None:
        self._ctx_token = _current.set(self)

    def exit_context(self) -> None:
        token = self._ctx_token
        if token is not None:
            self._ctx_token = None
            try:
                _current.reset(token)
            except ValueError:  # reset from another context (e.g. a moved generator)
                _current.set(None)

    def end(
        self,
        token: contextvars.Token[InferenceContext | None],
        exc: BaseException | None,
        result: Any = None,
    ) -> None:
        """The end of a decorated plain or async call (its result counted when it returned)."""
        _current.reset(token)
        if exc is None:
            self.count_result(result)
        self.finish(exc)

    def count_result(self, result: Any) -> None:
        site = self.site
        try:
            if site.count_output is not None:
                self.output_tokens += int(site.count_output(result))
            elif not self.explicit_output:
                self.output_tokens += default_output_count(result) or 0
            if site.count_input is not None:
                self.input_tokens += int(site.count_input(result))
            elif not self.explicit_input:
                self.input_tokens += default_input_count(result) or 0
            if self.content_out is None and self._capture() and isinstance(result, str):
                self.content_out = [result]
        except Exception as exc:
            internal_error("token_counter", exc)

    def count_item(self, item: Any) -> None:
        """Per streamed item; the common shapes take the fast path."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        counter = self.site.count_item
        try:
            if counter is not None:
                self.output_tokens += int(counter(item))
            elif not self.explicit_output:
                self.output_tokens += 1 if type(item) in (str, int) else default_item_count(item)
            if self.content_out is not None:
                self.content_out.append(str(item))
        except Exception as exc:
            internal_error("token_counter", exc)

    def start_stream(self) -> None:
        if self._capture():
            self.content_out = []

    def finish(self, exc: BaseException | None) -> None:
        end = time.perf_counter()
        try:
            if exc is None:
                outcome, err = "ok", ""
            elif isinstance(exc, (GeneratorExit, _cancelled_types())):
                outcome, err = "cancelled", ""
            else:
                outcome, err = "error", error_type(exc)
            variant = self.site.variant(self.device, outcome, err, self.priority)
            n_in, n_out = self.input_tokens, self.output_tokens
            if n_in or n_out:
                _TOKENS.add_many(((variant.in_key, n_in), (variant.out_key, n_out)))
            _REQUESTS.add(variant.req_key, 1)
            _ACTIVE.add(self.active_key, -1)
            self._record(end, outcome, err, exc, variant.attrs, n_in, n_out)
        except Exception as error:
            internal_error("finish", error)
        finally:
            self._end_span()

    def _record(
        self,
        end: float,
        outcome: str,
        err: str,
        exc: BaseException | None,
        attrs: dict[str, AttrValue],
        n_in: int,
        n_out: int,
    ) -> None:
        inst = _instruments.active()
        elapsed = end - self.start
        inst.duration.record(elapsed, attrs)
        if _observers:
            ttft = None if self.first_token_at is None else self.first_token_at - self.start
            for observer in _observers:
                observer(elapsed, ttft, n_out, outcome)
        if outcome == "ok" and n_out:
            if elapsed > 0:
                inst.throughput.record(n_out / elapsed, attrs)
            first = self.first_token_at
            if first is not None:
                inst.ttft.record(first - self.start, attrs)
                if n_out > 1:
                    inst.tpot.record((end - first) / (n_out - 1), attrs)
        if self.site.client_token_usage:
            if n_in:
                inst.token_usage.record(n_in, dict(attrs, **{"gen_ai.token.type": "input"}))
            if n_out:
                inst.token_usage.record(n_out, dict(attrs, **{"gen_ai.token.type": "output"}))
        span = self.span
        if span is not None and span.is_recording():
            extra: dict[str, AttrValue] = {}
            if n_in:
                extra["gen_ai.usage.input_tokens"] = n_in
            if n_out:
                extra["gen_ai.usage.output_tokens"] = n_out
            if outcome != "ok":
                extra["bitnet.outcome"] = outcome
            if err:
                extra["error.type"] = err
            if self.content_in is not None:
                extra["gen_ai.input.messages"] = _messages("user", self.content_in)
            if self.content_out:
                extra["gen_ai.output.messages"] = _messages("assistant", "".join(self.content_out))
            if extra:
                span.set_attributes(extra)
            if exc is not None and outcome == "error":
                if self._capture():
                    span.record_exception(exc)
                else:  # messages and tracebacks may quote the prompt: only the type leaves
                    span.add_event("exception", {"exception.type": err})
                span.set_status(Status(StatusCode.ERROR, err))

    def _end_span(self) -> None:
        try:
            if self._otel_token is not None:
                token, self._otel_token = self._otel_token, None
                with contextlib.suppress(Exception):  # from another context: the SDK logs it
                    otel_context.detach(token)  # type: ignore[arg-type]
            if self.span is not None:
                self.span.end()
        except Exception as exc:
            internal_error("end_span", exc)

    def _capture(self) -> bool:
        flag = self.site.capture_content
        if flag is None:
            telemetry = _pipeline.current()
            return bool(telemetry and telemetry.settings.capture_content)
        return flag


class _NullInference(InferenceContext):
    """What ``current_inference()`` returns outside a monitored call: every method is safe."""

    def __init__(self) -> None:  # no site, no span: nothing is being monitored
        self.span = None

    def add_input_tokens(self, n: int) -> None:
        pass

    def add_output_tokens(self, n: int) -> None:
        pass

    def first_token(self) -> None:
        pass

    def set_device(self, name: str) -> None:
        pass

    def set_attribute(self, key: str, value: AttrValue) -> None:
        pass

    def fallback(self, from_device: str, to_device: str, reason: str) -> None:
        record_fallback(from_device, to_device, reason)


def _record_quantization(
    call: InferenceContext | None,
    name: str,
    reference: Any,
    candidate: Any,
    fmt: str | None,
    reference_kind: str,
    kind: str,
) -> None:
    from bitnet_obs.quant import _record

    try:
        if fmt is None:
            site_fmt = call.site.attrs["bitnet.quant.format"] if call is not None else "i2_s"
            fmt = str(site_fmt) if site_fmt in ("i2_s", "tl1", "tl2") else "i2_s"
        _record.compare_outputs(
            name, reference, candidate, format=fmt, reference_kind=reference_kind, kind=kind
        )
    except Exception as exc:  # bad input inside inference: counted, never raised
        _record.skip(kind if kind in _record.KINDS else "output", "bad_input")
        if not isinstance(exc, ValueError):
            internal_error("quant_sample", exc)


_NULL = _NullInference()


def current_inference() -> InferenceContext:
    """The request being monitored in this context, or a do-nothing stand-in.

    Nested code reports what only it knows::

        bitnet_obs.current_inference().add_output_tokens(len(new_ids))
    """
    call = _current.get()
    return _NULL if call is None else call


def _cancelled_types() -> type[BaseException]:
    import asyncio

    return asyncio.CancelledError


def _valid_count(n: object, where: str) -> bool:
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        return True
    internal_error("bad_token_count", detail=f"{where}({n!r}): need an int >= 0")
    return False


def _prompt_text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    for name in ("prompt", "messages", "text", "input"):
        if name in kwargs:
            return _clip(str(kwargs[name]))
    for arg in args:
        if isinstance(arg, str):
            return _clip(arg)
    return None


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": _clip(text)}]}])


def record_fallback(
    from_device: str, to_device: str, reason: str, *, model: str = "", span: Span | None = None
) -> None:
    """Count a device fallback; usable outside monitored calls too. Never raises."""
    try:
        reason = str(reason)[:64] or "unknown"
        attrs: dict[str, AttrValue] = {
            "bitnet.device.from": str(from_device),
            "bitnet.device.to": str(to_device),
            "bitnet.fallback.reason": reason,
        }
        if model:
            attrs["gen_ai.request.model"] = model
        _FALLBACKS.add(key_of(attrs), 1)
        target = span if span is not None else trace.get_current_span()
        if target.is_recording():
            target.add_event("bitnet.device.fallback", attrs)
    except Exception as exc:
        internal_error("fallback", exc)


# ---------------------------------------------------------------------------- the monitor


class InferenceMonitor:
    """Decorator and context manager for one kind of inference call.

    Built by :func:`monitored_inference` / :func:`monitor_inference`; arguments are validated
    here, so a mistake raises at import time rather than inside inference.
    """

    def __init__(
        self,
        *,
        model: str = "unknown",
        operation: str = "text_completion",
        provider: str = "bitnet",
        quant_format: str = "i2_s",
        device: str = "cpu",
        attributes: Mapping[str, AttrValue] | None = None,
        count_input: TokenCounter | None = None,
        count_output: TokenCounter | None = None,
        count_stream_item: TokenCounter | None = None,
        capture_content: bool | None = None,
        client_token_usage: bool = False,
        priority: str | None = None,
    ) -> None:
        _check_str("model", model, r"^.{1,128}$", "a non-empty string of at most 128 chars")
        if operation not in OPERATIONS:
            raise ConfigError(f"operation={operation!r} is not valid; accepted: {OPERATIONS}")
        _check_str("provider", provider, r"^[A-Za-z0-9_.-]{1,64}$", "a short identifier")
        if quant_format not in QUANT_FORMATS:
            raise ConfigError(
                f"quant_format={quant_format!r} is not valid; accepted: {QUANT_FORMATS}"
            )
        _check_str("device", device, _DEVICE_RE.pattern, "e.g. 'cpu', 'cuda:0', 'gpu'")
        attrs: dict[str, AttrValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "gen_ai.provider.name": provider,
            "bitnet.quant.format": quant_format,
            "bitnet.device": device,
        }
        if attributes is not None and not isinstance(attributes, Mapping):
            raise ConfigError(
                f"attributes={attributes!r} is not valid; accepted: a mapping of str to "
                "str, bool, int or float"
            )
        for key, value in (attributes or {}).items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"attributes key {key!r} is not valid; accepted: non-empty str")
            if key in attrs:
                raise ConfigError(f"attributes key {key!r} clashes with the argument of that name")
            if not isinstance(value, (str, bool, int, float)):
                raise ConfigError(
                    f"attributes[{key!r}]={value!r} is not valid; accepted: str, bool, int, float"
                )
            attrs[key] = value
        if priority is not None:
            attrs["bitnet.request.priority"] = check_priority(priority)
        for name, fn in (
            ("count_input", count_input),
            ("count_output", count_output),
            ("count_stream_item", count_stream_item),
        ):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name}={fn!r} is not valid; accepted: a callable or None")
        if capture_content is not None and not isinstance(capture_content, bool):
            raise ConfigError(f"capture_content={capture_content!r}; accepted: True, False, None")
        self._site = _Site(
            attrs,
            f"{operation} {model}",
            count_input,
            count_output,
            count_stream_item,
            capture_content,
            bool(client_token_usage),
        )

    # ----- context manager -----
    def __enter__(self) -> InferenceContext:
        call = InferenceContext(self._site)
        call.begin()
        call.enter_context()
        return call

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        call = _current.get()
        if call is None or call.site is not self._site:
            internal_error("context_mismatch", detail="monitor_inference exited out of order")
            return
        call.exit_context()
        call.finish(exc)

    async def __aenter__(self) -> InferenceContext:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    # ----- decorator -----
    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise ConfigError(f"monitored_inference needs a callable, got {fn!r}")
        site = self._site
        if inspect.isasyncgenfunction(fn):
            wrapper: Callable[..., Any] = _wrap_async_gen(fn, site)
        elif inspect.isgeneratorfunction(fn):
            wrapper = _wrap_gen(fn, site)
        elif inspect.iscoroutinefunction(fn):
            wrapper = _wrap_async(fn, site)
        else:
            wrapper = _wrap_sync(fn, site)
        return cast(F, functools.wraps(fn)(wrapper))


def _wrap_sync(fn: Callable[..., Any], site: _Site) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = InferenceContext(site)
        call.begin(args, kwargs)
        token = _current.set(call)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            call.end(token, exc)
            raise
        call.end(token, None, result)
        return result

    return wrapper


def _wrap_async(fn: Callable[..., Any], site: _Site) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = InferenceContext(site)
        call.begin(args, kwargs)
        token = _current.set(call)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            call.end(token, exc)
            raise
        call.end(token, None, result)
        return result

    return wrapper


def _wrap_gen(fn: Callable[..., Iterator[Any]], site: _Site) -> Callable[..., Iterator[Any]]:
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        call = InferenceContext(site)
        # The inner generator runs in a context of its own, so the consumer between items
        # never sees our span or current_inference(), and we pay one Context.run per item.
        ctx = contextvars.copy_context()
        ctx.run(_enter_in_context, call, args, kwargs)
        exc: BaseException | None = None
        inner: Iterator[Any] | None = None
        fast = site.count_item is None and call.content_out is None
        n = 0  # items on the fast path, counted locally and added once at the end
        try:
            inner = ctx.run(fn, *args, **kwargs)
            step = inner.__next__
            run = ctx.run
            if fast:
                first = True
                while True:
                    try:
                        item = run(step)
                    except StopIteration:
                        break
                    if first:
                        first = False
                        call.first_token_at = time.perf_counter()
                    n += 1 if type(item) in _UNIT_ITEMS else _safe_item_count(item)
                    yield item
            else:
                count = call.count_item
                while True:
                    try:
                        item = run(step)
                    except StopIteration:
                        break
                    count(item)
                    yield item
        except BaseException as error:
            exc = error
            raise
        finally:
            if n and not call.explicit_output:
                call.output_tokens += n
            try:
                if exc is not None and isinstance(inner, Generator):
                    ctx.run(inner.close)
            except Exception as error:
                internal_error("stream_close", error)
            ctx.run(call.finish, exc)

    return wrapper


_UNIT_ITEMS = frozenset((str, int, bytes))


def _safe_item_count(item: Any) -> int:
    try:
        return default_item_count(item)
    except Exception as exc:
        internal_error("token_counter", exc)
        return 0


def _enter_in_context(
    call: InferenceContext, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    call.begin(args, kwargs)
    call.start_stream()
    _current.set(call)


def _wrap_async_gen(
    fn: Callable[..., AsyncIterator[Any]], site: _Site
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        call = InferenceContext(site)
        call.begin(args, kwargs, attach=False)  # attached around each step instead
        call.start_stream()
        span_ctx = trace.set_span_in_context(call.span) if call.span is not None else None
        exc: BaseException | None = None
        inner = fn(*args, **kwargs)
        try:
            while True:
                token = _current.set(call)
                otel_token = otel_context.attach(span_ctx) if span_ctx is not None else None
                try:
                    item = await inner.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    if otel_token is not None:
                        otel_context.detach(otel_token)
                    _current.reset(token)
                call.count_item(item)
                yield item
        except BaseException as error:
            exc = error
            raise
        finally:
            if exc is not None:
                try:
                    await inner.aclose()  # type: ignore[attr-defined]
                except Exception as error:
                    internal_error("stream_close", error)
            call.finish(exc)

    return wrapper


def _check_str(name: str, value: object, pattern: str, accepted: str) -> None:
    if not isinstance(value, str) or not re.match(pattern, value):
        raise ConfigError(f"{name}={value!r} is not valid; accepted: {accepted}")


@overload
def monitored_inference(fn: F, /) -> F: ...
@overload
def monitored_inference(fn: None = None, /, **options: Any) -> InferenceMonitor: ...
def monitored_inference(fn: F | None = None, /, **options: Any) -> F | InferenceMonitor:
    """Monitor an inference function: sync, async, generator or async generator.

    Bare or with arguments::

        @bitnet_obs.monitored_inference(model="bitnet-b1.58-2B", operation="chat")
        def generate(prompt): ...
    """
    if fn is not None:
        if options:
            raise ConfigError("pass options as keywords: @monitored_inference(model=...)")
        return InferenceMonitor()(fn)
    return InferenceMonitor(**options)


def monitor_inference(**options: Any) -> InferenceMonitor:
    """The same monitor as a context manager::

    with bitnet_obs.monitor_inference(model="m") as inf:
        ids = generate(...)
        inf.add_output_tokens(len(ids))
    """
    return InferenceMonitor(**options)


def with_fallback(
    primary: Callable[[], Any],
    fallback: Callable[[], Any],
    *,
    on: tuple[type[BaseException], ...] = (MemoryError,),
    from_device: str = "gpu",
    to_device: str = "cpu",
    reason: str | None = None,
) -> Any:
    """Run ``primary``; if it raises one of ``on``, record a fallback and run ``fallback``.

    Your code decides the devices; we record what happened::

        out = bitnet_obs.with_fallback(lambda: run(gpu), lambda: run(cpu),
                                       on=(torch.cuda.OutOfMemoryError,))
    """
    if not isinstance(on, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in on
    ):
        raise ConfigError(f"on={on!r} is not valid; accepted: a tuple of exception classes")
    try:
        return primary()
    except on as exc:
        current_inference().fallback(from_device, to_device, reason or type(exc).__name__)
    return fallback()
