"""The built-in health checks: model readiness, devices, exporters, memory headroom.

Each factory returns a plain sync callable, so it can be registered again with other options::

    from bitnet_obs import health

    health.register("memory", health.memory_check(degraded_below=0.2), critical=True)
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bitnet_obs import _state
from bitnet_obs._selfmon import EXPORTERS


class HealthStatus(str, enum.Enum):
    """healthy / degraded (still serving: probes answer 200) / unhealthy."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def score(self) -> float:
        """The value of ``bitnet.health.status``: 1, 0.5 or 0."""
        return {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}[self.value]


@dataclass(frozen=True)
class CheckResult:
    """What a check returns: ``CheckResult(HealthStatus.DEGRADED, "kv cache 97% full")``."""

    status: HealthStatus
    detail: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.status, HealthStatus):
            object.__setattr__(self, "status", HealthStatus(self.status))


HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
Check = Callable[[], CheckResult]

# --- model readiness -------------------------------------------------------------------------

_model_lock = threading.Lock()
_model: tuple[bool | None, str] = (None, "")  # (ready, reason); None: the application never said


def set_model_state(ready: bool | None, reason: str) -> None:
    global _model
    with _model_lock:
        _model = (ready, reason)


def model_check() -> CheckResult:
    """Unhealthy between mark_not_ready() and mark_ready(); healthy when never told."""
    ready, reason = _model
    if ready is None:
        return CheckResult(
            HEALTHY,
            "not tracked: call health.mark_not_ready() at start-up, mark_ready() when loaded",
        )
    if ready:
        return CheckResult(HEALTHY, "ready")
    return CheckResult(UNHEALTHY, reason or "not ready")


# --- devices ---------------------------------------------------------------------------------


def devices_check() -> CheckResult:
    """GPUs: none is fine (CPU inference); some failing is degraded; all failing is unhealthy."""
    from bitnet_obs import devices

    gpu = devices.gpu_status()
    if not gpu.available or not gpu.failing:
        return CheckResult(HEALTHY, gpu.detail)
    if len(gpu.failing) < gpu.devices:
        return CheckResult(DEGRADED, gpu.detail)
    return CheckResult(UNHEALTHY, gpu.detail)


# --- exporters -------------------------------------------------------------------------------


def exporters_check(unhealthy_after: int = 5, stale_after_s: float = 600.0) -> Check:
    """Push exporters (OTLP, console): degraded after one failed export, unhealthy after
    ``unhealthy_after`` consecutive failures or when still failing ``stale_after_s`` after the
    last success. The Prometheus exporter is pulled, so it has nothing to report here."""

    def check() -> CheckResult:
        worst, parts = HEALTHY, []
        now = time.time()
        for name, state in sorted(EXPORTERS.items()):
            failures = state.consecutive_failures
            if not failures:
                parts.append(f"{name}: ok")
                continue
            since = (
                "never" if state.last_success is None else f"{now - state.last_success:.0f}s ago"
            )
            stale = state.last_success is not None and now - state.last_success > stale_after_s
            status = UNHEALTHY if failures >= unhealthy_after or stale else DEGRADED
            if status is UNHEALTHY or worst is HEALTHY:
                worst = status
            parts.append(
                f"{name}: {failures} consecutive failure(s), last success {since}"
                + (f" ({state.last_error[:120]})" if state.last_error else "")
            )
        return CheckResult(worst, "; ".join(parts) or "no push exporters")

    return check


# --- memory headroom -------------------------------------------------------------------------

_CGROUP = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_memory(root: Path = _CGROUP) -> tuple[int, int] | None:
    """(limit, working set) of the container's memory cgroup (v2, then v1), None if unlimited.

    The working set leaves out inactive page cache, as the kubelet does for its OOM decisions.
    """
    limit = _read_int(root / "memory.max")
    if limit is not None:
        usage = _read_int(root / "memory.current") or 0
        inactive = _stat(root / "memory.stat", "inactive_file")
    else:
        v1 = root / "memory"
        limit = _read_int(v1 / "memory.limit_in_bytes")
        usage = _read_int(v1 / "memory.usage_in_bytes") or 0
        inactive = _stat(v1 / "memory.stat", "total_inactive_file")
    if limit is None or limit >= 2**60:  # "max", or v1's page-rounded "no limit"
        return None
    return limit, max(0, usage - inactive)


def memory_check(
    degraded_below: float = 0.10, unhealthy_below: float = 0.05, cgroup_root: Path = _CGROUP
) -> Check:
    """Memory headroom: the smaller of the host's available fraction and, in a container with a
    memory limit, the fraction of the limit not in the working set. Degraded below 10%,
    unhealthy below 5% by default."""
    if not 0 <= unhealthy_below <= degraded_below <= 1:
        raise ValueError("need 0 <= unhealthy_below <= degraded_below <= 1")

    def check() -> CheckResult:
        vm = psutil.virtual_memory()
        headroom, where = vm.available / vm.total, f"host: {_gib(vm.available)} of {_gib(vm.total)}"
        cgroup = cgroup_memory(cgroup_root)
        if cgroup is not None and cgroup[0] < vm.total:
            limit, used = cgroup
            free = max(0, limit - used)
            if free / limit < headroom:
                headroom, where = free / limit, f"cgroup: {_gib(free)} of {_gib(limit)} limit"
        detail = f"{headroom:.0%} headroom ({where} free)"
        if headroom < unhealthy_below:
            return CheckResult(UNHEALTHY, detail)
        if headroom < degraded_below:
            return CheckResult(DEGRADED, detail)
        return CheckResult(HEALTHY, detail)

    return check


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


@_state.on_fork
def _reinit_after_fork() -> None:
    global _model_lock
    _model_lock = threading.Lock()
