"""``@monitored_inference`` / ``monitor_inference``: one monitor for every call shape.

One object (:class:`InferenceMonitor`) is both decorator and context manager (as
prometheus_client's ``Timer``). Its keywords are declared once, in :class:`MonitorOptions`
(type, default and doc of each), which the decorator, the context manager, the monitor, their
signatures and the README's table all read. Arguments are checked when the monitor is built,
so a mistake raises :class:`~bitnet_obs.ConfigError` at import time; what a call does is in
:mod:`bitnet_obs._call` and :mod:`bitnet_obs._shapes`, and never raises into the caller.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, NamedTuple, TypedDict, TypeVar, cast, overload

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
from bitnet_obs._call import OUTSIDE, Call, preload_outputs, record_fallback
from bitnet_obs._context import InferenceContext
from bitnet_obs._errors import ConfigError
from bitnet_obs._instruments import REQUEST_DURATION, REQUESTS, TOKENS
from bitnet_obs._selfmon import internal_error
from bitnet_obs._shapes import wrap_async, wrap_async_gen, wrap_gen, wrap_sync
from bitnet_obs._site import Site, TokenCounter
from bitnet_obs._tally import AttrValue

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - the 3.10 spelling
    from typing_extensions import Unpack

__all__ = [
    "InferenceContext",
    "InferenceMonitor",
    "MonitorOptions",
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


class Option(NamedTuple):
    """A monitor keyword's default and doc (in :class:`MonitorOptions`' annotations)."""

    default: Any
    doc: str


class MonitorOptions(TypedDict, total=False):
    """The keywords of :func:`monitored_inference`, :func:`monitor_inference` and
    :class:`InferenceMonitor`, declared once: each one's type, default and doc.

    Wrap a monitor in your own helper and keep the types::

        def my_monitor(**options: Unpack[bitnet_obs.MonitorOptions]) -> InferenceMonitor:
            return bitnet_obs.monitor_inference(provider="my-server", **options)
    """

    model: Annotated[str, Option("unknown", "`gen_ai.request.model` of every call.")]
    operation: Annotated[
        Operation, Option("text_completion", "`gen_ai.operation.name`: what the call does.")
    ]
    provider: Annotated[str, Option("bitnet", "`gen_ai.provider.name`: the serving engine.")]
    quant_format: Annotated[
        QuantFormat, Option("i2_s", "`bitnet.quant.format` of the weights the call runs.")
    ]
    device: Annotated[
        str, Option("cpu", "`bitnet.device` (`cpu`, `cuda:0`, ...); `set_device()` changes it.")
    ]
    attributes: Annotated[
        Mapping[str, AttrValue] | None,
        Option(None, "Extra low-cardinality metric attributes (keys must make valid labels)."),
    ]
    count_input: Annotated[
        TokenCounter | None,
        Option(None, "Input tokens of a result (default: its `usage.prompt_tokens`)."),
    ]
    count_output: Annotated[
        TokenCounter | None,
        Option(None, "Output tokens of a result (default: ids, counts and `usage`)."),
    ]
    count_stream_item: Annotated[
        TokenCounter | None,
        Option(None, "Output tokens of one streamed item (default: 1, or a chunk's length)."),
    ]
    capture_content: Annotated[
        bool | None,
        Option(None, "Prompt and response text on spans (None: `BITNET_OBS_CAPTURE_CONTENT`)."),
    ]
    client_token_usage: Annotated[
        bool,
        Option(
            False,
            "Also record the `gen_ai.client.inference.operation.input_tokens` and "
            "`.output_tokens` histograms.",
        ),
    ]
    priority: Annotated[Priority | None, Option(None, "`bitnet.request.priority` of every call.")]
    kernel: Annotated[
        str | None,
        Option(None, "The kernel the call should take; another one in `set_kernel()` is counted."),
    ]
    response_model: Annotated[
        str | None, Option(None, "`gen_ai.response.model`, where it differs and is known.")
    ]
    server_address: Annotated[
        str | None, Option(None, "`server.address` of the serving endpoint, where known.")
    ]
    server_port: Annotated[int | None, Option(None, "`server.port` (with `server_address` only).")]


def _declared() -> dict[str, tuple[Any, Option]]:
    """Each keyword's (type, Option), in declaration order."""
    hints = typing.get_type_hints(MonitorOptions, include_extras=True)
    return {name: (hint.__origin__, hint.__metadata__[0]) for name, hint in hints.items()}


#: The keywords, in declaration order: (type, Option).
OPTIONS: dict[str, tuple[Any, Option]] = _declared()
SIGNATURE = inspect.Signature(
    [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=t)
        for name, (t, o) in OPTIONS.items()
    ],
    return_annotation="InferenceMonitor",
)

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

    Built by :func:`monitored_inference` / :func:`monitor_inference` with the keywords of
    :class:`MonitorOptions`; they are checked here. As a context manager it may be shared:
    each ``with`` block is its own request, also when blocks of several generators
    interleave.
    """

    def __init__(self, **options: Unpack[MonitorOptions]) -> None:
        self._site = _site(options)
        self._site.declare()
        preload_outputs()
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
        call = Call(self._site, (), {}, False)
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
            wrapper: Callable[..., Any] = wrap_async_gen(fn, site)
        elif inspect.isgeneratorfunction(fn):
            wrapper = wrap_gen(fn, site)
        elif inspect.iscoroutinefunction(fn):
            wrapper = wrap_async(fn, site)
        else:
            wrapper = wrap_sync(fn, site)
        return cast(F, functools.wraps(fn)(wrapper))


def site_of(monitor: InferenceMonitor) -> Site:
    """What ``monitor`` resolved: for a library instrumentor that opens its calls itself
    (:class:`~bitnet_obs._call.Call` with the site, as the sync wrapper does) instead of
    entering a ``with`` block per call."""
    return monitor._site


InferenceMonitor.__init__.__signature__ = SIGNATURE.replace(  # type: ignore[attr-defined]
    parameters=[
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *SIGNATURE.parameters.values(),
    ],
    return_annotation=None,
)


def _site(options: Mapping[str, Any]) -> Site:
    """The options checked and resolved once (a ConfigError names the bad one)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown keyword(s) {', '.join(unknown)}; accepted: {', '.join(OPTIONS)}"
        )
    o = {name: options.get(name, option.default) for name, (_, option) in OPTIONS.items()}
    attrs: dict[str, AttrValue] = {
        sc.OPERATION_NAME: check_operation(o["operation"]),
        sc.REQUEST_MODEL: check_model(o["model"]),
        sc.PROVIDER_NAME: check_provider(o["provider"]),
        **endpoint(o["response_model"], o["server_address"], o["server_port"]),
        "bitnet.quant.format": check_quant_format(o["quant_format"]),
        "bitnet.device": check_device(o["device"]),
    }
    attributes = o["attributes"]
    if attributes is not None:
        if not isinstance(attributes, Mapping):
            raise ConfigError(
                f"attributes of type {type(attributes).__name__} is not valid; accepted: "
                "a mapping of str to str, bool, int or float"
            )
        check_label_keys(attributes, _OURS, "attributes")
        attrs.update(check_attribute_values(attributes, "attributes"))
    if o["priority"] is not None:
        attrs["bitnet.request.priority"] = check_priority(o["priority"])
    for name in ("count_input", "count_output", "count_stream_item"):
        if o[name] is not None and not callable(o[name]):
            raise ConfigError(f"{name}={o[name]!r} is not valid; accepted: a callable or None")
    for name in ("capture_content", "client_token_usage"):
        if o[name] is not None and not isinstance(o[name], bool):
            raise ConfigError(f"{name}={o[name]!r} is not valid; accepted: True or False")
    kernel = o["kernel"]
    return Site(
        attrs,
        f"{o['operation']} {o['model']}",
        o["count_input"],
        o["count_output"],
        o["count_stream_item"],
        o["capture_content"],
        bool(o["client_token_usage"]),
        None if kernel is None else check_kernel(kernel),
    )


# --------------------------------------------------------------------------- public makers


@overload
def monitored_inference(fn: F, /) -> F: ...
@overload
def monitored_inference(
    fn: None = None, /, **options: Unpack[MonitorOptions]
) -> InferenceMonitor: ...
def monitored_inference(
    fn: F | None = None, /, **options: Unpack[MonitorOptions]
) -> F | InferenceMonitor:
    """Monitor an inference function: sync, async, generator or async generator.

    Bare or with arguments (the keywords of :class:`MonitorOptions`)::

        @bitnet_obs.monitored_inference(model="bitnet-b1.58-2B", operation="chat")
        def generate(prompt): ...
    """
    if fn is not None:
        if options:
            raise ConfigError("pass options as keywords: @monitored_inference(model=...)")
        return InferenceMonitor()(fn)
    return InferenceMonitor(**options)


def monitor_inference(**options: Unpack[MonitorOptions]) -> InferenceMonitor:
    """The same monitor as a context manager (the keywords of :class:`MonitorOptions`).

    For example::

        with bitnet_obs.monitor_inference(model="m") as inf:
            ids = generate(...)
            inf.add_output_tokens(len(ids))
    """
    return InferenceMonitor(**options)


# Tools that read signatures (IDEs at run time, help(), Sphinx) see each keyword and default.
monitor_inference.__signature__ = SIGNATURE  # type: ignore[attr-defined]
monitored_inference.__signature__ = SIGNATURE.replace(  # type: ignore[attr-defined]
    parameters=[
        inspect.Parameter("fn", inspect.Parameter.POSITIONAL_ONLY, default=None),
        *SIGNATURE.parameters.values(),
    ],
    return_annotation=Any,
)
