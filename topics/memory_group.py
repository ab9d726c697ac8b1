"""Consumer groups of the in-process bus: membership, partition assignment, commits, fetching.

This is the part of Kafka the runtime's guarantees rest on, reproduced in one asyncio
process so the embedded default behaves like the real broker:

- Members join on ``start()`` and leave on ``stop()`` (or ``crash()``); every join or leave
  rebalances the group. Assignment is Kafka's range strategy, per topic, over the members in
  join order: a member gets the same partition numbers of every topic it reads, like the
  Kafka bus (so all events of one conversation meet in one member).
- A rebalance is sequenced the way the runtime needs it: each member about to lose
  partitions stops fetching them, then its ``on_revoke`` is awaited (all members'
  concurrently) while it still owns them and may commit; only then do the partitions move,
  and the new owner reads from the group's committed offset (0, the earliest, when none).
  Unlike Kafka's eager protocol, a member keeps the partitions it does not lose, with their
  fetch positions, and ``on_revoke`` is called only with the partitions that move.
- Committed offsets belong to the group. A member commits only partitions it owns now, so a
  zombie (a member that left, or whose partitions moved) cannot overwrite the new owner's
  progress: it gets :class:`RebalanceInProgress`, as Kafka answers ``CommitFailedError``.
- Leaving never commits and never calls the leaver's ``on_revoke`` (aiokafka's ``stop()``
  does not either): what the leaver did not commit is delivered again to the next owner.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agentstream.topics.bus import RebalanceInProgress, Record, RevokeCallback, TopicPartition
from agentstream.topics.memory_log import TopicLog

__all__ = ["Group", "GroupSnapshot", "InProcessConsumer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    """A consumer group at one moment: for ``agentstream status`` and for tests."""

    group_id: str
    generation: int
    #: member id to the partitions it owns, members in join order.
    members: Mapping[str, frozenset[TopicPartition]] = field(default_factory=dict)
    committed: Mapping[TopicPartition, int] = field(default_factory=dict)


class Group:
    """The coordinator of one consumer group of the in-process bus."""

    def __init__(self, group_id: str, logs: Mapping[str, TopicLog]) -> None:
        self.group_id = group_id
        self.generation = 0
        self._logs = logs
        self._members: list[InProcessConsumer] = []
        self._owner: dict[TopicPartition, InProcessConsumer] = {}
        self._committed: dict[TopicPartition, int] = {}
        # Rebalances run one at a time; commits never take this lock, because on_revoke
        # callbacks commit while a rebalance holds it.
        self._lock = asyncio.Lock()
        self._ids = itertools.count()
        self._tasks: set[asyncio.Future[None]] = set()

    def topic_log(self, topic: str) -> TopicLog:
        return self._logs[topic]

    def next_member_id(self) -> str:
        return f"{self.group_id}-{next(self._ids):06d}"

    def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def snapshot(self) -> GroupSnapshot:
        return GroupSnapshot(
            group_id=self.group_id,
            generation=self.generation,
            members={m.member_id: frozenset(m.assignment()) for m in self._members},
            committed=dict(self._committed),
        )

    def notify(self, tp: TopicPartition) -> None:
        """A record was appended to ``tp``: wake its owner if it waits in ``getmany``."""
        owner = self._owner.get(tp)
        if owner is not None:
            owner.wake()

    def commit(self, member: InProcessConsumer, offsets: Mapping[TopicPartition, int]) -> None:
        foreign = sorted(tp for tp in offsets if self._owner.get(tp) is not member)
        if foreign:
            raise RebalanceInProgress(
                f"member {member.member_id} of group {self.group_id!r} cannot commit "
                f"{_names(foreign)}: it no longer owns "
                "them (they were reassigned, or the member left the group)"
            )
        for tp, offset in offsets.items():
            if offset < 0:
                raise ValueError(f"cannot commit negative offset {offset} for {tp}")
        self._committed.update(offsets)

    async def join(self, member: InProcessConsumer) -> None:
        await self._change(self._members.append, member, f"{member.member_id} joined")

    async def leave(self, member: InProcessConsumer) -> None:
        # The leaver loses its partitions at once (its commits fail from now on); they find
        # a new owner when the rebalance gets the lock.
        for tp in member.assignment():
            if self._owner.get(tp) is member:
                del self._owner[tp]
        member.release_all()
        await self._change(self._remove, member, f"{member.member_id} left")

    def _remove(self, member: InProcessConsumer) -> None:
        if member in self._members:
            self._members.remove(member)

    async def _change(
        self,
        change: Callable[[InProcessConsumer], None],
        member: InProcessConsumer,
        reason: str,
    ) -> None:
        """Apply a membership change and rebalance, one change at a time.

        The work runs in its own task, shielded: a caller cancelled while on_revoke
        callbacks run must not leave partitions half revoked, fetched by nobody.
        """

        async def run() -> None:
            async with self._lock:
                change(member)
                await self._rebalance(reason=reason)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    def _assign(self) -> dict[InProcessConsumer, set[TopicPartition]]:
        """Range assignment per topic: the first members get one partition more."""
        target: dict[InProcessConsumer, set[TopicPartition]] = {m: set() for m in self._members}
        for topic in sorted({t for m in self._members for t in m.topics}):
            subscribers = [m for m in self._members if topic in m.topics]
            count = self._logs[topic].partitions
            per_member, extra = divmod(count, len(subscribers))
            start = 0
            for index, member in enumerate(subscribers):
                size = per_member + (1 if index < extra else 0)
                target[member].update(TopicPartition(topic, p) for p in range(start, start + size))
                start += size
        return target

    async def _rebalance(self, *, reason: str) -> None:
        target = self._assign()
        losing = {m: m.assignment() - target[m] for m in self._members}
        losing = {m: tps for m, tps in losing.items() if tps}
        for member, tps in losing.items():
            member.begin_revoke(tps)
        if losing:
            await asyncio.gather(*(m.revoked(tps) for m, tps in losing.items()))
        for member, tps in losing.items():
            for tp in tps:
                member.release(tp)
                if self._owner.get(tp) is member:
                    del self._owner[tp]
        for member in self._members:
            if not member.joined:
                continue  # left while on_revoke callbacks ran; its own rebalance follows
            for tp in sorted(target[member] - member.assignment()):
                self._owner[tp] = member
                member.take(tp, self._committed.get(tp, 0))
        self.generation += 1
        log.info(
            "group %s generation %d (%s): %s",
            self.group_id,
            self.generation,
            reason,
            {m.member_id: len(m.assignment()) for m in self._members},
        )
        log.debug(
            "group %s assignment: %s",
            self.group_id,
            {m.member_id: _names(m.assignment()) for m in self._members},
        )


class InProcessConsumer:
    """One member of a consumer group of the in-process bus (see
    :class:`agentstream.topics.bus.Consumer`).

    Fetch positions are the member's own: set to the group's committed offset when a
    partition is assigned, advanced by ``getmany``. ``getmany`` waits on an event set by
    publishes to the member's partitions, never by polling.
    """

    def __init__(
        self,
        group: Group,
        topics: Sequence[str],
        *,
        on_revoke: RevokeCallback | None,
        require_topics: Callable[[Sequence[str]], None],
    ) -> None:
        self.group_id = group.group_id
        self.member_id = group.next_member_id()
        self.topics = frozenset(topics)
        self.on_revoke = on_revoke
        self._group = group
        self._require_topics = require_topics
        self._state = "new"  # new -> joined -> left
        self._assigned: set[TopicPartition] = set()
        self._revoking: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._wakeup = asyncio.Event()
        self._turn = 0

    def __repr__(self) -> str:
        return f"<InProcessConsumer {self.member_id} {self._state}>"

    @property
    def joined(self) -> bool:
        return self._state == "joined"

    # -- the Consumer protocol ----------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self!r} cannot start twice")
        self._require_topics(sorted(self.topics))
        self._state = "joined"
        try:
            await self._group.join(self)
        except asyncio.CancelledError:
            await self.crash()  # the join completes regardless; do not leave a ghost member
            raise

    async def getmany(self, timeout_ms: int = 100, max_records: int = 500) -> list[Record]:
        if self._state != "joined":
            raise RuntimeError(f"{self!r} is not a member of its group (start() it first)")
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        await asyncio.sleep(0)  # like a fetch, always let other tasks run
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_ms, 0) / 1000
        while True:
            self._wakeup.clear()
            records = self._fetch(max_records)
            remaining = deadline - loop.time()
            if records or not self.joined or remaining <= 0:
                return records
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return []

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if offsets:
            self._group.commit(self, offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._group.committed(tp)

    def assignment(self) -> set[TopicPartition]:
        # Partitions being revoked are not owned any more (as on Kafka, where nothing is
        # owned between a revoke and the next assignment); they stay committable.
        return self._assigned - self._revoking

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(tp for tp in partitions if tp in self._assigned)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)
        self.wake()

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._group.topic_log(tp.topic).end_offset(tp.partition)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    async def stop(self) -> None:
        """Leave the group without committing and without calling ``on_revoke``."""
        await self.crash()

    async def crash(self) -> None:
        """Die the way a SIGKILLed process does: no ``on_revoke``, no commit, just gone.

        For tests. In process it has the same effect as ``stop()`` (which calls neither
        either); the group notices at once instead of after ``session.timeout.ms``. Calls
        already waiting in ``getmany`` return empty.
        """
        if self._state == "left":
            return
        was_member = self._state == "joined"
        self._state = "left"
        self.wake()
        if was_member:
            await self._group.leave(self)

    # -- called by the group --------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    def begin_revoke(self, tps: set[TopicPartition]) -> None:
        """Stop fetching ``tps``; they stay owned (committable) until released."""
        self._revoking |= tps

    async def revoked(self, tps: set[TopicPartition]) -> None:
        if self.on_revoke is None or not self.joined:
            return
        try:
            await self.on_revoke(set(tps))
        except Exception:
            # Kafka clients log a failing rebalance listener and carry on; so do we.
            log.exception("on_revoke of %s failed for %s", self.member_id, _names(tps))

    def release(self, tp: TopicPartition) -> None:
        self._assigned.discard(tp)
        self._revoking.discard(tp)
        self._paused.discard(tp)
        self._positions.pop(tp, None)
        self.wake()

    def release_all(self) -> None:
        for tp in list(self._assigned):
            self.release(tp)

    def take(self, tp: TopicPartition, position: int) -> None:
        self._assigned.add(tp)
        self._positions[tp] = position
        self.wake()

    # -- fetching ---------------------------------------------------------------------------

    def _fetch(self, max_records: int) -> list[Record]:
        ready = sorted(self._assigned - self._paused - self._revoking)
        if not ready:
            return []
        # Start from a different partition each call, so a busy partition cannot starve
        # the others when max_records is small.
        start = self._turn % len(ready)
        self._turn += 1
        records: list[Record] = []
        for tp in ready[start:] + ready[:start]:
            room = max_records - len(records)
            if room <= 0:
                break
            batch = self._group.topic_log(tp.topic).read(tp.partition, self._positions[tp], room)
            if batch:
                self._positions[tp] = batch[-1].offset + 1
                records.extend(batch)
        return records


def _names(tps: Iterable[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)]
