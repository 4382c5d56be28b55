"""The chunk loops: same results in the same order on one thread or two."""

from __future__ import annotations

import os
import threading

from bitnet_obs.quant._chunked import MIN_CPUS, PARALLEL_MIN, chunks, map_chunks, workers_for


def test_two_workers_keep_order_and_own_their_buffers() -> None:
    owners: dict[int, int] = {}

    def buffers() -> list[int]:
        return [threading.get_ident()]

    def work(k: int, bufs: list[int]) -> int:
        assert bufs[0] == threading.get_ident()  # never another thread's buffers
        owners[k] = bufs[0]
        return k * k

    for workers in (1, 2):
        assert map_chunks(work, 50, buffers, workers) == [k * k for k in range(50)]
    assert map_chunks(work, 0, buffers, 2) == []


def test_chunk_spans_and_worker_counts() -> None:
    assert list(chunks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert workers_for(PARALLEL_MIN - 1) == 1
    assert workers_for(PARALLEL_MIN) == (2 if len(os.sched_getaffinity(0)) >= MIN_CPUS else 1)
