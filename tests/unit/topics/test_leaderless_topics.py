"""A topic without a leader this instant is not a missing topic.

A broker the controller fenced (paused past ``broker.session.timeout.ms``: a long GC pause, a
frozen VM, the chaos suite's SIGSTOP) describes every partition with leader -1 for a moment
after it comes back (measured: about 80 ms after an 8 s freeze). The bus took that for
"topic missing", a permanent error, and a worker that published to a topic it had not
published to before then failed the record for good. Now only a topic the broker does not
know is missing; a leaderless one is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from agentstream.schemas import RetryableError, TopicMissing
from agentstream.topics.config import KafkaConfig
from agentstream.topics.kafka import KafkaBus


class Admin:
    """Answers DescribeTopics with the partition leaders it is given per topic (a code for
    a topic the broker reports an error for)."""

    def __init__(self, topics: dict[str, list[int] | int]) -> None:
        self.topics = topics
        self.calls = 0

    async def describe_topics(self, names: Sequence[str]) -> list[dict[str, Any]]:
        self.calls += 1
        out = []
        for name in names:
            leaders = self.topics.get(name, 3)  # 3: UNKNOWN_TOPIC_OR_PARTITION
            if isinstance(leaders, int):
                out.append({"topic": name, "error_code": leaders, "partitions": []})
                continue
            partitions = [
                {"partition": i, "leader": leader, "replicas": [1]}
                for i, leader in enumerate(leaders)
            ]
            out.append({"topic": name, "error_code": 0, "partitions": partitions})
        return out


def bus_with(admin: Admin) -> KafkaBus:
    bus = KafkaBus(KafkaConfig())
    bus._admin = admin  # type: ignore[assignment]
    return bus


async def test_a_leaderless_topic_is_retried_and_known_once_it_has_leaders() -> None:
    admin = Admin({"answers": [-1, -1, -1, -1]})
    bus = bus_with(admin)
    with pytest.raises(RetryableError, match="no leader yet"):
        await bus.require_topics(["answers"])
    assert await bus.describe_topics(["answers"]) == {}  # not usable yet
    admin.topics["answers"] = [1, 1, 1, 1]
    await bus.require_topics(["answers"])
    calls = admin.calls
    await bus.require_topics(["answers"])  # known now: no call to the broker
    assert admin.calls == calls


async def test_leader_not_available_is_retried() -> None:
    bus = bus_with(Admin({"answers": 5}))  # LEADER_NOT_AVAILABLE
    with pytest.raises(RetryableError):
        await bus.require_topics(["answers"])


async def test_a_topic_the_broker_does_not_know_is_missing() -> None:
    bus = bus_with(Admin({"answers": [1], "bad name!": 17}))  # 17: INVALID_TOPIC_EXCEPTION
    with pytest.raises(TopicMissing, match="'nope' does not exist"):
        await bus.require_topics(["answers", "nope"])
    with pytest.raises(TopicMissing):
        await bus.require_topics(["bad name!"])
