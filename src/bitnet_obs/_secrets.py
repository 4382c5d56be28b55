"""TLS material and credentials of the one HTTP server (:mod:`bitnet_obs._server`), and
the first line of a secret file (``bitnet-obs canary --api-key-file``).

Read from files safely (never blocking on a FIFO or a device, bounded in size), loaded once so
that a wrong path or key fails at ``configure()`` rather than at a scrape, and never quoted in
an error: a message names the variable and what is accepted, not the secret. The settings
(:mod:`bitnet_obs._config`) call :func:`credentials_from_env` for the variables that are not a
field of their own and :func:`check_security` for every configuration, env or keywords.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Mapping
from typing import Any

from bitnet_obs._errors import ConfigError, invalid

_CREDENTIALS = "user:password, user without ':', both non-empty"
_MAX_SECRET_FILE = 64 * 1024
_TLS_ACCEPTED = "a PEM certificate (chain) and its unencrypted PEM private key, both readable files"


def _read_regular_file(name: str, path: str, accepted: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file; never blocks on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        raise invalid(name, path, accepted) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise invalid(name, path, accepted + " (a regular file)")
        data = os.read(fd, limit + 1)
    except OSError:
        raise invalid(name, path, accepted) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise invalid(name, path, f"{accepted} (at most {limit} bytes)")
    return data


def _credentials(name: str, raw: str, shown: str | None = None) -> tuple[str, str]:
    """``user:password``; the message never repeats a secret (``shown`` replaces it)."""
    user, sep, password = raw.partition(":")
    if not sep or not user or not password or any(c in raw for c in "\r\n\x00"):
        what = shown if shown is not None else f"<{len(raw)} characters, not shown>"
        raise ConfigError(f"{name}={what} is not valid; accepted: {_CREDENTIALS}")
    return user, password


def first_line(name: str, path: str, accepted: str) -> str:
    """The first line of a small secret file, stripped ("" when there is none): a credential
    kept off the command line and out of the environment. An error names ``name`` and the
    path, never the content."""
    data = _read_regular_file(name, path, accepted, _MAX_SECRET_FILE)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise invalid(name, path, accepted + " (UTF-8)") from None
    return lines[0].strip() if lines else ""


def _credentials_file(name: str, path: str) -> tuple[str, str]:
    first = first_line(name, path, "a readable file whose first line is " + _CREDENTIALS)
    return _credentials(name, first, shown=f"{path!r} (content not shown)")


def credentials_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``basic_auth`` from ``BITNET_OBS_BASIC_AUTH`` or ``_FILE`` (one of the two), if set."""
    inline, path = env.get("BITNET_OBS_BASIC_AUTH"), env.get("BITNET_OBS_BASIC_AUTH_FILE")
    if inline is not None and path is not None:
        raise ConfigError(
            f"BITNET_OBS_BASIC_AUTH and BITNET_OBS_BASIC_AUTH_FILE={path!r} are both set; "
            "accepted: one of the two"
        )
    if inline is not None:
        return {"basic_auth": _credentials("BITNET_OBS_BASIC_AUTH", inline.strip())}
    if path is not None:
        return {"basic_auth": _credentials_file("BITNET_OBS_BASIC_AUTH_FILE", path.strip())}
    return {}


def _no_password() -> bytes:
    return b""  # an encrypted key then fails to load instead of prompting on a terminal


def check_tls_files(cert: str, key: str | None, cert_name: str, key_name: str) -> None:
    """Load the pair once, so a wrong path or key fails at ``configure()``, not at a scrape."""
    for name, path in ((cert_name, cert), (key_name, key)):
        if path is not None:
            _read_regular_file(name, path, _TLS_ACCEPTED, 16 * 1024 * 1024)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise ConfigError(
            f"{cert_name}={cert!r} with {key_name}={key!r} could not be loaded ({reason}); "
            f"accepted: {_TLS_ACCEPTED}"
        ) from None


def check_security(cert: str | None, key: str | None, auth: object) -> None:
    """The TLS files (loaded once) and ``basic_auth=(user, password)``, from env or keywords
    alike."""
    if key is not None and cert is None:
        raise ConfigError(
            f"BITNET_OBS_TLS_KEY_FILE (tls_key_file)={key!r} is set without "
            "BITNET_OBS_TLS_CERT_FILE; accepted: both, or the certificate file alone when it "
            "also holds the key"
        )
    if cert is not None:
        check_tls_files(cert, key, "BITNET_OBS_TLS_CERT_FILE", "BITNET_OBS_TLS_KEY_FILE")
    if auth is not None:
        if not (
            isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(x, str) for x in auth)
        ):
            raise ConfigError(f"basic_auth of type {type(auth).__name__} is not valid; accepted: "
                              "a (user, password) tuple of str, or None")  # fmt: skip
        user, password = auth
        if ":" in user:
            raise ConfigError("basic_auth=(<not shown>) is not valid; accepted: " + _CREDENTIALS)
        _credentials("basic_auth", f"{user}:{password}", shown="(<not shown>)")
