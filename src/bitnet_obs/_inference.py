"""``@monitored_inference`` / ``monitor_inference``: one monitor for every call shape.

One object (:class:`InferenceMonitor`) is both decorator and context manager (as
prometheus_client's ``Timer``). Arguments are validated when it is built, so a mistake raises
:class:`~bitnet_obs.ConfigError` at import time; everything a call does is in
:mod:`bitnet_obs._call` and never raises into the caller.

The caller's code behaves exactly as without us: its exceptions propagate unchanged (same
object, same traceback), its return values are returned, and generators keep ``send()``,
``throw()`` and ``close()``. A plain function that *returns* a generator, async generator or
coroutine is measured until that stream ends.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import time
import types
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace

from bitnet_obs import _context
from bitnet_obs import _semconv as sc
from bitnet_obs._attributes import (
    check_attribute_values,
    check_device,
    check_kernel,
    check_label_keys,
    check_model,
    check_operation,
    check_priority,
    check_provider,
    check_quant_format,
    endpoint,
)
from bitnet_obs._call import GAP_CHUNK, OUTSIDE, Call, Site, TokenCounter, record_fallback
from bitnet_obs._context import InferenceContext
from bitnet_obs._errors import ConfigError
from bitnet_obs._instruments import REQUEST_DURATION, REQUESTS, TOKENS
from bitnet_obs._selfmon import internal_error
from bitnet_obs._tally import AttrValue

__all__ = [
    "InferenceContext",
    "InferenceMonitor",
    "bind_context",
    "current_inference",
    "monitor_inference",
    "monitored_inference",
    "record_fallback",
    "with_fallback",
]

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
Operation = Literal[
    "chat", "text_completion", "generate_content", "embeddings", "invoke_agent", "execute_tool"
]
QuantFormat = Literal[
    "i2_s", "tl1", "tl2", "tq1_0", "tq2_0", "fp32", "fp16", "bf16", "q8_0", "q4_0", "int8", "other"
]
Priority = Literal["low", "normal", "high", "critical"]

#: Attribute keys bitnet-obs records beside a site's own: user keys must not collide with them.
_OURS = frozenset(
    {*REQUEST_DURATION.attributes, *REQUESTS.attributes, *TOKENS.attributes,
     *REQUESTS.renamed.values(), *TOKENS.renamed.values()}  # 0.1's, with gen_ai_latest/dup
)  # fmt: skip


def current_inference() -> InferenceContext:
    """The request being monitored in this context, or a do-nothing stand-in.

    Nested code reports what only it knows::

        bitnet_obs.current_inference().add_output_tokens(len(new_ids))
    """
    call = _context.current.get()
    return OUTSIDE if call is None else call


def bind_context(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` running in this context: ``current_inference()`` and the active span go with it
    into another thread (``loop.run_in_executor``, a thread pool, a plain Thread)::

        await loop.run_in_executor(None, bitnet_obs.bind_context(decode), ids)

    (``asyncio.to_thread`` carries the context by itself.) Each run gets its own copy, so the
    bound callable may run in several threads at once.
    """
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def bound(*args: Any, **kwargs: Any) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return bound


def with_fallback(
    primary: Callable[[], R],
    fallback: Callable[[], R],
    *,
    on: tuple[type[BaseException], ...] = (MemoryError,),
    from_device: str = "gpu",
    to_device: str = "cpu",
    reason: str | None = None,
) -> R:
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


class InferenceMonitor:
    """Decorator and context manager for one kind of inference call.

    Built by :func:`monitored_inference` / :func:`monitor_inference`; arguments are checked
    here. As a context manager it may be shared: each ``with`` block is its own request, also
    when blocks of several generators interleave.
    """

    def __init__(
        self,
        *,
        model: str = "unknown",
        operation: Operation = "text_completion",
        provider: str = "bitnet",
        quant_format: QuantFormat = "i2_s",
        device: str = "cpu",
        attributes: Mapping[str, AttrValue] | None = None,
        count_input: TokenCounter | None = None,
        count_output: TokenCounter | None = None,
        count_stream_item: TokenCounter | None = None,
        capture_content: bool | None = None,
        client_token_usage: bool = False,
        priority: Priority | None = None,
        kernel: str | None = None,
        response_model: str | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
    ) -> None:
        attrs: dict[str, AttrValue] = {
            sc.OPERATION_NAME: check_operation(operation),
            sc.REQUEST_MODEL: check_model(model),
            sc.PROVIDER_NAME: check_provider(provider),
            **endpoint(response_model, server_address, server_port),
            "bitnet.quant.format": check_quant_format(quant_format),
            "bitnet.device": check_device(device),
        }
        if attributes is not None:
            if not isinstance(attributes, Mapping):
                raise ConfigError(
                    f"attributes of type {type(attributes).__name__} is not valid; accepted: "
                    "a mapping of str to str, bool, int or float"
                )
            check_label_keys(attributes, _OURS, "attributes")
            attrs.update(check_attribute_values(attributes, "attributes"))
        if priority is not None:
            attrs["bitnet.request.priority"] = check_priority(priority)
        for name, fn in (
            ("count_input", count_input),
            ("count_output", count_output),
            ("count_stream_item", count_stream_item),
        ):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name}={fn!r} is not valid; accepted: a callable or None")
        for name, flag in (
            ("capture_content", capture_content),
            ("client_token_usage", client_token_usage),
        ):
            if flag is not None and not isinstance(flag, bool):
                raise ConfigError(f"{name}={flag!r} is not valid; accepted: True or False")
        self._site = Site(
            attrs,
            f"{operation} {model}",
            count_input,
            count_output,
            count_stream_item,
            capture_content,
            bool(client_token_usage),
            None if kernel is None else check_kernel(kernel),
        )
        self._site.declare()
        # open ``with`` blocks: (the frame that entered, its call), newest last
        self._open: list[tuple[types.FrameType, Call]] = []

    # ----- context manager -----
    def __enter__(self) -> InferenceContext:
        return self._enter(sys._getframe(1))

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._exit(sys._getframe(1), exc)

    async def __aenter__(self) -> InferenceContext:
        return self._enter(sys._getframe(1))

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._exit(sys._getframe(1), exc)

    def _enter(self, frame: types.FrameType) -> InferenceContext:
        call = Call(self._site)
        call.begin((), {}, attach=False)
        call.enter_shared()
        self._open.append((frame, call))
        return call

    def _exit(self, frame: types.FrameType, exc: BaseException | None) -> None:
        # The block's own call: the newest entered from this frame (blocks of interleaved
        # generators end in any order; nested blocks in one frame end newest first).
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] is frame:
                call = self._open.pop(i)[1]
                break
        else:
            internal_error("context_mismatch", detail="monitor_inference exited without enter")
            return
        call.end(exc, counted=True)
        call.leave_shared()

    # ----- decorator -----
    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise ConfigError(f"monitored_inference needs a callable, got {type(fn).__name__}")
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


# --------------------------------------------------------------------------- call shapes


def _wrap_sync(fn: Callable[..., Any], site: Site) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = Call(site)
        call.begin(args, kwargs, attach=True)
        token = _context.current.set(call)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _context.current.reset(token)
            call.end(exc)
            raise
        _context.current.reset(token)
        if isinstance(result, _STREAMS):  # a stream returned: measured until it ends
            return _continue(call, result)
        call.end(None, result)
        return result

    return wrapper


def _wrap_async(fn: Callable[..., Any], site: Site) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = Call(site)
        call.begin(args, kwargs, attach=True)
        token = _context.current.set(call)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            _context.current.reset(token)
            call.end(exc)
            raise
        _context.current.reset(token)
        call.end(None, result)
        return result

    return wrapper


def _wrap_gen(
    fn: Callable[..., Generator[Any, Any, Any]], site: Site, started: Call | None = None
) -> Callable[..., Generator[Any, Any, Any]]:
    """A generator function that iterates ``fn(...)``'s generator in a context of its own
    (the consumer between items never sees our span or ``current_inference()``; a step costs
    one ``Context.run``), forwarding ``send``/``throw``/``close``, and ends the call when the
    stream ends. ``started``: a call already begun (a plain function returned the stream).
    Items of the common shapes are counted locally and added once."""

    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        ctx = contextvars.copy_context()
        call = started if started is not None else Call(site)
        ctx.run(_enter_stream, call, args, kwargs, started is None)
        try:
            inner = ctx.run(fn, *args, **kwargs)
        except BaseException as failed:
            ctx.run(_end_stream, call, failed)
            raise
        run = ctx.run
        send, throw = inner.send, inner.throw
        fast = call.site.count_item is None and call.content_out is None
        clock = time.perf_counter
        stamps = call.stamps
        stamp = stamps.append if stamps is not None else _no_stamp
        extra = 0  # tokens of the fast path's items beyond one each (chunks of ids)
        left = 1  # items to the next bookkeeping: the first item, then every GAP_CHUNK
        sink: Callable[[int], None] | None = None  # streamed int ids, from the first one
        value: Any = None
        thrown: BaseException | None = None
        ended: BaseException | None = None
        try:
            while True:
                try:
                    if thrown is None:
                        item = run(send, value)
                    else:
                        error, thrown = thrown, None
                        item = run(throw, error)
                except StopIteration as stop:
                    return stop.value
                if fast:
                    now = clock()
                    stamp(now)
                    left -= 1
                    if not left:
                        left = GAP_CHUNK
                        if call.first_token_at is None:
                            call.first_token_at = now
                        else:  # the gaps so far, and the ids buffered so far, are recorded
                            call.flush_gaps()
                    kind = type(item)  # one token each (counted by their stamps) ...
                    if kind is int:
                        if sink is None:
                            sink = call.id_sink()
                        try:
                            sink(item)
                        except (OverflowError, TypeError):  # not an int64 id: stop judging
                            sink = call.id_sink_failed()
                    elif kind is not str and kind is not bytes:  # ... or a chunk's tokens
                        extra += call.chunk_item(item) - 1
                else:
                    call.count_item(item)
                try:
                    value = yield item
                except GeneratorExit:
                    raise
                except BaseException as error:  # the consumer's throw(): into the stream
                    thrown, value = error, None
        except GeneratorExit as closing:  # the consumer's close(), or garbage collection
            ended = closing
            try:
                run(inner.close)
            except BaseException as error:  # the stream ignored GeneratorExit: as without us
                ended = error
                raise
            raise
        except BaseException as error:
            ended = error
            raise
        finally:
            if fast and not call.explicit_output and stamps is not None:
                call.output_tokens += call.stamped + len(stamps) + extra
            run(_end_stream, call, ended)

    return wrapper


def _no_stamp(_: float) -> None:
    pass


def _enter_stream(
    call: Call, args: tuple[Any, ...], kwargs: Mapping[str, Any], begin: bool
) -> None:
    if begin:
        call.begin(args, kwargs, attach=True)
    elif call.span is not None:  # resumed from a plain function that returned the stream
        otel_context.attach(trace.set_span_in_context(call.span))
    call.start_stream()
    call.enter()


def _end_stream(call: Call, exc: BaseException | None) -> None:
    call.end(exc, counted=True)
    call.leave()


def _wrap_async_gen(
    fn: Callable[..., AsyncGenerator[Any, Any]], site: Site, started: Call | None = None
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """The async twin of :func:`_wrap_gen`: ``current_inference()`` and the span are set around
    each step of the stream, in the consumer's task context; ``asend``/``athrow``/``aclose``
    are forwarded."""

    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        call = started if started is not None else Call(site)
        if started is None:
            call.begin(args, kwargs, attach=False)  # attached around each step instead
        call.start_stream()
        try:
            inner = fn(*args, **kwargs)
        except BaseException as failed:  # e.g. wrong arguments: as without us, not active
            call.end(failed)
            raise
        span_ctx = trace.set_span_in_context(call.span) if call.span is not None else None
        current = _context.current
        value: Any = None
        thrown: BaseException | None = None
        ended: BaseException | None = None
        try:
            while True:
                token = current.set(call)
                otel_token = otel_context.attach(span_ctx) if span_ctx is not None else None
                try:
                    if thrown is None:
                        item = await inner.asend(value)
                    else:
                        error, thrown = thrown, None
                        item = await inner.athrow(error)
                except StopAsyncIteration:
                    return
                finally:
                    if otel_token is not None:
                        otel_context.detach(otel_token)
                    current.reset(token)
                call.count_item(item)
                try:
                    value = yield item
                except GeneratorExit:
                    raise
                except BaseException as error:
                    thrown, value = error, None
        except GeneratorExit as closing:
            ended = closing
            try:
                await inner.aclose()
            except BaseException as error:
                ended = error
                raise
            raise
        except BaseException as error:
            ended = error
            raise
        finally:
            call.end(ended, counted=True)

    return wrapper


async def _await_measured(call: Call, awaitable: Coroutine[Any, Any, Any]) -> Any:
    token = _context.current.set(call)
    span_ctx = trace.set_span_in_context(call.span) if call.span is not None else None
    otel_token = otel_context.attach(span_ctx) if span_ctx is not None else None
    try:
        result = await awaitable
    except BaseException as exc:
        call.end(exc)
        raise
    finally:
        if otel_token is not None:
            otel_context.detach(otel_token)
        _context.current.reset(token)
    call.end(None, result)
    return result


_STREAMS = (types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType)


def _continue(call: Call, stream: Any) -> Any:
    """A plain function returned a stream: measure the call until the stream ends."""
    call.detach()  # the function returned: its caller goes on without our span
    if isinstance(stream, types.CoroutineType):
        return _await_measured(call, stream)
    if isinstance(stream, types.AsyncGeneratorType):
        return _wrap_async_gen(lambda: stream, call.site, call)()
    return _wrap_gen(lambda: stream, call.site, call)()


# --------------------------------------------------------------------------- public makers


@overload
def monitored_inference(fn: F, /) -> F: ...
@overload
def monitored_inference(
    fn: None = None,
    /,
    *,
    model: str = "unknown",
    operation: Operation = "text_completion",
    provider: str = "bitnet",
    quant_format: QuantFormat = "i2_s",
    device: str = "cpu",
    attributes: Mapping[str, AttrValue] | None = None,
    count_input: TokenCounter | None = None,
    count_output: TokenCounter | None = None,
    count_stream_item: TokenCounter | None = None,
    capture_content: bool | None = None,
    client_token_usage: bool = False,
    priority: Priority | None = None,
    kernel: str | None = None,
    response_model: str | None = None,
    server_address: str | None = None,
    server_port: int | None = None,
) -> InferenceMonitor: ...
def monitored_inference(fn: F | None = None, /, **options: Any) -> F | InferenceMonitor:
    """Monitor an inference function: sync, async, generator or async generator.

    Bare or with arguments (the keywords of :class:`InferenceMonitor`)::

        @bitnet_obs.monitored_inference(model="bitnet-b1.58-2B", operation="chat")
        def generate(prompt): ...
    """
    if fn is not None:
        if options:
            raise ConfigError("pass options as keywords: @monitored_inference(model=...)")
        return InferenceMonitor()(fn)
    return _monitor(options)


if TYPE_CHECKING:

    def monitor_inference(
        *,
        model: str = "unknown",
        operation: Operation = "text_completion",
        provider: str = "bitnet",
        quant_format: QuantFormat = "i2_s",
        device: str = "cpu",
        attributes: Mapping[str, AttrValue] | None = None,
        count_input: TokenCounter | None = None,
        count_output: TokenCounter | None = None,
        count_stream_item: TokenCounter | None = None,
        capture_content: bool | None = None,
        client_token_usage: bool = False,
        priority: Priority | None = None,
        kernel: str | None = None,
        response_model: str | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
    ) -> InferenceMonitor:
        """The same monitor as a context manager."""

else:

    def monitor_inference(**options: Any) -> InferenceMonitor:
        """The same monitor as a context manager (the keywords of :class:`InferenceMonitor`).

        For example::

            with bitnet_obs.monitor_inference(model="m") as inf:
                ids = generate(...)
                inf.add_output_tokens(len(ids))
        """
        return _monitor(options)

    # Type checkers and IDEs see the keywords; a misspelled one is a ConfigError at run time.
    monitor_inference.__signature__ = inspect.signature(InferenceMonitor).replace(
        return_annotation=InferenceMonitor
    )


def _monitor(options: Mapping[str, Any]) -> InferenceMonitor:
    try:
        return InferenceMonitor(**options)
    except TypeError:
        known = inspect.signature(InferenceMonitor).parameters
        unknown = sorted(set(options) - set(known))
        if not unknown:
            raise
        raise ConfigError(
            f"unknown keyword(s) {', '.join(unknown)}; accepted: {', '.join(known)}"
        ) from None
