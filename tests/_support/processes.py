"""What every harness that runs a real server beside the tests needs (stdlib only): a free port,
HTTP on loopback without the environment's proxies, the child dying with the test process,
waiting until it answers, stopping it, and the end of its log for a failure message.

Prometheus (:mod:`tests._support.prometheus`), llama-server and the canary sidecar
(:mod:`tests._support.llama_server`) and the live operations tests (:mod:`tests.ops._live`)
start their processes with these::

    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    wait_ready(f"http://127.0.0.1:{port}/health", proc, log_path)
    ...
    stop(proc)
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "OPENER",
    "can_die_with_parent",
    "die_with_parent",
    "free_port",
    "http_request",
    "log_tail",
    "stop",
    "wait_ready",
]

# Never send requests for 127.0.0.1 through an HTTP(S)_PROXY from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_request(
    method: str,
    url: str,
    *,
    form: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """Return (status, body) -- also for HTTP error statuses; raise URLError/OSError otherwise."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read()


# Kill the child if the test process dies abruptly (Linux only).
_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _prctl = None


def die_with_parent() -> None:
    """``preexec_fn``: SIGTERM the child when the thread that forked it dies (Linux); runs in
    the child between fork and exec."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def can_die_with_parent() -> bool:
    """Whether :func:`die_with_parent` does anything here."""
    return _prctl is not None


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90, lines: int = 40
) -> None:
    """Until ``url`` answers 200; an AssertionError with the end of ``log`` when ``proc``
    exits first or ``timeout`` passes (the process is left as it is)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{log.stem} exited ({proc.returncode}):\n{log_tail(log, lines)}")
        try:
            if http_request("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not up after {timeout}s:\n{log_tail(log, lines)}")
        time.sleep(0.1)


def stop(
    proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, grace: float = 10.0
) -> int:
    """Send ``sig`` (SIGTERM; SIGINT for a Python program's clean Ctrl-C), SIGKILL after
    ``grace`` seconds; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a process's log ("" when there is none yet)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
