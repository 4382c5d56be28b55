"""A stand-in for ``pynvml`` (nvidia-ml-py) on machines without a GPU.

It follows the real module's names: the same function names and signatures, ``NVMLError``
whose ``__new__`` maps ``value`` to a generated subclass (``NVMLError_NotSupported``,
``NVMLError_GpuIsLost``, ...), the same constants, and calls before ``nvmlInit`` raise
``NVMLError_Uninitialized``. ``tests/test_devices.py`` checks the names and values against the
real module, so code that works with this fake works on a real GPU.

    fake_pynvml.reset([FakeDevice("NVIDIA A100"), FakeDevice("NVIDIA L4", unsupported={...})])
    fake_pynvml.devices[1].lost = True          # the GPU falls off the bus mid-run
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass, field
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1


class NVMLError(Exception):
    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012 - mirrors pynvml
    # pynvml's own table; for the other codes the real module asks the driver
    # (nvmlErrorString) and, with none loaded, says "NVML Error with code N" as this fake does
    _errcode_to_string = {  # noqa: RUF012
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return self._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


def _extract_errors_as_classes() -> None:
    """The same class generation as pynvml's ``_extractNVMLErrorsAsClasses``."""
    module = sys.modules[__name__]
    for err_name in [x for x in dir(module) if x.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(
            err_name.replace("NVML_ERROR_", ""), "_"
        ).replace("_", "")
        err_val = getattr(module, err_name)

        def gen_new(val: int) -> Any:
            def new(typ: type[NVMLError], *args: Any) -> NVMLError:
                return NVMLError.__new__(typ, val)

            return new

        cls = type(class_name, (NVMLError,), {"__new__": gen_new(err_val)})
        cls.__module__ = __name__
        setattr(module, class_name, cls)
        NVMLError._valClassMapping[err_val] = cls


_extract_errors_as_classes()


@dataclass
class FakeDevice:
    """One GPU. ``unsupported``: function names answering NOT_SUPPORTED; ``errors``: function
    name -> NVML error code to raise (or any other exception, raised as is); ``lost``: every
    call raises GPU_IS_LOST."""

    name: str = "NVIDIA Fake GPU"
    uuid: str = ""
    gpu_util: int = 50
    mem_util: int = 20
    mem_total: int = 16 * 2**30
    mem_used: int = 4 * 2**30
    temperature: int = 60
    power_mw: int = 150_000
    ecc: tuple[int, int] = (3, 0)
    unsupported: set[str] = field(default_factory=set)
    errors: dict[str, int | BaseException] = field(default_factory=dict)
    lost: bool = False


@dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class _Handle:
    index: int


devices: list[FakeDevice] = []
init_error: int | None = None
initialized = 0
calls: list[str] = []


def reset(new_devices: list[FakeDevice] | None = None, fail_init: int | None = None) -> None:
    """Fresh state: these devices, and optionally an error code for ``nvmlInit``."""
    global init_error, initialized
    devices[:] = new_devices or []
    for i, device in enumerate(devices):
        device.uuid = device.uuid or f"GPU-0000000{i}-fake-uuid"
    init_error, initialized = fail_init, 0
    calls.clear()


def _check_init(fn: str) -> None:
    calls.append(fn)
    if not initialized:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _device(fn: str, handle: Any) -> FakeDevice:
    _check_init(fn)
    if not isinstance(handle, _Handle) or not 0 <= handle.index < len(devices):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    device = devices[handle.index]
    if device.lost:
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    if fn in device.errors:
        error = device.errors[fn]
        raise error if isinstance(error, BaseException) else NVMLError(error)
    if fn in device.unsupported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return device


def nvmlInitWithFlags(flags: int) -> None:
    global initialized
    calls.append("nvmlInit")
    if init_error is not None:
        raise NVMLError(init_error)
    initialized += 1


def nvmlInit() -> None:
    nvmlInitWithFlags(0)


def nvmlShutdown() -> None:
    global initialized
    _check_init("nvmlShutdown")
    initialized -= 1


def nvmlDeviceGetCount() -> int:
    _check_init("nvmlDeviceGetCount")
    return len(devices)


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    _check_init("nvmlDeviceGetHandleByIndex")
    if not 0 <= index < len(devices):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    if devices[index].lost:
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    return _Handle(index)


def nvmlDeviceGetIndex(handle: _Handle) -> int:
    _device("nvmlDeviceGetIndex", handle)
    return handle.index


def nvmlDeviceGetName(handle: _Handle) -> str:
    return _device("nvmlDeviceGetName", handle).name


def nvmlDeviceGetUUID(handle: _Handle) -> str:
    return _device("nvmlDeviceGetUUID", handle).uuid


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> _Utilization:
    device = _device("nvmlDeviceGetUtilizationRates", handle)
    return _Utilization(device.gpu_util, device.mem_util)


def nvmlDeviceGetMemoryInfo(handle: _Handle, version: int | None = None) -> _Memory:
    device = _device("nvmlDeviceGetMemoryInfo", handle)
    return _Memory(device.mem_total, device.mem_total - device.mem_used, device.mem_used)


def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
    device = _device("nvmlDeviceGetTemperature", handle)
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return device.temperature


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    return _device("nvmlDeviceGetPowerUsage", handle).power_mw


def nvmlDeviceGetTotalEccErrors(handle: _Handle, errorType: int, counterType: int) -> int:
    device = _device("nvmlDeviceGetTotalEccErrors", handle)
    return device.ecc[errorType]
