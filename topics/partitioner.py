"""Kafka's default partitioner, so the in-process bus puts every key where Kafka would.

A keyed record goes to ``toPositive(murmur2(key)) % partitions``, exactly as Kafka's Java
client (``BuiltInPartitioner.partitionForKey``) and aiokafka's ``DefaultPartitioner`` do.
Matching it bit for bit matters beyond tests: producers in other languages publish straight
to the request topics, and a conversation's events must land on the same partition whoever
published them, or per-conversation ordering breaks. Records without a key have no such
constraint; they are spread round robin per topic.
"""

from __future__ import annotations

__all__ = ["Partitioner", "murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` of ``data``: a signed 32-bit int, as Java returns it."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among ``partitions``."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Partitioner:
    """Picks a record's partition: by key hash, or round robin per topic without a key."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def __call__(self, topic: str, key: bytes | None, partitions: int) -> int:
        if key is not None:
            return partition_for(key, partitions)
        turn = self._next.get(topic, 0)
        self._next[topic] = turn + 1
        return turn % partitions
