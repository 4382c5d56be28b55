"""Chunk loops of the streaming statistics, on one thread or two.

The per-chunk work is a handful of numpy calls on buffers that stay in the L2 cache; numpy
releases the GIL inside them, so two threads (each with its own buffers) run two chunks at once.
That is worth it only for large tensors (below ``PARALLEL_MIN`` elements the thread start-up
costs more than it saves) and only where a core is likely idle: on a 2-core machine that other
processes keep busy, a second thread measured about 30% more CPU for no shorter wall time, and
even on a quiet one two threads took longer than one (docs/performance.md), so the second
worker is used from ``MIN_CPUS`` CPUs on.  Work functions must not call
multi-threaded BLAS kernels (large gemv/gemm): OpenBLAS's own threads would then fight the
workers.  Per-row dot products of a few hundred values (``np.vecdot``) stay single-threaded in
OpenBLAS and are fine.

``np.errstate`` is per thread, so each work function sets its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["MIN_CPUS", "PARALLEL_MIN", "chunks", "map_chunks", "workers_for"]

B = TypeVar("B")
R = TypeVar("R")

#: Elements from which the chunk loops use two threads.
PARALLEL_MIN = 1 << 21
#: CPUs (usable by this process) from which the chunk loops use two threads.
MIN_CPUS = 4
_MAX_WORKERS = 2


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_for(n: int) -> int:
    """Threads for a tensor of *n* elements: two for large tensors on a machine with
    ``MIN_CPUS`` or more CPUs, one otherwise."""
    if n < PARALLEL_MIN or _cpus() < MIN_CPUS:
        return 1
    return _MAX_WORKERS


def map_chunks(
    work: Callable[[int, B], R], count: int, buffers: Callable[[], B], workers: int = 1
) -> list[R]:
    """``[work(k, bufs) for k in range(count)]``, each thread with its own ``buffers()``."""
    if workers <= 1 or count < 2:
        own = buffers()
        return [work(k, own) for k in range(count)]
    local = threading.local()

    def run(k: int) -> R:
        bufs: B | None = getattr(local, "bufs", None)
        if bufs is None:
            bufs = local.bufs = buffers()
        return work(k, bufs)

    with ThreadPoolExecutor(workers, thread_name_prefix="bitnet-obs-quant") as pool:
        return list(pool.map(run, range(count)))
