"""The patch itself: ``GenerationMixin.generate`` wrapped, streamers remembering their context.

Per model, once: its name, format and BitNet layers, and one :class:`InferenceMonitor` per
device. Per call: a monitored inference around the original ``generate``; inside a request the
caller monitors already (``@monitored_inference``), the call reports into that one instead of
counting the request twice; nothing of ours runs for a nested ``generate`` (an assistant
model's, or ``generate`` calling itself).

The usual streaming pattern runs ``generate`` in a thread of its own::

    Thread(target=model.generate, kwargs=dict(..., streamer=streamer)).start()
    for text in streamer: ...

A new thread starts with an empty context, so the request's span would be lost. A
``TextStreamer`` (so ``TextIteratorStreamer`` and ``AsyncTextIteratorStreamer`` too) remembers
the context it was created in, and a ``generate`` call that has no current span of its own makes
that context its parent. (Patching ``BaseStreamer.__new__`` would cover every streamer, but
CPython cannot put a deleted ``__new__`` back exactly: subclasses then reject their arguments.)
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from opentelemetry import context as otel_context
from opentelemetry import trace
from transformers.generation.streamers import TextStreamer
from transformers.generation.utils import GenerationMixin

from bitnet_obs import (
    ConfigError,
    InferenceContext,
    InferenceMonitor,
    _state,
    current_inference,
    quant,
)
from bitnet_obs._selfmon import internal_error
from bitnet_obs.instrumentation._calls import GenerateCall
from bitnet_obs.instrumentation._layers import (
    Layer,
    Sampler,
    find_layers,
    master_weights,
    record_weight_accuracy,
)
from bitnet_obs.instrumentation._options import Options
from bitnet_obs.instrumentation._worker import Worker

_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("bitnet_obs_hf", default=False)

#: bitnet.cpp's ternary formats share their values: fidelity and weight accuracy are I2_S's.
TERNARY_FORMAT = "i2_s"


class _Model:
    """What one model resolved the first time it generated."""

    def __init__(self, name: str, fmt: str, sampler: Sampler | None, weights: Any) -> None:
        self.name = name
        self.fmt = fmt
        self.sampler = sampler
        self.weights: list[tuple[str, Any]] | None = weights or None  # until queued
        self.monitors: dict[str, InferenceMonitor] = {}


class Instrumentation:
    """One instrument()/uninstrument() cycle: the patches, the per-model cache, the worker."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.worker = Worker()
        self._lock = threading.Lock()  # re-created in a forked child (see _after_fork_in_child)
        _instances.add(self)
        self._models: weakref.WeakKeyDictionary[Any, _Model] = weakref.WeakKeyDictionary()
        self._streamers: weakref.WeakKeyDictionary[Any, otel_context.Context] = (
            weakref.WeakKeyDictionary()
        )
        self._original: Callable[..., Any] = GenerationMixin.__dict__["generate"]
        self._generate = self._wrap(self._original)
        self._original_init: Callable[..., None] = TextStreamer.__dict__["__init__"]
        self._init = self._wrap_init(self._original_init)
        self.active = False

    # ----- install / uninstall -----
    def install(self) -> None:
        self.active = True
        GenerationMixin.generate = self._generate  # type: ignore[method-assign]
        TextStreamer.__init__ = self._init  # type: ignore[method-assign]

    def uninstall(self, timeout: float = 5.0) -> None:
        """Put back the originals (unless someone patched over us: then we only go inert)."""
        self.active = False
        if GenerationMixin.__dict__.get("generate") is self._generate:
            GenerationMixin.generate = self._original  # type: ignore[method-assign]
        if TextStreamer.__dict__.get("__init__") is self._init:
            TextStreamer.__init__ = self._original_init  # type: ignore[method-assign]
        with self._lock:
            self._models.clear()
            self._streamers.clear()
        self.worker.stop(timeout)

    def _wrap_init(self, original: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(original)
        def __init__(streamer: Any, *args: Any, **kwargs: Any) -> None:
            original(streamer, *args, **kwargs)
            try:
                if self.active and trace.get_current_span().get_span_context().is_valid:
                    self._streamers[streamer] = otel_context.get_current()
            except Exception as exc:  # e.g. a subclass that cannot be weakly referenced
                internal_error("hf_streamer_context", exc)

        return __init__

    # ----- per call -----
    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.active or _inside.get():
                return original(model, *args, **kwargs)
            call, info = self._prepare(model, args, kwargs)
            if call is None or info is None:
                return original(model, *args, **kwargs)
            return self._run(original, model, call, info)

        return generate

    def _prepare(
        self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[GenerateCall | None, _Model | None]:
        try:
            info = self._models.get(model)
            if info is None:
                info = self._describe(model)
            device = _device_name(model)
            monitor = info.monitors.get(device) or self._monitor(info, device)
            return GenerateCall(model, monitor, args, dict(kwargs), timed=True), info
        except Exception as exc:
            internal_error("hf_prepare", exc)
            return None, None

    def _run(
        self, original: Callable[..., Any], model: Any, call: GenerateCall, info: _Model
    ) -> Any:
        inside = _inside.set(True)
        outer = current_inference()
        parent = None
        if call.streamer is not None and not trace.get_current_span().get_span_context().is_valid:
            context = self._streamers.get(call.streamer)
            parent = otel_context.attach(context) if context is not None else None
        try:
            if outer.recording:  # the caller monitors this request already: report into it
                return self._call(original, model, call, info, outer)
            with call.monitor as inference:
                return self._call(original, model, call, info, inference)
        finally:
            if parent is not None:
                otel_context.detach(parent)
            _inside.reset(inside)

    def _call(
        self,
        original: Callable[..., Any],
        model: Any,
        call: GenerateCall,
        info: _Model,
        inference: InferenceContext,
    ) -> Any:
        handles = call.begin(inference, lambda: self._attach(info))
        try:
            result = original(model, *call.args, **call.kwargs)
        finally:
            for handle in handles:
                handle.remove()
        call.finish(inference, result)
        return result

    def _attach(self, info: _Model) -> list[Any]:
        """Inside the call: queue the weight report once; hook layers if this call is sampled."""
        weights = None
        if info.weights is not None:  # once per model: the first call takes them
            with self._lock:
                weights, info.weights = info.weights, None
        if weights is not None:
            stopping = self.worker.stopping.is_set
            job = functools.partial(record_weight_accuracy, weights, TERNARY_FORMAT, stopping)
            if not self.worker.submit(job):
                info.weights = weights  # the queue is full: the next call tries again
        sampler = info.sampler
        options = self.options
        if sampler is None or not quant.admit_runtime_sample(
            "output", rate=options.fidelity_sample_rate
        ):
            return []
        return sampler.attach(options.fidelity_layers)

    # ----- per model -----
    def _describe(self, model: Any) -> _Model:
        layers = find_layers(model)
        fmt = quant_format(model, layers)
        options = self.options
        sampler = None
        if layers and options.layer_fidelity:
            sampler = Sampler(layers, TERNARY_FORMAT, self.worker.submit)
        weights = master_weights(model, layers) if options.weight_accuracy else None
        with self._lock:
            info = self._models.get(model)
            if info is None:  # another thread may have described it meanwhile
                info = _Model(model_name(model), fmt, sampler, weights)
                self._models[model] = info
            return info

    def _monitor(self, info: _Model, device: str) -> InferenceMonitor:
        # Checked at runtime by InferenceMonitor (and the options by instrument()).
        options = self.options
        fixed: dict[str, Any] = {
            "model": info.name,
            "response_model": info.name,  # the checkpoint that generates is the one asked for
            "operation": options.operation,
            "provider": options.provider,
            "quant_format": info.fmt,
            "server_address": options.server_address,
            "server_port": options.server_port,
        }
        try:
            monitor = InferenceMonitor(device=device, **fixed)
        except ConfigError:  # a device name outside the accepted pattern
            monitor = InferenceMonitor(device="other", **fixed)
        info.monitors[device] = monitor
        return monitor


def _device_name(model: Any) -> str:
    device = getattr(model, "device", None)
    if not isinstance(device, torch.device):
        return "cpu"
    return device.type if device.index is None else f"{device.type}:{device.index}"


def model_name(model: Any) -> str:
    """The checkpoint's Hub id (``microsoft/bitnet-b1.58-2B-4T``), a local checkpoint's folder
    name (not its full path), else the architecture (``bitnet``)."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "").strip()
    if name and (os.path.isabs(name) or name.startswith(".") or os.path.isdir(name)):
        name = os.path.basename(os.path.normpath(name))
    if not name:
        name = str(getattr(config, "model_type", "") or type(model).__name__)
    return name.replace("\n", " ")[:128]


_DTYPE_FORMATS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def quant_format(model: Any, layers: tuple[Layer, ...]) -> str:
    """``bitnet.quant.format``: from the quantization config, else the layers, else the dtype."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is not None:

        def get(key: str) -> Any:
            return config.get(key) if isinstance(config, dict) else getattr(config, key, None)

        method = get("quant_method")
        method = str(getattr(method, "value", method) or "").lower()
        if method == "bitnet":
            return TERNARY_FORMAT
        if method == "bitsandbytes" and get("load_in_8bit"):
            return "int8"
        return "other"
    if layers:
        return TERNARY_FORMAT
    dtype = getattr(model, "dtype", None)
    return _DTYPE_FORMATS.get(dtype, "other") if isinstance(dtype, torch.dtype) else "other"


_instances: weakref.WeakSet[Instrumentation] = weakref.WeakSet()


@_state.on_fork
def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance._lock = threading.Lock()  # a parent thread may have held it at fork time
