"""The bounded parsers every setting and numeric option goes through.

One class per kind of value: ``parse`` reads environment text, ``check`` a Python value (a
``configure()`` keyword, an instrumentor's or a canary's option), with exactly the same range
and the same wording when it is refused (``NAME=value is not valid; accepted: ...``). Every
number has a finite upper bound. :mod:`bitnet_obs._config` declares the settings with these;
options elsewhere check themselves with them too::

    rate = Number(0.0, 1.0).check("fidelity_sample_rate", value)
"""

from __future__ import annotations

import math
import re
import types
import urllib.parse
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from bitnet_obs._errors import ConfigError, invalid

T = TypeVar("T")


class Parser(Generic[T]):
    """How one kind of setting is read and checked. ``accepted`` is shown in errors and docs."""

    accepted = ""

    def parse(self, name: str, raw: str) -> T:
        return self.check(name, raw)

    def check(self, name: str, value: object) -> T:
        raise NotImplementedError


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class Flag(Parser[bool]):
    accepted = "`true`, `false`"

    def parse(self, name: str, raw: str) -> bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise invalid(name, raw, "true or false")

    def check(self, name: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise invalid(name, value, "True or False")
        return value


def fmt(x: float) -> str:
    """1, 0.5, 600000, 86_400_000: what the docs and errors show of a number."""
    if float(x).is_integer():
        return f"{int(x):_}" if abs(x) >= 1e6 else str(int(x))
    return f"{x:g}"


class Number(Parser[float]):
    """A finite float in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``), in ``unit``.

    ``env_scale`` converts the env value to the field's unit (milliseconds to seconds: 0.001).
    """

    def __init__(
        self,
        lo: float,
        hi: float,
        unit: str = "",
        *,
        lo_open: bool = False,
        env_scale: float = 1.0,
        env_unit: str | None = None,
    ) -> None:
        assert math.isfinite(hi), "every setting has a finite upper bound"
        self.lo, self.hi, self.unit, self.lo_open = lo, hi, unit, lo_open
        self.env_scale = env_scale
        self.env_unit = unit if env_unit is None else env_unit
        self.accepted = self._range(1.0, unit)
        self.env_accepted = self._range(env_scale, self.env_unit)

    def _range(self, scale: float, unit: str) -> str:
        lo, hi = self.lo / scale, self.hi / scale
        bracket = "(" if self.lo_open else "["
        what = f"a number in {bracket}{fmt(lo)}, {fmt(hi)}]"
        return f"{what} {unit}".rstrip()

    def parse(self, name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise invalid(name, raw, self.env_accepted) from None
        if not self._ok(value * self.env_scale):
            raise invalid(name, raw, self.env_accepted)
        return value * self.env_scale

    def check(self, name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(name, value, self.accepted)
        if not self._ok(float(value)):
            raise invalid(name, value, self.accepted)
        return float(value)

    def _ok(self, value: float) -> bool:
        if math.isnan(value) or value > self.hi or value < self.lo:
            return False
        return not (self.lo_open and value == self.lo)


class Integer(Parser[int]):
    """An integer in ``[lo, hi]`` (decimal digits only in env text)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.accepted = f"an integer in [{fmt(lo)}, {fmt(hi)}]"

    def parse(self, name: str, raw: str) -> int:
        text = raw.strip()
        if not (text.isascii() and text.isdigit()) or not self.lo <= int(text) <= self.hi:
            raise invalid(name, raw, self.accepted)  # "²".isdigit() is True: ASCII digits only
        return int(text)

    def check(self, name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            raise invalid(name, value, self.accepted)
        return value


class Maybe(Parser[Any]):
    """The inner parser's values, or ``None`` (unset)."""

    def __init__(self, inner: Parser[Any]) -> None:
        self.inner = inner
        self.accepted = inner.accepted
        self.env_accepted = getattr(inner, "env_accepted", inner.accepted)

    def parse(self, name: str, raw: str) -> Any:
        return self.inner.parse(name, raw)

    def check(self, name: str, value: object) -> Any:
        return None if value is None else self.inner.check(name, value)


class Choice(Parser[str]):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.accepted = ", ".join(f"`{c}`" for c in choices)

    def parse(self, name: str, raw: str) -> str:
        low = raw.strip().lower()
        if low not in self.choices:
            raise invalid(name, raw, ", ".join(self.choices))
        return low

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise invalid(name, value, ", ".join(self.choices))
        return value


class Names(Parser[tuple[str, ...]]):
    """A comma list (env) or a name / list of names (keyword) from ``choices``; ``none`` alone
    means the empty list."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.accepted = "comma list of " + ", ".join(f"`{c}`" for c in (*choices, "none"))

    def parse(self, name: str, raw: str) -> tuple[str, ...]:
        return self._names(name, raw, [i.strip().lower() for i in raw.split(",") if i.strip()])

    def check(self, name: str, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            return self.parse(name, value)
        if isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(v, str) for v in value
        ):
            items = [v.strip().lower() for v in value]
            return self._names(name, value, [i for i in items if i] or ["none"])
        raise invalid(name, value, "a name or a list of names of " + ", ".join(self.choices))

    def _names(self, name: str, raw: object, items: list[str]) -> tuple[str, ...]:
        plain = self.accepted.replace("`", "")
        if not items:
            raise invalid(name, raw, plain)
        for item in items:
            if item not in (*self.choices, "none"):
                raise ConfigError(f"{name}={raw!r}: unknown name {item!r}; accepted: {plain}")
        if "none" in items:
            if len(items) > 1:
                raise ConfigError(f"{name}={raw!r}: 'none' cannot be combined with other names")
            return ()
        return tuple(c for c in self.choices if c in items)  # one canonical order


_ATTR_VALUE = (str, bool, int, float)
_CTL = re.compile(r"[\x00-\x1f\x7f]")


class KeyValues(Parser[Mapping[str, Any]]):
    """``key=value`` pairs separated by ``,``, percent-decoded (W3C baggage style).

    ``headers=True``: values are str without control characters and keys are lower-cased (gRPC
    metadata keys must be; the SDK's own env path does the same; HTTP does not care).
    """

    def __init__(self, *, headers: bool = False, max_items: int = 128) -> None:
        self.headers, self.max_items = headers, max_items
        self.accepted = "`key=value` pairs separated by `,`; values percent-encoded"

    def parse(self, name: str, raw: str) -> Mapping[str, Any]:
        result: dict[str, str] = {}
        for item in raw.split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise invalid(name, raw, "key=value pairs separated by ','")
            result[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
        return self.check(name, result)

    def check(self, name: str, value: object) -> Mapping[str, Any]:
        plain = "a mapping of str to " + ("str" if self.headers else "str, bool, int or float")
        if not isinstance(value, Mapping) or len(value) > self.max_items:
            raise invalid(name, value, f"{plain}, at most {self.max_items} items")
        out: dict[str, Any] = {}
        for key, item in value.items():
            ok_type = isinstance(item, str) if self.headers else isinstance(item, _ATTR_VALUE)
            if not isinstance(key, str) or not key or not ok_type:
                raise invalid(name, value, plain)
            if self.headers:
                if _CTL.search(key) or _CTL.search(item) or not key.isascii() or " " in key:
                    raise ConfigError(
                        f"{name}: header {key!r} has a control character, a space or a non-ASCII "
                        "character in its name or a control character (CR, LF, ...) in its "
                        "value; accepted: printable header names and values"
                    )
                key = key.lower()
            out[key] = item
        return types.MappingProxyType(out)


class Url(Parser[str]):
    accepted = "an `http://` or `https://` URL"
    _plain = "an http:// or https:// URL"

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str):
            raise invalid(name, value, "an http:// or https:// URL")
        raw = value.strip()
        try:
            parsed = urllib.parse.urlparse(raw)
            hostname = parsed.hostname
            parsed.port  # noqa: B018 - raises on a malformed port
        except ValueError:  # e.g. "http://[::1": an unclosed IPv6 literal
            raise invalid(
                name, value, self._plain + " with a valid host and a valid port"
            ) from None
        if parsed.scheme not in ("http", "https") or not hostname or _CTL.search(raw):
            raise invalid(name, value, self._plain + " with a host, e.g. http://localhost:4318")
        return raw


class Text(Parser[str]):
    """A string matching ``pattern`` (fully)."""

    def __init__(self, pattern: str, accepted: str) -> None:
        self.pattern = re.compile(pattern)
        self.accepted = accepted

    def parse(self, name: str, raw: str) -> str:
        return self.check(name, raw.strip())

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            raise invalid(name, value, self.accepted)
        return value
