"""Which offset of a partition may be committed: the lowest one not yet finished.

Events of one partition finish out of order (different conversations run concurrently), so
the committable offset is not "the last one done" but "everything below the lowest offset
still in flight". Committing further would lose the unfinished event on a crash.
"""

from __future__ import annotations

import heapq
from collections.abc import Container

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    """In-flight offsets of one partition."""

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._heap: list[int] = []
        self._highest_seen = -1
        self.committed: int | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def begin(self, offset: int) -> None:
        self._pending.add(offset)
        heapq.heappush(self._heap, offset)
        self._highest_seen = max(self._highest_seen, offset)

    def finish(self, offset: int) -> None:
        self._pending.discard(offset)
        while self._heap and self._heap[0] not in self._pending:
            heapq.heappop(self._heap)

    def committable(self) -> int | None:
        """The next offset to commit (Kafka semantics: the first one not yet done)."""
        if self._heap:
            return self._heap[0]
        if self._highest_seen < 0:
            return None
        return self._highest_seen + 1

    @property
    def highest_seen(self) -> int:
        """The highest offset begun since the partition was assigned (-1: none)."""
        return self._highest_seen

    def start_at(self, offset: int) -> None:
        """Everything below ``offset`` is done already (committed by a previous owner of
        the partition): such records are dropped like re-fetched ones."""
        self._highest_seen = max(self._highest_seen, offset - 1)
        self.committed = offset

    def is_pending(self, offset: int) -> bool:
        return offset in self._pending

    def committable_without(self, *offsets: int) -> int:
        """The committable offset once ``offsets`` are finished too."""
        done = set(offsets)
        lowest = min((o for o in self._pending if o not in done), default=None)
        if lowest is not None:
            return lowest
        return max((self._highest_seen, *offsets)) + 1

    def ready_prefix(self, ready: Container[int]) -> list[int]:
        """The in-flight offsets from the lowest up, as long as each is in ``ready``: what
        may be committed in order now (``exactly_once`` commits transactions in order)."""
        prefix = []
        for offset in sorted(self._pending):
            if offset not in ready:
                break
            prefix.append(offset)
        return prefix

    def to_commit(self) -> int | None:
        """The committable offset if it moved since the last commit, else None."""
        offset = self.committable()
        if offset is None or offset == self.committed:
            return None
        return offset
