"""System, process and GPU metrics (bitnet_obs.devices, bitnet_obs._gpu), GPUs via a fake NVML."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from bitnet_obs import _gpu, _selfmon, devices, health
from bitnet_obs._config import from_env, with_overrides
from bitnet_obs._gpu import NvmlSampler
from bitnet_obs.testing import TelemetryCapture, capture_telemetry, reset
from tests._support import fake_pynvml
from tests._support.fake_pynvml import FakeDevice
from tests._support.prometheus import PrometheusFactory, free_port, promtool_check_metrics

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture
    devices.disable()


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeDevice]]:
    """Two fake GPUs behind a fresh sampler; every collection reads NVML again."""
    fake_pynvml.reset([FakeDevice("NVIDIA A100"), FakeDevice("NVIDIA L4", gpu_util=10)])
    reset()
    devices.enable([], nvml=fake_pynvml, gpu_sample_interval_s=0)  # read at every collection
    yield fake_pynvml.devices
    devices.disable()


def _by_index(cap: TelemetryCapture, name: str, **attrs: Any) -> dict[int, float]:
    return {p.attributes["bitnet.gpu.index"]: p.value for p in cap.points(name, **attrs)}  # type: ignore[misc]


# --- the fake follows the real pynvml ---------------------------------------------------------


def test_fake_pynvml_has_the_real_names_values_and_error_classes() -> None:
    real = pytest.importorskip("pynvml")
    for name in dir(fake_pynvml):
        if name.startswith(("nvml", "NVML_")):
            assert hasattr(real, name), f"pynvml has no {name}"
        if name.startswith("NVML_"):
            assert getattr(real, name) == getattr(fake_pynvml, name), name
    for code, cls in [
        (3, "NVMLError_NotSupported"),
        (15, "NVMLError_GpuIsLost"),
        (12, "NVMLError_LibraryNotFound"),
        (9, "NVMLError_DriverNotLoaded"),
    ]:
        for module in (real, fake_pynvml):
            err = module.NVMLError(code)
            assert type(err).__name__ == cls and err.value == code
            assert isinstance(err, getattr(module, cls)) and isinstance(err, module.NVMLError)
    assert str(fake_pynvml.NVMLError(3)) == str(real.NVMLError(3)) == "Not Supported"
    # every return code the real module knows, with the same generated class and text
    codes = {n: getattr(real, n) for n in dir(real) if n.startswith("NVML_ERROR_")}
    assert {n: getattr(fake_pynvml, n, None) for n in codes} == codes
    for code in codes.values():
        assert type(fake_pynvml.NVMLError(code)).__name__ == type(real.NVMLError(code)).__name__
    assert fake_pynvml.NVMLError._errcode_to_string == real.NVMLError._errcode_to_string


# --- no GPU --------------------------------------------------------------------------------


def test_no_pynvml_installed_means_no_points_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    sampler = NvmlSampler(loader=missing)
    with caplog.at_level(logging.INFO, logger="bitnet_obs"):
        assert sampler.start() is False
        assert sampler.start() is False
        status = sampler.status()
    assert sampler.points("hw.gpu.utilization") == []
    assert status.available is False and "nvidia-ml-py is not installed" in status.detail
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "GPU" in r.getMessage()]
    assert len(infos) == 1


def test_real_pynvml_on_this_machine_never_raises() -> None:
    """The same code against the real module: no driver here (LibraryNotFound), or a real GPU."""
    pytest.importorskip("pynvml")
    sampler = NvmlSampler()
    status = sampler.status()
    if status.available:
        assert sampler.points("hw.gpu.memory.limit")
    else:
        assert status.detail.startswith("gpu: not available (")
        assert sampler.points("hw.gpu.utilization") == []
    sampler.shutdown()


@pytest.mark.parametrize(
    ("code", "text"),
    [(12, "NVML Shared Library Not Found"), (9, "Driver Not Loaded")],
)
def test_init_failure_no_points_one_info_line_health_says_not_available(
    cap: TelemetryCapture,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
    text: str,
) -> None:
    fake_pynvml.reset([FakeDevice()], fail_init=code)
    reset()
    devices.enable([], nvml=fake_pynvml)
    with caplog.at_level(logging.INFO, logger="bitnet_obs"):
        devices.enable(["gpu"])
        devices.enable(["gpu"])
        for name in _gpu.GPU_INSTRUMENTS:
            assert cap.points(name) == []
        result = health.devices_check()
    assert result.status is health.HealthStatus.HEALTHY
    assert result.detail.startswith("gpu: not available") and text in result.detail
    assert len([r for r in caplog.records if "no GPU metrics" in r.getMessage()]) == 1
    assert fake_pynvml.calls == ["nvmlInit"]


def test_no_gpu_found() -> None:
    fake_pynvml.reset([])
    sampler = NvmlSampler(loader=lambda: fake_pynvml)
    assert sampler.status().detail == "gpu: not available (no GPU found)"
    assert fake_pynvml.initialized == 0  # nvmlShutdown after finding nothing


# --- GPUs ----------------------------------------------------------------------------------


def test_two_devices_every_field_with_attributes(
    cap: TelemetryCapture, gpus: list[FakeDevice]
) -> None:
    devices.enable(["gpu"])
    assert _by_index(cap, "hw.gpu.utilization") == {0: 0.5, 1: 0.1}
    assert _by_index(cap, "hw.gpu.memory.usage") == {0: 4 * GiB, 1: 4 * GiB}
    assert _by_index(cap, "hw.gpu.memory.limit") == {0: 16 * GiB, 1: 16 * GiB}
    assert _by_index(cap, "hw.gpu.memory.utilization") == {0: 0.25, 1: 0.25}
    assert _by_index(cap, "hw.temperature") == {0: 60, 1: 60}
    assert _by_index(cap, "hw.power") == {0: 150.0, 1: 150.0}
    assert _by_index(cap, "hw.errors", **{"error.type": "corrected"}) == {0: 3, 1: 3}
    assert _by_index(cap, "hw.errors", **{"error.type": "uncorrected"}) == {0: 0, 1: 0}
    (point,) = cap.points("hw.temperature", **{"bitnet.gpu.index": 1})
    assert point.attributes == {
        "hw.id": "GPU-00000001-fake-uuid",
        "hw.type": "gpu",
        "hw.name": "NVIDIA L4",
        "bitnet.gpu.index": 1,
    }
    # nvmlInit once, handles cached: more collections make no new init or handle calls
    assert fake_pynvml.calls.count("nvmlInit") == 1
    assert fake_pynvml.calls.count("nvmlDeviceGetHandleByIndex") == 2
    assert devices.gpu_status().detail == "gpu: 2 device(s) ok"


def test_device_lost_mid_run_drops_its_points_and_is_counted(
    cap: TelemetryCapture, gpus: list[FakeDevice]
) -> None:
    devices.enable(["gpu"])
    assert set(_by_index(cap, "hw.gpu.utilization")) == {0, 1}
    before = _selfmon.errors("nvml")
    gpus[1].lost = True
    assert _by_index(cap, "hw.gpu.utilization") == {0: 0.5}
    assert set(_by_index(cap, "hw.gpu.memory.usage")) == {0}
    assert _selfmon.errors("nvml") > before
    result = health.devices_check()
    assert result.status is health.HealthStatus.DEGRADED
    assert "1 of 2 device(s) failing: GPU 1: GPU is lost" in result.detail
    gpus[0].lost = True
    assert cap.points("hw.gpu.utilization") == []
    assert health.devices_check().status is health.HealthStatus.UNHEALTHY
    gpus[0].lost = gpus[1].lost = False  # back (e.g. after a reset): reported again
    assert set(_by_index(cap, "hw.gpu.utilization")) == {0, 1}
    assert health.devices_check().status is health.HealthStatus.HEALTHY


def test_a_gpu_that_needs_a_reset_is_lost_too(
    cap: TelemetryCapture, gpus: list[FakeDevice]
) -> None:
    """NVML_ERROR_RESET_REQUIRED ("the GPU requires a reset before it can be used again") on
    any one reading: the device is gone until then, like GPU_IS_LOST."""
    devices.enable(["gpu"])
    gpus[1].errors["nvmlDeviceGetPowerUsage"] = fake_pynvml.NVML_ERROR_RESET_REQUIRED
    for name in ("hw.gpu.utilization", "hw.temperature", "hw.power", "hw.errors"):
        assert set(_by_index(cap, name)) == {0}, name
    result = health.devices_check()
    assert result.status is health.HealthStatus.DEGRADED
    assert "GPU 1: GPU requires restart (NVML error 16)" in result.detail


FIELD_ERRORS = {
    "timeout": fake_pynvml.NVML_ERROR_TIMEOUT,
    "unknown": fake_pynvml.NVML_ERROR_UNKNOWN,
    "no-permission": fake_pynvml.NVML_ERROR_NO_PERMISSION,
    "not-nvml": OSError("ctypes call failed"),
}


@pytest.mark.parametrize("error", FIELD_ERRORS.values(), ids=FIELD_ERRORS.keys())
def test_an_unexpected_error_on_one_field_drops_only_that_field(
    cap: TelemetryCapture, gpus: list[FakeDevice], error: int | BaseException
) -> None:
    devices.enable(["gpu"])
    gpus[0].errors["nvmlDeviceGetTemperature"] = error
    before = _selfmon.errors("nvml")
    calls_before = fake_pynvml.calls.count("nvmlDeviceGetTemperature")
    assert _by_index(cap, "hw.temperature") == {1: 60}  # only GPU 0's temperature is missing
    assert _by_index(cap, "hw.gpu.utilization") == {0: 0.5, 1: 0.1}  # the rest of GPU 0 stays
    assert _by_index(cap, "hw.gpu.memory.usage") == {0: 4 * GiB, 1: 4 * GiB}
    assert _by_index(cap, "hw.power") == {0: 150.0, 1: 150.0}
    assert _by_index(cap, "hw.errors", **{"error.type": "corrected"}) == {0: 3, 1: 3}
    # counted once per NVML round (each reads both devices' temperature), as an internal error
    rounds = (fake_pynvml.calls.count("nvmlDeviceGetTemperature") - calls_before) // 2
    assert rounds >= 5 and _selfmon.errors("nvml") == before + rounds
    assert devices.gpu_status().detail == "gpu: 2 device(s) ok"  # not failing: not lost
    assert health.devices_check().status is health.HealthStatus.HEALTHY
    del gpus[0].errors["nvmlDeviceGetTemperature"]  # transient: back at the next collection
    assert _by_index(cap, "hw.temperature") == {0: 60, 1: 60}


def test_not_supported_field_is_skipped_and_the_others_reported(
    cap: TelemetryCapture, gpus: list[FakeDevice]
) -> None:
    gpus[1].unsupported = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEccErrors"}
    devices.enable(["gpu"])
    before = _selfmon.errors("nvml")
    for _ in range(3):
        assert set(_by_index(cap, "hw.power")) == {0}
        assert set(_by_index(cap, "hw.errors")) == {0}
        assert set(_by_index(cap, "hw.gpu.utilization")) == {0, 1}
        assert set(_by_index(cap, "hw.temperature")) == {0, 1}
    assert _selfmon.errors("nvml") == before  # "not supported" is not an error
    rounds = fake_pynvml.calls.count("nvmlDeviceGetUtilizationRates") // 2
    power_calls = fake_pynvml.calls.count("nvmlDeviceGetPowerUsage")
    assert power_calls == rounds + 1  # device 0 every round, device 1 once: then remembered


def test_disable_gpu_releases_nvml_and_the_health_check_says_so(
    cap: TelemetryCapture, gpus: list[FakeDevice]
) -> None:
    devices.enable(["gpu"])
    assert fake_pynvml.initialized == 1
    devices.disable(["gpu"])
    assert fake_pynvml.initialized == 0
    assert cap.points("hw.gpu.utilization") == []
    assert "not monitored" in devices.gpu_status().detail


# --- system and process --------------------------------------------------------------------


def test_system_and_process_metrics_in_base_units(
    cap: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "MIN_INTERVAL_S", 0.05)
    devices.enable(["system", "process"])
    started = time.monotonic()
    while time.monotonic() - started < 0.1:  # CPU time to measure, over more than the interval
        sum(i * i for i in range(10_000))
    cpu = {p.attributes["cpu.mode"]: p.value for p in cap.points("system.cpu.utilization")}
    assert {"user", "system", "idle"} <= set(cpu)
    assert sum(cpu.values()) == pytest.approx(1.0)  # type: ignore[arg-type]
    memory = {
        p.attributes["system.memory.state"]: p.value for p in cap.points("system.memory.usage")
    }
    assert sum(memory.values()) == pytest.approx(psutil.virtual_memory().total, rel=0.02)  # type: ignore[arg-type]
    utilization = cap.points("system.memory.utilization", **{"system.memory.state": "used"})
    assert 0 < utilization[0].value < 1  # type: ignore[operator]
    disk = {p.attributes["disk.io.direction"] for p in cap.points("system.disk.io")}
    assert disk in (set(), {"read", "write"})
    net = {p.attributes["network.io.direction"] for p in cap.points("system.network.io")}
    assert net == {"receive", "transmit"}
    proc = {p.attributes["cpu.mode"]: p.value for p in cap.points("process.cpu.utilization")}
    assert set(proc) == {"user", "system"} and all(0 <= v <= 1 for v in proc.values())  # type: ignore[operator]
    (rss,) = cap.points("process.memory.usage")
    assert rss.value == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)


def test_a_failing_psutil_call_is_counted_and_others_still_reported(
    cap: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_io_counters", broken)
    devices.enable(["system"])
    before = _selfmon.errors("devices")
    assert cap.points("system.network.io") == []  # one collection: counted once
    assert _selfmon.errors("devices") == before + 1
    assert cap.points("system.memory.usage")


def test_disabled_groups_leave_no_callbacks(cap: TelemetryCapture) -> None:
    devices.enable(["system"])
    assert devices.enabled() == {"system"}
    assert cap.points("system.memory.usage")
    devices.disable()
    for name in ("system.memory.usage", "system.cpu.utilization", "system.network.io"):
        assert cap.points(name) == [], name
    with pytest.raises(ValueError, match="tpu"):
        devices.enable(["tpu"])


def test_device_metrics_setting() -> None:
    assert from_env({}).device_metrics == ("system", "process", "gpu")
    assert from_env({"BITNET_OBS_DEVICE_METRICS": "gpu, system"}).device_metrics == (
        "system",
        "gpu",
    )
    assert from_env({"BITNET_OBS_DEVICE_METRICS": "none"}).device_metrics == ()
    assert with_overrides(from_env({}), {"device_metrics": ["gpu"]}).device_metrics == ("gpu",)
    assert with_overrides(from_env({}), {"device_metrics": "none"}).device_metrics == ()


# --- in a real Prometheus ------------------------------------------------------------------

_WORKLOAD = """
import sys, time
from tests._support import fake_pynvml
fake_pynvml.reset([fake_pynvml.FakeDevice("NVIDIA A100"), fake_pynvml.FakeDevice("NVIDIA L4")])
sys.modules["pynvml"] = fake_pynvml
import bitnet_obs
telemetry = bitnet_obs.configure()
print("READY", telemetry.metrics_url, flush=True)
sys.stdin.readline()
bitnet_obs.shutdown()
"""


@pytest.mark.prometheus
@pytest.mark.slow
def test_system_and_gpu_metrics_in_real_prometheus_and_promtool_clean(
    prometheus_factory: PrometheusFactory,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(port)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_WORKLOAD)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), line + proc.stderr.read()  # type: ignore[union-attr]
        url = line.split()[1]
        families = (
            "# TYPE system_cpu_utilization gauge",
            "# TYPE system_memory_usage_bytes gauge",
            "# TYPE system_disk_io_bytes_total counter",
            "# TYPE system_network_io_bytes_total counter",
            "# TYPE process_memory_usage_bytes gauge",
            "# TYPE hw_gpu_memory_limit_bytes gauge",
            "# TYPE hw_temperature_celsius gauge",
            "# TYPE hw_power_watts gauge",
            "# TYPE hw_errors_total counter",
        )
        # CPU utilization needs two reads MIN_INTERVAL_S apart: scrape until it shows
        deadline = time.monotonic() + 60
        while True:
            text = urllib.request.urlopen(url, timeout=30).read().decode()
            missing = [family for family in families if family not in text]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not missing, missing
        code, output = promtool_check_metrics(text)
        assert code == 0, output
        prom = prometheus_factory([f"127.0.0.1:{port}"])
        # every query at one settled instant at which the first scrape with CPU utilization
        # is stored: a later scrape that times out on a busy machine cannot empty them
        at, (idle_sample,) = prom.query_when('system_cpu_utilization{cpu_mode="idle"}', timeout=90)
        idle = float(idle_sample["value"][1])
        assert 0 <= idle <= 1  # 0 is real on a saturated CI box
        assert prom.query_value("process_memory_usage_bytes", at)
        assert prom.query_value("sum(system_cpu_utilization)", at) == pytest.approx(1.0, abs=0.05)
        assert prom.query_value("sum(system_memory_usage_bytes)", at) == pytest.approx(
            psutil.virtual_memory().total, rel=0.05
        )
        assert prom.query_value("count(system_network_io_bytes_total)", at) == 2
        assert prom.query_value("sum(hw_gpu_memory_limit_bytes)", at) == 32 * GiB
        assert prom.query_value('hw_power_watts{hw_name="NVIDIA L4"}', at) == 150
        assert prom.query_value("count(hw_gpu_utilization)", at) == 2
    finally:
        proc.communicate("\n", timeout=30)
