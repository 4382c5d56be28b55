"""Shared pieces of the reliability suite: child processes, a black-hole collector, latency and
memory figures. Stdlib plus psutil; nothing here configures bitnet-obs in the test process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
_LIVE: list[subprocess.Popen[str]] = []


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any OTEL_/BITNET_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
    env.update(extra or {})
    return env


@dataclass
class ChildResult:
    result: dict[str, Any]
    stdout: str
    stderr: str
    seconds: float
    returncode: int


class Child:
    """A workload function of a scenario module, in its own interpreter (see ``_child.py``)."""

    def __init__(
        self, target: str, env: Mapping[str, str] | None = None, stdin: bool = False, **kwargs: Any
    ) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability._child", target, json.dumps(kwargs)],
            cwd=ROOT,
            env=child_env(env),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _LIVE.append(self.proc)

    def readline(self, timeout: float = 60.0) -> str:
        """The next stdout line (e.g. READY); the child is killed if none comes in time."""
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not box:
            self.kill()
            raise AssertionError(f"no line from the child within {timeout}s")
        return box[0]

    def send(self, line: str = "") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120.0) -> ChildResult:
        """Wait for the child; kill it and fail if it outlives ``timeout`` (a hang)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            raise AssertionError(
                f"child hung for {timeout}s\nstdout:{out[-2000:]}\n{err[-4000:]}"
            ) from None
        seconds = time.monotonic() - self.started
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if self.proc.returncode != 0 or not lines:
            raise AssertionError(
                f"child exited {self.proc.returncode}\nstdout:{out[-2000:]}\nstderr:{err[-4000:]}"
            )
        return ChildResult(json.loads(lines[-1][7:]), out, err, seconds, self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def kill_leftovers() -> None:
    """Kill any child a failed test left running (the reliability conftest calls this)."""
    while _LIVE:
        proc = _LIVE.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def run_child(
    target: str, env: Mapping[str, str] | None = None, timeout: float = 120.0, **kwargs: Any
) -> ChildResult:
    return Child(target, env, **kwargs).finish(timeout)


def run_script(
    code: str, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -c code``; returns the completed process and its wall time (killed on hang)."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=child_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"script hung for {timeout}s: {exc.stderr!r}") from None
    return proc, time.monotonic() - started


def dead_port() -> int:
    """A loopback port nobody listens on (bound, read back, closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BlackHole:
    """A collector that accepts connections and never answers: TCP works, nothing comes back.

    Connections are held until ``close()`` (at most ``keep`` of them; later ones wait in the
    listen backlog, which is what a frozen process looks like anyway)."""

    def __init__(self, keep: int = 256) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._keep = keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set() and len(self._held) < self._keep:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._held:
            conn.close()
        self._sock.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def latency_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of per-call durations, in milliseconds."""
    ordered = sorted(samples_s)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 4)

    return {
        "p50": pick(0.5),
        "p99": pick(0.99),
        "max": round(ordered[-1] * 1000, 3),
        "n": len(ordered),
    }


def p99_bound_ms(baseline_p99_ms: float) -> float:
    """Within noise of the baseline on a shared, noisy machine: max(3x, +5 ms)."""
    return max(3 * baseline_p99_ms, baseline_p99_ms + 5.0)


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def busy(seconds: float) -> None:
    """Stand-in for inference work: spin (not sleep) so the call holds the CPU like a model."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
