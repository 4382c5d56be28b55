"""The progress bar on stderr for long files.

tqdm, not rich: it is one small pure-Python package with no dependencies of its own, draws a
single updating line on any stream, and switches itself off when that stream is not a terminal
(``disable=None``), which is what a report piped to a file or run in CI needs.  rich would bring
a console and markup stack (and pygments, markdown-it) for one bar.  Without tqdm installed
(the ``[report]`` extra) there is simply no bar.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(
    total: int, stream: TextIO | None = None
) -> Iterator[Callable[[int], None] | None]:
    """Yield an ``advance(n_values)`` callback, or ``None`` when no bar is drawn (stream not a
    terminal, or tqdm missing)."""
    out = sys.stderr if stream is None else stream
    isatty = getattr(out, "isatty", None)
    if total <= 0 or isatty is None or not isatty():
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    with tqdm(
        total=total, unit="param", unit_scale=True, file=out, leave=False, dynamic_ncols=True
    ) as bar:
        yield bar.update
