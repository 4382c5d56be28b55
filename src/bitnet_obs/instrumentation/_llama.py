"""The patches: ``Llama``'s public calls monitored, its decoding loop read token by token.

Per call:

- ``Llama.__call__``, ``create_completion`` and ``create_chat_completion`` are one monitored
  inference each (``text_completion`` / ``chat``), ``create_embedding`` and ``embed`` one
  ``embeddings`` inference. The outermost call is the request: the calls it makes itself
  (``__call__`` → ``create_completion``, a chat handler → ``create_completion``,
  ``create_embedding`` → ``embed``) run untouched inside it.
- ``Llama.generate``, inside a request only: the prompt ids handed to the engine are the input
  tokens, and every id it samples is an output token, stamped as it arrives (time to first
  token, every inter-token gap, prefill vs decode), counted and judged for degenerate output at
  the end of the loop; when the logits sample is drawn, the last step's logits are read from
  the context and observed. Outside a request ``generate`` is the original generator.
- ``stream=True``: the call still returns a generator; the request is open from the call until
  the stream ends (exhausted, closed or collected), each step runs in the request's own context
  (the consumer never sees our span or ``current_inference()`` between chunks), and ``send``,
  ``throw`` and ``close`` reach the engine's generator.

Per model, once: ``Llama.__init__`` through :func:`bitnet_obs.monitor_model_load` (name and
format from the GGUF header, provenance and a background SHA-256 from ``path=``), one
:class:`InferenceMonitor` per operation; ``Llama.close`` (or the object's collection) through
:func:`bitnet_obs.unload_model`. A model created before ``instrument()`` is described at its
first call.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import Llama

from bitnet_obs import (
    ConfigError,
    InferenceMonitor,
    _context,
    _state,
    monitor_model_load,
    unload_model,
)
from bitnet_obs import _semconv as sc
from bitnet_obs._call import Call
from bitnet_obs._inference import site_of
from bitnet_obs._selfmon import internal_error
from bitnet_obs._site import Site
from bitnet_obs._tally import AttrValue
from bitnet_obs.instrumentation._llama_model import ModelFile, describe_file
from bitnet_obs.instrumentation._options import LlamaOptions

#: The request in flight in this context (None outside one): the outermost call is the
#: request, the calls it makes itself run untouched inside it.
_request: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "bitnet_obs_llama_cpp", default=None
)
_current = _context.current  # what current_inference() reads

#: (attribute of Llama, operation): each one this llama-cpp-python has is patched.
CALLS = (
    ("__call__", "text_completion"),
    ("create_completion", "text_completion"),
    ("create_chat_completion", "chat"),
)
EMBEDDINGS = ("create_embedding", "embed")
#: llama.cpp's finish reasons -> ours (``function_call`` is the legacy name of a tool call).
FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


@dataclass(frozen=True)
class Method:
    """Where one public method takes the arguments we read (positions after ``self``)."""

    name: str
    operation: str
    positions: Mapping[str, int]
    defaults: Mapping[str, Any]
    #: (name, position or None, default) of what :meth:`read` reads
    reads: tuple[tuple[str, int | None, Any], ...] = ()

    @classmethod
    def of(cls, name: str, operation: str, fn: Callable[..., Any]) -> Method:
        params = list(inspect.signature(fn).parameters.values())[1:]
        positions = {
            p.name: i
            for i, p in enumerate(params)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        }
        defaults = {p.name: p.default for p in params if p.default is not p.empty}
        reads = tuple(
            (read, positions.get(read), defaults.get(read))
            for read in ("stream", "max_tokens", "seed")
        )
        return cls(name, operation, positions, defaults, reads)

    def read(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[bool, dict[str, AttrValue]]:
        """What a call asks, read once: whether it streams, and its own parameters for the
        span (``max_tokens``, ``seed``). Never raises: a stream flag that is not a bool is the
        engine's to judge, as without us."""
        found = []
        n = len(args)
        for name, at, default in self.reads:
            if name in kwargs:
                found.append(kwargs[name])
            elif at is not None and at < n:
                found.append(args[at])
            else:
                found.append(default)
        stream, limit, seed = found
        try:
            streamed = bool(stream)
        except Exception:
            streamed = False
        asked: dict[str, AttrValue] = {}
        if type(limit) is int and limit > 0:
            asked[sc.REQUEST_MAX_TOKENS] = limit
        if type(seed) is int:
            asked[sc.REQUEST_SEED] = seed
        return streamed, asked

    def argument(self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """The value the call passes for ``name`` (or its default; None if it has neither)."""
        if name in kwargs:
            return kwargs[name]
        at = self.positions.get(name)
        if at is not None and at < len(args):
            return args[at]
        return self.defaults.get(name)


class _Model:
    """What one Llama object resolved: its file's facts, device and, per operation, what its
    monitor resolved (a :class:`~bitnet_obs._site.Site`)."""

    __slots__ = ("device", "file", "finalizer", "sites")

    def __init__(self, file: ModelFile, device: str) -> None:
        self.file = file
        self.device = device
        self.sites: dict[str, Site] = {}
        self.finalizer: weakref.finalize[Any, Any] | None = None  # its unload, once


@dataclass(frozen=True)
class _Raised:
    """A stream's call raised before returning its generator."""

    error: BaseException


@dataclass(frozen=True)
class _Returned:
    """A ``stream=True`` call returned something other than a generator."""

    value: Any


_READY = object()


class Instrumentation:
    """One instrument()/uninstrument() cycle: the patches and the per-model cache."""

    def __init__(self, options: LlamaOptions) -> None:
        self.options = options
        self.active = False
        self._lock = threading.Lock()  # re-created in a forked child
        _instances.add(self)
        #: by a weak reference to the Llama object (a plain dict: a call finds its model with
        #: no Python-level lookup); an entry goes when its object is collected
        self._models: dict[weakref.ref[Any], _Model] = {}
        self._originals: dict[str, Any] = {}
        self._patches: dict[str, Any] = {}
        for name, operation in CALLS:
            self._patch(name, functools.partial(self._wrap_call, name=name, operation=operation))
        for name in EMBEDDINGS:
            self._patch(name, functools.partial(self._wrap_embedding, name=name))
        self._patch("generate", self._wrap_generate)
        self._patch("__init__", self._wrap_init)
        self._patch("close", self._wrap_close)

    def _patch(self, name: str, wrap: Callable[[Any], Any]) -> None:
        original = Llama.__dict__.get(name)
        if inspect.isfunction(original):  # a version without it keeps its shape
            self._originals[name] = original
            self._patches[name] = wrap(original)

    # ----- install / uninstall -----
    def install(self) -> None:
        self.active = True
        for name, patch in self._patches.items():
            setattr(Llama, name, patch)

    def uninstall(self) -> None:
        """Put back the originals (unless someone patched over us: then we only go inert)."""
        self.active = False
        for name, patch in self._patches.items():
            if Llama.__dict__.get(name) is patch:
                setattr(Llama, name, self._originals[name])
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for model in models:  # loaded models stay loaded; we stop watching them
            if model.finalizer is not None:
                model.finalizer.detach()

    # ----- per model -----
    def _model(self, llama: Any, file: ModelFile | None = None) -> _Model:
        model = self._models.get(weakref.ref(llama))
        if model is not None:
            return model
        if file is None:
            file = describe_file(getattr(llama, "model_path", None))
        with self._lock:
            model = self._models.get(weakref.ref(llama))
            if model is None:  # another thread may have described it meanwhile
                model = _Model(file, _device(llama))
                self._models[weakref.ref(llama, self._forget)] = model
            return model

    def _forget(self, gone: weakref.ref[Any]) -> None:
        """A Llama object was collected: its entry goes (the key is the reference that died)."""
        self._models.pop(gone, None)

    def _site(self, llama: Any, operation: str) -> Site | None:
        """What the model's monitor for ``operation`` resolved; None (the call runs as without
        us) if it cannot be built. Never raises."""
        try:
            model = self._models.get(weakref.ref(llama)) or self._model(llama)
            site = model.sites.get(operation)
            if site is None:
                site = model.sites[operation] = site_of(self._build(model, operation))
            return site
        except Exception as exc:
            internal_error("llama_cpp_prepare", exc)
            return None

    def _build(self, model: _Model, operation: str) -> InferenceMonitor:
        options, file = self.options, model.file
        fixed: dict[str, Any] = {
            "model": file.name,
            "response_model": file.name,  # the file that answers is the one asked for
            "operation": operation,
            "provider": options.provider,
            "quant_format": file.quant_format,
            "server_address": options.server_address,
            "server_port": options.server_port,
        }
        try:
            return InferenceMonitor(device=model.device, **fixed)
        except ConfigError:  # a device name outside the accepted pattern
            return InferenceMonitor(device="other", **fixed)

    # ----- load / unload -----
    def _wrap_init(self, original: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(original)
        def __init__(llama: Any, *args: Any, **kwargs: Any) -> None:
            load = self._load(args, kwargs) if self.active and self.options.model_load else None
            if load is None:
                original(llama, *args, **kwargs)
                return
            monitor, file, device = load
            with monitor as loading:
                original(llama, *args, **kwargs)
                self._loaded(llama, loading, file, device)

        return __init__

    def _load(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[Any, ModelFile, str] | None:
        try:
            if kwargs.get("vocab_only"):  # a tokenizer, not a model that serves
                return None
            path = args[0] if args else kwargs.get("model_path")
            file = describe_file(path)
            layers = kwargs.get("n_gpu_layers", 0)
            device = "gpu" if layers and llama_cpp.llama_supports_gpu_offload() else "cpu"
            options = self.options
            monitor = monitor_model_load(
                model=file.name,
                quant_format=file.quant_format,
                device=device,
                mark_ready=options.mark_ready,
                path=path if isinstance(path, str) else None,
                hash_content=options.hash_content,
            )
            return monitor, file, device
        except Exception as exc:
            internal_error("llama_cpp_load", exc)
            return None

    def _loaded(self, llama: Any, loading: Any, file: ModelFile, device: str) -> None:
        """After a successful load: its size in memory, its facts cached, its unload armed."""
        try:
            loading.set_size(int(llama_cpp.llama_model_size(llama.model)))
            model = self._model(llama, file)
            attrs = {"model": file.name, "quant_format": file.quant_format, "device": device}
            finalizer = weakref.finalize(llama, _unload, attrs)
            finalizer.atexit = False  # an exiting process unloads nothing worth recording
            model.finalizer = finalizer
        except Exception as exc:
            internal_error("llama_cpp_load", exc)

    def _wrap_close(self, original: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(original)
        def close(llama: Any) -> None:
            try:
                original(llama)
            finally:
                try:
                    model = self._models.get(weakref.ref(llama))
                    if model is not None and model.finalizer is not None:
                        model.finalizer()  # once: a later close or the collection is a no-op
                except Exception as exc:
                    internal_error("llama_cpp_unload", exc)

        return close

    # ----- calls -----
    def _wrap_call(self, original: Callable[..., Any], *, name: str, operation: str) -> Any:
        method = Method.of(name, operation, original)
        models, ref = self._models, weakref.ref

        @functools.wraps(original)
        def call(llama: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.active or _request.get() is not None:
                return original(llama, *args, **kwargs)
            model = models.get(ref(llama))  # the common case, inline
            site = None if model is None else model.sites.get(operation)
            if site is None and (site := self._site(llama, operation)) is None:
                return original(llama, *args, **kwargs)
            streamed, asked = method.read(args, kwargs)
            if streamed:
                return self._open_stream(original, llama, site, asked, args, kwargs)
            # the request opened as the sync wrapper of @monitored_inference opens one
            request = Call(site, (), {}, True)
            request.requested(False, asked)
            result = _run_as(request, original, llama, args, kwargs)
            _finish(request, result)
            request.end(None, counted=True)
            return result

        return call

    def _open_stream(
        self,
        original: Callable[..., Any],
        llama: Any,
        site: Site,
        asked: Mapping[str, AttrValue],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Call the original as the stream's first step; return our generator over its stream
        (or what it raised or returned, as it did)."""
        steps = self._stream(original, llama, site, asked, args, kwargs)
        try:
            next(steps)
        except StopIteration as done:
            outcome = done.value
        else:
            return steps
        if isinstance(outcome, _Raised):
            error = outcome.error
            raise error  # outside the handler: the caller's exception, its context untouched
        return outcome.value if isinstance(outcome, _Returned) else outcome

    def _stream(
        self,
        original: Callable[..., Any],
        llama: Any,
        site: Site,
        asked: Mapping[str, AttrValue],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Generator[Any, Any, Any]:
        ctx = contextvars.copy_context()  # the request's own: every step of the stream runs in it
        run = ctx.run
        request = run(_opened, site)  # started, and ended, from this generator's frame
        request.requested(True, asked)
        try:
            inner = run(original, llama, *args, **kwargs)
        except BaseException as error:
            run(request.end, error)
            return _Raised(error)
        if not isinstance(inner, Iterator):  # a handler that does not stream: as it returned
            _finish(request, inner)
            run(request.end, None, None, True)
            return _Returned(inner)
        send = getattr(inner, "send", None)
        throw = getattr(inner, "throw", None)
        value: Any = None
        thrown: BaseException | None = None
        ended: BaseException | None = None
        last: Any = None
        try:
            try:
                value = yield _READY
            except GeneratorExit:
                raise
            except BaseException as error:  # thrown in before the first step: into the stream
                thrown = error
            while True:
                try:
                    if thrown is None and send is not None:
                        item = run(send, value)
                    elif thrown is not None:
                        into, thrown = thrown, None
                        if throw is None:
                            raise into
                        item = run(throw, into)
                    else:
                        item = run(next, inner)
                except StopIteration as stop:
                    return stop.value
                last = item
                try:
                    value = yield item
                except GeneratorExit:
                    raise
                except BaseException as error:  # the consumer's throw(): into the stream
                    thrown, value = error, None
        except GeneratorExit as closing:  # the consumer's close(), or garbage collection
            # after the chunk that says why it finished, the answer is complete: not cancelled
            ended = None if _reason(last) is not None else closing
            close = getattr(inner, "close", None)
            if close is not None:
                try:
                    run(close)
                except BaseException as error:  # the stream ignored GeneratorExit
                    ended = error
                    raise
            raise
        except BaseException as error:
            ended = error
            raise
        finally:
            if ended is None:
                _finish(request, last)
            run(request.end, ended, None, True)

    def _wrap_embedding(self, original: Callable[..., Any], *, name: str) -> Any:
        method = Method.of(name, "embeddings", original)
        counted = "return_count" in method.positions  # embed(): the engine's own count

        @functools.wraps(original)
        def embed(llama: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.active or _request.get() is not None:
                return original(llama, *args, **kwargs)
            site = self._site(llama, "embeddings")
            if site is None:
                return original(llama, *args, **kwargs)
            wanted = None
            if counted:  # ask for the count; give back what the caller asked for
                wanted = method.argument("return_count", args, kwargs)
                at = method.positions["return_count"]
                if at < len(args):
                    args = (*args[:at], True, *args[at + 1 :])
                else:
                    kwargs["return_count"] = True
            request = Call(site, (), {}, True)
            result = _run_as(request, original, llama, args, kwargs)
            if counted:
                result = _embedded(request, result, wanted)
            else:
                _finish(request, result)
            request.end(None, counted=True)
            return result

        return embed

    # ----- the decoding loop -----
    def _wrap_generate(self, original: Callable[..., Any]) -> Any:
        @functools.wraps(original)
        def generate(llama: Any, *args: Any, **kwargs: Any) -> Any:
            request = _request.get()
            inner = original(llama, *args, **kwargs)
            if request is None or not self.active:
                return inner
            prompt = args[0] if args else kwargs.get("tokens")
            return _tokens(inner, request, llama, prompt, kwargs)

        return generate


def _tokens(
    inner: Generator[int, Any, None],
    request: Call,
    llama: Any,
    prompt: Any,
    kwargs: Mapping[str, Any],
) -> Generator[int, Any, None]:
    """The engine's token generator, each sampled id stamped and kept as it arrives.

    The call's stream meter is fed inline (a clock read and two list appends a token, as the
    generator wrapper's fast loop does): its stamps are the output tokens (time to first
    token, every inter-token gap), its ids the output judged for degenerate output when the
    call ends (in chunks of 4,096: bounded memory)."""
    meter = None
    try:
        # the request's first decoding loop puts its sampling parameters on the span
        parameters = _sampling(kwargs) if request.meter is None else None
        meter = request.decode(len(prompt), parameters)
    except Exception as exc:
        internal_error("llama_cpp_generate", exc)
    if meter is None:  # nothing to feed: the engine's generator as it is
        return (yield from inner)
    stamp, keep, tick, left = meter.stamp, meter.ids, meter.tick, meter.left
    before = meter.stamps_taken()
    clock = time.perf_counter
    send, throw = inner.send, inner.throw
    value: Any = None
    thrown: BaseException | None = None
    try:
        while True:
            try:
                if thrown is None:
                    token = send(value)
                else:
                    into, thrown = thrown, None
                    token = throw(into)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            stamp(clock())
            left -= 1
            if not left:
                left = tick()
            keep(token)
            try:
                value = yield token
            except GeneratorExit:
                raise
            except BaseException as error:
                thrown, value = error, None
    except GeneratorExit:  # the completion stopped reading (EOS, stop string, max_tokens)
        inner.close()
        raise
    finally:
        meter.left = left
        if meter.stamps_taken() > before:  # this loop sampled something
            request.observe_logits(functools.partial(last_logits, llama))


def last_logits(llama: Any) -> npt.NDArray[np.float32]:
    """The logits of the last decoded position, copied out of the llama.cpp context: those the
    last sampled token was drawn from (nothing is decoded after the loop stops)."""
    data = llama_cpp.llama_get_logits_ith(llama.ctx, -1)
    if not data:
        raise ValueError("llama.cpp has no logits for the last position")
    view = np.ctypeslib.as_array(data, shape=(int(llama.n_vocab()),))
    return np.array(view, dtype=np.float32)  # a copy: the context's buffer is reused


# ----- what a call says, read once (never raising) -----


def _opened(site: Site) -> Call:
    """A stream's request, started in (and current in) the stream's own context."""
    request = Call(site, (), {}, True)
    _current.set(request)
    _request.set(request)
    return request


def _sampling(kwargs: Mapping[str, Any]) -> dict[str, AttrValue]:
    """The sampling parameters ``generate`` runs with (after the chat handler's and the
    completion's defaults): those that apply. top_p and top_k only when sampling (temperature
    above 0), a penalty only when there is one (llama-cpp-python always passes 0.0)."""
    found: dict[str, AttrValue] = {}
    temp = kwargs.get("temp")
    if type(temp) is not float and type(temp) is not int:
        return found
    found[sc.REQUEST_TEMPERATURE] = float(temp)  # a double in the conventions, as top_p
    if temp > 0:
        top_p, top_k = kwargs.get("top_p"), kwargs.get("top_k")
        if type(top_p) is float or type(top_p) is int:
            found[sc.REQUEST_TOP_P] = float(top_p)
        if type(top_k) is int:  # an int in the conventions
            found[sc.REQUEST_TOP_K] = top_k
    for key, name in _PENALTIES:
        value = kwargs.get(key)
        if value and (type(value) is float or type(value) is int):
            found[name] = float(value)
    return found


#: ``generate``'s penalties -> their attributes (each recorded when it is not 0).
_PENALTIES = (
    ("frequency_penalty", sc.REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", sc.REQUEST_PRESENCE_PENALTY),
)


def _reason(result: Any) -> str | None:
    """The finish reason of a completion's or chat completion's first choice (or chunk)."""
    if isinstance(result, dict):
        choices = result.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if isinstance(reason, str):
                return FINISH.get(reason, "other")
    return None


def _run_as(
    request: Call, original: Any, llama: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``original(llama, *args, **kwargs)`` with ``request`` current while it runs, as the sync
    wrapper of ``@monitored_inference`` runs a call; ended with the exception it raises."""
    outer, mine = _current.set(request), _request.set(request)
    try:
        result = original(llama, *args, **kwargs)
    except BaseException as exc:
        _request.reset(mine)
        _current.reset(outer)
        request.end(exc)
        raise
    _request.reset(mine)
    _current.reset(outer)
    return result


def _finish(request: Call, result: Any) -> None:
    """Why generation ended (a completion's or chat completion's first choice, or a stream's
    last chunk), or an embedding response's token count."""
    try:
        if not isinstance(result, dict):
            return
        choices = result.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if isinstance(reason, str):
                request.set_finish_reason(FINISH.get(reason, "other"))
                return
        usage = result.get("usage")
        if result.get("object") == "list" and isinstance(usage, dict):
            tokens = usage.get("prompt_tokens")
            if type(tokens) is int:
                request.add_input_tokens(tokens)
    except Exception as exc:
        internal_error("llama_cpp_finish", exc)


def _embedded(request: Call, result: Any, wanted: Any) -> Any:
    """``embed(..., return_count=True)``'s (output, tokens): the tokens counted, the result as
    the caller asked for it."""
    if not (isinstance(result, tuple) and len(result) == 2):
        return result  # pragma: no cover - a different llama-cpp-python
    try:
        if type(result[1]) is int:
            request.add_input_tokens(result[1])
    except Exception as exc:
        internal_error("llama_cpp_finish", exc)
    return result if wanted else result[0]


def _device(llama: Any) -> str:
    """``gpu`` when layers are offloaded to a device, else ``cpu``."""
    try:
        layers = getattr(getattr(llama, "model_params", None), "n_gpu_layers", 0)
        if layers and llama_cpp.llama_supports_gpu_offload():
            return "gpu"
    except Exception as exc:
        internal_error("llama_cpp_device", exc)
    return "cpu"


def _unload(attrs: dict[str, str]) -> None:
    unload_model(**attrs)  # never raises


_instances: weakref.WeakSet[Instrumentation] = weakref.WeakSet()


@_state.on_fork
def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance._lock = threading.Lock()  # a parent thread may have held it at fork time
