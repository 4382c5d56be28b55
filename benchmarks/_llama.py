"""One configuration of the llama.cpp instrumentor's benchmark, in its own process.

    python -m benchmarks._llama MODE GGUF      # MODE: sampled | unsampled | metrics

``configure()`` owns the pipeline (our aggregation, an in-memory metric reader, a null span
exporter; traces sampled, unsampled, or off). Two ``Llama`` objects on the same file:

- ``real``: the engine as it is (one thread);
- ``standin``: the same llama-cpp-python object, but its native steps -- ``eval`` (llama.cpp's
  decode), ``sample`` and ``detokenize`` (which a completion calls on all its ids at every
  step) -- replaced by Python stand-ins that return a fixed script of ids and two bytes per id.
  Every other line of llama-cpp-python runs (``generate``'s loop, ``_create_completion``'s
  checks, the chunks of a stream), so the difference between the plain and the instrumented
  call is our work alone, measured to a fraction of a microsecond per token instead of being
  lost in the native steps' noise.

Cases (``SIDE/ENGINE/SHAPE/N``): SIDE ``plain`` (every ``Llama`` attribute the original),
``ours`` (``LlamaCppInstrumentor`` installed), ``aa`` (plain again: the A/A pair), ``core``
(plain, inside ``with monitor_inference(...)`` reporting the token count: the request record
and span every monitored call pays, which the instrumentor's figures include), ``span`` (plain,
inside a hand-written SDK span carrying the instrumentor's attributes, no metrics: what the SDK
alone costs a traced call) or ``relay``
(plain, with ``Llama.generate`` wrapped by the least a per-token hook can be: a generator relay
that reads the clock and keeps the id -- what any hook costs beside the engine); SHAPE ``call``
(``create_completion``) or ``stream`` (``stream=True``, consumed), ``N`` new tokens, greedy.
Switching side installs or removes the instrumentor and makes one untimed call.
"""

from __future__ import annotations

import array
import functools
import itertools
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from benchmarks._inproc import NullExporter
from benchmarks._worker import Handler, serve, time_batch

#: New tokens per call: the per-call cost at 1, the per-token cost from the slope between the
#: other two (both judged for degenerate output: longer than its 32-token minimum). The real
#: engine's are shorter: its decode dominates, so more rounds fit instead.
REAL_LENGTHS = (1, 32, 96)
STANDIN_LENGTHS = (1, 32, 256)
SIDES = ("plain", "ours", "aa", "core", "span", "relay")


#: The attributes the instrumentor's span carries on a greedy completion of the stand-in (its
#: call's site, then what the call learned), for the hand-written ``span`` side.
SPAN_START = {
    "gen_ai.operation.name": "text_completion",
    "gen_ai.provider.name": "llama_cpp",
    "bitnet.quant.format": "tq2_0",
    "bitnet.device": "cpu",
}
SPAN_END = {
    "gen_ai.request.temperature": 0.0,
    "gen_ai.usage.input_tokens": 8,
    "gen_ai.response.finish_reasons": ("length",),
}


def _configure(mode: str) -> None:
    import bitnet_obs

    bitnet_obs.configure(
        environ={
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_TRACES_SAMPLER": "always_off" if mode == "unsampled" else "always_on",
            "BITNET_OBS_SERVER": "off",
            "BITNET_OBS_DEVICE_METRICS": "none",
        },
        metric_readers=[InMemoryMetricReader()],
        span_exporters=[] if mode == "metrics" else [NullExporter()],
    )


def _stand_in(path: str) -> Any:
    """A Llama whose decode and sampling are Python stand-ins (see the module docstring)."""
    import llama_cpp

    class StandIn(llama_cpp.Llama):  # type: ignore[misc]
        script: tuple[int, ...] = ()
        step = 0

        def eval(self, tokens: Any) -> None:
            n = len(tokens)
            self.input_ids[self.n_tokens : self.n_tokens + n] = tokens
            self.n_tokens += n

        def sample(self, **kwargs: Any) -> int:
            self.step += 1
            return self.script[self.step % len(self.script)]

        def detokenize(self, tokens: Any, prev_tokens: Any = None, special: bool = False) -> bytes:
            return b"ab" * len(tokens)  # llama.cpp's is native, and quadratic in a completion

    llm = StandIn(path, n_ctx=512, n_threads=1, verbose=False)
    # ordinary pieces of the vocabulary, none of them an end of generation
    ids = llm.tokenize(b" the quick brown fox jumps over the lazy dog", add_bos=False)
    llm.script = tuple(t for t in ids if not llama_cpp.llama_vocab_is_eog(llm._model.vocab, t))
    llama_cpp.Llama.eval(llm, [llm.token_bos(), *ids])  # real logits in its context, for
    llm.reset()  # the logits sample (read like any other; the figures are not looked at)
    return llm


def _prompt(llm: Any, longest: int) -> list[int]:
    """A prompt whose greedy continuation runs ``longest`` tokens without an end of
    generation, so every length is what it says."""
    words = b"Once upon a time there was a little robot who wanted to learn to sing"
    ids = llm.tokenize(words)
    for cut in range(len(ids), 2, -1):
        out = llm.create_completion(ids[:cut], max_tokens=longest, temperature=0.0)
        if out["usage"]["completion_tokens"] == longest:
            return list(ids[:cut])
    raise RuntimeError(f"no prompt of this model runs {longest} tokens without stopping")


def _setup(mode: str, path: str) -> Mapping[str, Handler]:
    import llama_cpp

    import bitnet_obs
    from bitnet_obs.instrumentation.llama_cpp import LlamaCppInstrumentor

    _configure(mode)
    real = llama_cpp.Llama(path, n_ctx=512, n_threads=1, verbose=False)
    standin = _stand_in(path)
    prompts = {"real": _prompt(real, max(REAL_LENGTHS)), "standin": [1, *standin.script[:7]]}
    engines = {"real": real, "standin": standin}
    instrumentor = LlamaCppInstrumentor()
    state = {"on": False}
    generate = llama_cpp.Llama.__dict__["generate"]

    @functools.wraps(generate)
    def relay(llm: Any, *args: Any, **kwargs: Any) -> Any:
        inner = generate(llm, *args, **kwargs)
        stamps, ids, clock = array.array("d"), [], time.perf_counter

        def tokens() -> Any:
            for token in inner:
                stamps.append(clock())
                ids.append(token)
                yield token

        return tokens()

    core = bitnet_obs.monitor_inference(model="core", provider="llama_cpp")
    tracer = trace.get_tracer("bench")  # the provider configure() installed

    def spanned(inner: Callable[[], object], n: int, stream: bool) -> Callable[[], object]:
        """``inner`` inside a hand-written SDK span carrying what the instrumentor's span
        carries (none with traces off): the SDK's own cost of that span, no metrics."""
        start = dict(SPAN_START, **{"gen_ai.request.model": "m", "gen_ai.response.model": "m"})
        end = dict(SPAN_END, **{"gen_ai.usage.output_tokens": n, "gen_ai.request.stream": stream})
        end["gen_ai.request.max_tokens"] = n

        def by_hand() -> object:
            with tracer.start_as_current_span("text_completion m", attributes=start) as span:
                inner()
                span.set_attributes(end)
            return None

        return by_hand

    def call(side: str, engine: str, shape: str, n: int) -> Callable[[], object]:
        llm, prompt = engines[engine], prompts[engine]
        if shape == "call":

            def plain() -> object:  # looked up at each call: the instrumented one when on
                return llm.create_completion(prompt, max_tokens=n, temperature=0.0)

        else:

            def plain() -> object:
                for _ in llm.create_completion(prompt, max_tokens=n, temperature=0.0, stream=True):
                    pass
                return None

        if side == "span":
            return spanned(plain, n, shape == "stream")
        if side != "core":
            return plain

        def by_hand() -> object:
            with core as inference:
                plain()
                inference.add_output_tokens(n)
            return None

        return by_hand

    cases: dict[str, Callable[[], object]] = {}
    for side, shape in itertools.product(SIDES, ("call", "stream")):
        for engine, lengths in (("real", REAL_LENGTHS), ("standin", STANDIN_LENGTHS)):
            for n in lengths:
                cases[f"{side}/{engine}/{shape}/{n}"] = call(side, engine, shape, n)

    def run(request: dict[str, Any]) -> dict[str, Any]:
        case = request["case"]
        on = case.startswith("ours/")
        if on != state["on"]:
            if on:
                instrumentor.instrument()
            else:
                instrumentor.uninstrument()
            state["on"] = on
        if not on:
            llama_cpp.Llama.generate = relay if case.startswith("relay/") else generate
        cases[case]()  # warm: the model described, its monitors built (untimed)
        return time_batch(cases[case], int(request["n"]))

    return {
        "run": run,
        "cases": lambda _request: {"cases": sorted(cases)},
        "version": lambda _request: {"llama_cpp": llama_cpp.__version__},
    }


if __name__ == "__main__":
    serve(functools.partial(_setup, sys.argv[1], sys.argv[2]))
