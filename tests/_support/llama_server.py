"""A real llama-server for the tests: started on 127.0.0.1 with a free port and ``--metrics`` on
one of the fixture's GGUF files, ready when ``/health`` says so, stopped (or killed) on demand;
and the ``bitnet-obs canary`` sidecar beside it, as a subprocess (:class:`Sidecar`).

::

    with LlamaServer(llama_engine, tiny_bitnet.tq2_0, workdir=tmp_path) as server:
        candidate = crossval.LlamaServerCandidate(server.url)

One slot (``--parallel 1``) and one thread by default: the tests share two cores with other
work, and a single slot makes every request deterministic in order. Flash attention is off by
default, as in llama-cpp-python (``Llama(flash_attn=False)``): llama-server's own default
(``--flash-attn auto``) turns it on for the CPU, whose different summation flips a near-tie of
the random model late in one golden case; with it off the server reproduces a golden recorded
by llama-cpp-python from the same file bit for bit. The log goes to
``workdir/llama-server.log`` and is quoted when the server does not come up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from tests._support.processes import (
    die_with_parent,
    free_port,
    http_request,
    log_tail,
    stop,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 120.0  # a 2-core machine under load; the fixture's model loads in < 1 s


class Engine(Protocol):
    """What the server needs of tests/_support/llama.py's LlamaEngine."""

    @property
    def server(self) -> Path: ...

    @property
    def lib_dir(self) -> Path: ...


class LlamaServer:
    """One llama-server process (see the module)."""

    def __init__(
        self,
        engine: Engine,
        model: Path,
        *,
        workdir: Path,
        args: Sequence[str] = (),
        threads: int = 1,
        parallel: int = 1,
        ctx_size: int = 512,
        flash_attn: bool = False,
    ) -> None:
        self.engine, self.model, self.workdir = engine, Path(model), Path(workdir)
        self.extra = [
            "--threads", str(threads), "--parallel", str(parallel), "--ctx-size", str(ctx_size),
            "--flash-attn", "on" if flash_attn else "off", "--no-warmup", *args,
        ]  # fmt: skip
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "llama-server.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> LlamaServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.engine.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        cmd = [
            str(self.engine.server), "-m", str(self.model), "--host", "127.0.0.1",
            "--port", str(self.port), "--metrics", *self.extra,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
            )
        try:
            wait_ready(f"{self.url}/health", self.proc, self.log_path, timeout)
        except AssertionError:
            self.kill()
            raise
        return self

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """(status, body) of a GET on the server, error statuses included."""
        return http_request("GET", f"{self.url}{path}", timeout=timeout)

    def log(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines) or "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after *grace* seconds."""
        if self.proc is not None:
            stop(self.proc, grace=grace)

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash, mid-request or not."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Sidecar:
    """``bitnet-obs canary`` as a subprocess, as it runs beside a server."""

    def __init__(
        self,
        server_url: str,
        golden: Path,
        workdir: Path,
        *extra: str,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = workdir / f"canary-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BITNET_"))}
        env.update(environ or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "bitnet_obs", "canary", "--server", server_url,
                    "--golden", str(golden), "--port", str(self.port), "--interval", "1",
                    *extra,
                ],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        status, body = http_request("GET", self.url + path, timeout=5)
        return status, body.decode()

    def wait_for(
        self, path: str, predicate: Callable[[int, str], bool], timeout: float = 90
    ) -> str:
        deadline = time.monotonic() + timeout
        last: tuple[int, str] | None = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the sidecar exited: {self.log()}"
            with contextlib.suppress(OSError):
                last = self.get(path)
                if predicate(*last):
                    return last[1]
            time.sleep(0.2)
        raise AssertionError(f"{path} never matched; last {last}; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60) -> str:
        """The log once it holds ``text`` (the sidecar prints a line per change of verdict)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log()}"
            time.sleep(0.1)
        return self.log()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"the sidecar ignored SIGTERM: {self.log()}") from None
        return self.proc.returncode
