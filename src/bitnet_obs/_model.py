"""``monitor_model_load``: model loading as telemetry and readiness, in one object.

Like ``monitor_inference``, one object is both decorator and context manager. A successful
load records its duration, counts it, adds the model to ``bitnet.model.loaded``, sets
``bitnet.model.size`` and (unless ``mark_ready=False``) marks the process ready; a failed load
counts the error, leaves the process not ready with the reason on ``/health/ready``, and
re-raises the caller's exception unchanged::

    @bitnet_obs.monitor_model_load(model="bitnet-b1.58-2B-4T", quant_format="i2_s")
    def load(path):
        return read_weights(path)          # a dict of arrays: its size is measured

    with bitnet_obs.monitor_model_load(model="m") as loading:
        weights = read_weights(path)
        loading.add_tensors(weights.values())

``path=`` names the file (or checkpoint directory) the load reads: its format, stored types,
size and content hash are recorded too (``bitnet.model.info``; see ``_provenance``)::

    with bitnet_obs.monitor_model_load(model="m", path="ggml-model-i2_s.gguf"):
        model = load_gguf("ggml-model-i2_s.gguf")
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from bitnet_obs import _instruments, _provenance, health
from bitnet_obs import _semconv as sc
from bitnet_obs._attributes import check_device, check_model, check_quant_format, error_type
from bitnet_obs._errors import ConfigError
from bitnet_obs._instruments import MODEL_LOAD_DURATION, MODEL_LOADED, MODEL_LOADS, MODEL_SIZE
from bitnet_obs._selfmon import describe, internal_error
from bitnet_obs._tally import AttrValue, key_of

F = TypeVar("F", bound=Callable[..., Any])

_LOADS = MODEL_LOADS
_LOADED = MODEL_LOADED
_current_load: contextvars.ContextVar[ModelLoad | None] = contextvars.ContextVar(
    "bitnet_obs_model_load", default=None
)


def _nbytes(obj: Any) -> int | None:
    """Bytes of an array, a mapping/sequence of arrays, or anything with ``nbytes``."""
    size = getattr(obj, "nbytes", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    items: Iterable[Any] | None = None
    if isinstance(obj, Mapping):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    if items is None:
        return None
    total = 0
    for item in items:
        part = getattr(item, "nbytes", None)
        if not isinstance(part, int) or isinstance(part, bool):
            return None
        total += part
    return total


class ModelLoad:
    """One load in progress: lets the loading code report the model's size."""

    def __init__(self, monitor: ModelLoadMonitor) -> None:
        self._monitor = monitor
        self.size_bytes: int | None = monitor.size_bytes
        self.start = time.perf_counter()
        self.span: trace.Span | None = None
        self.token: contextvars.Token[ModelLoad | None] | None = None
        self.file = _provenance.begin(monitor.path, monitor.hash_content)

    def set_size(self, nbytes: int) -> None:
        if isinstance(nbytes, int) and not isinstance(nbytes, bool) and nbytes >= 0:
            self.size_bytes = nbytes
        else:
            internal_error("bad_model_size", detail=f"set_size({describe(nbytes)})")

    def add_tensors(self, tensors: Iterable[Any]) -> None:
        """Add the bytes of these arrays (numpy, or anything with ``nbytes``)."""
        try:
            total = sum(int(t.nbytes) for t in tensors)
            self.size_bytes = (self.size_bytes or 0) + total
        except Exception as exc:
            internal_error("bad_model_size", exc)


class ModelLoadMonitor:
    """Decorator and context manager for loading one model (see the module docstring).

    ``mark_ready=False`` leaves readiness entirely to you. Otherwise: while no model is
    loaded, a load in progress or a failed load makes the process not ready (the reason is on
    ``/health/ready``), and a successful load makes it ready; a process that already serves a
    model stays ready while it loads another, and if that one fails.
    """

    def __init__(
        self,
        *,
        model: str,
        quant_format: str = "i2_s",
        device: str = "cpu",
        size_bytes: int | None = None,
        mark_ready: bool = True,
        path: str | os.PathLike[str] | None = None,
        hash_content: bool = True,
    ) -> None:
        check_model(model)
        check_quant_format(quant_format)
        check_device(device)
        if path is not None and not isinstance(path, str | os.PathLike):
            raise ConfigError(f"path={path!r} is not valid; accepted: a str or os.PathLike")
        self.path = path
        self.hash_content = bool(hash_content)
        if size_bytes is not None and (
            not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes < 0
        ):
            raise ConfigError(f"size_bytes={size_bytes!r} is not valid; accepted: an int >= 0")
        self.size_bytes = size_bytes
        self.mark_ready = bool(mark_ready)
        self.attrs: dict[str, AttrValue] = {
            sc.REQUEST_MODEL: model,
            "bitnet.quant.format": quant_format,
            "bitnet.device": device,
        }

    def _begin(self) -> ModelLoad:
        load = ModelLoad(self)
        try:
            if self.mark_ready and _LOADED.value() <= 0:
                # Nothing is loaded yet: not ready until this load succeeds. A process that
                # already serves a model stays ready while it loads another one.
                health.mark_not_ready(f"loading model {self.attrs['gen_ai.request.model']}")
            load.span = _instruments.tracer().start_span(
                f"load_model {self.attrs['gen_ai.request.model']}", attributes=self.attrs
            )
        except Exception as exc:
            internal_error("model_load", exc)
        return load

    def __enter__(self) -> ModelLoad:
        load = self._begin()
        load.token = _current_load.set(load)
        return load

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        load = _current_load.get()
        if load is None or load._monitor is not self:
            internal_error("context_mismatch", detail="monitor_model_load exited out of order")
            return
        if load.token is not None:
            _current_load.reset(load.token)
        self._finish(load, exc)

    def _finish(self, load: ModelLoad, exc: BaseException | None, result: Any = None) -> None:
        try:
            elapsed = time.perf_counter() - load.start
            model = str(self.attrs[sc.REQUEST_MODEL])
            if exc is None:
                if load.size_bytes is None and result is not None:
                    load.size_bytes = _nbytes(result)
                MODEL_LOAD_DURATION.record(elapsed, self.attrs)
                _LOADS.add(key_of(dict(self.attrs, **{"bitnet.outcome": "ok"})), 1)
                _LOADED.add(key_of(self.attrs), 1)
                if load.size_bytes is not None:
                    MODEL_SIZE.set(load.size_bytes, self.attrs)
                if self.mark_ready:
                    health.mark_ready()
            else:
                err = error_type(exc)
                attrs = dict(self.attrs, **{sc.ERROR_TYPE: err})
                MODEL_LOAD_DURATION.record(elapsed, attrs)
                _LOADS.add(key_of(dict(attrs, **{"bitnet.outcome": "error"})), 1)
                if self.mark_ready and _LOADED.value() <= 0:
                    # Nothing serves: not ready, with the reason. A failed hot-swap beside a
                    # model that serves keeps the process in rotation (the alert still fires).
                    health.mark_not_ready(f"model {model} failed to load: {err}")
            span = load.span
            _provenance.finish(load.file, self.attrs, span, ok=exc is None)
            if span is not None:
                if load.size_bytes is not None:
                    span.set_attribute("bitnet.model.size", load.size_bytes)
                if exc is not None:
                    span.add_event("exception", {"exception.type": error_type(exc)})
                    span.set_status(Status(StatusCode.ERROR, error_type(exc)))
                span.end()
        except Exception as error:
            internal_error("model_load", error)

    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise ConfigError(f"monitor_model_load needs a callable, got {fn!r}")
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                load = self._begin()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    self._finish(load, exc)
                    raise
                self._finish(load, None, result)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            load = self._begin()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._finish(load, exc)
                raise
            self._finish(load, None, result)
            return result

        return cast(F, wrapper)


def monitor_model_load(
    *,
    model: str,
    quant_format: str = "i2_s",
    device: str = "cpu",
    size_bytes: int | None = None,
    mark_ready: bool = True,
    path: str | os.PathLike[str] | None = None,
    hash_content: bool = True,
) -> ModelLoadMonitor:
    """Monitor loading a model; decorator or context manager (see the module docstring).

    *path* records what was loaded (format, stored types, size, content hash: see the module
    docstring); ``hash_content=False`` skips the hash (a background read of the whole file).
    """
    return ModelLoadMonitor(
        model=model,
        quant_format=quant_format,
        device=device,
        size_bytes=size_bytes,
        mark_ready=mark_ready,
        path=path,
        hash_content=hash_content,
    )


def unload_model(*, model: str, quant_format: str = "i2_s", device: str = "cpu") -> None:
    """Record that a model was unloaded (decrements ``bitnet.model.loaded``, never below 0: an
    unload of a model that was not loaded is a counted internal error). Never raises."""
    try:
        attrs: dict[str, AttrValue] = {
            sc.REQUEST_MODEL: model,
            "bitnet.quant.format": quant_format,
            "bitnet.device": device,
        }
        if not _LOADED.tally.add_if_positive(key_of(attrs), -1):
            internal_error("unload_not_loaded", detail="unload_model() of a model not loaded")
        _provenance.forget(attrs)
    except Exception as exc:
        internal_error("model_unload", exc)
