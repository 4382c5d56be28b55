"""Sessions: tests (the README's test command runs lint, typecheck and tests), lint, typecheck,
bench, docs."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
LINTED = ["src", "tests", "examples", "benchmarks", "tools", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, with the real prometheus/promtool/alertmanager binaries."""
    session.install("torch==2.13.0")  # the local CPU wheel; a bare torch pulls a CUDA build
    session.install(".[test,gpu,safetensors,hf,gguf,report,docs]")
    session.run("python", "tools/ensure_tools.py")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("torch==2.13.0")  # the instrumentation is typed against torch/transformers
    session.install(MYPY, "types-PyYAML", ".[test,hf]")
    session.run("mypy", "--strict")  # packages and paths come from pyproject.toml


@nox.session
def bench(session: nox.Session) -> None:
    """Overhead ratios against hand-written bare-SDK code, measured in one run."""
    session.install(".[test]")
    session.run(
        "pytest",
        "benchmarks",
        "--benchmark-only",
        "-p",
        "no:randomly",
        "--benchmark-columns=min,median,mean,stddev,rounds",
        "-s",
        *session.posargs,
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the configuration reference and metric catalogue from the code, then build
    the API reference (Sphinx autodoc; any warning fails) into build/api."""
    session.install("torch==2.13.0")  # the local CPU wheel, for the [hf] extra
    session.install(".[docs,hf]")  # the instrumentation page imports opentelemetry-instrumentation
    session.run("python", "tools/gen_docs.py")
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs/api", "build/api")
