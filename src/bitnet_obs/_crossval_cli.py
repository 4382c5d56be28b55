"""``bitnet-obs crossval record|check``: gate a new build or a new GGUF on golden outputs.

Exit codes: 0 pass (or golden file written), 3 the candidate diverged or failed, 2 bad input --
an unimportable ``MODULE:FUNC``, an unreadable prompts or golden file, a bad option, an
implementation that fails while recording -- with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_PASS, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 2, 3


class CliInputError(Exception):
    """Bad input on the command line; the message is the one line printed."""


def add_parser(sub: Any) -> None:
    """The ``crossval`` subcommand and its two actions."""
    crossval = sub.add_parser("crossval", help="record golden outputs, check a build against them")
    actions = crossval.add_subparsers(dest="action", required=True)
    rec = actions.add_parser("record", help="run a trusted implementation, write golden cases")
    rec.add_argument("implementation", metavar="MODULE:FUNC", help="fn(prompt_ids, max_new)")
    rec.add_argument("--prompts", required=True, help="JSON: a list of token-id lists, or lines")
    rec.add_argument("--out", required=True, help="the golden .npz to write")
    rec.add_argument("--max-new-tokens", type=int, default=32)
    rec.add_argument("--logits-steps", type=int, default=8, help="logits kept per case")
    rec.add_argument("--model", default="", help="model name for the header and metrics")
    rec.add_argument("--quant-format", default="", help="e.g. i2_s, tl2")
    chk = actions.add_parser("check", help="run a candidate on the golden cases; exit 3 if off")
    chk.add_argument("implementation", metavar="MODULE:FUNC", help="the candidate")
    chk.add_argument("--golden", required=True, help="a golden .npz from 'crossval record'")
    chk.add_argument("--reference", metavar="MODULE:FUNC", help="also time this one")
    chk.add_argument("--min-agreement", type=float, default=1.0, help="default 1: identical")
    chk.add_argument("--max-kl", type=float, default=None, help="also fail above this KL")
    chk.add_argument("--json", action="store_true", help="machine-readable report on stdout")


def run(args: argparse.Namespace) -> int:
    from bitnet_obs._crossval import CrossvalError
    from bitnet_obs._errors import ConfigError

    try:
        if args.action == "record":
            return _record(args)
        return _check(args)
    except (CliInputError, ConfigError, CrossvalError) as exc:
        print(f"bitnet-obs crossval {args.action}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def load_callable(spec: str) -> Any:
    """``package.module:function`` (or ``module:Class.method``); the current directory is
    importable, as with ``python -m``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliInputError(f"{spec!r}: accepted: MODULE:FUNC, e.g. myserver.model:generate")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise CliInputError(f"cannot import {module_name!r} ({why})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliInputError(f"{spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CliInputError(f"{spec!r} is not callable; accepted: fn(prompt_ids, max_new_tokens)")
    return obj


def read_prompts(path: str) -> list[list[int]]:
    """A JSON list of token-id lists, or JSON lines with one list each."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliInputError(f"--prompts {path}: cannot read ({exc})") from None
    try:
        prompts = json.loads(text)
    except ValueError:
        try:
            prompts = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise CliInputError(
                f"--prompts {path}: not JSON ({exc}); accepted: [[1, 2, 3], [4, 5]] or one "
                "list per line"
            ) from None

    def ids(prompt: object) -> bool:
        return (
            isinstance(prompt, list)
            and bool(prompt)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
        )

    if not isinstance(prompts, list) or not prompts or not all(ids(p) for p in prompts):
        raise CliInputError(
            f"--prompts {path}: accepted: a non-empty list of non-empty lists of token ids >= 0"
        )
    return prompts


def _record(args: argparse.Namespace) -> int:
    from bitnet_obs._crossval import record

    fn = load_callable(args.implementation)
    prompts = read_prompts(args.prompts)
    golden = record(
        fn,
        prompts,
        args.out,
        max_new_tokens=args.max_new_tokens,
        logits_steps=args.logits_steps,
        model=args.model,
        quant_format=args.quant_format,
    )
    tokens = sum(c.output_ids.shape[0] for c in golden.cases)
    logits = sum(1 for c in golden.cases if c.logits is not None)
    print(
        f"wrote {args.out}: {len(golden.cases)} cases, {tokens} output tokens, logits for "
        f"{logits} cases (model {args.model or '-'}, format {args.quant_format or '-'})"
    )
    return EXIT_PASS


def _check(args: argparse.Namespace) -> int:
    from bitnet_obs._crossval import check
    from bitnet_obs._golden import load

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
        )
    if args.json:
        print(json.dumps({**report.to_dict(), "golden": dict(golden.header)}, indent=2))
    else:
        for line in _lines(report):
            print(line)
    return EXIT_PASS if report.passed else EXIT_DIVERGED


def _lines(report: Any) -> list[str]:
    verdict = "PASS" if report.passed else f"FAIL: {report.reason}"
    lines = [verdict]
    summary = f"  {len(report.cases)} cases, token agreement {report.token_agreement:.3f}"
    if report.kl is not None:
        summary += f", logits KL {report.kl:.3g}, top-1 {report.top1:.3f}"
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
            lines.append(f"  case {case.index}: {what}")
    return lines
