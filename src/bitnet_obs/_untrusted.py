"""Text that comes from a file or from someone else's code, made safe to parse and to show.

A checkpoint, a golden file, a prompts file, an HTTP answer or an exception message is written
by someone we do not control. Three rules, in one place so every reader and every command
follows them:

* **Parse within bounds.** :func:`load_json` refuses nesting deeper than ``max_depth`` before
  ``json`` recurses into it (a deeply nested header is a clear error, not a ``RecursionError``),
  and refuses the ``NaN``/``Infinity`` tokens Python's ``json`` accepts but JSON does not.
* **Show escaped.** :func:`printable` escapes control and other non-printable characters (and
  backslashes), so a tensor name or a metadata value cannot move the cursor or rewrite the
  terminal of whoever inspects the file; :func:`html_text` does the same for a web page.
* **Write strict JSON.** :func:`strict_json` never writes ``NaN`` or ``Infinity``: a non-finite
  number becomes ``null`` and its place is listed, with what it was, under ``"non_finite"``.

Pure Python: the readers (numpy only) and the commands both use it.

>>> printable("blk.0\\x1b[2J")
'blk.0\\\\x1b[2J'
>>> strict_json({"kl": float("nan"), "ok": 1.5})
'{"kl": null, "ok": 1.5, "non_finite": {"kl": "nan"}}'
"""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "html_text", "load_json", "one_line", "printable", "strict_json"]

#: Deepest nesting of arrays and objects :func:`load_json` accepts: far beyond any header we
#: read (safetensors: 3, golden files: 4), far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 64

# a JSON string (with escapes) or one bracket: brackets inside strings do not count
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)


def printable(text: str) -> str:
    """*text* with control and other non-printable characters (and backslashes) escaped, so a
    hostile name cannot move the cursor or rewrite a terminal."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def one_line(text: str, limit: int = 2000) -> str:
    """*text* with its non-printable characters (newlines included) escaped, cut to *limit*
    characters: one line of stderr.  Backslashes are left as they are: messages already escape
    the names they quote (with :func:`printable` or ``repr``), and a backslash moves no cursor."""
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else printable(ch) for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def html_text(text: object) -> str:
    """*text* escaped for HTML, non-printable characters first (as :func:`printable`)."""
    return html.escape(printable(str(text)), quote=True)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (non-finite numbers are refused)")


def load_json(text: str | bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON; :class:`ValueError` (one line, naming *what*) when it is not
    JSON, nests deeper than *max_depth* or holds ``NaN``/``Infinity``."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(
                    f"{what} nests arrays/objects deeper than {max_depth} levels; accepted: at "
                    f"most {max_depth}"
                )
        elif token in "]}":
            depth -= 1
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # pragma: no cover - the scan above refuses it first
        raise ValueError(f"{what} nests too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON ({one_line(str(exc), 200)})") from None


def _finite(value: Any, path: str, found: dict[str, str]) -> Any:
    if type(value).__module__ == "numpy" and callable(getattr(value, "item", None)):
        value = value.item()  # a numpy scalar: its Python value
    if isinstance(value, float) and not math.isfinite(value):
        found[path or "."] = repr(value)
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v, f"{path}.{i}" if path else str(i), found) for i, v in enumerate(value)]
    return value


def strict_json(obj: Any, *, indent: int | None = None) -> str:
    """*obj* as strict JSON (RFC 8259): every non-finite float becomes ``null``, and a
    top-level object gets ``"non_finite": {path: "nan" | "inf" | "-inf"}`` saying which and why
    (dotted paths, list items by index). Characters outside ASCII are escaped."""
    found: dict[str, str] = {}
    clean = _finite(obj, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = found
    return json.dumps(clean, indent=indent, allow_nan=False)
