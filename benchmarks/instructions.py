"""Machine instructions per call of the per-call configurations, counted by valgrind.

Wall-clock figures move with the load of a shared machine; instruction counts do not, so they
guide optimisation between bench runs (they are not time: lock operations, cache misses and
clock reads cost more cycles than their instruction count says)::

    python -m benchmarks.instructions ours-metrics call
    python -m benchmarks.instructions prometheus_client call
    python -m benchmarks.instructions ours-sampled stream/ours/1050 --calls 200

Each configuration of ``benchmarks/_percall.py`` is built in a fresh interpreter under
``valgrind --tool=callgrind``, warmed up (300 calls, then ``gc.freeze()``), and the calls are
made from ``itertools.starmap``: collection is switched on only inside ``starmap_next``, so the
figure is the calls themselves, setup and imports excluded. ``PYTHONHASHSEED`` is fixed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import collections, gc, itertools, sys
from benchmarks._percall import KINDS
fn = KINDS[sys.argv[1]]()[sys.argv[2]]
for _ in range(300):
    fn()
gc.collect()
gc.freeze()
collections.deque(itertools.starmap(fn, itertools.repeat((), int(sys.argv[3]))), maxlen=0)
"""


def count(kind: str, case: str, calls: int, seed: int = 0) -> float:
    """Instructions per call of ``case`` in configuration ``kind``."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", "--collect-atstart=no",
         "--toggle-collect=starmap_next", sys.executable, "-c", _CHILD, kind, case, str(calls)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise SystemExit(f"no count in valgrind's output:\n{proc.stderr[-2000:]}")
    return int(found.group(1)) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", help="a configuration of benchmarks/_percall.py (KINDS)")
    parser.add_argument("case", help="one of its cases: call, stream/ours/1050, hand/sampled...")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    per_call = count(args.kind, args.case, args.calls)
    print(f"{args.kind} {args.case}: {per_call:,.0f} instructions per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
