"""Collects benchmark medians so each file can report ratios measured in the same run.

A bench module appends a function to ``REPORTERS``; after the run each one turns ``RESULTS``
into Markdown table lines (printed, and written to ``.benchmarks/report.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

RESULTS: dict[str, float] = {}
REPORTERS: list[Callable[[dict[str, float]], list[str]]] = []


@pytest.fixture(scope="session")
def results() -> dict[str, float]:
    return RESULTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines: list[str] = []
    for reporter in REPORTERS:
        try:
            lines.extend(reporter(RESULTS))
        except KeyError:
            continue  # that module's cases were not all run
        lines.append("")
    if lines:
        terminalreporter.section("bitnet-obs overhead report")
        for line in lines:
            terminalreporter.write_line(line)
        out = Path(".benchmarks")
        out.mkdir(exist_ok=True)
        (out / "report.md").write_text("\n".join(lines) + "\n")
