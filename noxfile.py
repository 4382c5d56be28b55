"""Sessions: tests (the README's test command runs lint, typecheck and tests; CI runs exactly
that), quick (the fast lane while changing code), lint, typecheck, bench, docs."""

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


#: What the fast lane leaves out: tests marked slow or needing the real Prometheus tools, the
#: fault-injection and load suites (tests/reliability) and the operations kit (tests/ops).
QUICK = ["-m", "not slow and not prometheus", "--ignore=tests/reliability", "--ignore=tests/ops"]


@nox.session
def quick(session: nox.Session) -> None:
    """The unit tests in under 2 minutes (about 900 of them), for the edit-test loop.

    The package is installed editable, so ``nox -s quick -R`` (reuse the venv, skip the
    installs) reruns at once. The full suite is ``nox -s tests`` (``.ci/run``).
    """
    session.install("torch==2.13.0")  # the local CPU wheel; a bare torch pulls a CUDA build
    session.install("-e", ".[test,gpu,safetensors,hf,gguf,report,docs]")
    session.run("pytest", "-q", *QUICK, *session.posargs)


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


# The peers the bench compares against, installed the light way: the two SDKs without their
# dependency trees (dozens of instrumentations, openai, anthropic, boto3, ...), plus only the
# modules they import at run time, resolved together with our own pins (docs/performance.md).
PEERS_NO_DEPS = [
    "openlit==1.45.0",
    "traceloop-sdk==0.62.4",
    # no 0.66b2 on PyPI; 0.66b1 pins opentelemetry-instrumentation==0.66b1 but runs on 0.66b2
    "opentelemetry-instrumentation-threading==0.66b1",
]
PEERS_RUNTIME = [
    "opentelemetry-instrumentation==0.66b2",  # the contrib release of opentelemetry-sdk 1.45.2
    "opentelemetry-instrumentation-logging==0.66b2",
    "opentelemetry-semantic-conventions-ai==0.5.1",
    "pydantic>=2,<3",
    "colorama==0.4.6",
    "cuid==0.4",
    "tenacity>=8.2.3,<10",
    "jinja2>=3.1.5,<4",
    "httpx>=0.28,<1",
    "aiohttp>=3.11.11,<4",
]


@nox.session
def bench(session: nox.Session) -> None:
    """Overhead ratios against hand-written bare-SDK code and the peers, measured in one run.

    A peer that fails to install only skips its rows (the bench says why).
    """
    session.install("torch==2.13.0")  # the local CPU wheel: the transformers benchmark
    session.install(".[test,hf,gguf,safetensors]")
    try:
        session.install(*PEERS_RUNTIME, ".[test,hf,gguf,safetensors]")
        session.install("--no-deps", *PEERS_NO_DEPS)
    except nox.command.CommandFailed:
        session.warn("the peers (OpenLIT, OpenLLMetry) did not install: their rows are skipped")
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
