"""RequestQueue: depth, wait, batches, priority handed to inference (bitnet_obs._queue)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import bitnet_obs
from bitnet_obs import ConfigError, RequestQueue
from bitnet_obs.testing import TelemetryCapture, capture_telemetry


@pytest.fixture
def cap() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def test_exact_depth_under_eight_threads(cap: TelemetryCapture) -> None:
    queue = RequestQueue("q8")
    barrier = threading.Barrier(8)
    peak: list[int] = []

    def worker(i: int) -> None:
        priority = bitnet_obs.PRIORITIES[i % 4]
        tickets = [queue.enqueue(priority) for _ in range(2000)]
        barrier.wait()  # all 16,000 are queued now
        peak.append(queue.depth())
        barrier.wait()
        for ticket in tickets[:1500]:
            queue.dequeue(ticket)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(peak) == {16_000}
    assert queue.depth() == 8 * 500
    assert queue.depth("high") == 2 * 500
    assert cap.value("bitnet.queue.depth", **{"bitnet.queue.name": "q8"}) == 4000
    assert cap.value("bitnet.queue.wait.duration") == 8 * 1500  # histogram counts


def test_wait_histogram_from_known_sleeps(cap: TelemetryCapture) -> None:
    queue = RequestQueue("sleepy")
    sleeps = (0.05, 0.1, 0.2)
    outer: list[float] = []  # each wait as timed around the block: an upper bound
    for seconds in sleeps:
        started = time.perf_counter()
        with queue.waiting(priority="low"):
            time.sleep(seconds)
        outer.append(time.perf_counter() - started)
    (point,) = cap.points("bitnet.queue.wait.duration", **{"bitnet.request.priority": "low"})
    assert point.count == 3
    # each recorded wait lies between its sleep and the time around its block, however busy
    # the machine: so do the sum and, bucket by bucket, the cumulative counts
    assert point.sum is not None and sum(sleeps) <= point.sum <= sum(outer)
    cumulative = 0
    for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
        cumulative += count
        surely_below = sum(hi <= bound for hi in outer)
        maybe_below = sum(lo <= bound for lo in sleeps)
        assert surely_below <= cumulative <= maybe_below, (bound, point.bucket_counts, outer)


def test_batches(cap: TelemetryCapture) -> None:
    queue = RequestQueue("batcher")
    with queue.batch() as batch:
        for _ in range(6):
            batch.add()
        time.sleep(0.02)
    queue.record_batch(3, 0.001)
    (size,) = cap.points("bitnet.batch.size", **{"bitnet.queue.name": "batcher"})
    assert (size.count, size.sum) == (2, 9)
    (formation,) = cap.points("bitnet.batch.formation.duration")
    assert formation.sum is not None and formation.sum >= 0.02


def test_wait_and_priority_reach_the_next_inference_span(cap: TelemetryCapture) -> None:
    queue = RequestQueue("gen")

    @bitnet_obs.monitored_inference(model="m")
    def generate() -> int:
        return 1

    ticket = queue.enqueue(priority="high")
    time.sleep(0.01)
    waited = queue.dequeue(ticket)
    generate()
    generate()  # the second call did not come from the queue
    first, second = cap.spans()
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["bitnet.queue.wait_duration"] == pytest.approx(waited)
    assert first.attributes["bitnet.request.priority"] == "high"
    assert "bitnet.queue.wait_duration" not in second.attributes
    high = {"bitnet.request.priority": "high", "bitnet.outcome": "ok"}
    assert cap.value("bitnet.inference.requests", **high) == 1
    assert cap.value("bitnet.inference.requests", **{"bitnet.outcome": "ok"}) == 2


def test_static_priority_and_misuse(cap: TelemetryCapture) -> None:
    @bitnet_obs.monitored_inference(model="m", priority="critical")
    def urgent() -> int:
        return 1

    urgent()
    assert cap.value("bitnet.inference.requests", **{"bitnet.request.priority": "critical"}) == 1
    with pytest.raises(ConfigError, match="priority"):
        bitnet_obs.monitored_inference(model="m", priority="urgent!")
    with pytest.raises(ConfigError, match="queue name"):
        RequestQueue("has spaces")
    queue, other = RequestQueue("a"), RequestQueue("b")
    ticket = queue.enqueue("bogus")  # a bad priority at run time is folded into "normal"
    assert other.dequeue(ticket) == 0.0
    assert queue.dequeue(ticket) >= 0.0
    assert queue.dequeue(ticket) == 0.0  # twice: ignored and counted
    assert queue.depth() == 0
