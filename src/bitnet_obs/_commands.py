"""What every ``bitnet-obs`` subcommand shares: exit codes, one-line errors, strict JSON.

A command is run through :func:`guarded`, which turns whatever goes wrong into one line on
stderr and an exit status, never a traceback:

=====  ==========================================================================================
0      done; for a gate (``crossval check``, ``quant-report --reference``): ran and passed
1      an internal error (a bug of ours, reported in one line)
2      bad input: an argument, a file, a tensor, an import, a setting (:class:`InputError`,
       ``ConfigError``, ``ReadError``, ``QuantInputError``)
3      the check ran and failed (diverged, a failing candidate, not faithful)
130    interrupted (Ctrl-C)
141    the output pipe was closed (``| head``), as a tool stopped by SIGPIPE
=====  ==========================================================================================

Every line written is escaped (:func:`bitnet_obs._untrusted.printable`), and ``--json`` output is
strict JSON (:func:`write_json`), so a new subcommand gets the same contract by calling these::

    def run(args):
        return guarded("bitnet-obs canary", lambda: _canary(args))
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

from bitnet_obs._errors import ConfigError
from bitnet_obs._untrusted import one_line, strict_json

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PIPE",
    "InputError",
    "OneLineParser",
    "bounded",
    "error",
    "guarded",
    "write_json",
]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141


class InputError(Exception):
    """Bad input on the command line or in a file it names; the message is the line printed
    (exit 2)."""


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """The library's own bad-input errors (imported here so a command needs no list of its own)."""
    from bitnet_obs.quant import QuantInputError
    from bitnet_obs.quant.io import ReadError

    return (InputError, ConfigError, ReadError, QuantInputError)


def error(prog: str, message: str, stream: TextIO | None = None) -> None:
    """One line on stderr: ``prog: message``, the message escaped and kept on one line."""
    out = sys.stderr if stream is None else stream
    print(f"{prog}: {one_line(message)}", file=out, flush=True)


def silence_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the interpreter's final flush does not
    raise BrokenPipeError again on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def guarded(prog: str, body: Callable[[], int]) -> int:
    """Run a command's *body* and return its exit status; whatever it raises becomes one line
    on stderr and the status of the table above. ``SystemExit`` escaping *body* (user code
    calling ``sys.exit``) is an internal error: only a body that returns 0 exits 0."""
    try:
        return body()
    except KeyboardInterrupt:
        error(prog, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_PIPE
    except SystemExit as exc:
        error(prog, f"stopped: code run by the command raised SystemExit({exc.code!r})")
        return EXIT_INTERNAL
    except _bad_input_types() as exc:
        error(prog, str(exc))
        return EXIT_BAD_INPUT
    except (MemoryError, RecursionError) as exc:
        error(prog, f"internal error {type(exc).__name__} (an input too large or too deep?)")
        return EXIT_INTERNAL
    except Exception as exc:  # a bug of ours: one line, not a traceback, and say so
        error(prog, f"internal error {type(exc).__name__}: {exc} (please report it)")
        return EXIT_INTERNAL


def write_json(obj: Any, out: TextIO | None = None, *, indent: int | None = 2) -> None:
    """Strict JSON on stdout (no NaN/Infinity: ``null``, listed under ``"non_finite"``)."""
    stream = sys.stdout if out is None else out
    stream.write(strict_json(obj, indent=indent) + "\n")
    stream.flush()


def bounded(parser: Any, option: str) -> Callable[[str], Any]:
    """An argparse ``type`` from one of the settings parsers (:mod:`bitnet_obs._parsers`): an
    option takes the same bounds as the setting or keyword it stands for, and a bad value gets
    the same message (``--interval='0' is not valid; accepted: ...``, exit 2)::

        parser.add_argument("--budget", type=bounded(_canary.BUDGET, "--budget"))
    """

    def parse(text: str) -> Any:
        try:
            return parser.parse(option, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (``prog: error: ...``) and exit 2; its
    subparsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        error(self.prog, f"error: {message} (see --help)")
        raise SystemExit(EXIT_BAD_INPUT)
