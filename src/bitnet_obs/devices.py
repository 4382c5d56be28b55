"""System, process and GPU metrics, read only when metrics are collected.

Operators watch CPU, memory and GPU next to throughput. Every instrument here is observable: the
SDK calls our callback when a reader collects (a Prometheus scrape, an OTLP export), so these
metrics cost nothing on the inference path (a psutil call is 17-60 µs; none is made per request).
``configure()`` enables the groups named in ``BITNET_OBS_DEVICE_METRICS`` (default: all)::

    from bitnet_obs import devices

    devices.enable(["system", "gpu"])  # without configure(), e.g. under your own provider
    devices.gpu_status()  # GpuStatus(available=False, detail="gpu: not available (...)")

Groups and instruments (OTel semantic-convention names, base units):

- ``system``: ``system.cpu.utilization`` (by ``cpu.mode``, all logical CPUs together),
  ``system.memory.usage`` / ``.utilization`` (by ``system.memory.state``; the states add up to
  the total), ``system.disk.io`` (summed over disks) and ``system.network.io`` (summed over
  interfaces except loopback), by ``disk.io.direction`` / ``network.io.direction``.
- ``process``: ``process.cpu.utilization`` (by ``cpu.mode``; a fraction of the CPUs the
  process may run on) and ``process.memory.usage`` (RSS).
- ``gpu``: ``hw.gpu.utilization``, ``hw.gpu.memory.usage`` / ``.limit`` / ``.utilization``,
  ``hw.temperature``, ``hw.power``, ``hw.errors`` (ECC), per GPU with ``hw.id`` (the NVML
  UUID), ``hw.type="gpu"``, ``hw.name`` (the product name) and ``bitnet.gpu.index`` (the NVML
  index). See :mod:`bitnet_obs._gpu` for what happens when NVML fails.

Utilizations are computed from the change of cumulative CPU times between two reads (at least
``MIN_INTERVAL_S`` apart; a closer read returns the previous value), not from psutil's shared
``cpu_percent`` state, so another psutil user in the application cannot skew them. Totals are
kept low-cardinality on purpose: per-disk, per-interface, per-core series belong to a host agent
such as node_exporter, not to every inference process.

Why not ``opentelemetry-instrumentation-system-metrics`` (0.66b2, evaluated): it creates its
instruments once, from the global provider, in a process-wide singleton instrumentor, so they
would not follow our rebinding (``capture_telemetry()``, an application's own provider) nor
appear in our catalogue and docs; several of its units are not base units and would show in
Prometheus as such (``system.swap.usage`` in "pages" while reporting bytes, ``packets``,
``errors``, the CPython GC count in "By"); it reads CPU through psutil's process-wide
``cpu_times_percent`` state; its callbacks let psutil errors (e.g. ``AccessDenied`` from
``net_connections`` in containers) escape into the SDK on every collection; its default set is
~30 instruments with per-CPU x per-state series; and it would add ``opentelemetry-instrumentation``
as a dependency for the seven instruments we need. It can still run beside bitnet-obs for swap,
GC, threads and file descriptors (set ``BITNET_OBS_DEVICE_METRICS=gpu`` to avoid duplicates).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import psutil
from opentelemetry.metrics import CallbackOptions, Observation

from bitnet_obs import _semconv as sc
from bitnet_obs import _state
from bitnet_obs._errors import ConfigError
from bitnet_obs._gpu import (
    GPU_INSTRUMENTS,
    SAMPLE_TTL_S,
    GpuStatus,
    NvmlSampler,
    _import_pynvml,
)
from bitnet_obs._instruments import BY_NAME, ObservedCounter, ObservedGauge
from bitnet_obs._parsers import Number
from bitnet_obs._selfmon import internal_error

__all__ = ["GROUPS", "GpuStatus", "disable", "enable", "enabled", "gpu_status"]

GROUPS = ("system", "process", "gpu")
MIN_INTERVAL_S = 0.25
_INTERVAL = Number(0.0, 60.0, "seconds")

Point = tuple[float, dict[str, Any]]

# cpu.mode value -> psutil cpu_times fields (Linux, macOS, Windows); guest time is already in user.
_CPU_MODES = (
    ("user", ("user",)),
    ("nice", ("nice",)),
    ("system", ("system",)),
    ("idle", ("idle",)),
    ("iowait", ("iowait",)),
    ("interrupt", ("irq", "softirq", "interrupt", "dpc")),
    ("steal", ("steal",)),
)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return psutil.cpu_count() or 1


class _SystemReader:
    """psutil readings; keeps the previous CPU times to turn them into utilizations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cpu: tuple[float, Any] | None = None
        self._cpu_last: list[Point] = []
        self._pid = -1
        self._proc: psutil.Process | None = None
        self._ncpu = 1
        self._proc_cpu: tuple[float, float, float] | None = None
        self._proc_last: list[Point] = []

    def baseline(self) -> None:
        """First CPU reads, so the first collection already has an interval to measure."""
        self.cpu()
        self.process_cpu()

    def cpu(self) -> list[Point]:
        with self._lock:
            now, times = time.monotonic(), psutil.cpu_times()
            prev = self._cpu
            if prev is None:
                self._cpu = (now, times)
                return []
            if now - prev[0] < MIN_INTERVAL_S:
                return self._cpu_last
            deltas: list[tuple[str, float]] = []
            for mode, names in _CPU_MODES:
                present = [n for n in names if hasattr(times, n)]
                if present:
                    delta = sum(getattr(times, n) - getattr(prev[1], n) for n in present)
                    deltas.append((mode, max(0.0, delta)))
            total = sum(d for _, d in deltas)
            if total > 0:  # else keep the baseline: no tick has passed yet
                self._cpu = (now, times)
                self._cpu_last = [(d / total, {"cpu.mode": mode}) for mode, d in deltas]
            return self._cpu_last

    def _process(self) -> psutil.Process:
        pid = os.getpid()
        if self._proc is None or pid != self._pid:  # first use, or we are a forked child
            self._proc, self._pid = psutil.Process(pid), pid
            self._ncpu, self._proc_cpu, self._proc_last = _available_cpus(), None, []
        return self._proc

    def process_cpu(self) -> list[Point]:
        with self._lock:
            proc = self._process()
            now, times = time.monotonic(), proc.cpu_times()
            prev = self._proc_cpu
            if prev is not None and now - prev[0] < MIN_INTERVAL_S:
                return self._proc_last
            self._proc_cpu = (now, times.user, times.system)
            if prev is None:
                return []
            capacity = (now - prev[0]) * self._ncpu
            # clamped: CPU times tick in 10 ms steps, a short interval can overshoot
            self._proc_last = [
                (min(1.0, max(0.0, times.user - prev[1]) / capacity), {"cpu.mode": "user"}),
                (min(1.0, max(0.0, times.system - prev[2]) / capacity), {"cpu.mode": "system"}),
            ]
            return self._proc_last

    def process_memory(self) -> list[Point]:
        with self._lock:
            return [(self._process().memory_info().rss, {})]


def _memory_states() -> tuple[int, dict[str, int]]:
    vm = psutil.virtual_memory()
    if hasattr(vm, "cached"):  # Linux, BSD: used excludes what the kernel can reclaim
        buffers = getattr(vm, "buffers", 0)
        used = max(0, vm.total - vm.free - vm.cached - buffers)
        states = {"used": used, "free": vm.free, "cached": vm.cached}
        if hasattr(vm, "buffers"):
            states["buffers"] = buffers
        return vm.total, states
    return vm.total, {"used": vm.total - vm.available, "free": vm.available}


def _memory_usage() -> list[Point]:
    _, states = _memory_states()
    return [(value, {sc.SYSTEM_MEMORY_STATE: state}) for state, value in states.items()]


def _memory_utilization() -> list[Point]:
    total, states = _memory_states()
    if not total:
        return []
    return [(value / total, {sc.SYSTEM_MEMORY_STATE: state}) for state, value in states.items()]


def _disk_io() -> list[Point]:
    counters = psutil.disk_io_counters(perdisk=False, nowrap=True)
    if not counters:  # no disks visible (some containers)
        return []
    return [
        (counters.read_bytes, {"disk.io.direction": "read"}),
        (counters.write_bytes, {"disk.io.direction": "write"}),
    ]


def _network_io() -> list[Point]:
    per_nic = psutil.net_io_counters(pernic=True, nowrap=True)
    received = sent = 0
    for name, counters in per_nic.items():
        if name == "lo" or name.startswith("lo0") or name.lower().startswith("loopback"):
            continue
        received += counters.bytes_recv
        sent += counters.bytes_sent
    return [
        (received, {"network.io.direction": "receive"}),
        (sent, {"network.io.direction": "transmit"}),
    ]


_system = _SystemReader()
_gpu = NvmlSampler()
_lock = threading.Lock()
_enabled: set[str] = set()
_configured = False  # enable() was called: a group left out is off on purpose
Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _callback(name: str, read: Callable[[], list[Point]]) -> Callback:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(value, attrs) for value, attrs in read()]
        except Exception as exc:  # never into the SDK's collection
            internal_error("devices", exc, f"reading {name}")
            return []

    return callback


def _gpu_reader(name: str) -> Callable[[], list[Point]]:
    return lambda: _gpu.points(name)


# group -> (instrument, callback); lambdas look the readers up at call time (fork resets them)
_CALLBACKS: dict[str, list[tuple[str, Callback]]] = {
    "system": [
        (sc.SYSTEM_CPU_UTILIZATION, _callback(sc.SYSTEM_CPU_UTILIZATION, lambda: _system.cpu())),
        (sc.SYSTEM_MEMORY_USAGE, _callback(sc.SYSTEM_MEMORY_USAGE, _memory_usage)),
        (
            sc.SYSTEM_MEMORY_UTILIZATION,
            _callback(sc.SYSTEM_MEMORY_UTILIZATION, _memory_utilization),
        ),
        (sc.SYSTEM_DISK_IO, _callback(sc.SYSTEM_DISK_IO, _disk_io)),
        (sc.SYSTEM_NETWORK_IO, _callback(sc.SYSTEM_NETWORK_IO, _network_io)),
    ],
    "process": [
        (
            sc.PROCESS_CPU_UTILIZATION,
            _callback(sc.PROCESS_CPU_UTILIZATION, lambda: _system.process_cpu()),
        ),
        (
            sc.PROCESS_MEMORY_USAGE,
            _callback(sc.PROCESS_MEMORY_USAGE, lambda: _system.process_memory()),
        ),
    ],
    "gpu": [(name, _callback(name, _gpu_reader(name))) for name in GPU_INSTRUMENTS],
}


def _instrument(name: str) -> ObservedGauge | ObservedCounter:
    instrument = BY_NAME[name]
    assert isinstance(instrument, (ObservedGauge, ObservedCounter))
    return instrument


def _register(group: str) -> None:
    for name, callback in _CALLBACKS[group]:
        _instrument(name).register(callback)


def enable(
    groups: Iterable[str] = GROUPS,
    *,
    nvml: ModuleType | None = None,
    gpu_sample_interval_s: float | None = None,
) -> None:
    """Report these groups from the next collection on; idempotent, and never raises at run time.

    ``gpu`` initialises NVML here (once); without a usable GPU it logs one INFO line and
    reports nothing. ``nvml`` is a module with pynvml's API to use instead of ``pynvml`` (a
    test's fake, another binding); ``gpu_sample_interval_s`` how long one NVML round serves
    every GPU instrument (default 0.5 s; 0 reads NVML at every collection). Either replaces
    the GPU reader, so pass them before ``gpu`` is enabled or after ``disable(["gpu"])``. An
    unknown group name raises ConfigError::

        devices.enable(["system", "process"])
    """
    global _configured, _gpu
    wanted = tuple(groups)
    unknown = sorted(set(wanted) - set(GROUPS))
    if unknown:
        raise ConfigError(f"unknown device metric group(s) {unknown}; accepted: {GROUPS}")
    if nvml is not None or gpu_sample_interval_s is not None:
        ttl = _INTERVAL.check("gpu_sample_interval_s", gpu_sample_interval_s or 0.0)
        if gpu_sample_interval_s is None:
            ttl = SAMPLE_TTL_S
        module = nvml
        with _lock:
            if "gpu" in _enabled:
                raise ConfigError("devices.enable(nvml=...): the GPU group is already enabled; "
                                  "accepted: after devices.disable(['gpu'])")  # fmt: skip
            _gpu = NvmlSampler(_import_pynvml if module is None else lambda: module, ttl)
    with _lock:
        _configured = True
        new = [group for group in GROUPS if group in wanted and group not in _enabled]
        for group in new:
            _register(group)
            _enabled.add(group)
    try:
        if "system" in new or "process" in new:
            _system.baseline()
        if "gpu" in new:
            _gpu.start()
    except Exception as exc:
        internal_error("devices", exc, "enable")


def disable(groups: Iterable[str] = GROUPS) -> None:
    """Stop reporting these groups; disabling ``gpu`` also releases NVML (``nvmlShutdown``)."""
    wanted = set(groups)
    with _lock:
        for group in GROUPS:
            if group in wanted and group in _enabled:
                for name, callback in _CALLBACKS[group]:
                    _instrument(name).unregister(callback)
                _enabled.discard(group)
    if "gpu" in wanted:
        _gpu.shutdown()


def enabled() -> frozenset[str]:
    """The groups being reported."""
    return frozenset(_enabled)


def gpu_status() -> GpuStatus:
    """Whether GPUs can be read, and which are failing; for the device health check.

    Initialises NVML on first use unless the ``gpu`` group was switched off by configuration
    (then: not available, "metrics disabled"). Never raises.
    """
    try:
        if "gpu" not in _enabled and _configured:
            return GpuStatus(False, "gpu: not monitored (BITNET_OBS_DEVICE_METRICS)")
        return _gpu.status()
    except Exception as exc:
        internal_error("devices", exc, "gpu_status")
        return GpuStatus(False, f"gpu: status unknown ({type(exc).__name__})")


@_state.on_fork
def _after_fork_in_child() -> None:
    global _system, _lock
    _system = _SystemReader()
    _lock = threading.Lock()
    _gpu.after_fork()


@_state.on_reset
def _reset() -> None:
    global _configured, _gpu
    disable()
    _configured = False
    _gpu = NvmlSampler()
