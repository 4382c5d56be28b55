"""``bitnet-obs crossval record|check``: gate a new build or a new GGUF on golden outputs.

``check --server URL [--api llama|openai]`` checks a running server (llama-server, bitnet.cpp's
``run_inference_server.py``) in place of ``MODULE:FUNC``: an unreachable, slow, erroring or
malformed server is a failed check (exit 3) with its reason.

Exit codes (:mod:`bitnet_obs._commands`): 0 only after a completed, passing check (or a golden
file written), 3 the candidate diverged or failed (raised, exited, timed out, NaN logits, ids out
of range), 2 bad input -- an unimportable ``MODULE:FUNC`` (or one whose import raises or exits),
an unreadable prompts or golden file, a bad option, an implementation that fails while
recording -- 130 interrupted, 1 a bug of ours; one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import Any

from bitnet_obs._commands import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    InputError,
    bounded,
    guarded,
    write_json,
)
from bitnet_obs._untrusted import load_json, one_line, printable

EXIT_PASS, EXIT_DIVERGED = EXIT_OK, EXIT_FAILED
_MAX_PROMPTS_BYTES = 256 << 20
__all__ = [
    "EXIT_BAD_INPUT",
    "add_parser",
    "agreement",
    "judge_options",
    "load_callable",
    "read_prompts",
    "run",
    "server_from",
    "server_options",
]


def add_parser(sub: Any) -> None:
    """The ``crossval`` subcommand and its two actions."""
    from bitnet_obs import _crossval as cv

    crossval = sub.add_parser("crossval", help="record golden outputs, check a build against them")
    actions = crossval.add_subparsers(dest="action", required=True)
    rec = actions.add_parser("record", help="run a trusted implementation, write golden cases")
    rec.add_argument("implementation", metavar="MODULE:FUNC", help="fn(prompt_ids, max_new)")
    rec.add_argument("--prompts", required=True, help="JSON: a list of token-id lists, or lines")
    rec.add_argument("--out", required=True, help="the golden .npz to write")
    rec.add_argument(
        "--max-new-tokens",
        type=bounded(cv.NEW_TOKENS, "--max-new-tokens"),
        default=32,
        help=f"new tokens per case, 1 to {cv.MAX_NEW_TOKENS} (default 32)",
    )
    rec.add_argument(
        "--logits-steps",
        type=bounded(cv.LOGITS_STEPS, "--logits-steps"),
        default=8,
        help=f"logits kept per case, 0 to {cv.MAX_LOGITS_STEPS} (default 8)",
    )
    rec.add_argument("--model", default="", help="model name for the header and metrics")
    rec.add_argument("--quant-format", default="", help="e.g. i2_s, tl2")
    chk = actions.add_parser("check", help="run a candidate on the golden cases; exit 3 if off")
    chk.add_argument(
        "implementation", metavar="MODULE:FUNC", nargs="?", help="the candidate (or --server)"
    )
    server_options(chk, required=False)
    judge_options(chk, "also fail above this logits KL")
    chk.add_argument("--reference", metavar="MODULE:FUNC", help="also time this one")
    chk.add_argument(
        "--timeout",
        type=bounded(cv.SECONDS.inner, "--timeout"),
        default=None,
        help=f"seconds a call may take before it fails the run, up to {cv.MAX_SECONDS:g} "
        "(default: no limit; with --server, 60 s per request)",
    )
    chk.add_argument("--json", action="store_true", help="machine-readable report on stdout")


def server_options(parser: Any, *, required: bool) -> None:
    """The server a check or a canary judges (shared by ``crossval check --server`` and
    ``canary``): ``--server``, ``--api``, ``--top-k``, ``--server-model``, ``--api-key-file``;
    :func:`server_from` makes the candidate of them."""
    from bitnet_obs import _http_candidate as http

    parser.add_argument(
        "--server",
        required=required,
        metavar="URL",
        help="the server to judge (llama-server, bitnet.cpp's run_inference_server.py): "
        "http://host:port" + ("" if required else ", in place of MODULE:FUNC"),
    )
    parser.add_argument(
        "--api",
        choices=http.APIS,
        default="llama",
        help="llama: llama-server's /completion (default); openai: /v1/completions",
    )
    parser.add_argument(
        "--top-k",
        type=bounded(http.TOP_K, "--top-k"),
        default=http.DEFAULT_TOP_K,
        help=f"log-probabilities asked per generated token, 0 to {http.MAX_TOP_K} (0: ids only; "
        f"default {http.DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--server-model", default=None, help="the model name an OpenAI-compatible server wants"
    )
    parser.add_argument(
        "--api-key-file",
        default=None,
        help="a file whose first line is the server's API key (sent as a bearer token)",
    )


def judge_options(parser: Any, max_kl_help: str) -> None:
    """The golden file and how a run is judged (shared with ``canary``): ``--golden``,
    ``--min-agreement``, ``--max-kl``."""
    from bitnet_obs import _crossval as cv

    parser.add_argument("--golden", required=True, help="a golden .npz from 'crossval record'")
    parser.add_argument(
        "--min-agreement",
        type=bounded(cv.AGREEMENT, "--min-agreement"),
        default=1.0,
        help="token agreement needed, 0 to 1 (default 1: identical)",
    )
    parser.add_argument(
        "--max-kl",
        type=bounded(cv.KL.inner, "--max-kl"),
        default=None,
        help=f"{max_kl_help}, 0 to {cv.MAX_KL:g}",
    )


def server_from(args: argparse.Namespace, timeout_s: float) -> Any:
    """The candidate of :func:`server_options`' arguments (a ``ConfigError`` for a bad one:
    exit 2)."""
    from bitnet_obs._http_candidate import server_candidate

    return server_candidate(
        args.server,
        args.api,
        timeout_s=timeout_s,
        top_k=args.top_k,
        model=args.server_model,
        api_key=_api_key(args.api_key_file),
    )


def _api_key(path: str | None) -> str | None:
    """The first line of ``--api-key-file`` (a secret stays off the command line)."""
    if path is None:
        return None
    from bitnet_obs._errors import invalid
    from bitnet_obs._secrets import first_line

    accepted = "a readable file whose first line is the server's API key"
    key = first_line("--api-key-file", path, accepted)
    if not key:
        raise invalid("--api-key-file", path, f"{accepted} (its line 1 is empty)")
    return key


def agreement(report: Any) -> str:
    """What a run found, in words: ``5 cases, token agreement 1.000, logits KL 0, top-1
    1.000`` (a KL from a server's top-k log-probabilities is a lower bound, and says so)."""
    text = f"{len(report.cases)} cases, token agreement {report.token_agreement:.3f}"
    if report.kl is not None and report.kl_top_k:
        bound = f"the top-{report.kl_top_k}"
        text += f", logits KL >= {report.kl:.3g} (bound from {bound}), top-1 {report.top1:.3f}"
    elif report.kl is not None:
        text += f", logits KL {report.kl:.3g}, top-1 {report.top1:.3f}"
    return text


def run(args: argparse.Namespace) -> int:
    """Run ``crossval record|check``; every problem is one line on stderr and an exit status
    (bitnet_obs._commands): 0 only after a completed, passing check (or a written file)."""
    body = _record if args.action == "record" else _check
    return guarded(f"bitnet-obs crossval {args.action}", lambda: body(args))


def load_callable(spec: str) -> Any:
    """``package.module:function`` (or ``module:Class.method``); the current directory is
    importable, as with ``python -m``. Whatever importing it does (raise, ``sys.exit``) is
    bad input, never the command's own exit."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"{spec!r}: accepted: MODULE:FUNC, e.g. myserver.model:generate")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise InputError(f"{spec!r}: {module_name} has no attribute {attr!r}")
            obj = getattr(obj, part)
    except InputError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise InputError(f"cannot import {module_name!r} ({one_line(why, 300)})") from None
    if not callable(obj):
        raise InputError(f"{spec!r} is not callable; accepted: fn(prompt_ids, max_new_tokens)")
    return obj


def _read_text(path: str, what: str, limit: int) -> str:
    from bitnet_obs.quant.io._common import ReadError, open_regular

    try:
        fd, size = open_regular(path)  # a FIFO or a device would block or never end
    except ReadError as exc:
        raise InputError(f"{what} {exc}") from None
    with os.fdopen(fd, "rb") as f:
        if size > limit:
            raise InputError(f"{what} {printable(path)}: {size} bytes; accepted: at most {limit}")
        raw = f.read(limit + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {printable(path)}: not UTF-8 ({exc.reason})") from None


def read_prompts(path: str) -> list[list[int]]:
    """A JSON list of token-id lists, or JSON lines with one list each."""
    text = _read_text(path, "--prompts", _MAX_PROMPTS_BYTES)
    where = f"--prompts {printable(path)}"
    try:
        prompts = load_json(text, where, max_depth=2)
    except ValueError as whole:
        try:
            prompts = [
                load_json(line, where, max_depth=1) for line in text.splitlines() if line.strip()
            ]
        except ValueError:
            raise InputError(
                f"{whole}; accepted: [[1, 2, 3], [4, 5]] or one list per line"
            ) from None

    def ids(prompt: object) -> bool:
        return (
            isinstance(prompt, list)
            and bool(prompt)
            and all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**63 for t in prompt
            )
        )

    if not isinstance(prompts, list) or not prompts or not all(ids(p) for p in prompts):
        raise InputError(
            f"{where}: accepted: a non-empty list of non-empty lists of token ids >= 0"
        )
    return prompts


def _record(args: argparse.Namespace) -> int:
    from bitnet_obs._crossval import CrossvalError, record

    fn = load_callable(args.implementation)
    prompts = read_prompts(args.prompts)
    try:
        golden = record(
            fn,
            prompts,
            args.out,
            max_new_tokens=args.max_new_tokens,
            logits_steps=args.logits_steps,
            model=args.model,
            quant_format=args.quant_format,
        )
    except CrossvalError as exc:  # the trusted implementation could not record: bad input
        raise InputError(str(exc)) from None
    tokens = sum(c.output_ids.shape[0] for c in golden.cases)
    logits = sum(1 for c in golden.cases if c.logits is not None)
    print(
        f"wrote {printable(args.out)}: {len(golden.cases)} cases, {tokens} output tokens, "
        f"logits for {logits} cases (model {printable(args.model) or '-'}, format "
        f"{printable(args.quant_format) or '-'})"
    )
    return EXIT_PASS


def _check(args: argparse.Namespace) -> int:
    from bitnet_obs._candidate import FailureKind
    from bitnet_obs._crossval import check
    from bitnet_obs._golden import load

    if (args.implementation is None) == (args.server is None):
        raise InputError(
            "accepted: either MODULE:FUNC or --server URL, the candidate to check"
            if args.implementation is None
            else f"{printable(args.implementation)} and --server: accepted: one candidate"
        )
    timeout = args.timeout
    if args.server is not None:
        from bitnet_obs._http_candidate import DEFAULT_TIMEOUT_S

        # the request bounds itself (a thread is left behind by nothing)
        candidate = server_from(args, DEFAULT_TIMEOUT_S if timeout is None else timeout)
        timeout = None
    else:
        candidate = load_callable(args.implementation)
    reference = load_callable(args.reference) if args.reference else None
    golden = load(args.golden)
    # with --json, whatever the implementations print goes to stderr, not into the report
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        report = check(
            candidate,
            golden,
            reference,
            min_agreement=args.min_agreement,
            max_kl=args.max_kl,
            timeout_s=timeout,
        )
    if args.json:
        write_json({**report.to_dict(), "golden": dict(golden.header)})
    else:
        for line in _lines(report):
            print(line)
    if report.passed:
        return EXIT_PASS
    if report.failure is not None and report.failure.kind is FailureKind.INTERRUPTED:
        return EXIT_INTERRUPTED
    return EXIT_DIVERGED


def _lines(report: Any) -> list[str]:
    verdict = "PASS" if report.passed else f"FAIL: {printable(report.reason)}"
    lines = [verdict]
    summary = f"  {agreement(report)}"
    if report.cases_skipped:
        summary += f" ({report.cases_skipped} not run)"
    lines.append(summary)
    if report.candidate_tokens_per_s:
        speed = f"  candidate {report.candidate_tokens_per_s:.1f} tok/s"
        if report.reference_tokens_per_s:
            speed += (
                f", reference {report.reference_tokens_per_s:.1f} tok/s "
                f"({report.throughput_ratio:.2f}x)"
            )
        lines.append(speed)
    for case in report.cases:
        if case.error or case.first_divergence is not None:
            what = case.error or (
                f"diverges at token {case.first_divergence} of {case.expected_tokens}"
            )
            kind = f" [{case.failure.kind.value}]" if case.failure is not None else ""
            lines.append(f"  case {case.index}: {printable(what)}{kind}")
    return lines
