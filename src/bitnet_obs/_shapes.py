"""The call shapes a monitor wraps: functions, coroutines, generators and async generators.

Each wrapper starts a :class:`~bitnet_obs._call.Call` when the call starts, makes it current
while the caller's code runs, feeds a stream's items to the call's meter and ends the call
once. The caller's code behaves exactly as without us: its exceptions propagate unchanged
(same object, same traceback), its return values are returned, and generators keep
``send()``, ``throw()`` and ``close()``. A plain function that *returns* a generator, async
generator or coroutine is measured until that stream ends.
"""

from __future__ import annotations

import contextvars
import time
import types
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from bitnet_obs import _context
from bitnet_obs._call import Call
from bitnet_obs._site import Site
from bitnet_obs._stream import StreamMeter

__all__ = ["wrap_async", "wrap_async_gen", "wrap_gen", "wrap_sync"]

_STREAMS = (types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType)


def wrap_sync(fn: Callable[..., Any], site: Site) -> Callable[..., Any]:
    current = _context.current

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = Call(site, args, kwargs, True)
        token = current.set(call)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            current.reset(token)
            call.end(exc)
            raise
        current.reset(token)
        if isinstance(result, _STREAMS):  # a stream returned: measured until it ends
            return _continue(call, result)
        call.end(None, result)
        return result

    return wrapper


def wrap_async(fn: Callable[..., Any], site: Site) -> Callable[..., Any]:
    current = _context.current

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = Call(site, args, kwargs, True)
        token = current.set(call)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            current.reset(token)
            call.end(exc)
            raise
        current.reset(token)
        call.end(None, result)
        return result

    return wrapper


def wrap_gen(
    fn: Callable[..., Generator[Any, Any, Any]], site: Site, started: Call | None = None
) -> Callable[..., Generator[Any, Any, Any]]:
    """A generator function that iterates ``fn(...)``'s generator in a context of its own
    (the consumer between items never sees our span or ``current_inference()``; a step costs
    one ``Context.run``), forwarding ``send``/``throw``/``close``, and ends the call when the
    stream ends. ``started``: a call already begun (a plain function returned the stream).

    Items of the common shapes (str, int, chunks of ids) are fed to the meter right here:
    its :meth:`~bitnet_obs._stream.StreamMeter.item` unrolled (a stamp and a countdown to its
    :meth:`~bitnet_obs._stream.StreamMeter.tick`), plus the id sink for int items."""

    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        ctx = contextvars.copy_context()
        call = started if started is not None else ctx.run(Call, site, args, kwargs, True)
        meter = ctx.run(_enter_stream, call, started is not None)
        try:
            inner = ctx.run(fn, *args, **kwargs)
        except BaseException as failed:
            ctx.run(_end_stream, call, failed)
            raise
        run = ctx.run
        send = inner.send
        fast = meter.counts_items
        clock = time.perf_counter
        stamp, tick, ids, left = meter.stamp, meter.tick, meter.ids, meter.left
        thrown: BaseException | None = None
        ended: BaseException | None = None
        try:
            try:
                item = run(send, None)
                while True:
                    if fast:
                        stamp(clock())
                        left -= 1
                        if not left:
                            left = tick()
                        kind = type(item)
                        if kind is int:  # a token id: judged with the rest of the output
                            ids(item)
                        elif kind is not str and kind is not bytes:  # a chunk's tokens
                            call.chunk_item(item)
                    else:
                        call.count_item(item)
                    try:
                        value = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as error:  # the consumer's throw(): into the stream
                        thrown = error
                    else:
                        item = run(send, value)
                        continue
                    into, thrown = thrown, None
                    item = run(inner.throw, into)  # outside the handler: nothing chained
            except StopIteration as stop:
                return stop.value
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
            run(_end_stream, call, ended)

    return wrapper


def _enter_stream(call: Call, resumed: bool) -> StreamMeter:
    if resumed and call.span is not None:  # a plain function returned the stream
        otel_context.attach(trace.set_span_in_context(call.span))
    meter = call.start_stream(fast_loop=True)
    call.enter()
    return meter


def _end_stream(call: Call, exc: BaseException | None) -> None:
    call.end(exc, counted=True)
    call.leave()


def wrap_async_gen(
    fn: Callable[..., AsyncGenerator[Any, Any]], site: Site, started: Call | None = None
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """The async twin of :func:`wrap_gen`: ``current_inference()`` and the span are set around
    each step of the stream, in the consumer's task context; ``asend``/``athrow``/``aclose``
    are forwarded."""

    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        # attached around each step instead of once
        call = started if started is not None else Call(site, args, kwargs, False)
        call.start_stream(fast_loop=False)
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


def _continue(call: Call, stream: Any) -> Any:
    """A plain function returned a stream: measure the call until the stream ends."""
    call.detach()  # the function returned: its caller goes on without our span
    if isinstance(stream, types.CoroutineType):
        return _await_measured(call, stream)
    if isinstance(stream, types.AsyncGeneratorType):
        return wrap_async_gen(lambda: stream, call.site, call)()
    return wrap_gen(lambda: stream, call.site, call)()
