"""Cross-validation candidates that are HTTP servers: llama-server's ``/completion`` and any
OpenAI-compatible ``/v1/completions``.

A C++ server cannot be decorated, so it is judged by its answers. Each call sends one golden
prompt **as token ids** for a greedy completion (``temperature: 0``) of at most
``max_new_tokens`` with the top-k log-probabilities of every step, and reads back the generated
ids and those log-probabilities (:class:`~bitnet_obs._topk.TopLogprobs`). Nothing else is sent:
no text, no sampling knobs beyond greedy's, the prompt cache off (``cache_prompt: false``) so
each run evaluates the whole prompt, as the golden's implementation did.

Every failure is a :class:`ServerError` (a :class:`~bitnet_obs.crossval.CandidateError`: a
run records its kind and line as the case's failure) bounded in time: the whole
call -- connecting, sending, waiting, reading -- must finish within ``timeout_s`` (a server
trickling bytes cannot stretch it), the answer is read up to :data:`MAX_RESPONSE_BYTES`, and
it is checked field by field (ids are non-negative integers, one top-k list per generated
token, the generated id among them, log-probabilities finite and at most 0). The line names
the endpoint, the HTTP status and the server's own error type and message (clipped), never
text of the completion. Proxies from the environment are not used: a canary talks to the
server beside it.

========================  ====================================================================
kind                      when
========================  ====================================================================
``unavailable``           refused, reset, no route, not HTTP, an HTTP status other than 200
``timeout``               no complete answer within ``timeout_s``
``bad_output``            not JSON, too large, a field missing or of the wrong type, top-k
                          log-probabilities that cannot be (see :func:`~bitnet_obs._topk.checked`)
========================  ====================================================================
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_obs._candidate import CandidateError
from bitnet_obs._errors import ConfigError
from bitnet_obs._parsers import Integer, Number
from bitnet_obs._topk import TopkError, TopLogprobs, checked
from bitnet_obs._untrusted import load_json, one_line, printable

__all__ = [
    "APIS",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_TOP_K",
    "MAX_RESPONSE_BYTES",
    "HTTPCandidate",
    "LlamaServerCandidate",
    "OpenAICompletionsCandidate",
    "ServerError",
    "server_candidate",
]

APIS = ("llama", "openai")
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 3600.0
DEFAULT_TOP_K = 20  # llama-server's own default for top_logprobs; vLLM's max_logprobs
MAX_TOP_K = 100
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # 4096 steps of top-20 with their token texts: ~10 MB
MAX_DETAIL = 160  # characters of a server's error message kept in a failure line
TIMEOUT = Number(0.0, MAX_TIMEOUT_S, "seconds", lo_open=True)
TOP_K = Integer(0, MAX_TOP_K)
_CHUNK = 64 * 1024
_ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids


class ServerError(CandidateError):
    """A server that could not answer: ``kind`` (``unavailable``, ``timeout``, ``bad_output``)
    and one line of ``detail`` for an operator; a run records it as its failure."""


def _clip(text: object) -> str:
    """A server's own words, on one line, escaped, at most MAX_DETAIL characters."""
    return one_line(printable(str(text)), MAX_DETAIL)


def _check_url(url: object) -> urllib.parse.SplitResult:
    if not isinstance(url, str):
        raise ConfigError(f"url={url!r}; accepted: an http:// or https:// URL")
    parts = urllib.parse.urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == -1
        or parts.query
        or parts.fragment
        or parts.username is not None
        or any(not c.isprintable() or c.isspace() for c in url.strip())
    ):
        raise ConfigError(
            f"url={_clip(url)!r}; accepted: http://host:port or https://host:port, optionally "
            "with a path prefix, no query, fragment or credentials"
        )
    return parts


class HTTPCandidate:
    """The shared client: a greedy completion per call, bounded in time and size. Subclasses
    say which endpoint (``path``), what to send (:meth:`request`, the API's fields on
    :meth:`greedy_request`) and how to read the answer (:meth:`parse`)."""

    api: str = ""
    path: str = ""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        top_k: int = DEFAULT_TOP_K,
        model: str | None = None,
        api_key: str | None = None,
    ) -> None:
        parts = _check_url(url)
        self.timeout_s = TIMEOUT.check("timeout_s", timeout_s)
        self.top_k = TOP_K.check("top_k", top_k)
        if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 256):
            raise ConfigError(f"model={model!r}; accepted: a name of 1-256 characters or None")
        if api_key is not None and (
            not isinstance(api_key, str)
            or not api_key
            or any(not c.isprintable() or c.isspace() for c in api_key)
        ):
            raise ConfigError("api_key: accepted: a non-empty string without spaces or controls")
        self.model, self._api_key = model, api_key
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._target = _join(parts.path.rstrip("/"), self.path)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.endpoint = f"{parts.scheme}://{host}:{self._port}{self._target}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r}, top_k={self.top_k})"

    # --- one call ------------------------------------------------------------------------

    def __call__(
        self, prompt_ids: Sequence[int], max_new_tokens: int
    ) -> tuple[npt.NDArray[np.int64], TopLogprobs | None]:
        """Greedy ids (and top-k log-probabilities) for one prompt, or :class:`ServerError`."""
        prompt = [int(t) for t in prompt_ids]
        body = json.dumps(self.request(prompt, int(max_new_tokens))).encode()
        answer = self._post(body)
        try:
            ids, top = self.parse(answer)
        except ServerError:
            raise
        except TopkError as exc:
            raise ServerError("bad_output", f"{self.endpoint} answered {exc}") from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ServerError("bad_output", f"{self.endpoint} answered an unexpected shape "
                              f"({type(exc).__name__}: {_clip(exc)})") from None  # fmt: skip
        if ids.shape[0] > max_new_tokens:
            raise ServerError("bad_output", f"{self.endpoint} returned {ids.shape[0]} tokens for "
                              f"{max_new_tokens} asked")  # fmt: skip
        return ids, top

    def request(self, prompt: list[int], max_new_tokens: int) -> dict[str, Any]:
        raise NotImplementedError

    def greedy_request(self, prompt: list[int], **fields: Any) -> dict[str, Any]:
        """A :meth:`request` body: what every server is sent -- the ids, greedy, the prompt
        cache off, no stream, the model when one is named -- and the API's own ``fields``."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "temperature": 0,
            "cache_prompt": False,
            "stream": False,
            **fields,
        }
        if self.model is not None:
            body["model"] = self.model
        return body

    def parse(self, answer: Any) -> tuple[npt.NDArray[np.int64], TopLogprobs | None]:
        raise NotImplementedError

    # --- HTTP ----------------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _post(self, body: bytes) -> Any:
        deadline = time.monotonic() + self.timeout_s
        conn = self._connection(self.timeout_s)
        try:
            status, raw = self._exchange(conn, body, deadline)
        except ServerError:
            raise
        except TimeoutError:
            raise ServerError(
                "timeout", f"{self.endpoint} did not answer within {self.timeout_s:g}s"
            ) from None
        except ConnectionRefusedError:
            raise ServerError("unavailable", f"{self.endpoint}: connection refused") from None
        except socket.gaierror as exc:
            raise ServerError(
                "unavailable", f"{self.endpoint}: host not found ({_clip(exc.strerror)})"
            ) from None
        except ssl.SSLError as exc:
            raise ServerError("unavailable", f"{self.endpoint}: TLS failed ({_clip(exc.reason)})"
                              ) from None  # fmt: skip
        except (http.client.HTTPException, OSError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise ServerError("unavailable", f"{self.endpoint}: {_clip(why)}") from None
        finally:
            conn.close()
        text = self._decode(raw)
        if status != 200:
            raise ServerError("unavailable", f"{self.endpoint} answered HTTP {status}"
                              f"{_server_error(text)}")  # fmt: skip
        try:
            return load_json(text, "the answer")
        except ValueError:
            raise ServerError("bad_output", f"{self.endpoint} answered with no JSON") from None

    def _exchange(
        self, conn: http.client.HTTPConnection, body: bytes, deadline: float
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        conn.connect()  # within the call's timeout (name resolution aside: use an address)
        _remaining(deadline, conn)
        conn.request("POST", self._target, body=body, headers=headers)
        _remaining(deadline, conn)
        response = conn.getresponse()
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
            raise ServerError("bad_output", f"{self.endpoint} answered {int(length)} bytes, over "
                              f"{MAX_RESPONSE_BYTES}")  # fmt: skip
        parts: list[bytes] = []
        size = 0
        while True:
            _remaining(deadline, conn)
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise ServerError("bad_output", f"{self.endpoint} answered over "
                                  f"{MAX_RESPONSE_BYTES} bytes")  # fmt: skip
            parts.append(chunk)
        if length is not None and length.isdigit() and size < int(length):
            raise ServerError("unavailable", f"{self.endpoint}: the connection closed after "
                              f"{size} of {int(length)} bytes")  # fmt: skip
        return response.status, b"".join(parts)

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ServerError("bad_output", f"{self.endpoint} answered with no UTF-8 text"
                              ) from None  # fmt: skip


def _join(prefix: str, path: str) -> str:
    """``prefix`` + ``path`` without repeating the segments ``prefix`` already ends with:
    ``/v1`` + ``/v1/completions`` is ``/v1/completions``."""
    segments = path.split("/")  # ["", "v1", "completions"]
    for cut in range(len(segments), 1, -1):
        head = "/".join(segments[:cut])
        if prefix.endswith(head):
            return prefix + path[len(head) :]
    return prefix + path


def _remaining(deadline: float, conn: http.client.HTTPConnection) -> None:
    """Give the socket only what is left of the call's time (each read waits at most that)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    if conn.sock is not None:
        conn.sock.settimeout(left)


def _server_error(text: str) -> str:
    """``: type: message`` from an error body, llama.cpp's or OpenAI's shape, clipped."""
    try:
        answer = load_json(text, "the error")
    except ValueError:
        return ""
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, str):
        return f": {_clip(error)}"
    if not isinstance(error, dict):
        return ""
    kind, message = error.get("type"), error.get("message")
    said = ": ".join(_clip(x) for x in (kind, message) if isinstance(x, str) and x)
    return f" ({said})" if said else ""


# --- reading answers ---------------------------------------------------------------------


def _int_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{what} is not a token id >= 0")
    return value


def _logprob(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{what} is not a finite number")
    return float(value)


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} is not a list")
    return value


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} is not an object")
    return value


def _id_of_token(text: object, what: str) -> int:
    """vLLM's ``return_tokens_as_token_ids`` token text ``token_id:123``."""
    if not isinstance(text, str) or not text.startswith(_ID_PREFIX):
        raise ServerError(
            "bad_output",
            f"{what} names tokens by text, not id: serve with llama-server, or with vLLM and "
            "return_tokens_as_token_ids",
        )
    digits = text[len(_ID_PREFIX) :]
    if not (digits.isascii() and digits.isdigit()):
        raise TypeError(f"{what} is not a token id")
    return int(digits)


def _top(
    ids: list[int], steps: list[tuple[int, list[tuple[int, float]]]], k: int
) -> tuple[npt.NDArray[np.int64], TopLogprobs | None]:
    """The generated ids and, when asked for, the top-k of the steps the server reported, as
    arrays (every step as long as the shortest: a server may return fewer than k where the
    vocabulary runs out).

    ``steps`` pairs each reported step's generated id with its top-k. llama-server reports no
    step for a token that leaves its text inside a UTF-8 character (a byte-fallback piece): its
    list is then shorter than ``ids``, the first step missing is where the ids stop matching
    the list position by position (that token begins a character the next one completes, so
    its id differs from the one reported there), and the top-k covers the steps before it. A
    list as long as the ids must match them one for one."""
    out = np.asarray(ids, dtype=np.int64).reshape(-1)
    if k == 0:
        return out, None
    if len(steps) > len(ids):
        raise TypeError(f"{len(steps)} top-k lists for {len(ids)} generated tokens")
    known = 0
    while known < len(steps) and steps[known][0] == ids[known]:
        known += 1
    if len(steps) == len(ids) and known < len(ids):
        raise TypeError(f"top-k list {known} is not the generated token's")
    if not known:
        return out, TopLogprobs(np.zeros((0, 1), np.int64), np.zeros((0, 1), np.float64))
    width = min(len(top) for _, top in steps[:known])
    if width < 1:
        raise TypeError("an empty top-k list")
    top_ids = np.array([[t for t, _ in top[:width]] for _, top in steps[:known]], np.int64)
    top_lp = np.array([[lp for _, lp in top[:width]] for _, top in steps[:known]], np.float64)
    return out, checked(TopLogprobs(top_ids, top_lp))


def _llama_step(entry: object, where: str) -> tuple[int, list[tuple[int, float]]]:
    """One element of llama.cpp's probabilities list: (generated id, [(id, logprob)...])."""
    entry = _object(entry, where)
    chosen = _int_id(entry["id"], f"{where}.id")
    top = [
        (_int_id(t["id"], f"{where}.top_logprobs.id"), _logprob(t["logprob"], f"{where}.logprob"))
        for t in _list(entry["top_logprobs"], f"{where}.top_logprobs")
    ]
    return chosen, top


class LlamaServerCandidate(HTTPCandidate):
    """llama-server's native ``POST /completion`` (bitnet.cpp's ``run_inference_server.py``
    starts exactly that server)::

        candidate = crossval.LlamaServerCandidate("http://127.0.0.1:8080")
        report = crossval.check(candidate, "golden.npz")

    Sends ``prompt`` as ids, ``n_predict``, ``temperature: 0``, ``n_probs`` (``top_k``; 0: ids
    only), ``return_tokens``, ``cache_prompt: false`` and ``response_fields`` so that only ids
    and probabilities come back (not the completion's text); reads ``tokens`` and
    ``completion_probabilities`` (log-probabilities before sampling, over the whole vocabulary).
    """

    api = "llama"
    path = "/completion"

    def request(self, prompt: list[int], max_new_tokens: int) -> dict[str, Any]:
        return self.greedy_request(
            prompt,
            n_predict=max_new_tokens,
            n_probs=self.top_k,
            post_sampling_probs=False,
            return_tokens=True,
            response_fields=["tokens", "completion_probabilities", "stop_type"],
        )

    def parse(self, answer: Any) -> tuple[npt.NDArray[np.int64], TopLogprobs | None]:
        answer = _object(answer, "the answer")
        ids = [_int_id(t, "tokens[]") for t in _list(answer["tokens"], "tokens")]
        steps: list[tuple[int, list[tuple[int, float]]]] = []
        if self.top_k:
            probs = _list(answer.get("completion_probabilities", []), "completion_probabilities")
            for i, entry in enumerate(probs):
                steps.append(_llama_step(entry, f"completion_probabilities[{i}]"))
        return _top(ids, steps, self.top_k)


class OpenAICompletionsCandidate(HTTPCandidate):
    """An OpenAI-compatible ``POST /v1/completions`` with ``logprobs``::

        candidate = crossval.OpenAICompletionsCandidate("http://127.0.0.1:8080", top_k=5)

    Sends ``prompt`` as ids, ``max_tokens``, ``temperature: 0``, ``logprobs`` (``top_k``, at
    least 1: the generated ids are read from the log-probabilities), and three extensions other
    servers ignore: ``cache_prompt: false`` and ``return_tokens`` with ``verbose`` (llama-server:
    the generated ids in ``__verbose.tokens``, since its ``logprobs.content`` skips a token that
    ends inside a UTF-8 character), ``return_tokens_as_token_ids`` (vLLM). Reads llama-server's
    ``logprobs.content`` (ids and log-probabilities per token), or the classic
    ``tokens``/``top_logprobs`` lists when the server names tokens ``token_id:N``; a server that
    names them only by text cannot be judged on ids and fails the call saying so, and so does
    one whose ``usage.completion_tokens`` says it generated tokens it does not name.
    """

    api = "openai"
    path = "/v1/completions"

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if self.top_k < 1:
            raise ConfigError("top_k=0; accepted for the OpenAI API: 1 to 100 (the generated "
                              "ids are read from the log-probabilities)")  # fmt: skip

    def request(self, prompt: list[int], max_new_tokens: int) -> dict[str, Any]:
        return self.greedy_request(
            prompt,
            max_tokens=max_new_tokens,
            logprobs=self.top_k,
            echo=False,
            n=1,
            return_tokens=True,
            verbose=True,
            return_tokens_as_token_ids=True,
        )

    def parse(self, answer: Any) -> tuple[npt.NDArray[np.int64], TopLogprobs | None]:
        answer = _object(answer, "the answer")
        choices = _list(answer["choices"], "choices")
        if len(choices) != 1 or not isinstance(choices[0], Mapping):
            raise TypeError(f"{len(choices)} choices for one prompt")
        logprobs = choices[0]["logprobs"]
        if not isinstance(logprobs, Mapping):
            raise ServerError("bad_output", f"{self.endpoint} answered without logprobs")
        ids: list[int] = []
        steps: list[tuple[int, list[tuple[int, float]]]] = []
        if "content" in logprobs:  # llama-server
            for i, entry in enumerate(_list(logprobs["content"], "logprobs.content")):
                steps.append(_llama_step(entry, f"logprobs.content[{i}]"))
            ids = [chosen for chosen, _ in steps]
            verbose = answer.get("__verbose")
            if isinstance(verbose, Mapping) and verbose.get("tokens"):
                ids = [_int_id(t, "__verbose.tokens[]") for t in _list(verbose["tokens"], "tokens")]
        else:  # the classic shape (vLLM with return_tokens_as_token_ids)
            tokens = _list(logprobs["tokens"], "logprobs.tokens")
            ids = [_id_of_token(t, f"{self.endpoint} logprobs.tokens") for t in tokens]
            for i, entry in enumerate(_list(logprobs["top_logprobs"], "logprobs.top_logprobs")):
                pairs = [
                    (_id_of_token(t, f"{self.endpoint} logprobs.top_logprobs"), _logprob(lp, t))
                    for t, lp in _object(entry, f"logprobs.top_logprobs[{i}]").items()
                ]
                steps.append((ids[i] if i < len(ids) else -1, sorted(pairs, key=lambda p: -p[1])))
        usage = answer.get("usage")
        told = usage.get("completion_tokens") if isinstance(usage, Mapping) else None
        if isinstance(told, int) and not isinstance(told, bool) and told != len(ids):
            raise ServerError(
                "bad_output",
                f"{self.endpoint} generated {told} tokens but named {len(ids)} (llama-server: "
                "use --api llama, or a version that returns __verbose.tokens)",
            )
        return _top(ids, steps, self.top_k)


def server_candidate(
    url: str,
    api: str = "llama",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    top_k: int = DEFAULT_TOP_K,
    model: str | None = None,
    api_key: str | None = None,
) -> HTTPCandidate:
    """The candidate for ``api`` (``"llama"``: ``/completion``, ``"openai"``:
    ``/v1/completions``) at ``url``; :class:`ConfigError` for a bad argument."""
    kinds: dict[str, type[HTTPCandidate]] = {
        "llama": LlamaServerCandidate,
        "openai": OpenAICompletionsCandidate,
    }
    if api not in kinds:
        raise ConfigError(f"api={api!r}; accepted: {', '.join(APIS)}")
    return kinds[api](url, timeout_s=timeout_s, top_k=top_k, model=model, api_key=api_key)
