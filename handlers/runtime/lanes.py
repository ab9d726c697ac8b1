"""Per-key lanes: events of one key run one after another, different keys concurrently.

A lane is a queue and the task draining it. All events of a conversation share a key, so
its user request and its tool results never run at once, while hundreds of conversations
each have their own lane in flight. The lane task ends when its queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Lanes"]

ItemT = TypeVar("ItemT")


@dataclass
class _Lane(Generic[ItemT]):
    queue: deque[ItemT] = field(default_factory=deque)
    current: ItemT | None = None
    task: asyncio.Task[None] | None = None


class Lanes(Generic[ItemT]):
    def __init__(self, run: Callable[[ItemT], Awaitable[None]]) -> None:
        self._run = run
        self._lanes: dict[bytes, _Lane[ItemT]] = {}

    def __len__(self) -> int:
        return len(self._lanes)

    def submit(self, key: bytes, item: ItemT) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.queue.append(item)
        if lane.task is None:
            # A constant name: formatting the key cost 2 % of a busy worker's CPU.
            lane.task = asyncio.create_task(self._drain(key, lane), name="lane")

    async def _drain(self, key: bytes, lane: _Lane[ItemT]) -> None:
        try:
            while lane.queue:
                lane.current = lane.queue.popleft()
                await self._run(lane.current)
                lane.current = None
        finally:
            lane.current = None
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    def items(self) -> Iterable[ItemT]:
        for lane in self._lanes.values():
            if lane.current is not None:
                yield lane.current
            yield from lane.queue

    async def abandon(self, predicate: Callable[[ItemT], bool]) -> list[ItemT]:
        """Drop queued items matching ``predicate`` and cancel lanes running one; return the
        dropped items. Used on revoke after the drain deadline, and at shutdown."""
        dropped: list[ItemT] = []
        cancelled: list[asyncio.Task[None]] = []
        requeue: list[tuple[bytes, list[ItemT]]] = []
        for key, lane in list(self._lanes.items()):
            dropped += [i for i in lane.queue if predicate(i)]
            lane.queue = deque(i for i in lane.queue if not predicate(i))
            if lane.current is not None and predicate(lane.current) and lane.task is not None:
                dropped.append(lane.current)
                lane.task.cancel()
                cancelled.append(lane.task)
                # The lane's other queued items (other partitions) go on once it is gone.
                requeue.append((key, list(lane.queue)))
                lane.queue.clear()
                del self._lanes[key]
        for task in cancelled:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for key, rest in requeue:
            for item in rest:
                self.submit(key, item)
        return dropped
