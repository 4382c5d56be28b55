#!/usr/bin/env python3
"""Make sure the real Prometheus tools (and the headless Chromium that renders the HTML
quant-report) used by the test-suite are installed.

Run by the nox test session before pytest (stdlib only, any Python >= 3.10)::

    python tools/ensure_tools.py            # install if missing and possible
    python tools/ensure_tools.py --check    # only report, never change anything

What it does:

* Looks for ``prometheus``, ``promtool`` and ``prometheus-alertmanager`` (Debian's name) or
  ``alertmanager`` (upstream name), and ``chromium``, on ``PATH``.
* If any is missing and we are root on Debian/Ubuntu (``apt-get`` present), it runs
  ``apt-get install -y --no-install-recommends`` with the missing tools' packages
  (``prometheus``, ``prometheus-alertmanager``, ``chromium``)
  (``apt-get update`` is run at most once: up front when there are no package lists,
  otherwise only if the first install attempt fails).  When not root, ``sudo -n`` is used
  only if ``CI`` is true or ``--sudo`` is given, so a developer's machine is never changed
  behind their back.
* The Debian packages' maintainer scripts try to *start* the daemons: ``postinst`` runs
  ``invoke-rc.d --skip-systemd-native <svc> start`` (SysV init script) and, when systemd is
  PID 1, ``deb-systemd-invoke start <svc>.service``; the packages also enable the services
  (``update-rc.d`` / ``deb-systemd-helper enable``).  A started ``prometheus`` listens on
  ``*:9090``, ``prometheus-alertmanager`` on ``*:9093``/``*:9094`` and
  ``prometheus-node-exporter`` (only a *Recommends* of ``prometheus``, hence
  ``--no-install-recommends``) on ``*:9100``.  Both helpers honour ``/usr/sbin/policy-rc.d``,
  so the install runs with a temporary policy-rc.d that answers 101 ("do not start");
  afterwards any package daemon that is running anyway is stopped (and, if this run installed
  it, disabled).
* Finally it reports anything listening on 9090/9093/9094/9100/9464 (9464 is the default
  port of the OpenTelemetry Prometheus exporter), with the owning process when visible.

Exit status is 0 even when tools remain missing (the tests decide whether to fail -- in CI --
or skip); pass ``--strict`` to exit 1 instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

PREFIX = "[ensure_tools]"

#: logical tool -> candidate executable names (first found wins)
TOOLS: dict[str, tuple[str, ...]] = {
    "prometheus": ("prometheus",),
    "promtool": ("promtool",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "chromium": ("chromium", "chromium-browser"),
}
#: logical tool -> the Debian package that provides it
TOOL_PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "chromium": "chromium",
}
APT_PACKAGES = tuple(dict.fromkeys(TOOL_PACKAGES.values()))
#: Debian service names whose daemons must not run (and hold well-known ports) on test machines
SERVICES = ("prometheus", "prometheus-alertmanager", "prometheus-node-exporter")
WATCHED_PORTS: dict[int, str] = {
    9090: "Prometheus server default",
    9093: "Alertmanager default",
    9094: "Alertmanager cluster default",
    9100: "node-exporter default",
    9464: "OpenTelemetry Prometheus exporter default",
}
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
POLICY_RC_D_DENY = (
    "#!/bin/sh\n"
    "# Temporarily installed by bitnet-obs tools/ensure_tools.py: do not start services\n"
    "exit 101\n"
)
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "l"}
APT_OPTS = ("-o", "DPkg::Lock::Timeout=300", "-o", "Dpkg::Use-Pty=0")
REEXEC_FLAG = "--_reexec-under-sudo"


def say(msg: str) -> None:
    print(f"{PREFIX} {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"{PREFIX} WARNING: {msg}", file=sys.stderr, flush=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def find_tools() -> dict[str, str | None]:
    return {
        tool: next((p for p in (shutil.which(n) for n in names) if p), None)
        for tool, names in TOOLS.items()
    }


def tool_version(path: str) -> str:
    try:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(version unknown: {exc})"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0] if out else "(no version output)"


def is_debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return Path("/etc/debian_version").exists()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip("\"'")
    ids = {fields.get("ID", ""), *fields.get("ID_LIKE", "").split()}
    return bool(ids & {"debian", "ubuntu"})


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, check: bool = False) -> int:
    say("$ " + " ".join(cmd))
    full_env = {**os.environ, **env} if env else None
    try:
        return subprocess.run(list(cmd), env=full_env, check=check).returncode
    except OSError as exc:
        warn(f"could not run {cmd[0]}: {exc}")
        return 127


@contextlib.contextmanager
def services_not_started() -> Iterator[None]:
    """Install a deny-all ``policy-rc.d`` for the duration (restoring any existing one).

    Both ``invoke-rc.d`` (SysV scripts) and ``deb-systemd-invoke`` (systemd units) consult it,
    so package maintainer scripts will not start daemons.
    """
    backup: bytes | None = None
    mode = 0o755
    if POLICY_RC_D.exists():
        backup = POLICY_RC_D.read_bytes()
        mode = POLICY_RC_D.stat().st_mode & 0o7777
        if backup.strip().endswith(b"exit 101"):
            say(f"{POLICY_RC_D} already denies service starts")
            yield
            return
    say(f"temporarily installing {POLICY_RC_D} (exit 101) so the packages start no daemons")
    POLICY_RC_D.write_text(POLICY_RC_D_DENY, encoding="ascii")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        if backup is None:
            POLICY_RC_D.unlink(missing_ok=True)
        else:
            POLICY_RC_D.write_bytes(backup)
            POLICY_RC_D.chmod(mode)
        say(f"restored {POLICY_RC_D}")


def have_package_lists() -> bool:
    lists = Path("/var/lib/apt/lists")
    return lists.is_dir() and any(lists.glob("*_Packages*"))


def apt_install(packages: Sequence[str]) -> bool:
    install = [
        "apt-get",
        *APT_OPTS,
        "install",
        "-y",
        "--no-install-recommends",
        *packages,
    ]
    update = ["apt-get", *APT_OPTS, "update"]
    updated = False
    if not have_package_lists():
        updated = True
        if run(update, env=APT_ENV) != 0:
            warn("apt-get update failed")
    with services_not_started():
        if run(install, env=APT_ENV) == 0:
            return True
        if not updated:
            say("install failed; refreshing package lists once and retrying")
            if run(update, env=APT_ENV) != 0:
                warn("apt-get update failed")
            if run(install, env=APT_ENV) == 0:
                return True
    warn("apt-get install failed")
    return False


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def _quiet(cmd: Sequence[str]) -> int:
    try:
        return subprocess.run(
            list(cmd),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        ).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 127


def stop_package_daemons(*, disable: bool) -> None:
    """Stop (and optionally disable) the Debian packages' services if they are running."""
    use_systemd = systemd_running() and shutil.which("systemctl") is not None
    for svc in SERVICES:
        if use_systemd:
            if _quiet(["systemctl", "cat", f"{svc}.service"]) != 0:
                continue  # unit not installed
            if _quiet(["systemctl", "is-active", "--quiet", svc]) == 0:
                say(f"service {svc} is running under systemd; stopping it")
                run(["systemctl", "stop", svc])
            if disable and _quiet(["systemctl", "is-enabled", "--quiet", svc]) == 0:
                say(f"disabling service {svc} so it does not start at boot")
                run(["systemctl", "disable", "--quiet", svc])
        else:
            script = Path("/etc/init.d") / svc
            if not os.access(script, os.X_OK):
                continue
            # LSB: status exits 0 only when the daemon is running
            if _quiet([str(script), "status"]) == 0:
                say(f"service {svc} is running (SysV init script); stopping it")
                run([str(script), "stop"])


# ---------------------------------------------------------------- port report (Linux /proc)


def _listening_inodes() -> dict[int, set[str]]:
    """port -> socket inodes of TCP sockets in LISTEN state (IPv4 and IPv6)."""
    result: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A == TCP_LISTEN
                continue
            port = int(parts[1].rsplit(":", 1)[1], 16)
            result.setdefault(port, set()).add(parts[9])
    return result


def _socket_owners(inodes: set[str]) -> list[str]:
    wanted = {f"socket:[{i}]" for i in inodes}
    owners: list[str] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    raw = (proc / "cmdline").read_bytes()
                    cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
                    owners.append(f"pid {proc.name}: {cmd[:160]}")
                    break
            except OSError:
                continue
    return owners


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def report_ports() -> list[int]:
    """Warn about anything listening on the well-known ports; return the busy ports."""
    listening = _listening_inodes() if Path("/proc/net/tcp").exists() else {}
    busy: list[int] = []
    for port, what in WATCHED_PORTS.items():
        if port in listening:
            owners = _socket_owners(listening[port]) or ["owner not visible"]
            busy.append(port)
            warn(f"port {port} ({what}) is in use by: {'; '.join(owners)}")
        elif not listening and _port_in_use(port):
            busy.append(port)
            warn(f"port {port} ({what}) is in use on 127.0.0.1")
    if not busy:
        say("ports " + ", ".join(map(str, WATCHED_PORTS)) + " are free")
    return busy


# ------------------------------------------------------------------------------------ main


def _maybe_reexec_with_sudo(argv: Sequence[str], allowed: bool) -> None:
    if not allowed or REEXEC_FLAG in argv or shutil.which("sudo") is None:
        return
    if _quiet(["sudo", "-n", "true"]) != 0:
        warn("passwordless sudo is not available")
        return
    say("re-running with sudo -n to install packages")
    cmd = [
        "sudo",
        "-n",
        "--preserve-env=CI",
        sys.executable,
        os.path.abspath(__file__),
        *argv,
        REEXEC_FLAG,
    ]
    sys.stdout.flush()
    os.execvp("sudo", cmd)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only report; change nothing")
    parser.add_argument(
        "--stop-daemons",
        action="store_true",
        help="stop running prometheus/alertmanager/node-exporter package services "
        "(done automatically after installing, and when CI is true)",
    )
    parser.add_argument(
        "--sudo", action="store_true", help="allow 'sudo -n' when not root (default: only in CI)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if tools remain missing")
    parser.add_argument(REEXEC_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    found = find_tools()
    missing = [tool for tool, path in found.items() if path is None]
    installed_now = False

    if not missing:
        say("all tools present")
    else:
        say("missing: " + ", ".join(missing))
        apt = sys.platform.startswith("linux") and shutil.which("apt-get") and is_debian_like()
        if args.check:
            warn("--check given; not installing anything")
        elif not apt:
            warn(
                "not a Debian/Ubuntu system with apt-get; install Prometheus "
                "(prometheus, promtool, alertmanager) from https://prometheus.io/download/ "
                "and Chromium, and put the binaries on PATH. Tests needing them will be skipped "
                "(or fail when CI=true)."
            )
        elif not is_root:
            _maybe_reexec_with_sudo(argv, allowed=args.sudo or in_ci())
            warn(
                "not running as root; cannot apt-get install. Run as root: "
                "apt-get install --no-install-recommends " + " ".join(APT_PACKAGES) + " "
                "(or re-run this script with --sudo). Tests needing them will be skipped "
                "(or fail when CI=true)."
            )
        else:
            installed_now = apt_install(sorted({TOOL_PACKAGES[tool] for tool in missing}))
            found = find_tools()
            missing = [tool for tool, path in found.items() if path is None]

    for tool, path in found.items():
        if path:
            say(f"{tool}: {path} -- {tool_version(path)}")
        else:
            warn(f"{tool}: NOT FOUND")

    if not args.check and is_root and (installed_now or args.stop_daemons or in_ci()):
        stop_package_daemons(disable=installed_now)
    report_ports()

    if missing:
        warn("still missing: " + ", ".join(missing))
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
