"""Fixtures of the reliability suite: the figures each scenario measured, and no stray child.

Every figure a test records is printed in the terminal summary; with
``BITNET_OBS_FIGURES_FILE=path`` they are also written there as JSON (docs/reliability.md is
filled from such a run).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.reliability._harness import kill_leftovers

Recorder = Callable[..., None]
_FIGURES: list[dict[str, Any]] = []


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Recorder:
    """``figures("p99_ms", 0.4, case="grpc")``: keep a measured figure of this scenario."""
    scenario = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")

    def record(name: str, value: Any, **labels: Any) -> None:
        entry = {"scenario": scenario, "test": request.node.name, "figure": name, "value": value}
        entry.update(labels)
        _FIGURES.append(entry)
        print(f"FIGURE {scenario} {name}={value} {labels or ''}")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for entry in _FIGURES:
        labels = {
            k: v for k, v in entry.items() if k not in ("scenario", "test", "figure", "value")
        }
        terminalreporter.write_line(
            f"{entry['scenario']:<20} {entry['figure']:<34} {entry['value']!s:<14} {labels or ''}"
        )
    path = os.environ.get("BITNET_OBS_FIGURES_FILE")
    if path:
        machine = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        }
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine, "figures": _FIGURES}, fh, indent=1)
