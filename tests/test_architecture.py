"""The shape of the house: imports point one way, public modules load only what they need, and
tests reach state through public helpers only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "bitnet_obs"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package this one imports, at module or function level."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # the package itself (bitnet_obs/__init__ re-exports lazily) and parents are not
            # edges: importing a submodule runs its parent package first anyway
            if target in modules and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_leaf_modules_import_nothing_above_them() -> None:
    """State lives at the bottom: these modules never import the pipeline or a feature."""
    modules = _modules()
    above = {"bitnet_obs._pipeline", "bitnet_obs._export", "bitnet_obs.health", "bitnet_obs.sla",
             "bitnet_obs.devices", "bitnet_obs._inference", "bitnet_obs._call",
             "bitnet_obs._shapes", "bitnet_obs._site", "bitnet_obs._stream", "bitnet_obs._span",
             "bitnet_obs._outputs", "bitnet_obs._server"}  # fmt: skip
    for leaf in ("_state", "_tally", "_instruments", "_kinds", "_recorder", "_facts",
                 "_aggregate", "_selfmon", "_config", "_parsers", "_secrets", "_otlp",
                 "_sampling", "_context", "_attributes", "_tokens"):  # fmt: skip
        name = f"bitnet_obs.{leaf}"
        assert not _imports(name, modules[name], modules) & above, name


_HEAVY = ("opentelemetry.sdk", "psutil", "http.server", "bitnet_obs._server", "grpc", "torch")


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("bitnet_obs", (*_HEAVY, "opentelemetry", "numpy")),
        ("bitnet_obs.quant", (*_HEAVY, "opentelemetry")),
        ("bitnet_obs.quant.io", (*_HEAVY, "opentelemetry", "bitnet_obs._instruments")),
        ("bitnet_obs.output", (*_HEAVY, "opentelemetry")),
        ("bitnet_obs.runtime", _HEAVY),
        ("bitnet_obs.crossval", ("opentelemetry.sdk", "grpc", "torch")),
        ("bitnet_obs.logs", _HEAVY),
        ("bitnet_obs._inference", _HEAVY),
        ("bitnet_obs.sla", _HEAVY),
    ],
)
def test_public_modules_load_only_what_they_need(module: str, forbidden: tuple[str, ...]) -> None:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    pulled = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not pulled, f"import {module} loads {pulled[:8]}"


def test_tests_patch_no_private_module_attribute() -> None:
    """Tests (ours and users') reach bitnet-obs state through public helpers
    (bitnet_obs.testing.reset/override_settings), never by patching a private name."""
    offenders: list[str] = []
    for path in (ROOT / "tests").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bitnet_obs")
            for alias in node.names
        ]
        private = {name for name in imported if name.startswith("_")}
        public = set(imported) - private  # a private attribute of these is private too
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "setattr"
                and node.args
            ):
                continue
            target = node.args[0]
            text = ast.unparse(target)
            attribute = node.args[1] if len(node.args) > 1 else None
            private_name = (
                isinstance(attribute, ast.Constant)
                and str(attribute.value).startswith("_")
                and isinstance(target, ast.Name)
                and target.id in public
            )
            if (
                (isinstance(target, ast.Constant) and "bitnet_obs._" in str(target.value))
                or (isinstance(target, ast.Name) and target.id in private)
                or private_name
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text}")
    assert not offenders, offenders
