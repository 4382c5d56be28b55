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


ENSURE_LLAMA = "tools/ensure_llama.py"


def _llama_wheel(session: nox.Session, *args: str) -> str | None:
    """Run tools/ensure_llama.py (a lookup once its cache is warm), return the wheel it names.

    The first run on a machine builds llama.cpp from llama-cpp-python's source distribution
    (tens of minutes on 2 cores, once: the cache is shared by every checkout and session).
    """
    session.run("python", ENSURE_LLAMA, *args)
    out = session.run("python", ENSURE_LLAMA, "--check", *args, silent=True, success_codes=[0, 1])
    last = str(out or "").strip().splitlines()[-1:] or [""]
    return last[0] if last[0].endswith(".whl") else None


def _install_llama(session: nox.Session) -> list[str]:
    """llama-cpp-python from the engine's wheel (its libraries inside, compiled once per
    machine); the extras to add: ``llamacpp`` when it is installed, none otherwise (pip would
    compile llama.cpp again from the source distribution)."""
    wheel = _llama_wheel(session, "--print", "wheel")
    if wheel is None:
        session.warn("no llama.cpp engine: its tests skip (or fail under CI=true)")
        return []
    # the same version may be a rebuilt engine (new compiler, CPU, flags): always replace it
    session.install("--no-deps", "--force-reinstall", "--quiet", wheel)
    return ["llamacpp"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, with the real prometheus/promtool/alertmanager binaries and llama.cpp."""
    session.install("torch==2.13.0")  # the local CPU wheel; a bare torch pulls a CUDA build
    extras = ["test", "gpu", "safetensors", "hf", "gguf", "report", "docs"]
    extras += _install_llama(session)
    session.install(f".[{','.join(extras)}]")
    session.run("python", "tools/ensure_tools.py")
    session.run("pytest", *session.posargs)


#: What the fast lane leaves out: tests marked slow or needing the real Prometheus tools, the
#: fault-injection and load suites (tests/reliability) and the operations kit (tests/ops).
QUICK = ["-m", "not slow and not prometheus", "--ignore=tests/reliability", "--ignore=tests/ops"]


@nox.session
def quick(session: nox.Session) -> None:
    """The unit tests in under 2 minutes (about 1,150 of them: 105 s here), for the edit-test loop.

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
    # llama_cpp's Python files for its types (no compilation: its wheel without libraries)
    wheel = _llama_wheel(session, "--python-only", "--print", "python-wheel")
    if wheel:
        session.install("--no-deps", wheel)
    session.install(MYPY, "types-PyYAML", ".[test,hf]" if wheel is None else ".[test,hf,llamacpp]")
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
    extras = ",".join(["test", "hf", "gguf", "safetensors", *_install_llama(session)])
    session.install(f".[{extras}]")
    try:
        session.install(*PEERS_RUNTIME, f".[{extras}]")
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
