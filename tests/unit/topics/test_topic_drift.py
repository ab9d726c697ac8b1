"""``agentstream.topics.drift``: what differs from the catalog, and when workers refuse."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from agentstream.schemas.errors import ConfigError
from agentstream.topics import Catalog, Topic, TopicDescription
from agentstream.topics.drift import compare, partition_mismatch
from agentstream.topics.memory import InProcessBus
from agentstream.wiring import ensure_topics

CATALOG = Catalog(prefix="p.", partitions=4)
WANTED = CATALOG.spec(Topic.USER_REQUEST).description()


def _found(partitions: int = 4, replicas: int = 1) -> TopicDescription:
    return TopicDescription(WANTED.name, partitions, replicas)


def test_a_topic_as_the_catalog_says_has_no_difference() -> None:
    check = compare(WANTED, _found(), dict(WANTED.configs) | {"segment.bytes": "1024"})
    assert check.ok
    assert check.differences == ()


def test_every_difference_is_named_with_both_values() -> None:
    configs = dict(WANTED.configs) | {"retention.ms": "1000", "cleanup.policy": "compact"}
    del configs["min.insync.replicas"]
    check = compare(WANTED, _found(partitions=1, replicas=3), configs)
    assert [str(d) for d in check.differences] == [
        "partitions 1 (catalog: 4)",
        "replication.factor 3 (catalog: 1)",
        "cleanup.policy compact (catalog: delete)",
        "min.insync.replicas unset (catalog: 1)",
        f"retention.ms 1000 (catalog: {CATALOG.retention_ms})",
    ]
    assert check.partitions_differ
    assert not check.ok


def test_configs_not_read_are_not_compared_and_a_missing_topic_is_not_ok() -> None:
    assert compare(WANTED, _found()).ok
    missing = compare(WANTED, None)
    assert (missing.exists, missing.ok, missing.differences) == (False, False, ())


def test_the_workers_error_says_what_to_do() -> None:
    specs = [s.description() for s in CATALOG.specs()]
    assert partition_mismatch(compare(w, w) for w in specs) is None
    # One topic made by a broker's auto-creation: fix the topic, not the settings.
    one = partition_mismatch(
        compare(w, TopicDescription(w.name, 1 if i == 0 else 4, 1)) for i, w in enumerate(specs)
    )
    assert one is not None
    assert "p.user_request has 1" in str(one)
    assert "AGENTSTREAM_TOPICS__PARTITIONS" not in str(one)
    assert "`agentstream topics create`" in str(one)
    # Every topic has 6: the settings are what is wrong.
    six = partition_mismatch(compare(w, TopicDescription(w.name, 6, 1)) for w in specs)
    assert six is not None
    assert "AGENTSTREAM_TOPICS__PARTITIONS=6" in str(six)


async def test_ensure_topics_refuses_a_mismatch_on_the_in_process_bus_too() -> None:
    bus = InProcessBus()
    await bus.start()
    await bus.create_topics([TopicDescription(CATALOG.name(Topic.TOOL_CALL), 2, 1)])
    with pytest.raises(ConfigError, match=r"p\.tool_call has 2"):
        await ensure_topics(bus, CATALOG, create=True)
    await bus.create_topics([s.description() for s in Catalog(prefix="q.").specs()])
    await ensure_topics(bus, Catalog(prefix="q."), create=False)
    await bus.stop()


async def test_ensure_topics_describes_once_when_every_topic_is_there() -> None:
    bus = InProcessBus()
    await bus.start()
    await ensure_topics(bus, CATALOG, create=True)
    calls: list[list[str]] = []
    describe = bus.describe_topics

    async def counted(names: Sequence[str]) -> dict[str, TopicDescription]:
        calls.append(list(names))
        return await describe(names)

    bus.describe_topics = counted  # type: ignore[method-assign]
    await ensure_topics(bus, CATALOG, create=True)
    assert len(calls) == 1
    await bus.stop()
