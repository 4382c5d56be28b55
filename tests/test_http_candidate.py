"""The HTTP client behind the server candidates (bitnet_obs._http_candidate), against servers
on loopback that misbehave on purpose: refused, silent, trickling, erroring, oversized,
malformed. Every failure is a ServerError with a kind and one line, within the time limit.
The real llama-server is in tests/test_llama_server.py."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from bitnet_obs import ConfigError
from bitnet_obs._http_candidate import (
    MAX_RESPONSE_BYTES,
    LlamaServerCandidate,
    OpenAICompletionsCandidate,
    ServerError,
    server_candidate,
)
from tests._support.prometheus import free_port

Handler = Callable[[socket.socket, bytes], None]


class Scripted:
    """A TCP server on 127.0.0.1 that reads one HTTP request per connection and hands it, with
    the connection, to ``handler`` (which writes whatever it likes, or nothing)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0,
                )  # fmt: skip
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                self.handler(conn, body)

    def body(self, index: int = -1) -> dict[str, Any]:
        raw = self.requests[index].partition(b"\r\n\r\n")[2]
        loaded: dict[str, Any] = json.loads(raw)
        return loaded

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


@contextlib.contextmanager
def scripted(handler: Handler) -> Iterator[Scripted]:
    server = Scripted(handler)
    try:
        yield server
    finally:
        server.close()


def reply(status: int, body: bytes | str, *, length: int | None = None) -> Handler:
    data = body.encode() if isinstance(body, str) else body

    def handler(conn: socket.socket, _: bytes) -> None:
        size = len(data) if length is None else length
        conn.sendall(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            + data
        )

    return handler


def llama_answer(ids: list[int], k: int = 2, vocab: int = 50) -> dict[str, Any]:
    """An answer of llama-server's /completion shape, with k top log-probabilities per step."""
    steps = []
    for token in ids:
        others = [t for t in range(vocab) if t != token][: k - 1]
        top = [{"id": token, "token": "x", "bytes": [120], "logprob": -0.5}]
        top += [{"id": t, "token": "y", "bytes": [121], "logprob": -2.0} for t in others]
        steps.append({"id": token, "token": "x", "bytes": [120], "logprob": -0.5,
                      "top_logprobs": top})  # fmt: skip
    return {"tokens": ids, "completion_probabilities": steps, "stop_type": "limit"}


def fail(candidate: Any, *args: Any) -> ServerError:
    with pytest.raises(ServerError) as caught:
        candidate(*(args or ([1, 2, 3], 4)))
    error = caught.value
    assert "\n" not in str(error) and error.detail == str(error)
    return error


# ------------------------------------------------------------------------------ happy paths


def test_llama_request_is_greedy_ids_only_and_the_answer_is_read() -> None:
    with scripted(reply(200, json.dumps(llama_answer([7, 8, 9], k=3)))) as server:
        candidate = LlamaServerCandidate(server.url, top_k=3, timeout_s=10)
        ids, top = candidate([1, 2, 3], 4)
        sent = server.body()
        head = server.requests[-1].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /completion HTTP/1.1")
    assert sent == {
        "prompt": [1, 2, 3],
        "n_predict": 4,
        "temperature": 0,
        "n_probs": 3,
        "post_sampling_probs": False,
        "return_tokens": True,
        "cache_prompt": False,
        "stream": False,
        "response_fields": ["tokens", "completion_probabilities", "stop_type"],
    }
    assert ids.tolist() == [7, 8, 9] and ids.dtype == np.int64
    assert top is not None and top.ids.shape == (3, 3)
    assert top.ids[:, 0].tolist() == [7, 8, 9]
    assert np.allclose(top.logprobs[:, 0], -0.5)


def test_ids_only_when_top_k_is_0() -> None:
    with scripted(reply(200, json.dumps({"tokens": [4, 5]}))) as server:
        ids, top = LlamaServerCandidate(server.url, top_k=0)([1], 2)
        assert server.body()["n_probs"] == 0
    assert ids.tolist() == [4, 5] and top is None


def test_openai_request_and_llama_servers_answer_shape() -> None:
    content = llama_answer([5, 6], k=2)["completion_probabilities"]
    answer = {"choices": [{"text": "ignored", "logprobs": {"content": content}}]}
    with scripted(reply(200, json.dumps(answer))) as server:
        candidate = OpenAICompletionsCandidate(server.url + "/v1", top_k=2, model="m")
        ids, top = candidate([1, 2], 3)
        sent = server.body()
        head = server.requests[-1].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /v1/completions HTTP/1.1")
    assert sent["prompt"] == [1, 2] and sent["max_tokens"] == 3 and sent["temperature"] == 0
    assert sent["logprobs"] == 2 and sent["model"] == "m" and sent["echo"] is False
    assert ids.tolist() == [5, 6] and top is not None and top.ids[:, 0].tolist() == [5, 6]


def test_openai_classic_shape_with_token_ids() -> None:
    logprobs = {
        "tokens": ["token_id:11", "token_id:12"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [
            {"token_id:3": -3.0, "token_id:11": -0.1},
            {"token_id:12": -0.2, "token_id:4": -2.5},
        ],
    }
    with scripted(reply(200, json.dumps({"choices": [{"logprobs": logprobs}]}))) as server:
        ids, top = OpenAICompletionsCandidate(server.url, top_k=2)([1], 2)
        assert server.body()["return_tokens_as_token_ids"] is True
    assert ids.tolist() == [11, 12]
    assert top is not None and top.ids.tolist() == [[11, 3], [12, 4]]  # sorted, most likely first


def test_openai_tokens_named_by_text_cannot_be_judged() -> None:
    logprobs = {"tokens": [" the"], "top_logprobs": [{" the": -0.1}]}
    with scripted(reply(200, json.dumps({"choices": [{"logprobs": logprobs}]}))) as server:
        error = fail(OpenAICompletionsCandidate(server.url))
    assert error.kind == "bad_output"
    assert "names tokens by text, not id" in error.detail
    assert " the" not in error.detail  # the server's text is not repeated


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    with scripted(reply(200, json.dumps({"tokens": [1]}))) as server:
        LlamaServerCandidate(server.url, top_k=0, api_key="s3cret")([1], 1)
        assert b"Authorization: Bearer s3cret" in server.requests[-1]


# --------------------------------------------------------------------------- every failure


def test_refused() -> None:
    error = fail(LlamaServerCandidate(f"http://127.0.0.1:{free_port()}"))
    assert error.kind == "unavailable"
    assert error.detail.endswith("/completion: connection refused")


def test_silent_server_times_out_instead_of_hanging() -> None:
    release = threading.Event()
    with scripted(lambda conn, _: release.wait(30)) as server:
        started = time.monotonic()
        error = fail(LlamaServerCandidate(server.url, timeout_s=0.5))
        elapsed = time.monotonic() - started
        release.set()
    assert error.kind == "timeout"
    assert error.detail == f"{server.url}/completion did not answer within 0.5s"
    assert elapsed < 25  # it returned (the server would have held it 30 s)


def test_a_server_trickling_bytes_cannot_stretch_the_time_limit() -> None:
    stop = threading.Event()

    def trickle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(0.05):  # a byte every 50 ms: each read succeeds, the whole never ends
            with contextlib.suppress(OSError):
                conn.sendall(b" ")

    with scripted(trickle) as server:
        started = time.monotonic()
        error = fail(LlamaServerCandidate(server.url, timeout_s=1))
        elapsed = time.monotonic() - started
        stop.set()
    assert error.kind == "timeout"
    assert elapsed < 25


def test_http_errors_name_the_status_and_the_servers_own_error() -> None:
    body = {"error": {"code": 400, "message": "Prompt contains invalid tokens",
                      "type": "invalid_request_error"}}  # fmt: skip
    with scripted(reply(400, json.dumps(body))) as server:
        error = fail(LlamaServerCandidate(server.url))
    assert error.kind == "unavailable"
    assert error.detail == (
        f"{server.url}/completion answered HTTP 400 (invalid_request_error: Prompt contains "
        "invalid tokens)"
    )
    with scripted(reply(503, '{"error": {"message": "Loading model", "code": 503}}')) as server:
        assert fail(LlamaServerCandidate(server.url)).detail.endswith("HTTP 503 (Loading model)")
    with scripted(reply(500, "<html>\x1b[2J" + "x" * 5000)) as server:
        detail = fail(LlamaServerCandidate(server.url)).detail
    assert detail.endswith("answered HTTP 500") and "\x1b" not in detail


def test_a_servers_message_is_clipped_and_escaped() -> None:
    body = {"error": {"message": "\x1b[31m" + "m" * 1000, "type": "t"}}
    with scripted(reply(500, json.dumps(body))) as server:
        detail = fail(LlamaServerCandidate(server.url)).detail
    assert "\x1b" not in detail and "\\x1b" in detail
    assert len(detail) < 300 and detail.endswith("…)")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("not json", "answered with no JSON"),
        ('{"tokens": [1, NaN]}', "answered with no JSON"),
        ("[" * 100_000 + "]" * 100_000, "answered with no JSON"),
        (b"\xff\xfe", "answered with no UTF-8 text"),
        ("[]", "unexpected shape"),
        ('{"content": "text only"}', "unexpected shape (KeyError"),
        ('{"tokens": [1, -2]}', "not a token id >= 0"),
        ('{"tokens": [1, true]}', "not a token id >= 0"),
        ('{"tokens": [1, 2.5]}', "not a token id >= 0"),
        ('{"tokens": "12"}', "tokens is not a list"),
        ('{"tokens": [1, 2, 3, 4, 5]}', "returned 5 tokens for 4 asked"),
    ],
)
def test_malformed_answers(body: str | bytes, says: str) -> None:
    with scripted(reply(200, body)) as server:
        error = fail(LlamaServerCandidate(server.url, top_k=0))
    assert error.kind == "bad_output"
    assert says in error.detail


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda a: a["completion_probabilities"].append(a["completion_probabilities"][0]),
         "3 top-k lists for 2 generated tokens"),
        (lambda a: a["completion_probabilities"][1].update(id=40), "is not the generated token"),
        (lambda a: a["completion_probabilities"][0]["top_logprobs"][1].update(logprob=0.5),
         "NaN or above 0"),
        (lambda a: a["completion_probabilities"][0]["top_logprobs"][1].update(logprob="x"),
         "is not a finite number"),
        (lambda a: a["completion_probabilities"][0]["top_logprobs"][1].update(id=7),
         "repeated within one step"),
        (lambda a: a["completion_probabilities"][0].update(top_logprobs=[]), "an empty top-k"),
        (lambda a: [t.update(logprob=-0.01) for t in a["completion_probabilities"][0]
                    ["top_logprobs"]], "add up to"),
    ],
)  # fmt: skip
def test_impossible_log_probabilities(change: Callable[[dict[str, Any]], Any], says: str) -> None:
    answer = llama_answer([7, 8], k=2)
    change(answer)
    with scripted(reply(200, json.dumps(answer))) as server:
        error = fail(LlamaServerCandidate(server.url, top_k=2), [1], 2)
    assert error.kind == "bad_output"
    assert says in error.detail


def test_steps_llama_server_does_not_report_end_the_top_k() -> None:
    """llama-server reports no probabilities for a token that ends inside a UTF-8 character
    (a byte piece): the top-k covers the steps before the first such token."""
    answer = llama_answer([7, 30, 31, 9], k=2)
    del answer["completion_probabilities"][1]  # 30 opened a character, 31 completed it
    with scripted(reply(200, json.dumps(answer))) as server:
        ids, top = LlamaServerCandidate(server.url, top_k=2)([1], 4)
    assert ids.tolist() == [7, 30, 31, 9]
    assert top is not None and top.ids[:, 0].tolist() == [7]
    answer = llama_answer([7, 8, 30], k=2)
    del answer["completion_probabilities"][2]  # the answer ended inside a character
    with scripted(reply(200, json.dumps(answer))) as server:
        _, top = LlamaServerCandidate(server.url, top_k=2)([1], 4)
    assert top is not None and top.ids[:, 0].tolist() == [7, 8]
    with scripted(reply(200, json.dumps({"tokens": [4, 5]}))) as server:
        _, top = LlamaServerCandidate(server.url, top_k=2)([1], 4)  # a server without n_probs
    assert top is not None and top.steps == 0


def test_openai_ids_come_from_llama_servers_verbose_tokens() -> None:
    content = llama_answer([7, 31, 9], k=2)["completion_probabilities"]
    answer = {
        "choices": [{"logprobs": {"content": content}}],
        "usage": {"completion_tokens": 4},
        "__verbose": {"tokens": [7, 30, 31, 9]},
    }
    with scripted(reply(200, json.dumps(answer))) as server:
        ids, top = OpenAICompletionsCandidate(server.url, top_k=2)([1], 4)
        sent = server.body()
    assert sent["verbose"] is True and sent["return_tokens"] is True
    assert ids.tolist() == [7, 30, 31, 9]
    assert top is not None and top.ids[:, 0].tolist() == [7]
    del answer["__verbose"]  # a server that names 3 of the 4 tokens it generated
    with scripted(reply(200, json.dumps(answer))) as server:
        error = fail(OpenAICompletionsCandidate(server.url, top_k=2), [1], 4)
    assert error.kind == "bad_output"
    assert error.detail.endswith("generated 4 tokens but named 3 (llama-server: use --api llama, "
                                 "or a version that returns __verbose.tokens)")  # fmt: skip


def test_oversized_answers_are_cut_off() -> None:
    with scripted(reply(200, b"{}", length=MAX_RESPONSE_BYTES + 1)) as server:
        error = fail(LlamaServerCandidate(server.url))
    assert error.kind == "bad_output" and "over" in error.detail

    def endless(conn: socket.socket, _: bytes) -> None:  # no Content-Length: read until close
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        block = b" " * 65536
        with contextlib.suppress(OSError):
            for _ in range(MAX_RESPONSE_BYTES // len(block) + 2):
                conn.sendall(block)

    with scripted(endless) as server:
        error = fail(LlamaServerCandidate(server.url, timeout_s=60))
    assert error.kind == "bad_output"
    assert error.detail.endswith(f"answered over {MAX_RESPONSE_BYTES} bytes")


def test_a_connection_cut_mid_answer() -> None:
    def cut(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"tokens": [')
        conn.shutdown(socket.SHUT_RDWR)

    with scripted(cut) as server:
        error = fail(LlamaServerCandidate(server.url))
    assert error.kind == "unavailable"

    with scripted(lambda conn, _: conn.sendall(b"garbage\r\n\r\n")) as server:
        assert fail(LlamaServerCandidate(server.url)).kind == "unavailable"


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"url": "127.0.0.1:8080"}, "accepted: http://host:port"),
        ({"url": "ftp://h:1"}, "accepted: http://host:port"),
        ({"url": "http://user:pw@h:1"}, "no query, fragment or credentials"),
        ({"url": "http://h:1/?q=1"}, "no query"),
        ({"url": "http://h:99999"}, "accepted: http://host:port"),
        ({"url": "http://h:1/a b"}, "accepted"),
        ({"url": 8080}, "accepted: an http:// or https:// URL"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"timeout_s": 3601}, "timeout_s"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 101}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"model": ""}, "model"),
        ({"api_key": "a b"}, "api_key"),
        ({"api": "vllm"}, "api='vllm'; accepted: llama, openai"),
        ({"api": "openai", "top_k": 0}, "the generated ids are read from the log-probabilities"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], says: str) -> None:
    args = {"url": "http://127.0.0.1:8080", **kwargs}
    with pytest.raises(ConfigError, match=None) as caught:
        server_candidate(**args)
    assert says in str(caught.value)


def test_the_endpoint_is_the_url_plus_the_apis_path() -> None:
    assert LlamaServerCandidate("http://h:8080").endpoint == "http://h:8080/completion"
    assert LlamaServerCandidate("http://h:8080/").endpoint == "http://h:8080/completion"
    assert LlamaServerCandidate("http://h/llm/").endpoint == "http://h:80/llm/completion"
    assert LlamaServerCandidate("https://h/completion").endpoint == "https://h:443/completion"
    assert OpenAICompletionsCandidate("http://[::1]:9/v1").endpoint == (
        "http://[::1]:9/v1/completions"
    )
    assert repr(server_candidate("http://h:1", "openai", top_k=5)) == (
        "OpenAICompletionsCandidate('http://h:1/v1/completions', top_k=5)"
    )
