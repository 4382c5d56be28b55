"""GPU readings through NVML (``pynvml``, package nvidia-ml-py, extra ``[gpu]``) for devices.py.

``nvmlInit`` runs once and the device handles are cached; after that a reading is a handful of
NVML calls made only when metrics are collected (one round per collection, shared by every GPU
instrument). What can go wrong, and what happens:

- no ``pynvml``, no ``libnvidia-ml``, no driver, no GPU: no GPU points, one INFO log line, and
  :meth:`NvmlSampler.status` says why. Never an exception.
- NVML answers "not supported" (or "function not found", older drivers) for one field of one
  device: that field is skipped from then on; the others are reported.
- NVML says the GPU is gone (``NVML_ERROR_GPU_IS_LOST``: fallen off the bus or otherwise
  inaccessible; ``NVML_ERROR_RESET_REQUIRED``: unusable until reset): that device is left out
  of that collection entirely, the health check reports it failing, and the error is counted
  in ``bitnet.obs.internal_errors{bitnet.obs.error.kind="nvml"}``. It is tried again next time.
- any other error on one field (a timeout, ``UNKNOWN``, a permission, an exception that is not
  NVML's): only that field is missing from that collection, counted the same way; the
  device's other readings are reported, and the device is not failing. A transient error on
  one reading must not blank a whole GPU's dashboard.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from bitnet_obs import _semconv as sc
from bitnet_obs._selfmon import internal_error

logger = logging.getLogger("bitnet_obs")

SAMPLE_TTL_S = 0.5  # one NVML round serves every GPU instrument of one collection
# NVML return codes (nvml.h, pynvml's NVML_ERROR_*)
_SKIPPED_FOR_GOOD = frozenset({3, 13})  # NOT_SUPPORTED, FUNCTION_NOT_FOUND
_DEVICE_LOST = frozenset({15, 16})  # GPU_IS_LOST, RESET_REQUIRED

Point = tuple[float, dict[str, Any]]


@dataclass(frozen=True)
class GpuStatus:
    """What the device health check reports: ``available`` False is normal on a CPU-only box."""

    available: bool
    detail: str
    devices: int = 0
    failing: tuple[int, ...] = ()


@dataclass
class _Device:
    index: int
    handle: Any
    attrs: dict[str, Any]
    unsupported: set[str] = field(default_factory=set)
    error: str = ""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _import_pynvml() -> ModuleType:
    return importlib.import_module("pynvml")


class NvmlSampler:
    """Initialises NVML once, caches handles, and reads every device at most once per TTL."""

    def __init__(
        self, loader: Callable[[], ModuleType] = _import_pynvml, ttl_s: float = SAMPLE_TTL_S
    ) -> None:
        self._loader = loader
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._nv: ModuleType | None = None
        self._devices: list[_Device] = []
        self._started = False
        self._reason = ""
        self._logged = False
        self._sample: dict[str, list[Point]] = {}
        self._sampled_at = -1e18

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> bool:
        """Initialise NVML (once); False, with one INFO line, when there is no usable GPU."""
        with self._lock:
            if not self._started:
                self._started = True
                self._init()
            return self._nv is not None

    def _init(self) -> None:
        try:
            nv = self._loader()
        except ImportError:
            return self._unavailable("nvidia-ml-py is not installed (pip install bitnet-obs[gpu])")
        except Exception as exc:
            return self._unavailable(f"pynvml failed to import: {exc!r}")
        try:
            nv.nvmlInit()
        except Exception as exc:
            return self._unavailable(f"NVML init failed: {_describe(exc)}")
        try:
            count = int(nv.nvmlDeviceGetCount())
        except Exception as exc:
            _shutdown(nv)
            return self._unavailable(f"NVML could not count devices: {_describe(exc)}")
        devices: list[_Device] = []
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:
                internal_error("nvml", exc, f"GPU {index}: no handle: {_describe(exc)}")
                continue
            uuid = _optional(nv, "nvmlDeviceGetUUID", handle) or f"gpu-index-{index}"
            name = _optional(nv, "nvmlDeviceGetName", handle) or "unknown"
            attrs = {sc.HW_ID: uuid, sc.HW_TYPE: "gpu", sc.HW_NAME: name, "bitnet.gpu.index": index}
            devices.append(_Device(index, handle, attrs))
        if not devices:
            _shutdown(nv)
            return self._unavailable("no GPU found" if count == 0 else "no GPU could be opened")
        self._nv, self._devices = nv, devices

    def after_fork(self) -> None:
        """In a forked child: a parent thread may have held the lock mid-sample; the cached
        sample is the parent's, so the next reading is a fresh NVML round."""
        self._lock = threading.Lock()
        self._sample, self._sampled_at = {}, -1e18

    def _unavailable(self, reason: str) -> None:
        self._reason = reason
        if not self._logged:
            self._logged = True
            logger.info("bitnet-obs: no GPU metrics (%s)", reason)

    def shutdown(self) -> None:
        """Release NVML; a later :meth:`start` initialises it again."""
        with self._lock:
            if self._nv is not None:
                _shutdown(self._nv)
            self._nv, self._devices, self._started = None, [], False
            self._sample, self._sampled_at = {}, -1e18

    # --- readings -------------------------------------------------------------------------

    def points(self, instrument: str) -> list[Point]:
        """The latest points of one ``hw.*`` instrument (a fresh NVML round if stale)."""
        if self._nv is None:
            return []
        with self._lock:
            now = time.monotonic()
            if now - self._sampled_at >= self._ttl_s:
                self._sample = self._read_all()
                self._sampled_at = now
            return self._sample.get(instrument, [])

    def status(self) -> GpuStatus:
        """Availability and, from a fresh-enough reading, which devices are failing."""
        if not self.start():
            return GpuStatus(False, f"gpu: not available ({self._reason})")
        self.points(sc.HW_GPU_UTILIZATION)  # refreshes the reading when stale
        with self._lock:
            failing = tuple(d.index for d in self._devices if d.error)
            errors = "; ".join(f"GPU {d.index}: {d.error}" for d in self._devices if d.error)
            total = len(self._devices)
        if failing:
            detail = f"gpu: {len(failing)} of {total} device(s) failing: {errors}"
        else:
            detail = f"gpu: {total} device(s) ok"
        return GpuStatus(True, detail, total, failing)

    def _read_all(self) -> dict[str, list[Point]]:
        nv = self._nv
        sample: dict[str, list[Point]] = {}
        if nv is None:
            return sample
        for device in self._devices:
            got = self._read_device(nv, device)
            if got is None:
                continue
            for name, value, extra in got:
                attrs = dict(device.attrs, **extra) if extra else device.attrs
                sample.setdefault(name, []).append((value, attrs))
        return sample

    def _read_device(
        self, nv: ModuleType, device: _Device
    ) -> list[tuple[str, float, dict[str, Any]]] | None:
        """The device's readings, or None when NVML says the device is gone."""
        out: list[tuple[str, float, dict[str, Any]]] = []
        for field_name, reader in _READERS:
            if field_name in device.unsupported:
                continue
            try:
                out.extend(reader(nv, device.handle))
            except Exception as exc:
                # only NVML's own errors carry NVML's codes
                code = _code(exc) if isinstance(exc, getattr(nv, "NVMLError", ())) else None
                if code in _SKIPPED_FOR_GOOD:
                    device.unsupported.add(field_name)
                    continue
                detail = _describe(exc)
                internal_error("nvml", exc, f"GPU {device.index} ({field_name}): {detail}")
                if code in _DEVICE_LOST:
                    device.error = detail
                    return None
                # only this field is missing from this collection; the others still count
        device.error = ""
        return out


def _describe(exc: BaseException) -> str:
    code = _code(exc)
    try:
        text = str(exc)
    except Exception:
        text = type(exc).__name__
    return f"{text} (NVML error {code})" if code is not None else text


def _optional(nv: ModuleType, fn: str, handle: Any) -> str | None:
    try:
        return _text(getattr(nv, fn)(handle))
    except Exception:
        return None


def _shutdown(nv: ModuleType) -> None:
    try:
        nv.nvmlShutdown()
    except Exception as exc:
        internal_error("nvml", exc, "nvmlShutdown failed")


# Each reader returns (instrument, value, extra attributes) for one device.
Reading = list[tuple[str, float, dict[str, Any]]]


def _utilization(nv: ModuleType, handle: Any) -> Reading:
    rates = nv.nvmlDeviceGetUtilizationRates(handle)
    return [(sc.HW_GPU_UTILIZATION, rates.gpu / 100.0, {})]


def _memory(nv: ModuleType, handle: Any) -> Reading:
    info = nv.nvmlDeviceGetMemoryInfo(handle)
    out: Reading = [
        (sc.HW_GPU_MEMORY_USAGE, int(info.used), {}),
        (sc.HW_GPU_MEMORY_LIMIT, int(info.total), {}),
    ]
    if info.total:
        out.append((sc.HW_GPU_MEMORY_UTILIZATION, info.used / info.total, {}))
    return out


def _temperature(nv: ModuleType, handle: Any) -> Reading:
    celsius = nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
    return [(sc.HW_TEMPERATURE, float(celsius), {})]


def _power(nv: ModuleType, handle: Any) -> Reading:
    milliwatts = nv.nvmlDeviceGetPowerUsage(handle)
    return [(sc.HW_POWER, milliwatts / 1000.0, {})]


def _ecc(nv: ModuleType, handle: Any) -> Reading:
    out: Reading = []
    for kind, error_type in (
        (nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, "corrected"),
        (nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, "uncorrected"),
    ):
        count = nv.nvmlDeviceGetTotalEccErrors(handle, kind, nv.NVML_VOLATILE_ECC)
        out.append((sc.HW_ERRORS, int(count), {sc.ERROR_TYPE: error_type}))
    return out


_READERS: tuple[tuple[str, Callable[[ModuleType, Any], Reading]], ...] = (
    ("utilization", _utilization),
    ("memory", _memory),
    ("temperature", _temperature),
    ("power", _power),
    ("ecc", _ecc),
)
GPU_INSTRUMENTS = (
    sc.HW_GPU_UTILIZATION,
    sc.HW_GPU_MEMORY_USAGE,
    sc.HW_GPU_MEMORY_LIMIT,
    sc.HW_GPU_MEMORY_UTILIZATION,
    sc.HW_TEMPERATURE,
    sc.HW_POWER,
    sc.HW_ERRORS,
)
