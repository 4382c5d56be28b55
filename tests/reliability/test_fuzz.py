"""Scenario 5, fuzzing (hypothesis): random tensors, decorator arguments and environments.

Every case ends one of two ways: a :class:`ConfigError` at configure or decoration time, or, at
call time, the wrapped function's own result plus a counted outcome (a measurement or a counted
skip). Never another exception into the caller, never a hang (a per-example deadline).
``FUZZ_EXAMPLES=3000 pytest tests/reliability/test_fuzz.py`` hunts harder than the default run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import string
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bitnet_obs
from bitnet_obs import ConfigError, _selfmon
from bitnet_obs._config import Settings, env_names, from_env, with_overrides
from bitnet_obs._instruments import QUANT_OPERATIONS, QUANT_SAMPLES_SKIPPED, REQUESTS
from bitnet_obs.testing import capture_telemetry, override_settings
from tests.reliability._harness import FIXTURES

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=timedelta(seconds=5),  # "never a hang", with room for a loaded machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
_OPS = QUANT_OPERATIONS
_SKIPS = QUANT_SAMPLES_SKIPPED
_REQUESTS = REQUESTS


@pytest.fixture(scope="module")
def measuring() -> Iterator[None]:
    """Real SDK providers in memory, every runtime sample admitted (rate 1, budget 1)."""
    with override_settings(quant_sample_rate=1.0, quant_budget=1.0), capture_telemetry():
        yield


# ----------------------------------------------------------------------------- tensors

_SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 1e38, -1e38, 1e-45, 0.0, -0.0, 65504.0])
_DTYPES = st.sampled_from(
    [np.float32, np.float64, np.float16, np.int8, np.int32, np.uint8, np.bool_, np.complex64]
)


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    choice = draw(st.integers(0, 9))
    if choice == 0:  # not an array at all
        return draw(st.sampled_from([None, "text", {"a": 1}, [["x"]], object(), b"\x00", 3.5]))
    if choice == 1:  # nested lists (ragged ones: see the xfail test below)
        return [[1.0, 2.0], [3.0, 4.0]]
    dtype = draw(_DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    elements = None
    if np.issubdtype(dtype, np.floating):
        elements = st.one_of(_SPECIAL, st.floats(allow_nan=True, allow_infinity=True, width=16))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    ref = draw(tensors())
    if draw(st.booleans()) and isinstance(ref, np.ndarray):
        noise = draw(st.sampled_from([0.0, 1e-3, 1.0, math.nan]))
        with np.errstate(all="ignore"):
            return ref, (ref * (1 + noise)).astype(ref.dtype, casting="unsafe")
    return ref, draw(tensors())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # hypothesis casting huge floats
@FUZZ
@given(
    pair=pairs(),
    name=st.one_of(st.text(max_size=300), st.integers(), st.none()),
    fmt=st.one_of(st.none(), st.sampled_from(["i2_s", "tl1", "tl2", "fp32", "int8", "q9", ""])),
    reference_kind=st.sampled_from(["quantized", "fp32", "float64", ""]),
    kind=st.sampled_from(["output", "activation", "logits", "weight", "bogus"]),
)
def test_random_tensors_never_reach_the_caller(
    measuring: None, pair: tuple[Any, Any], name: Any, fmt: Any, reference_kind: str, kind: str
) -> None:
    @bitnet_obs.monitored_inference(model="fuzz")
    def infer() -> str:
        bitnet_obs.current_inference().record_quantization(
            name, pair[0], pair[1], format=fmt, reference_kind=reference_kind, kind=kind
        )
        return "result"

    before = (_OPS.value(), _SKIPS.value(), _selfmon.errors(), _REQUESTS.value())
    with np.errstate(all="ignore"):
        assert infer() == "result"
    after = (_OPS.value(), _SKIPS.value(), _selfmon.errors(), _REQUESTS.value())
    measured, skipped = after[0] - before[0], after[1] - before[1]
    assert measured + skipped == 1, (measured, skipped)  # exactly one counted outcome
    assert after[2] == before[2], "an unexpected exception type was swallowed"
    assert after[3] == before[3] + 1


# ------------------------------------------------------------------- decorator arguments

_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.text(max_size=200),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.just(lambda result: 1),
    st.just(lambda result: 1 / 0),
    st.just(lambda result: "seven"),
)
_VALID = {
    "model": st.sampled_from(["bitnet-b1.58-2B", "m", "x" * 128]),
    "operation": st.sampled_from(["chat", "text_completion", "embeddings"]),
    "provider": st.sampled_from(["bitnet", "llama.cpp"]),
    "quant_format": st.sampled_from(["i2_s", "tl1", "tl2", "fp16"]),
    "device": st.sampled_from(["cpu", "cuda:0", "gpu"]),
    "attributes": st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.one_of(st.text(max_size=10), st.integers(), st.floats(allow_nan=False), st.booleans()),
        max_size=3,
    ),
    "count_input": st.just(len),
    "count_output": st.just(len),
    "count_stream_item": st.just(lambda item: 1),
    "capture_content": st.sampled_from([None, True, False]),
    "client_token_usage": st.booleans(),
    "response_model": st.sampled_from(["bitnet-b1.58-2B-i2_s", "m"]),
    "server_address": st.sampled_from(["127.0.0.1", "inference.local", "[::1]"]),
    "server_port": st.integers(1, 65535),
}


@st.composite
def decorator_options(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(_VALID)), unique=True, max_size=6))
    return {k: draw(st.one_of(_VALID[k], _ANY) if draw(st.booleans()) else _ANY) for k in keys}


@pytest.mark.slow
@FUZZ
@given(options=decorator_options(), streaming=st.booleans())
def test_random_decorator_arguments(
    measuring: None, options: dict[str, Any], streaming: bool
) -> None:
    def plain(prompt: str) -> list[int]:
        return [1, 2, 3]

    def stream(prompt: str) -> Iterator[int]:
        yield from (1, 2, 3)

    attributes = options.get("attributes")
    assume(attributes is None or isinstance(attributes, Mapping))  # else: the xfail test below
    try:
        wrapped = bitnet_obs.monitored_inference(**options)(stream if streaming else plain)
    except ConfigError:
        return  # the clear error at decoration time
    before = _REQUESTS.value()
    result = wrapped("hello")
    assert (list(result) if streaming else result) == [1, 2, 3]
    assert _REQUESTS.value() == before + 1


def test_non_mapping_attributes_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="attributes"):
        bitnet_obs.monitored_inference(attributes=1)


def test_ragged_lists_are_a_counted_bad_input_skip(measuring: None) -> None:
    @bitnet_obs.monitored_inference(model="fuzz")
    def infer() -> str:
        ragged = [[1.0, 2.0], [3.0]]
        bitnet_obs.current_inference().record_quantization("t", ragged, ragged)
        return "result"

    before = (_SKIPS.value(**{"bitnet.quant.skip_reason": "bad_input"}), _selfmon.errors())
    assert infer() == "result"
    after = (_SKIPS.value(**{"bitnet.quant.skip_reason": "bad_input"}), _selfmon.errors())
    assert after == (before[0] + 1, before[1])


# ------------------------------------------------------------------------- environment

_NAMES = sorted(env_names())
_AWKWARD = st.sampled_from(
    [
        "",
        " ",
        "nan",
        "-nan",
        "inf",
        "-inf",
        "1e309",
        "-0",
        "0x10",
        "1_000",
        "٣",
        "true ",
        "None",
        "null",
        "a=b,c",
        "=",
        ",,,",
        "%zz=%",
        "k=%ff",
        "http://",
        "http://[::1",
        "::1",
        "http://h:99999",
        "grpc://x",
        "\x00",
        "é" * 3,
        "9" * 400,
        "/",
        "/dev/zero",
        "/dev/null",
        "/nonexistent/file",
        "user:pass",
        "user:",
        ":pass",
        "a:b:c",
        str(FIXTURES / "server.crt"),
        str(FIXTURES / "server.key"),
        str(FIXTURES / "combined.pem"),
        str(FIXTURES / "encrypted.key"),
    ]
)
_VALUE = st.one_of(_AWKWARD, st.text(string.printable, max_size=40), st.text(max_size=40))


@pytest.mark.slow
@FUZZ
@given(env=st.dictionaries(st.sampled_from(_NAMES), _VALUE, max_size=6))
def test_random_environment_values(env: dict[str, str], fifo: str) -> None:
    if "BITNET_OBS_BASIC_AUTH_FILE" in env and env["BITNET_OBS_BASIC_AUTH_FILE"] == "/":
        env["BITNET_OBS_BASIC_AUTH_FILE"] = fifo  # a FIFO must not block the read
    try:
        settings_ = from_env(env)
    except ConfigError as exc:
        message = str(exc)
        assert any(name in message for name in env) or "configure()" in message, message
        return
    assert isinstance(settings_, Settings)


@pytest.mark.slow
@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from([f.name for f in dataclasses.fields(Settings)] + ["bogus"]),
        st.one_of(_ANY, _AWKWARD),
        max_size=4,
    )
)
def test_random_configure_keywords(overrides: dict[str, Any]) -> None:
    try:
        settings_ = with_overrides(from_env({}), overrides)
    except ConfigError:
        return
    assert isinstance(settings_, Settings)


@pytest.fixture(scope="module")
def fifo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = Path(tmp_path_factory.mktemp("fifo")) / "auth.fifo"
    os.mkfifo(path)
    return str(path)


def test_a_fifo_as_credentials_file_is_refused_without_blocking(fifo: str) -> None:
    with pytest.raises(ConfigError, match="regular file"):
        from_env({"BITNET_OBS_BASIC_AUTH_FILE": fifo})
    with pytest.raises(ConfigError, match="regular file"):
        from_env({"BITNET_OBS_TLS_CERT_FILE": fifo})
