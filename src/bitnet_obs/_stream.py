"""A stream's token timing: one :class:`StreamMeter` per streamed request.

The meter owns the per-item stamps, the first-token mark, the flushes of inter-token gaps and
the streamed token ids. The generator loops, ``count_item`` and ``mark_token`` only feed it;
it only fills the request's :class:`~bitnet_obs._facts.RequestFacts` and hands whole chunks
to its flush callback (the call's recorder). A stream costs a clock read and two C appends
per item; everything else happens once per :data:`GAP_CHUNK` items, in :meth:`tick`::

    meter = StreamMeter(facts, on_flush)
    for item in stream:        # what StreamMeter.item does, which a hot loop may unroll
        meter.item(clock())
    meter.close()
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

from bitnet_obs._facts import RequestFacts
from bitnet_obs._selfmon import internal_error
from bitnet_obs._tokens import default_item_count

#: Items stamped before their gaps are recorded (8 bytes each: bounded memory); also how
#: often streamed ids are judged (a numpy pass per chunk).
GAP_CHUNK = 4096

Flush = Callable[["array[float]"], None]
IdSink = Callable[[int], None]


class StreamMeter:
    """Stamps, first token, gap flushes and streamed ids of one request."""

    __slots__ = (
        "_open_ids",
        "chunked",
        "counts_items",
        "facts",
        "ids",
        "last",
        "left",
        "on_flush",
        "stamp",
        "stamped",
        "stamps",
    )

    def __init__(
        self,
        facts: RequestFacts,
        on_flush: Flush,
        open_ids: Callable[[], IdSink] | None = None,
        counts_items: bool = True,
    ) -> None:
        facts.streamed = True
        self.facts = facts
        self.stamps: array[float] = array("d")
        #: the per-item stamp: the buffer's own append (a C call)
        self.stamp: Callable[[float], None] = self.stamps.append
        self.stamped = 0  # stamps flushed so far
        self.last: float | None = None  # the last flushed stamp: the next gap's start
        self.left = 1  # items to the next tick: the first item, then every GAP_CHUNK
        self.on_flush = on_flush
        #: a stream's tokens are its items (plus a chunk's extra ids), unless a counter or
        #: an explicit report counts them
        self.counts_items = counts_items
        self.chunked = 0  # tokens of chunk items beyond one each
        self._open_ids = open_ids
        #: where streamed int ids go: opened at the first one (judging needs numpy)
        self.ids: IdSink = self._first_id

    # ----- feeding -----
    def item(self, now: float) -> None:
        """One streamed item (or decoding step) at ``now``."""
        self.stamp(now)
        self.left -= 1
        if not self.left:
            self.left = self.tick()

    def tick(self) -> int:
        """The first item's first-token mark, then a flush every :data:`GAP_CHUNK` items;
        returns the items until the next tick."""
        facts = self.facts
        if facts.first_token_at is None:
            facts.first_token_at = self.stamps[-1]
        else:
            self.flush()
        return GAP_CHUNK

    def chunk(self, item: Any) -> int:
        """A streamed item that is not one token: a chunk of ids (counted by its length) or
        an object (one). Returns its tokens; never raises."""
        try:
            n = default_item_count(item)
        except Exception as exc:
            internal_error("token_counter", exc)
            return 0
        self.chunked += n - 1
        return n

    def _first_id(self, token: int) -> None:
        sink = self.ids = self._open_ids() if self._open_ids is not None else _discard
        sink(token)

    def drop_ids(self) -> None:
        """Streamed ids stop here (one could not be stored): later ones are not judged."""
        self.ids = _discard

    # ----- flushing -----
    def flush(self) -> None:
        """Hand the gaps stamped so far to ``on_flush`` (which never raises): the buffer
        starts with the previous flush's last stamp, so no gap is lost between chunks."""
        stamps = self.stamps
        if not stamps:
            return
        self.stamped += len(stamps)
        previous, self.last = self.last, stamps[-1]
        if previous is not None:
            stamps.insert(0, previous)
        try:
            self.on_flush(stamps)
        finally:
            del stamps[:]

    def close(self) -> None:
        """The stream ended: the last gaps are flushed and, when items are the count, the
        request's output tokens are its items."""
        n = self.stamped + len(self.stamps) + self.chunked
        self.flush()
        facts = self.facts
        if self.counts_items and not facts.explicit_output:
            facts.output_tokens += n


def _discard(_: int) -> None:
    pass
