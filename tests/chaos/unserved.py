"""How long partitions go unserved in a fault, read from what the agent group produced.

An agent worker's outputs (``tool_call``, ``memory_call``, ``agent_response``) are keyed by
``conversation_id`` like its inputs, so an output on partition *p* at time *t* (the
producer's timestamp) says that a member handled a record of partition *p* at *t*. From
those times:

- :func:`first_handled_after`: for chosen partitions, how long after an instant (a SIGKILL)
  the first record of each was handled again: the time the partitions stayed unserved.
- :func:`longest_stall`: the longest gap between two consecutive outputs of any partition
  around a fault window, for faults that last (a rolling restart) or hit every partition;
  valid while the load keeps every partition busy, which the scenarios see to.

:func:`owned_partitions` reads which partitions a member owns from the group (members are
told apart by their Kafka client id, ``AGENTSTREAM_KAFKA__CLIENT_ID``).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable

from agentstream.status import group_status
from agentstream.topics import Topic
from agentstream.topics.kafka import KafkaBus

from tests.chaos.cluster import Cluster

__all__ = ["first_handled_after", "longest_stall", "output_times", "owned_partitions"]

AGENT_OUTPUTS = (Topic.TOOL_CALL, Topic.MEMORY_CALL, Topic.AGENT_RESPONSE)


async def output_times(c: Cluster) -> dict[int, list[float]]:
    """Partition -> sorted producer timestamps (s) of every agent output."""
    times: dict[int, list[float]] = defaultdict(list)
    for topic in AGENT_OUTPUTS:
        for record in await c.read(c.catalog.name(topic), read_committed=False):
            times[record.partition].append(record.timestamp_ms / 1000)
    return {p: sorted(ts) for p, ts in times.items()}


def first_handled_after(
    times: dict[int, list[float]], instant: float, partitions: Iterable[int]
) -> dict[int, float | None]:
    """Per partition: seconds from ``instant`` to its first output after it (None: none)."""
    found: dict[int, float | None] = {}
    for p in partitions:
        later = [t for t in times.get(p, []) if t > instant]
        found[p] = round(min(later) - instant, 2) if later else None
    return found


def longest_stall(times: dict[int, list[float]], start: float, end: float) -> tuple[int, float]:
    """``(partition, seconds)`` of the longest gap between consecutive outputs of one
    partition that overlaps ``[start, end]``."""
    worst = (-1, 0.0)
    for p, ts in times.items():
        for before, after in itertools.pairwise(ts):
            if after >= start and before <= end and after - before > worst[1]:
                worst = (p, round(after - before, 2))
    return worst


async def owned_partitions(bus: KafkaBus, group: str, client_id: str) -> set[int]:
    """The partition numbers the member with ``client_id`` owns in ``group`` (any topic)."""
    [status] = await group_status(bus, [group])
    owned: set[int] = set()
    for member in status.members:
        if member.client_id == client_id:
            for parts in member.assignment.values():
                owned.update(parts)
    return owned
