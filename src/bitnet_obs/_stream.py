"""A stream's token timing and token ids: one :class:`StreamMeter` per streamed request.

The meter owns the per-item stamps, the first-token mark, the flushes of inter-token gaps and
the streamed token ids. The generator loops, ``count_item`` and ``mark_token`` only feed it;
it only fills the request's :class:`~bitnet_obs._facts.RequestFacts` and hands whole chunks to
its two callbacks (the call's recorder for the gaps, the output room for the ids). A streamed
token costs a clock read and two list appends; everything else happens once per
:data:`GAP_CHUNK` items, in :meth:`tick`. (Lists, not ``array``: an array's append parses its
argument with ``PyArg_Parse``, ~330 machine instructions, a fifth of a token's whole cost;
a chunk is 4,096 stamps and ids at most, converted to numpy once.)::

    meter = StreamMeter(facts, on_gaps, on_ids)
    for item in stream:        # what StreamMeter.item does, which a hot loop may unroll
        meter.item(clock())
        meter.ids(token_id)    # an int item: its id, judged a chunk at a time
    meter.close()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bitnet_obs import _config
from bitnet_obs._facts import RequestFacts
from bitnet_obs._selfmon import internal_error
from bitnet_obs._tokens import default_item_count

#: Items stamped before their gaps are recorded (8 bytes each: bounded memory); also how
#: often streamed ids are handed on to be judged (a numpy pass per chunk).
GAP_CHUNK = 4096

#: Takes the stamps of a chunk (the previous chunk's last one first); never raises.
OnGaps = Callable[[list[float]], None]
#: Takes streamed ids, in order: an :class:`IdBuffer` of int ids, or a chunk item, and whether
#: they are the whole output (the stream's only ids, handed at its end); never raises.
OnIds = Callable[[Any, bool], None]


class IdBuffer(list[int]):
    """A stream's int ids since the last flush (a list: ``type`` tells it from a chunk item
    that happens to be a list). Checked when judged: an id beyond int64 stops the judging."""

    __slots__ = ()


class StreamMeter:
    """Stamps, first token, gap flushes and streamed ids of one request."""

    __slots__ = (
        "chunked",
        "counts_items",
        "facts",
        "handed",
        "id_buffer",
        "ids",
        "judged_from",
        "last",
        "left",
        "marks",
        "on_gaps",
        "on_ids",
        "stamp",
        "stamped",
        "stamps",
    )

    def __init__(
        self,
        facts: RequestFacts,
        on_gaps: OnGaps,
        on_ids: OnIds,
        *,
        counts_items: bool = True,
        marks: bool = False,
    ) -> None:
        facts.streamed = True
        self.facts = facts
        self.stamps: list[float] = []
        #: the per-item stamp: the buffer's own append (a C call)
        self.stamp: Callable[[float], None] = self.stamps.append
        self.stamped = 0  # stamps flushed so far
        self.last: float | None = None  # the last flushed stamp: the next gap's start
        self.left = 1  # items to the next tick: the first item, then every GAP_CHUNK
        self.on_gaps = on_gaps
        self.on_ids = on_ids
        #: a stream's tokens are its items (plus a chunk's extra ids), unless a counter or
        #: an explicit report counts them
        self.counts_items = counts_items
        #: the stamps come from an engine's mark_token(), not from a loop over items
        self.marks = marks
        self.chunked = 0  # tokens of chunk items beyond one each
        settings = _config.current()
        #: the shortest output that is judged for degenerate output (None: detection is off);
        #: the int ids of a shorter stream are never handed on (nothing would be recorded)
        self.judged_from: int | None = (
            settings.degenerate_min_tokens if settings.degenerate_detection else None
        )
        self.handed = False  # ids were handed on: the rest of the output follows them
        self.id_buffer = IdBuffer()
        #: where a streamed int id goes: the id buffer's own append
        self.ids: Callable[[int], None] = self.id_buffer.append

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

    def id_chunk(self, ids: Any) -> None:
        """Ids that came as one item (a list or array of them), after the int ids before it."""
        if self.id_buffer:
            self._hand_ids(False)
        self.handed = True
        self.on_ids(ids, False)

    # ----- flushing -----
    def flush(self, final: bool = False) -> None:
        """Hand the gaps stamped so far to ``on_gaps`` (the buffer starts with the previous
        flush's last stamp, so no gap is lost between chunks) and the ids to ``on_ids``;
        ``final``: the stream ended, and an output too short to be judged keeps its ids."""
        stamps = self.stamps
        if stamps:
            self.stamped += len(stamps)
            previous, self.last = self.last, stamps[-1]
            if previous is not None:
                stamps.insert(0, previous)
            if len(stamps) > 1:  # one stamp alone is no gap
                try:
                    self.on_gaps(stamps)
                finally:
                    del stamps[:]
            else:
                del stamps[:]
        ids = self.id_buffer
        if ids:
            least = self.judged_from
            whole = final and not self.handed
            if least is None or (whole and len(ids) < least):
                del ids[:]  # never judged: no output measures for this call at all
            else:
                self._hand_ids(whole)

    def _hand_ids(self, whole: bool) -> None:
        self.handed = True
        try:
            self.on_ids(self.id_buffer, whole)
        finally:
            del self.id_buffer[:]

    def stamps_taken(self) -> int:
        """Items stamped so far, flushed or not (an engine's loop asks whether it sampled)."""
        return self.stamped + len(self.stamps)

    def close(self) -> None:
        """The stream ended: the last gaps and ids are flushed and, when items are the count,
        the request's output tokens are its items."""
        n = self.stamps_taken() + self.chunked
        self.flush(final=True)
        facts = self.facts
        if self.counts_items and not facts.explicit_output:
            facts.output_tokens += n
