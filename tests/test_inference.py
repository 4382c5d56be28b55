"""@monitored_inference / monitor_inference (bitnet_obs._inference)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import bitnet_obs
from bitnet_obs import ConfigError, current_inference, monitor_inference, monitored_inference
from bitnet_obs._selfmon import errors as internal_errors
from bitnet_obs.testing import TelemetryCapture, capture_telemetry

OK = {"bitnet.outcome": "ok"}
ERR = {"bitnet.outcome": "error"}
CANCELLED = {"bitnet.outcome": "cancelled"}
OUT = {"bitnet.token.type": "output"}
IN = {"bitnet.token.type": "input"}


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def active(cap: TelemetryCapture) -> float:
    return cap.value("bitnet.inference.active_requests")


def test_sync_call_records_request_tokens_duration_and_span(cap: TelemetryCapture) -> None:
    @monitored_inference(model="bitnet-2b", operation="chat", device="cpu")
    def generate(prompt_ids: list[int]) -> list[int]:
        return [1, 2, 3, 4]

    assert generate([9, 9]) == [1, 2, 3, 4]
    assert cap.value("bitnet.inference.requests", **OK) == 1
    assert cap.value("bitnet.inference.tokens", **OUT) == 4
    (point,) = cap.points("gen_ai.server.request.duration")
    assert point.count == 1
    assert point.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "bitnet-2b",
        "gen_ai.provider.name": "bitnet",
        "bitnet.quant.format": "i2_s",
        "bitnet.device": "cpu",
    }
    assert cap.points("bitnet.inference.throughput")[0].count == 1
    (span,) = cap.spans()
    assert span.name == "chat bitnet-2b"
    assert span.attributes is not None
    assert span.attributes["gen_ai.usage.output_tokens"] == 4
    assert span.status.is_ok
    assert active(cap) == 0


def test_bare_decorator_and_method(cap: TelemetryCapture) -> None:
    class Model:
        @monitored_inference
        def run(self, n: int) -> int:
            return n

    assert Model().run(7) == 7
    assert Model.run.__name__ == "run"
    assert cap.value("bitnet.inference.tokens", **OUT) == 7
    assert cap.spans()[0].name == "text_completion unknown"


def test_default_token_counting_shapes(cap: TelemetryCapture) -> None:
    results: list[Any] = [
        5,
        [1, 2, 3],
        np.zeros((1, 6), dtype=np.int32),
        SimpleNamespace(usage=SimpleNamespace(prompt_tokens=11, completion_tokens=7)),
        {"usage": {"prompt_tokens": 2, "completion_tokens": 3}},
        "some text",
        None,
    ]
    for result in results:

        @monitored_inference(model="m")
        def f(r: Any = result) -> Any:
            return r

        f()
    assert cap.value("bitnet.inference.tokens", **OUT) == 5 + 3 + 6 + 7 + 3
    assert cap.value("bitnet.inference.tokens", **IN) == 11 + 2
    assert cap.value("bitnet.inference.requests", **OK) == len(results)


def test_custom_counters_and_explicit_reports(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m", count_output=lambda r: len(r["ids"]), count_input=lambda r: 1)
    def f() -> dict[str, Any]:
        return {"ids": [1, 2]}

    @monitored_inference(model="m")
    def g() -> list[int]:
        current_inference().add_input_tokens(10)
        current_inference().add_output_tokens(3)
        return [0] * 100  # explicit counts turn the default counter off

    f()
    g()
    assert cap.value("bitnet.inference.tokens", **OUT) == 2 + 3
    assert cap.value("bitnet.inference.tokens", **IN) == 1 + 10


def test_user_exception_propagates_unchanged(cap: TelemetryCapture) -> None:
    class BoomError(Exception):
        pass

    original = BoomError("kaboom")

    @monitored_inference(model="m")
    def f() -> None:
        raise original

    with pytest.raises(BoomError) as info:
        f()
    assert info.value is original
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "f"
    qualified = f"{BoomError.__module__}.{BoomError.__qualname__}"
    assert cap.value("bitnet.inference.requests", **ERR, **{"error.type": qualified}) == 1
    assert cap.points("gen_ai.server.request.duration")[0].attributes["error.type"] == qualified
    (span,) = cap.spans()
    assert span.status.status_code.name == "ERROR"
    assert span.events[0].name == "exception"
    assert active(cap) == 0


async def test_async_function_and_exception(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    async def f(n: int) -> list[int]:
        await asyncio.sleep(0)
        if n < 0:
            raise ValueError("neg")
        return list(range(n))

    assert await f(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="neg"):
        await f(-1)
    assert cap.value("bitnet.inference.requests", **OK) == 1
    assert cap.value("bitnet.inference.requests", **ERR, **{"error.type": "ValueError"}) == 1


def test_stream_ttft_and_tpot_come_from_real_timing(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def stream() -> Iterator[str]:
        time.sleep(0.2)
        for token in ("a", "b", "c", "d", "e"):
            yield token
            time.sleep(0.05)

    tokens = stream()
    before = time.perf_counter()  # the call starts at the first next()
    first = next(tokens)
    got_first = time.perf_counter()
    assert first + "".join(tokens) == "abcde"
    done = time.perf_counter()
    (ttft,) = cap.points("gen_ai.server.time_to_first_token")
    (tpot,) = cap.points("gen_ai.server.time_per_output_token")
    # the sleeps are lower bounds; the consumer's own clock gives upper bounds, however busy
    # the machine: TTFT holds the 0.2 s sleep, and after the first token come 4 more tokens
    # with 5 sleeps of 0.05 s -> 0.25 s / 4
    assert ttft.sum is not None and 0.2 <= ttft.sum <= got_first - before
    assert tpot.sum is not None and 0.25 / 4 <= tpot.sum <= (done - before - 0.2) / 4
    assert cap.value("bitnet.inference.tokens", **OUT) == 5


def test_abandoned_streams_count_as_cancelled(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def stream() -> Iterator[int]:
        yield from range(100)

    for item in stream():
        if item == 2:
            break
    gen = stream()
    next(gen)
    assert active(cap) == 1
    del gen
    gc.collect()
    assert cap.value("bitnet.inference.requests", **CANCELLED) == 2
    assert active(cap) == 0


async def test_async_stream_aclose_and_current_inference(cap: TelemetryCapture) -> None:
    seen: list[bool] = []

    @monitored_inference(model="m")
    async def stream() -> AsyncIterator[int]:
        for i in range(10):
            seen.append(
                current_inference() is not None and current_inference().span_context is not None
            )
            await asyncio.sleep(0)
            yield i

    got = [i async for i in stream()]
    assert got == list(range(10)) and all(seen)
    agen = stream()
    await agen.__anext__()
    assert not current_inference().recording  # the consumer never sees it
    await agen.aclose()  # type: ignore[attr-defined]
    assert cap.value("bitnet.inference.requests", **CANCELLED) == 1
    assert cap.value("bitnet.inference.requests", **OK) == 1
    assert active(cap) == 0


def test_generator_does_not_leak_context_to_consumer(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def stream() -> Iterator[int]:
        assert current_inference().span_context is not None
        yield 1
        yield 2

    for _ in stream():
        assert not current_inference().recording


def test_context_manager_form(cap: TelemetryCapture) -> None:
    monitor = monitor_inference(model="m", operation="chat")
    with monitor as inf:
        inf.add_input_tokens(4)
        inf.first_token()
        inf.add_output_tokens(9)
        assert current_inference() is inf
    with pytest.raises(KeyError), monitor:
        raise KeyError("x")
    assert cap.value("bitnet.inference.requests", **OK) == 1
    assert cap.value("bitnet.inference.requests", **ERR) == 1
    assert cap.value("bitnet.inference.tokens", **IN) == 4
    assert cap.points("gen_ai.server.time_to_first_token")[0].count == 1


def test_exact_counts_under_threads(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def f() -> list[int]:
        return [1, 2, 3]

    def worker() -> None:
        for _ in range(5000):
            f()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cap.value("bitnet.inference.requests", **OK) == 40_000
    assert cap.value("bitnet.inference.tokens", **OUT) == 120_000
    assert cap.points("gen_ai.server.request.duration")[0].count == 40_000
    assert active(cap) == 0


async def test_exact_counts_under_asyncio(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    async def stream(i: int) -> AsyncIterator[int]:
        for j in range(3):
            await asyncio.sleep(0)
            yield j

    @monitored_inference(model="m")
    async def f(i: int) -> int:
        await asyncio.sleep(0.001)
        return 2

    async def consume(i: int) -> None:
        async for _ in stream(i):
            pass

    await asyncio.gather(*(f(i) for i in range(1000)), *(consume(i) for i in range(1000)))
    assert cap.value("bitnet.inference.requests", **OK) == 2000
    assert cap.value("bitnet.inference.tokens", **OUT) == 2000 + 3000
    assert active(cap) == 0


def test_our_failures_never_reach_the_caller(cap: TelemetryCapture) -> None:
    def broken_counter(result: Any) -> int:
        raise RuntimeError("counter bug")

    @monitored_inference(model="m", count_output=broken_counter)
    def f() -> int:
        return 1

    before = internal_errors("token_counter")
    assert f() == 1
    assert f() == 1
    assert internal_errors("token_counter") == before + 2
    assert (
        cap.value("bitnet.obs.internal_errors", **{"bitnet.obs.error.kind": "token_counter"}) >= 2
    )

    @monitored_inference(model="m")
    def g() -> int:
        inf = current_inference()
        inf.set_attribute("k", object())  # type: ignore[arg-type]
        inf.add_output_tokens(-5)
        inf.set_device("not a device!")
        return 0

    assert g() == 0
    assert internal_errors("bad_attribute") >= 1
    assert internal_errors("bad_token_count") >= 1
    assert cap.value("bitnet.inference.requests", **OK) == 3


def test_fallback_records_counter_event_and_device(cap: TelemetryCapture) -> None:
    class OutOfMemoryError(Exception):
        pass

    def on_gpu() -> str:
        raise OutOfMemoryError("CUDA out of memory")

    @monitored_inference(model="m", device="cuda:0")
    def f() -> str:
        return str(
            bitnet_obs.with_fallback(
                on_gpu, lambda: "cpu result", on=(OutOfMemoryError,), from_device="cuda:0"
            )
        )

    assert f() == "cpu result"
    attrs = {"bitnet.device.from": "cuda:0", "bitnet.device.to": "cpu"}
    (point,) = cap.points("bitnet.device.fallbacks", **attrs)
    assert point.value == 1
    assert point.attributes["bitnet.fallback.reason"].endswith("OutOfMemoryError")
    assert cap.value("bitnet.inference.requests", **OK, **{"bitnet.device": "cpu"}) == 1
    (span,) = cap.spans()
    assert [e.name for e in span.events] == ["bitnet.device.fallback"]
    assert span.attributes is not None and span.attributes["bitnet.device"] == "cpu"
    # a fallback outside a monitored call is still counted
    current_inference().fallback("gpu", "cpu", "driver_error")
    assert cap.value("bitnet.device.fallbacks", **{"bitnet.fallback.reason": "driver_error"}) == 1


def test_with_fallback_passes_other_exceptions_through() -> None:
    def primary() -> None:
        raise KeyError("not an OOM")

    with pytest.raises(KeyError):
        bitnet_obs.with_fallback(primary, lambda: None, on=(MemoryError,))
    with pytest.raises(ConfigError, match="tuple of exception classes"):
        bitnet_obs.with_fallback(primary, lambda: None, on=MemoryError)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model": ""}, "model="),
        ({"model": 3}, "model="),
        ({"operation": "summarise"}, "operation="),
        ({"provider": "has space"}, "provider="),
        ({"quant_format": "q2_k_weird"}, "quant_format="),
        ({"device": "GPU #1"}, "device="),
        ({"attributes": {"k": [1, 2]}}, "attributes['k']"),
        ({"attributes": {"gen_ai.request.model": "x"}}, "collides"),
        # keys that cannot be a Prometheus label would make every scrape of the process fail
        ({"attributes": {"le": "eu"}}, "cannot be a metric label"),
        ({"attributes": {"quantile": "x"}}, "cannot be a metric label"),
        ({"attributes": {"__name__": "x"}}, "cannot be a metric label"),
        ({"attributes": {"job": "x"}}, "cannot be a metric label"),
        ({"attributes": {"instance": "x"}}, "cannot be a metric label"),
        ({"attributes": {"ä": "x"}}, "cannot be a metric label"),
        ({"attributes": {"": "x"}}, "non-empty"),
        ({"attributes": {"region.name": "a", "region_name": "b"}}, "collides"),
        ({"attributes": {"bitnet_outcome": "x"}}, "collides"),
        ({"attributes": {"error-type": "x"}}, "collides"),
        ({"attributes": {"k": float("nan")}}, "NaN"),
        ({"modle": "m"}, "unknown keyword"),
        ({"count_output": 5}, "count_output="),
        ({"capture_content": "yes"}, "capture_content="),
    ],
)
def test_bad_decorator_arguments_raise_at_decoration(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        monitored_inference(**kwargs)
    assert fragment in str(info.value)
    assert "accepted" in str(info.value)


def test_no_content_unless_opted_in(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def quiet(prompt: str) -> str:
        return "secret answer"

    @monitored_inference(model="m", capture_content=True)
    def loud(prompt: str) -> Iterator[str]:
        yield "visible "
        yield "answer"

    quiet("secret prompt")
    list(loud("visible prompt"))
    quiet_span, loud_span = cap.spans()
    assert "secret" not in repr(dict(quiet_span.attributes or {}))
    loud_attrs = dict(loud_span.attributes or {})
    assert "visible prompt" in str(loud_attrs["gen_ai.input.messages"])
    assert "visible answer" in str(loud_attrs["gen_ai.output.messages"])


def test_exemplars_link_to_sampled_span(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    def f() -> int:
        return 1

    f()
    (point,) = cap.points("gen_ai.server.request.duration")
    (span,) = cap.spans()
    assert point.exemplars, "a sampled span should leave an exemplar"
    assert point.exemplars[0].span_id == span.context.span_id


def test_client_token_usage_is_opt_in(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m", client_token_usage=True)
    def f() -> Any:
        return {"usage": {"prompt_tokens": 5, "completion_tokens": 8}}

    f()
    assert cap.points("gen_ai.client.inference.operation.input_tokens")[0].sum == 5
    assert cap.points("gen_ai.client.inference.operation.output_tokens")[0].sum == 8

    @monitored_inference(model="n")
    def g() -> Any:
        return {"usage": {"prompt_tokens": 5, "completion_tokens": 8}}

    g()
    model = {"gen_ai.request.model": "n"}
    assert not cap.points("gen_ai.client.inference.operation.input_tokens", **model)


# --- the caller's generators behave exactly as without us ---------------------------------


def test_generator_send_throw_close_and_return_value(cap: TelemetryCapture) -> None:
    log: list[Any] = []

    def echo() -> Iterator[int]:
        total = 0
        try:
            while True:
                try:
                    got = yield total
                except KeyError:
                    log.append("caught")
                    total = -1
                    continue
                if got is None:
                    return
                total += got
        finally:
            log.append("closed")

    plain, ours = echo(), monitored_inference(model="m")(echo)()
    for gen in (plain, ours):
        assert next(gen) == 0
        assert gen.send(5) == 5
        assert gen.throw(KeyError("x")) == -1  # delivered into the generator, which goes on
        assert gen.send(2) == 1
        with pytest.raises(ValueError, match="boom"):
            gen.throw(ValueError("boom"))  # not handled there: propagates, stream ends
    assert log == ["caught", "closed", "caught", "closed"]
    assert cap.value("bitnet.inference.requests", **ERR) == 1

    def returning() -> Iterator[int]:
        yield 1
        return 42

    gen = monitored_inference(model="m")(returning)()
    assert next(gen) == 1
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == 42
    gen = monitored_inference(model="m")(echo)()
    next(gen)
    gen.close()
    assert log[-1] == "closed"
    assert cap.value("bitnet.inference.requests", **CANCELLED) == 1
    assert active(cap) == 0


async def test_async_generator_asend_athrow_aclose(cap: TelemetryCapture) -> None:
    log: list[str] = []

    async def echo() -> Any:
        total = 0
        try:
            while True:
                try:
                    got = yield total
                except KeyError:
                    total = -1
                    continue
                total += got or 0
        finally:
            log.append("closed")

    gen = monitored_inference(model="m")(echo)()
    assert await gen.__anext__() == 0
    assert await gen.asend(4) == 4
    assert await gen.athrow(KeyError("x")) == -1
    await gen.aclose()
    assert log == ["closed"]
    assert cap.value("bitnet.inference.requests", **CANCELLED) == 1
    assert active(cap) == 0


async def test_async_generator_with_wrong_arguments_does_not_leak(cap: TelemetryCapture) -> None:
    @monitored_inference(model="m")
    async def stream(n: int) -> AsyncIterator[int]:
        yield n

    with pytest.raises(TypeError):
        await stream().__anext__()  # type: ignore[call-arg]
    assert active(cap) == 0
    assert cap.value("bitnet.inference.requests", **ERR) == 1
    assert len(cap.spans()) == 1  # the span ended


async def test_a_function_returning_a_stream_is_measured_until_it_ends(
    cap: TelemetryCapture,
) -> None:
    def numbers() -> Iterator[int]:
        yield 1
        yield 2
        raise RuntimeError("the stream fails later")

    async def anumbers() -> AsyncIterator[int]:
        for i in range(3):
            current_inference().add_output_tokens(1)
            yield i

    async def compute() -> int:
        await asyncio.sleep(0)
        current_inference().add_output_tokens(6)
        return 6

    get_stream = monitored_inference(model="m")(lambda: numbers())
    stream = get_stream()
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(RuntimeError, match="fails later"):
        next(stream)
    assert cap.value("bitnet.inference.requests", **ERR) == 1  # not an instant "ok"
    assert cap.value("bitnet.inference.tokens", **OUT) == 2
    assert [i async for i in monitored_inference(model="m")(lambda: anumbers())()] == [0, 1, 2]
    assert await monitored_inference(model="m")(lambda: compute())() == 6
    assert cap.value("bitnet.inference.requests", **OK) == 2
    assert cap.value("bitnet.inference.tokens", **OUT) == 2 + 3 + 6
    assert active(cap) == 0


def test_an_open_generator_at_interpreter_exit_is_quiet() -> None:
    import subprocess
    import sys

    code = (
        "import bitnet_obs\n"
        "@bitnet_obs.monitored_inference(model='m')\n"
        "def stream():\n"
        "    yield 1\n"
        "    yield 2\n"
        "GEN = stream()\n"
        "next(GEN)\n"  # left open: finalised while the interpreter shuts down
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stderr == "", proc.stderr
