"""One background thread for the checks that must stay off the request path.

Layer-fidelity recomputations and the once-per-model weight accuracy run here, each in the
context copied from the request that asked for it: a sample still belongs to its request
(``current_inference()``, the span for exemplars), and bad input inside it is a counted skip.
The queue is bounded; the thread starts on first use. A forked child gets fresh locks and an
empty queue (through bitnet-obs's one fork registry), and starts its own thread when it needs one.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
import weakref
from collections.abc import Callable

from bitnet_obs import _state
from bitnet_obs._selfmon import internal_error

Task = tuple[contextvars.Context, Callable[[], object]]

MAX_QUEUED = 64


class Worker:
    """A lazily started daemon thread draining a bounded queue of ``(context, fn)`` tasks."""

    def __init__(self, name: str = "bitnet-obs-hf") -> None:
        self._name = name
        self.stopping = threading.Event()
        self._fresh()
        _workers.add(self)

    def _fresh(self) -> None:
        """New locks, an empty queue, no thread: at construction and in a forked child."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: queue.Queue[Task | None] = queue.Queue(MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._pending = 0

    def submit(self, fn: Callable[[], object]) -> bool:
        """Queue ``fn`` to run in a copy of the caller's context; False when the queue is full."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._queue = queue.Queue(MAX_QUEUED)  # what an earlier thread left is dropped
                self._pending = 0
                self.stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name=self._name, daemon=True
                )
                self._thread.start()
            try:
                self._queue.put_nowait((contextvars.copy_context(), fn))
            except queue.Full:
                return False
            self._pending += 1
            return True

    def _run(self, tasks: queue.Queue[Task | None]) -> None:
        while True:
            task = tasks.get()
            if task is None:
                return
            context, fn = task
            try:
                if not self.stopping.is_set():
                    context.run(fn)
            except Exception as exc:
                internal_error("hf_background_check", exc)
            finally:
                with self._lock:
                    if tasks is self._queue:  # not a queue dropped by stop() or a fork
                        self._pending -= 1
                        if self._pending <= 0:
                            self._idle.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued task has run; False if ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stop(self, timeout: float) -> None:
        """Drop what is queued, let the running task end (it may check ``stopping``), join."""
        self.stopping.set()
        with self._lock:
            thread = self._thread
            self._thread = None
            tasks, self._queue = self._queue, queue.Queue(MAX_QUEUED)
            self._pending = 0
            self._idle.notify_all()
        if thread is None:
            return
        with contextlib.suppress(queue.Full):  # still ends: queued tasks are skipped now
            tasks.put(None, timeout=timeout)
        thread.join(timeout)


_workers: weakref.WeakSet[Worker] = weakref.WeakSet()


@_state.on_fork
def _after_fork_in_child() -> None:
    for worker in list(_workers):
        worker._fresh()  # the parent's thread does not exist here; its locks may be held
