"""What a model load read from disk: ``monitor_model_load(..., path=...)``.

At the end of a successful load the file's header is read (no tensor data: a GGUF or safetensors
header, an npz directory) for its format, its stored types with their tensor counts and its size
(and a GGUF's architecture and parameter count);
they go on the load span and into a ``bitnet.model.info`` series (value 1) that stays until
``unload_model``.  The SHA-256 of the content is computed in a background thread started when the
load starts, so it overlaps the load and never sits on the request path (``hash_content=False``
turns it off): the info series appears once the hash is known, with it as an attribute, and a
``hash_model_file`` span linked to the load span records it and how long it took.

Never raises into the caller: a file that cannot be read or hashed is counted in
``bitnet.obs.internal_errors`` (kind ``model_provenance``) and the load is recorded as usual.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation

from bitnet_obs import _instruments, _state
from bitnet_obs import _semconv as sc
from bitnet_obs._selfmon import internal_error
from bitnet_obs._tally import AttrValue

__all__ = ["FileFacts", "begin", "finish", "forget"]

_MODEL_KEYS = (sc.REQUEST_MODEL, "bitnet.quant.format", "bitnet.device")

_lock = threading.Lock()
# model attributes (as a sorted tuple) -> the info series' attributes, once complete
_series: dict[tuple[tuple[str, AttrValue], ...], dict[str, AttrValue]] = {}


def _key(attrs: Mapping[str, AttrValue]) -> tuple[tuple[str, AttrValue], ...]:
    return tuple(sorted((k, attrs[k]) for k in _MODEL_KEYS if k in attrs))


class FileFacts:
    """One load's file: facts from the header, and the content hash from a thread."""

    def __init__(self, path: Path, hash_content: bool) -> None:
        self.path = path
        self.hash_content = hash_content
        self.sha256: str | None = None
        self.hash_seconds = 0.0
        self.attributes: dict[str, AttrValue] | None = None
        self.model_key: tuple[tuple[str, AttrValue], ...] | None = None
        self.load_span: trace.Span | None = None
        self._done = threading.Event()
        self._cancelled = False
        self._published = False
        if hash_content:
            threading.Thread(target=self._hash, name="bitnet-obs-model-hash", daemon=True).start()
        else:
            self._done.set()

    def _hash(self) -> None:
        started = time.perf_counter()
        try:
            from bitnet_obs.quant.io import content_hash

            self.sha256 = content_hash(self.path)
        except Exception as exc:
            internal_error("model_provenance", exc)
        self.hash_seconds = time.perf_counter() - started
        self._done.set()
        self._publish()

    def _publish(self) -> None:
        """Put the series in place once both the header facts and the hash are known."""
        with _lock:
            if self._cancelled or self._published or self.attributes is None:
                return
            if not self._done.is_set():
                return
            self._published = True
            attrs = dict(self.attributes)
            if self.sha256 is not None:
                attrs["bitnet.model.file.sha256"] = self.sha256
            if self.model_key is not None:
                _series[self.model_key] = attrs
        if self.sha256 is not None and self.load_span is not None:
            _hash_span(self, attrs)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the hash is done (for tests and shutdown paths); True when it is."""
        return self._done.wait(timeout)


def _hash_span(facts: FileFacts, attrs: Mapping[str, AttrValue]) -> None:
    try:
        assert facts.load_span is not None
        now = time.time_ns()
        span = _instruments.tracer().start_span(
            "hash_model_file",
            links=[trace.Link(facts.load_span.get_span_context())],
            attributes=dict(attrs),
            start_time=now - int(facts.hash_seconds * 1e9),
        )
        span.end(end_time=now)
    except Exception as exc:
        internal_error("model_provenance", exc)


def begin(path: str | os.PathLike[str] | None, hash_content: bool) -> FileFacts | None:
    """Start hashing *path* (if asked) as the load starts."""
    if path is None:
        return None
    try:
        return FileFacts(Path(path), hash_content)
    except Exception as exc:
        internal_error("model_provenance", exc)
        return None


def _quant_types(counts: Mapping[str, int]) -> str:
    return ",".join(f"{name}={n}" for name, n in counts.items())


def finish(
    facts: FileFacts | None,
    model_attrs: Mapping[str, AttrValue],
    span: trace.Span | None,
    ok: bool,
) -> None:
    """After the load: read the header, annotate the span, and publish the series (now, or when
    the hash arrives).  A failed load publishes nothing."""
    if facts is None:
        return
    if not ok:
        with _lock:
            facts._cancelled = True
        return
    try:
        from bitnet_obs.quant.io import summarize

        summary = summarize(facts.path)
        attrs: dict[str, AttrValue] = {k: v for k, v in model_attrs.items() if k in _MODEL_KEYS}
        attrs.update(
            {
                "bitnet.model.file.name": facts.path.name,
                "bitnet.model.file.format": summary.format,
                "bitnet.model.file.quant_types": _quant_types(summary.type_counts),
                "bitnet.model.file.size": summary.size_bytes,
            }
        )
        if summary.architecture is not None:
            attrs["bitnet.model.architecture"] = summary.architecture
        if summary.parameters is not None:
            attrs["bitnet.model.parameters"] = summary.parameters
    except Exception as exc:
        internal_error("model_provenance", exc)
        return
    if span is not None:
        span.set_attributes({k: v for k, v in attrs.items() if k.startswith("bitnet.model.")})
        if facts.sha256 is not None:
            span.set_attribute("bitnet.model.file.sha256", facts.sha256)
    with _lock:
        facts.attributes = attrs
        facts.model_key = _key(model_attrs)
        facts.load_span = span
    facts._publish()


def forget(model_attrs: Mapping[str, AttrValue]) -> None:
    """The model was unloaded: its info series goes."""
    with _lock:
        _series.pop(_key(model_attrs), None)


def _observe(options: CallbackOptions) -> Iterable[Observation]:
    with _lock:
        current = list(_series.values())
    return [Observation(1, attrs) for attrs in current]


_instruments.MODEL_INFO.register(_observe)


@_state.on_fork
def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # every collection takes it: a parent thread may have held it


@_state.on_reset(phase=_state.CLEAR)
def _clear() -> None:
    with _lock:
        _series.clear()
