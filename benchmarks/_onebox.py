"""Every per-call configuration of ``benchmarks/_percall.py`` in one process.

The per-process bench gives each configuration a fresh interpreter; this one puts them all in
one, so that rounds interleave batch by batch and every configuration shares the same memory,
caches and load. Global state is arranged so that they do not meet:

- the hand-written SDK code and prometheus_client use providers and registries of their own;
- bitnet-obs is bound to providers of its own per mode with the binding ``configure()`` makes
  (``_instruments.bind`` with the own-aggregation store merged into the reader, a no-op tracer
  when traces are off; API mode: the SDK's instruments, no store), and each case restores its
  binding before its batch (untimed); each mode decorates its own functions;
- the peers share the one global TracerProvider (always on): OpenLLMetry adds the
  BatchSpanProcessor over the null exporter to it, OpenLIT reuses it as it is, so each peer's
  spans go through exactly one processor, as in their own processes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from benchmarks import _percall
from benchmarks._inproc import tracer_provider
from benchmarks._worker import PeerMissing

Case = tuple[Callable[[], object], Callable[[], object]]  # (untimed setup, timed call)


def _nothing() -> None:
    pass


def _ours(mode: str) -> dict[str, Case]:
    """One mode of bitnet-obs bound as ``configure()`` binds it (``api``: the SDK's own
    instruments, as under an application's providers)."""
    import bitnet_obs
    from bitnet_obs import _instruments
    from bitnet_obs._aggregate import Store
    from bitnet_obs._export import aggregate_into

    reader = InMemoryMetricReader()
    resource = Resource.create({})
    meter_provider = MeterProvider(
        metric_readers=[reader], resource=resource, shutdown_on_exit=False
    )
    store = None
    if mode != "api":
        store = Store(2000)
        aggregate_into([reader], store, resource)
    tracers: dict[str, Callable[[], trace.TracerProvider]] = {
        "sampled": lambda: tracer_provider(True),
        "unsampled": lambda: tracer_provider(False),
        "metrics": trace.NoOpTracerProvider,
        "api": lambda: tracer_provider(True),
    }
    _instruments.bind(meter_provider, tracers[mode](), store)
    setup = functools.partial(_instruments.restore, _instruments.binding())

    @bitnet_obs.monitored_inference(model="m")
    def call() -> list[int]:
        return _percall.generate()

    @bitnet_obs.monitored_inference(model="m")
    def stream(n_tokens: int) -> Iterator[int]:
        yield from range(n_tokens)

    cases: dict[str, Case] = {f"ours-{mode}/call": (setup, call)}
    for name, fn in _percall._streams("ours", stream).items():
        if name.startswith("stream/ours"):
            cases[f"ours-{mode}/{name}"] = (setup, fn)
    return cases


def _peers() -> dict[str, Case]:
    """OpenLIT ``@trace`` and OpenLLMetry ``@workflow`` on one global provider (see above);
    a peer that is missing is left out (``skipped`` says why)."""
    cases: dict[str, Case] = {}
    trace.set_tracer_provider(tracer_provider(True, processor=False))
    for peer, traced in (
        ("traceloop", _percall.traceloop_traced),
        ("openlit", _percall.openlit_traced),
    ):
        try:
            cases[f"{peer}/call"] = (_nothing, traced())
        except _percall.PeerMissing as exc:
            SKIPPED[peer] = str(exc)
    return cases


SKIPPED: dict[str, str] = {}


def build() -> dict[str, Case]:
    """Every case, named ``configuration/case`` as in the per-process report."""
    cases: dict[str, Case] = {}
    for name, fn in _percall.sdk_cases().items():
        cases[f"sdk/{name}"] = (_nothing, fn)
    try:
        prometheus = _percall.prometheus_client_cases()
        cases["prometheus_client/call"] = (_nothing, prometheus["call"])
    except PeerMissing as exc:
        SKIPPED["prometheus_client"] = str(exc)
    cases.update(_peers())
    for mode in ("sampled", "unsampled", "metrics", "api"):
        cases.update(_ours(mode))
    return cases
