"""The in-process bus places keys exactly where Kafka does: murmur2 as in Kafka's Java client."""

from __future__ import annotations

import random

import pytest
from agentstream.topics.partitioner import Partitioner, murmur2, partition_for
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2


# Kafka's own test vectors (clients/src/test/.../UtilsTest.java, testMurmur2).
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafkas_java_test_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_murmur2_and_partition_match_aiokafka_over_random_keys() -> None:
    rng = random.Random(20240601)
    default = DefaultPartitioner()
    for _ in range(5_000):
        key = rng.randbytes(rng.randrange(0, 64))
        assert murmur2(key) & 0xFFFFFFFF == aiokafka_murmur2(key)
        partitions = rng.randrange(1, 100)
        assert partition_for(key, partitions) == default(key, list(range(partitions)), [])


def test_keys_always_get_the_same_partition_and_unkeyed_records_rotate() -> None:
    partitioner = Partitioner()
    assert {partitioner("t", b"same", 6) for _ in range(10)} == {partition_for(b"same", 6)}
    assert [partitioner("t", None, 3) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert partitioner("other", None, 3) == 0


def test_a_topic_without_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"k", 0)
