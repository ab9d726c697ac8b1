"""Per-key lanes: events of one key run one after another, different keys concurrently.

A lane is a queue and the task running its current item. All events of a conversation
share a key, so its user request and its tool results never run at once, while thousands
of conversations each have their own lane.

An item queued behind a running one *waits*: it holds memory, not a running slot. Without
an ``on_ready`` callback a lane runs its next item as soon as the current one is done.
With one (the worker's admission), the lane stops there and reports itself ready; its next
item starts when the admission calls :meth:`Lanes.resume`, so every start, the first of a
lane or a later one, takes a running slot and is paced the same way (ADR 14, ADR 24).
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


@dataclass(slots=True)
class _Lane(Generic[ItemT]):
    queue: deque[ItemT] = field(default_factory=deque)
    current: ItemT | None = None
    task: asyncio.Task[None] | None = None
    #: Whether ``task`` began to run. A task cancelled before its first step never runs
    #: its body, ``finally`` included: :meth:`Lanes.abandon` settles its count instead.
    entered: bool = False


class Lanes(Generic[ItemT]):
    def __init__(
        self,
        run: Callable[[ItemT], Awaitable[None]],
        on_ready: Callable[[bytes], None] | None = None,
    ) -> None:
        self._run = run
        self._on_ready = on_ready
        self._lanes: dict[bytes, _Lane[ItemT]] = {}
        #: Items running now (one per lane at most).
        self.running = 0
        #: Items queued behind a running or ready item of their key.
        self.waiting = 0

    def __len__(self) -> int:
        return len(self._lanes)

    def busy(self, key: bytes) -> bool:
        """Whether an item of ``key`` would wait (its lane runs or holds an item)."""
        return key in self._lanes

    def submit(self, key: bytes, item: ItemT) -> bool:
        """Queue ``item`` behind the items of ``key``. True: its lane was idle and the item
        runs now (it takes a running slot); False: it waits in its lane."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            self._start(key, lane, item)
            return True
        lane.queue.append(item)
        self.waiting += 1
        return False

    def resume(self, key: bytes) -> bool:
        """Run the next item of a ready lane (see ``on_ready``). False: nothing to run (the
        lane was abandoned, or runs already)."""
        lane = self._lanes.get(key)
        if lane is None or lane.task is not None or not lane.queue:
            return False
        self.waiting -= 1
        self._start(key, lane, lane.queue.popleft())
        return True

    def _start(self, key: bytes, lane: _Lane[ItemT], item: ItemT) -> None:
        lane.current = item
        lane.entered = False
        self.running += 1
        # A constant name: formatting the key cost 2 % of a busy worker's CPU.
        lane.task = asyncio.create_task(self._drain(key, lane), name="lane")

    async def _drain(self, key: bytes, lane: _Lane[ItemT]) -> None:
        lane.entered = True
        try:
            while True:
                assert lane.current is not None
                await self._run(lane.current)
                lane.current = None
                if not lane.queue or self._on_ready is not None:
                    break
                self.waiting -= 1
                lane.current = lane.queue.popleft()
        finally:
            lane.current = None
            self.running -= 1
            if self._lanes.get(key) is lane:
                lane.task = None
                if not lane.queue:
                    del self._lanes[key]
                elif self._on_ready is not None:
                    self._on_ready(key)

    def items(self) -> Iterable[ItemT]:
        for lane in self._lanes.values():
            if lane.current is not None:
                yield lane.current
            yield from lane.queue

    async def abandon(self, predicate: Callable[[ItemT], bool]) -> list[ItemT]:
        """Drop queued items matching ``predicate`` and cancel lanes running one; return the
        dropped items. Used on revoke after the drain deadline, and at shutdown."""
        dropped: list[ItemT] = []
        cancelled: list[tuple[_Lane[ItemT], asyncio.Task[None]]] = []
        requeue: list[tuple[bytes, deque[ItemT]]] = []
        for key, lane in list(self._lanes.items()):
            kept = deque(i for i in lane.queue if not predicate(i))
            dropped += [i for i in lane.queue if predicate(i)]
            self.waiting -= len(lane.queue) - len(kept)
            lane.queue = kept
            if lane.current is not None and predicate(lane.current) and lane.task is not None:
                dropped.append(lane.current)
                lane.task.cancel()
                cancelled.append((lane, lane.task))
                # The lane's other queued items (other partitions) go on once it is gone.
                requeue.append((key, lane.queue))
                del self._lanes[key]
            elif lane.task is None and not lane.queue:
                del self._lanes[key]  # a ready lane left with nothing to run
        for lane, task in cancelled:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not lane.entered:
                # Started and cancelled in one turn of the loop (a revoke right after a
                # start): its ``finally`` never ran, its slot would be held for ever.
                self.running -= 1
        for key, rest in requeue:
            if not rest:
                continue
            if self._on_ready is None:
                self.waiting -= len(rest)
                for item in rest:
                    self.submit(key, item)
            elif (running := self._lanes.get(key)) is not None:
                # An item of the key was begun (and runs) while the cancelled one wound
                # down: the items handed back wait in its lane, ahead of any queued there.
                running.queue.extendleft(reversed(rest))
            else:
                # Ready, not running: the admission starts it like any other lane.
                self._lanes[key] = _Lane(queue=rest)
                self._on_ready(key)
        return dropped
