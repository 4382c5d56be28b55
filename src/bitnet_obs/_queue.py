"""Request queues and batching: depth, time in queue, batch formation and size.

For servers that queue requests before inference. Depth is an exact tally (observable), wait
and batch figures are histograms. When a request leaves the queue, its wait and priority are
handed to the next monitored inference call in the same context, which puts them on its span
and uses the priority as a metric attribute::

    queue = bitnet_obs.RequestQueue("generate")

    ticket = queue.enqueue(priority="high")      # producer side
    ...
    queue.dequeue(ticket)                        # worker side, just before inference
    generate(prompt)                             # its span carries bitnet.queue.wait_duration

    with queue.waiting(priority="normal"):       # or: time spent waiting, in one block
        slot = await semaphore.acquire()

    with queue.batch() as batch:                 # batch formation time and size
        for request in drain():
            batch.add()
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bitnet_obs import _state
from bitnet_obs._attributes import PRIORITIES
from bitnet_obs._errors import ConfigError
from bitnet_obs._instruments import (
    BATCH_FORMATION_DURATION,
    BATCH_SIZE,
    QUEUE_DEPTH,
    QUEUE_WAIT_DURATION,
)
from bitnet_obs._selfmon import describe, internal_error
from bitnet_obs._tally import AttrValue, key_of

__all__ = ["PRIORITIES", "Batch", "QueueTicket", "RequestQueue", "take_pending"]

_DEPTH = QUEUE_DEPTH

# (wait seconds, priority) of the request that last left a queue in this context; the next
# monitored inference call takes it (and clears it).
pending: contextvars.ContextVar[tuple[float, str] | None] = contextvars.ContextVar(
    "bitnet_obs_queue_pending", default=None
)


@_state.on_reset(phase=_state.CLEAR)
def _forget_handoff() -> None:
    pending.set(None)


def take_pending() -> tuple[float, str] | None:
    """The (wait, priority) handed over by the last dequeue in this context, once."""
    handed = pending.get()
    if handed is not None:
        pending.set(None)
    return handed


class QueueTicket:
    """One queued request; pass it to :meth:`RequestQueue.dequeue` when it is taken."""

    __slots__ = ("_done", "_lock", "enqueued_at", "priority", "queue")

    def __init__(self, queue: RequestQueue, priority: str) -> None:
        self.queue = queue
        self.priority = priority
        self.enqueued_at = time.perf_counter()
        self._done = False
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
            return True


class Batch:
    """A batch being formed: count its requests with :meth:`add`."""

    def __init__(self) -> None:
        self.size = 0
        self.started = time.perf_counter()

    def add(self, n: int = 1) -> None:
        self.size += n


class RequestQueue:
    """Telemetry for one named queue. Its methods never raise once it is built."""

    def __init__(self, name: str = "default") -> None:
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", name):
            raise ConfigError(f"queue name={name!r} is not valid; accepted: a short identifier")
        self.name = name
        self._keys: dict[str, Any] = {
            p: key_of({"bitnet.queue.name": name, "bitnet.request.priority": p}) for p in PRIORITIES
        }
        self._attrs: dict[str, dict[str, AttrValue]] = {
            p: {"bitnet.queue.name": name, "bitnet.request.priority": p} for p in PRIORITIES
        }
        self._batch_attrs: dict[str, AttrValue] = {"bitnet.queue.name": name}

    def enqueue(self, priority: str = "normal") -> QueueTicket:
        if priority not in PRIORITIES:
            internal_error("bad_priority", detail=f"enqueue(priority={describe(priority)})")
            priority = "normal"
        ticket = QueueTicket(self, priority)
        _DEPTH.add(self._keys[priority], 1)
        return ticket

    def dequeue(self, ticket: QueueTicket) -> float:
        """Take a request off the queue; returns its wait in seconds (0.0 if misused)."""
        try:
            if not isinstance(ticket, QueueTicket) or ticket.queue is not self:
                internal_error("bad_ticket", detail="dequeue() of a ticket from another queue")
                return 0.0
            if not ticket.take():
                internal_error("bad_ticket", detail="a ticket was dequeued twice")
                return 0.0
            wait = time.perf_counter() - ticket.enqueued_at
            _DEPTH.add(self._keys[ticket.priority], -1)
            QUEUE_WAIT_DURATION.record(wait, self._attrs[ticket.priority])
            pending.set((wait, ticket.priority))
            return wait
        except Exception as exc:
            internal_error("queue", exc)
            return 0.0

    @contextmanager
    def waiting(self, priority: str = "normal") -> Iterator[QueueTicket]:
        """Counts as queued for the duration of the block."""
        ticket = self.enqueue(priority)
        try:
            yield ticket
        finally:
            self.dequeue(ticket)

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Times the formation of one batch and records its size at the end of the block."""
        batch = Batch()
        try:
            yield batch
        finally:
            self.record_batch(batch.size, time.perf_counter() - batch.started)

    def record_batch(self, size: int, formation_seconds: float) -> None:
        try:
            BATCH_SIZE.record(size, self._batch_attrs)
            BATCH_FORMATION_DURATION.record(formation_seconds, self._batch_attrs)
        except Exception as exc:
            internal_error("queue", exc)

    def depth(self, priority: str | None = None) -> int:
        """Current depth (all priorities, or one) — handy for tests and admission control."""
        attrs: dict[str, AttrValue] = {"bitnet.queue.name": self.name}
        if priority is not None:
            attrs["bitnet.request.priority"] = priority
        return _DEPTH.value(**attrs)
