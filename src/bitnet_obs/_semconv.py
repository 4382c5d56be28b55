"""The semantic-convention names we emit, where each comes from, and the schema URL we claim.

Names that ``opentelemetry-semantic-conventions`` ships are taken from its constants, so a
rename upstream fails loudly here instead of drifting silently; the few that only a newer
convention defines are spelled once below and listed in :data:`NEWER`. ``docs/metrics.md``'s
convention table is generated from :data:`TABLE`, and ``tests/test_semconv.py`` checks every
``gen_ai.*``, ``server.*``, ``error.*`` and ``hw.*`` name of the catalogue against the package
and that table.

What we follow:

- the **core** conventions of ``open-telemetry/semantic-conventions`` **v1.44.0** (``error.type``,
  ``server.*``, ``hw.*``, ``system.*``, ``process.*``), whose names and schema URL the pinned
  package (0.66b2) carries;
- the **GenAI** conventions of ``open-telemetry/semantic-conventions-genai``, where they moved in
  v1.42.0. That repository has published no release yet, so we name the commit of its ``main``
  that we read (:data:`GENAI_COMMIT`); it builds on core v1.44.0.

Meters and tracers carry :data:`SCHEMA_URL` (core v1.44.0): the only published schema that
covers what we emit; the GenAI names the package lacks are the ones :data:`NEWER` lists.
"""

from __future__ import annotations

from typing import NamedTuple

from opentelemetry.semconv._incubating.attributes import (
    cpu_attributes,
    disk_attributes,
    gen_ai_attributes,
    host_attributes,
    hw_attributes,
    network_attributes,
    os_attributes,
    process_attributes,
    system_attributes,
)
from opentelemetry.semconv._incubating.metrics import (
    gen_ai_metrics,
    hw_metrics,
    process_metrics,
    system_metrics,
)
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.semconv.schemas import Schemas

#: The core release we follow and whose schema URL every meter and tracer carries.
CORE_VERSION = "v1.44.0"
SCHEMA_URL: str = Schemas.V1_44_0.value
#: The commit of open-telemetry/semantic-conventions-genai ``main`` our GenAI names were checked
#: against (it has no release: its README's schema URL is gen-ai/1.42.0, its tags ``-dev``).
GENAI_COMMIT = "066d4a7f356f8600de6f10c42874626ab88692fb"
GENAI = f"semantic-conventions-genai main @ {GENAI_COMMIT[:10]}"
CORE = f"semantic-conventions {CORE_VERSION}"

# --- GenAI (semantic-conventions-genai; the package carries them as "moved") ---------------
OPERATION_NAME = gen_ai_attributes.GEN_AI_OPERATION_NAME
REQUEST_MODEL = gen_ai_attributes.GEN_AI_REQUEST_MODEL
PROVIDER_NAME = gen_ai_attributes.GEN_AI_PROVIDER_NAME
RESPONSE_MODEL = gen_ai_attributes.GEN_AI_RESPONSE_MODEL
RESPONSE_FINISH_REASONS = gen_ai_attributes.GEN_AI_RESPONSE_FINISH_REASONS
RESPONSE_TIME_TO_FIRST_CHUNK = gen_ai_attributes.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK
REQUEST_STREAM = gen_ai_attributes.GEN_AI_REQUEST_STREAM
REQUEST_MAX_TOKENS = gen_ai_attributes.GEN_AI_REQUEST_MAX_TOKENS
REQUEST_CHOICE_COUNT = gen_ai_attributes.GEN_AI_REQUEST_CHOICE_COUNT
REQUEST_TEMPERATURE = gen_ai_attributes.GEN_AI_REQUEST_TEMPERATURE
REQUEST_TOP_P = gen_ai_attributes.GEN_AI_REQUEST_TOP_P
REQUEST_TOP_K = gen_ai_attributes.GEN_AI_REQUEST_TOP_K
REQUEST_FREQUENCY_PENALTY = gen_ai_attributes.GEN_AI_REQUEST_FREQUENCY_PENALTY
REQUEST_PRESENCE_PENALTY = gen_ai_attributes.GEN_AI_REQUEST_PRESENCE_PENALTY
REQUEST_SEED = gen_ai_attributes.GEN_AI_REQUEST_SEED
USAGE_INPUT_TOKENS = gen_ai_attributes.GEN_AI_USAGE_INPUT_TOKENS
USAGE_OUTPUT_TOKENS = gen_ai_attributes.GEN_AI_USAGE_OUTPUT_TOKENS
INPUT_MESSAGES = gen_ai_attributes.GEN_AI_INPUT_MESSAGES
OUTPUT_MESSAGES = gen_ai_attributes.GEN_AI_OUTPUT_MESSAGES
SERVER_REQUEST_DURATION = gen_ai_metrics.GEN_AI_SERVER_REQUEST_DURATION
SERVER_TIME_TO_FIRST_TOKEN = gen_ai_metrics.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
SERVER_TIME_PER_OUTPUT_TOKEN = gen_ai_metrics.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN
#: Newer than the package: semantic-conventions-genai #374 replaced gen_ai.client.token.usage.
CLIENT_OPERATION_INPUT_TOKENS = "gen_ai.client.inference.operation.input_tokens"
CLIENT_OPERATION_OUTPUT_TOKENS = "gen_ai.client.inference.operation.output_tokens"

# --- core ---------------------------------------------------------------------------------
ERROR_TYPE = error_attributes.ERROR_TYPE
SERVER_ADDRESS = server_attributes.SERVER_ADDRESS
SERVER_PORT = server_attributes.SERVER_PORT
HW_ID = hw_attributes.HW_ID
HW_TYPE = hw_attributes.HW_TYPE
HW_NAME = hw_attributes.HW_NAME
HW_GPU_UTILIZATION = hw_metrics.HW_GPU_UTILIZATION
HW_GPU_MEMORY_USAGE = hw_metrics.HW_GPU_MEMORY_USAGE
HW_GPU_MEMORY_LIMIT = hw_metrics.HW_GPU_MEMORY_LIMIT
HW_GPU_MEMORY_UTILIZATION = hw_metrics.HW_GPU_MEMORY_UTILIZATION
HW_TEMPERATURE = hw_metrics.HW_TEMPERATURE
HW_POWER = hw_metrics.HW_POWER
HW_ERRORS = hw_metrics.HW_ERRORS
SYSTEM_CPU_UTILIZATION = system_metrics.SYSTEM_CPU_UTILIZATION
SYSTEM_MEMORY_USAGE = system_metrics.SYSTEM_MEMORY_USAGE
SYSTEM_MEMORY_UTILIZATION = system_metrics.SYSTEM_MEMORY_UTILIZATION
SYSTEM_DISK_IO = system_metrics.SYSTEM_DISK_IO
SYSTEM_NETWORK_IO = system_metrics.SYSTEM_NETWORK_IO
PROCESS_CPU_UTILIZATION = process_metrics.PROCESS_CPU_UTILIZATION
PROCESS_MEMORY_USAGE = process_metrics.PROCESS_MEMORY_USAGE
CPU_MODE = cpu_attributes.CPU_MODE
SYSTEM_MEMORY_STATE = system_attributes.SYSTEM_MEMORY_STATE
DISK_IO_DIRECTION = disk_attributes.DISK_IO_DIRECTION
NETWORK_IO_DIRECTION = network_attributes.NETWORK_IO_DIRECTION
HOST_ARCH = host_attributes.HOST_ARCH
HOST_CPU_MODEL_NAME = host_attributes.HOST_CPU_MODEL_NAME
HOST_CPU_VENDOR_ID = host_attributes.HOST_CPU_VENDOR_ID
OS_TYPE = os_attributes.OS_TYPE
PROCESS_RUNTIME_VERSION = process_attributes.PROCESS_RUNTIME_VERSION

# --- ours, where 0.1 used a gen_ai.* name the conventions do not (or no longer) define ------
FINISH_REASON = "bitnet.response.finish_reason"
TOKEN_TYPE = "bitnet.token.type"
#: 0.1's names, still emitted beside the current ones with ``gen_ai_latest/dup`` until 0.3.
LEGACY_FINISH_REASON = "gen_ai.response.finish_reason"
LEGACY_TOKEN_TYPE = "gen_ai.token.type"
LEGACY_CLIENT_TOKEN_USAGE = "gen_ai.client.token.usage"
#: Attribute renames of 0.2, current name -> 0.1 name.
RENAMED_ATTRIBUTES = {FINISH_REASON: LEGACY_FINISH_REASON, TOKEN_TYPE: LEGACY_TOKEN_TYPE}

#: ``BITNET_OBS_SEMCONV_STABILITY_OPT_IN`` values (the way OpenTelemetry instrumentations
#: migrate: ``OTEL_SEMCONV_STABILITY_OPT_IN=http/dup``).
OPT_IN_LATEST = "gen_ai_latest"
OPT_IN_DUP = "gen_ai_latest/dup"
OPT_IN_VALUES = (OPT_IN_LATEST, OPT_IN_DUP)


class Row(NamedTuple):
    """One name of the convention table in docs/metrics.md."""

    ours: str
    what: str  # metric, metric attribute, span attribute
    convention: str  # the convention's name ("" when it defines none)
    status: str
    source: str
    why: str = ""


def _same(name: str, what: str, source: str, status: str = "development", why: str = "") -> Row:
    return Row(name, what, name, status, source, why)


_M, _A, _S = "metric", "metric attribute", "span attribute"
_TPOT_WHY = (
    "buckets: the advised 0.01-2.5 s plus 0.001, 0.0025 and 0.005 s below them (every advised "
    "boundary is kept, so `le` queries written for the advice still work): small 1-bit models, "
    "and larger ones on a GPU, can decode a token in under 10 ms, and with the advice alone all "
    "those requests would share the first bucket"
)

#: The convention table: every convention name we emit (and the 0.1 names we moved away from).
TABLE: tuple[Row, ...] = (
    _same(SERVER_REQUEST_DURATION, _M, GENAI, why="buckets as advised"),
    _same(SERVER_TIME_TO_FIRST_TOKEN, _M, GENAI, why="buckets as advised"),
    _same(SERVER_TIME_PER_OUTPUT_TOKEN, _M, GENAI, why=_TPOT_WHY),
    _same(
        CLIENT_OPERATION_INPUT_TOKENS, _M, GENAI,
        why="newer than the package (#374); opt-in (`client_token_usage=True`): a client "
        "metric, for a dashboard that shows this server beside its clients",
    ),
    _same(
        CLIENT_OPERATION_OUTPUT_TOKENS, _M, GENAI,
        why="newer than the package (#374); opt-in, as above",
    ),
    _same(OPERATION_NAME, _A, GENAI),
    _same(REQUEST_MODEL, _A, GENAI),
    _same(PROVIDER_NAME, _A, GENAI, why="`bitnet` (or the instrumentor's) is a custom value"),
    _same(RESPONSE_MODEL, _A, GENAI, why="set when known: `response_model=`, instrumentors"),
    _same(SERVER_ADDRESS, _A, CORE, "stable", "set when known: `server_address=`"),
    _same(SERVER_PORT, _A, CORE, "stable", "set when known: `server_port=` (with an address)"),
    _same(ERROR_TYPE, _A, CORE, "stable", "the exception's qualified class name"),
    _same(USAGE_INPUT_TOKENS, _S, GENAI),
    _same(USAGE_OUTPUT_TOKENS, _S, GENAI),
    _same(RESPONSE_FINISH_REASONS, _S, GENAI),
    _same(REQUEST_STREAM, _S, GENAI),
    _same(RESPONSE_TIME_TO_FIRST_CHUNK, _S, GENAI),
    _same(REQUEST_MAX_TOKENS, _S, GENAI, why="transformers and llama.cpp instrumentors"),
    _same(REQUEST_CHOICE_COUNT, _S, GENAI, why="transformers instrumentor"),
    _same(REQUEST_TEMPERATURE, _S, GENAI, why="transformers and llama.cpp instrumentors"),
    _same(REQUEST_TOP_P, _S, GENAI, why="transformers and llama.cpp instrumentors"),
    _same(
        REQUEST_TOP_K, _S, GENAI,
        why="an int, as since #217 (transformers and llama.cpp instrumentors)",
    ),
    _same(REQUEST_FREQUENCY_PENALTY, _S, GENAI, why="llama.cpp instrumentor"),
    _same(REQUEST_PRESENCE_PENALTY, _S, GENAI, why="llama.cpp instrumentor"),
    _same(REQUEST_SEED, _S, GENAI, why="llama.cpp instrumentor, when the request sets one"),
    _same(INPUT_MESSAGES, _S, GENAI, why="opt-in content capture only"),
    _same(OUTPUT_MESSAGES, _S, GENAI, why="opt-in content capture only"),
    *(_same(n, _M, CORE) for n in (
        HW_GPU_UTILIZATION, HW_GPU_MEMORY_USAGE, HW_GPU_MEMORY_LIMIT, HW_GPU_MEMORY_UTILIZATION,
        HW_TEMPERATURE, HW_POWER, HW_ERRORS, SYSTEM_CPU_UTILIZATION, SYSTEM_MEMORY_USAGE,
        SYSTEM_MEMORY_UTILIZATION, SYSTEM_DISK_IO, SYSTEM_NETWORK_IO, PROCESS_CPU_UTILIZATION,
        PROCESS_MEMORY_USAGE,
    )),
    *(_same(n, _A, CORE) for n in (
        HW_ID, HW_TYPE, HW_NAME, CPU_MODE, SYSTEM_MEMORY_STATE, DISK_IO_DIRECTION,
        NETWORK_IO_DIRECTION, HOST_ARCH, HOST_CPU_MODEL_NAME, HOST_CPU_VENDOR_ID, OS_TYPE,
        PROCESS_RUNTIME_VERSION,
    )),
    Row(
        "otel.metric.overflow", _A, "otel.metric.overflow", "stable",
        "OpenTelemetry metrics SDK specification", "the SDK's overflow series, not a semconv name",
    ),
    # 0.1 names that were not (or are no longer) the conventions' -----------------------
    Row(
        FINISH_REASON, _A, "", "not defined", GENAI,
        f"0.1 emitted `{LEGACY_FINISH_REASON}`, which no convention registers (only the string "
        f"array `{RESPONSE_FINISH_REASONS}`, for spans, which we set)",
    ),
    Row(
        TOKEN_TYPE, _A, "", "removed", GENAI,
        f"0.1 emitted `{LEGACY_TOKEN_TYPE}`, removed by #374 (token metrics are split by "
        "direction now); our counter keeps one series per direction",
    ),
    Row(
        LEGACY_CLIENT_TOKEN_USAGE, _M, "", "removed", GENAI,
        f"replaced by `{CLIENT_OPERATION_INPUT_TOKENS}` and `{CLIENT_OPERATION_OUTPUT_TOKENS}` "
        "(#374); emitted only with `gen_ai_latest/dup`, until 0.3",
    ),
    Row(
        LEGACY_FINISH_REASON, _A, "", "not defined", GENAI,
        f"0.1 name of `{FINISH_REASON}`; emitted beside it only with `gen_ai_latest/dup`, "
        "until 0.3",
    ),
    Row(
        LEGACY_TOKEN_TYPE, _A, "", "removed", GENAI,
        f"0.1 name of `{TOKEN_TYPE}`; emitted beside it only with `gen_ai_latest/dup`, until 0.3",
    ),
)  # fmt: skip

#: Names we emit that the pinned package does not carry, from a newer convention.
NEWER = frozenset({CLIENT_OPERATION_INPUT_TOKENS, CLIENT_OPERATION_OUTPUT_TOKENS})
