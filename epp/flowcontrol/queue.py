"""The queue of one flow: a heap on the items' sort keys with O(1) removal of any item.

Removal (TTL expiry, client disconnect) marks the item and fixes the counts at once; the heap entry is
dropped lazily when it reaches the top, and the heap is rebuilt when dead entries outnumber live ones, so a
flow whose clients keep disconnecting cannot grow without bound. The FCFS and EDF orderings both run on
this one structure (FCFS keys are enqueue order).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from epp.framework.flowcontrol import QueueItem

__all__ = ["FlowQueue"]

#: Rebuild the heap once this many dead entries exceed the live ones.
_COMPACT_SLACK = 32


class FlowQueue:
    __slots__ = ("_dead", "_heap", "_len", "byte_size", "fairness_id", "last_active")

    def __init__(self, fairness_id: str) -> None:
        self.fairness_id = fairness_id
        self._heap: list[tuple[tuple[float, ...], int, QueueItem]] = []
        self._len = 0
        self._dead = 0
        self.byte_size = 0
        self.last_active = 0.0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[QueueItem]:
        """Live items, in no particular order."""
        return (entry[2] for entry in self._heap if entry[2].queued)

    def push(self, item: QueueItem) -> None:
        item.queued = True
        heapq.heappush(self._heap, (item.sort_key, item.seq, item))
        self._len += 1
        self.byte_size += item.size_bytes

    def peek(self) -> QueueItem | None:
        heap = self._heap
        while heap and not heap[0][2].queued:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][2] if heap else None

    def pop(self) -> QueueItem | None:
        item = self.peek()
        if item is None:
            return None
        heapq.heappop(self._heap)
        self._account_removed(item)
        return item

    def remove(self, item: QueueItem) -> bool:
        """Take `item` out wherever it is; False if it was not queued here."""
        if not item.queued:
            return False
        self._account_removed(item)
        self._dead += 1
        if self._dead > self._len + _COMPACT_SLACK:
            self._compact()
        return True

    def rekey(self, sort_key: Callable[[QueueItem], tuple[float, ...]]) -> None:
        """Recompute every live item's key (the band's ordering policy changed) and rebuild the heap."""
        live = [entry[2] for entry in self._heap if entry[2].queued]
        for item in live:
            item.sort_key = sort_key(item)
        self._heap = [(item.sort_key, item.seq, item) for item in live]
        heapq.heapify(self._heap)
        self._dead = 0

    def _account_removed(self, item: QueueItem) -> None:
        item.queued = False
        self._len -= 1
        self.byte_size -= item.size_bytes

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2].queued]
        heapq.heapify(self._heap)
        self._dead = 0

    @property
    def heap_entries(self) -> int:
        """Entries held, live or dead (for leak tests)."""
        return len(self._heap)
