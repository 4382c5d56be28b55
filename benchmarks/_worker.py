"""One benchmark configuration per process, driven one request at a time over a pipe.

``bitnet_obs.configure()`` sets process-global state once, and the peers (OpenLIT, OpenLLMetry)
install global providers and patches too, so every configuration lives in its own interpreter.
The parent keeps all of them alive and asks each in turn to time one batch: only one process
runs at a time, and drift on a shared machine hits every configuration alike.

Child side: :func:`serve` with a table of handlers (each takes the request dict and returns a
reply dict). Anything the child prints goes to its stderr; the protocol has its own pipe.
Parent side: :class:`Worker`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class PeerMissing(Exception):
    """A peer library is not installed: its rows are skipped with this message."""


# --- child ----------------------------------------------------------------------------------


def serve(setup: Callable[[], Mapping[str, Handler]]) -> None:
    """Run ``setup`` (which builds the configuration), then answer requests until ``stop``."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # peers print banners to stdout; keep them off the protocol pipe
    try:
        handlers = setup()
    except PeerMissing as exc:
        _send(proto, {"skip": str(exc)})
        return
    except Exception:
        _send(proto, {"error": traceback.format_exc()})
        return
    _send(proto, {"ready": sorted(handlers)})
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "stop":
            handlers.get("stop", lambda _r: {})(request)
            _send(proto, {"stopped": True})
            return
        try:
            _send(proto, handlers[op](request))
        except Exception:
            _send(proto, {"error": traceback.format_exc()})


def _send(proto: IO[str], message: dict[str, Any]) -> None:
    proto.write(json.dumps(message) + "\n")
    proto.flush()


def time_batch(fn: Callable[[], object], n: int) -> dict[str, float]:
    """Wall seconds (``s``) and this process's CPU seconds, all threads (``cpu``), per call
    of ``fn`` over ``n`` calls in a row. CPU time leaves out time the process was preempted,
    so it is the steadier figure on a busy machine."""
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    wall = time.perf_counter() - start
    return {"s": wall / n, "cpu": (time.process_time() - cpu) / n}


# --- parent ---------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any OTEL_/BITNET_/peer settings of the caller's shell."""
    prefixes = ("OTEL_", "BITNET_", "TRACELOOP_", "OPENLIT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


class Worker:
    """A child process running ``python -m module *args`` that answers with :func:`serve`.

    ``skipped`` holds the child's reason when its setup raised :class:`PeerMissing`.
    """

    def __init__(self, module: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.name = " ".join((module, *args))
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=dict(env) if env is not None else clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        hello = self._receive()
        self.skipped: str | None = hello.get("skip")
        self.cases: list[str] = hello.get("ready", [])
        if self.skipped is not None:
            self.close()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(dict(fields, op=op)) + "\n")
        self._proc.stdin.flush()
        return self._receive()

    def _receive(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name!r} died:\n{self.stderr_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self.name!r} failed:\n{reply['error']}")
        return reply

    def stderr_tail(self, chars: int = 4000) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]

    def close(self) -> None:
        if self._proc.poll() is None and self.skipped is None:
            with contextlib.suppress(RuntimeError, OSError):
                self.request("stop")
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()
