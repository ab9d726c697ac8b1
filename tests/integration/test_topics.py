"""Topics on a broker with Kafka's stock defaults (``auto.create.topics.enable=true``,
``num.partitions=1``): agentstream creates its topics through the admin API with the
catalog's settings, says what differs from the catalog, refuses to run workers on a partition
mismatch, and never makes the broker create a topic (ADR 20).

The commands run as ``agentstream.cli.main`` (tests/cli_runner.py) with
``KAFKA_BOOTSTRAP_SERVERS`` and the test's topic prefix in the environment. Whether a topic
exists is read with a Metadata request for all topics, which cannot create one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from agentstream.schemas.errors import ConfigError, TopicMissing
from agentstream.topics import Catalog, KafkaConfig, OutgoingRecord, Topic, TopicDescription
from agentstream.topics.kafka import KafkaBus
from agentstream.wiring import ensure_topics
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import UnknownTopicOrPartitionError
from aiokafka.protocol.metadata import MetadataRequest

from tests.cli_runner import run_cli
from tests.services.kafka import STOCK_TOPIC_DEFAULTS

pytestmark = pytest.mark.kafka

_HOUR_MS = 3_600_000


@asynccontextmanager
async def _admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _partitions(bootstrap: str, prefix: str) -> dict[str, int]:
    """Every topic of ``prefix`` on the cluster and its partition count. A Metadata request
    for all topics (a null list) never creates one."""
    async with _admin(bootstrap) as admin:
        topics = await admin.describe_topics(None)
    return {
        t["topic"]: len(t["partitions"])
        for t in topics
        if t["topic"].startswith(prefix) and t["error_code"] == 0
    }


async def _auto_create(bootstrap: str, name: str) -> None:
    """What any stock client does when it first sends to a missing topic: a Metadata request
    naming it, with ``allow_auto_topic_creation``. The broker creates it with one partition."""
    async with _admin(bootstrap) as admin:
        await admin._send_request(MetadataRequest([name], allow_auto_topic_creation=True))
        for _ in range(100):
            if name in await _partitions(bootstrap, name):
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the broker did not auto-create {name}")


async def _create(bootstrap: str, name: str, partitions: int, configs: dict[str, str]) -> None:
    async with _admin(bootstrap) as admin:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])


def _env(monkeypatch: pytest.MonkeyPatch, bootstrap: str, prefix: str, partitions: int) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PREFIX", prefix)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PARTITIONS", str(partitions))


def _lines(text: str) -> dict[str, str]:
    """The describe table's rows by topic name."""
    return {line.split()[0]: line for line in text.splitlines() if line.strip()}


# -- the broker -----------------------------------------------------------------------------------


async def test_the_test_broker_has_the_stock_topic_defaults(kafka_bootstrap: str) -> None:
    """The hazard is real here: a Metadata request naming a missing topic creates it, with
    one partition. Every "never created" assertion below depends on that."""
    async with _admin(kafka_bootstrap) as admin:
        (node,) = [b["node_id"] for b in (await admin.describe_cluster())["brokers"]]
        response = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(node))]
        )
    configs = {e[0]: e[1] for r in response for res in r.resources for e in res[4]}
    assert {k: configs[k] for k in STOCK_TOPIC_DEFAULTS} == STOCK_TOPIC_DEFAULTS
    canary = f"canary-{id(configs)}"
    await _auto_create(kafka_bootstrap, canary)
    assert await _partitions(kafka_bootstrap, canary) == {canary: 1}


# -- topics create and describe -------------------------------------------------------------------


def test_topics_create_gives_every_topic_the_catalog_settings(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, kafka_bootstrap, prefix, 12)
    catalog = Catalog(prefix=prefix, partitions=12)
    names = [s.name for s in catalog.specs()]

    code, out, err = run_cli(["topics", "create"])
    assert (code, err) == (0, "")
    assert sorted(line.split()[1] for line in out.splitlines() if line.startswith("created ")) == (
        sorted(names)
    )
    assert "0 already existed" in out
    assert asyncio.run(_partitions(kafka_bootstrap, prefix)) == dict.fromkeys(names, 12)

    code, out, err = run_cli(["topics", "describe"])
    assert (code, err) == (0, "")
    rows = _lines(out)
    for spec in catalog.specs():
        assert rows[spec.name].split()[1:] == ["12", "1", "ok"]

    code, out, _ = run_cli(["--json", "topics", "describe"])
    assert code == 0
    described = {r["name"]: r for r in json.loads(out)}
    dlq = described[f"{prefix}user_request.dlq"]
    assert dlq["ok"]
    assert dlq["differences"] == []
    assert dlq["wanted_configs"] == {
        "cleanup.policy": "delete",
        "min.insync.replicas": "1",
        "retention.ms": str(catalog.dlq_retention_ms),
    }


def test_describe_says_what_differs_from_the_catalog_and_exits_1(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One topic auto-created by the broker (1 partition), one made by hand with another
    retention and cleanup policy: ``topics create`` leaves them as they are and says so,
    ``topics describe`` too; both exit 1."""
    _env(monkeypatch, kafka_bootstrap, prefix, 3)
    catalog = Catalog(prefix=prefix, partitions=3)
    requests, calls = catalog.name(Topic.USER_REQUEST), catalog.name(Topic.TOOL_CALL)
    asyncio.run(_auto_create(kafka_bootstrap, requests))
    asyncio.run(
        _create(
            kafka_bootstrap,
            calls,
            3,
            {"retention.ms": str(_HOUR_MS), "cleanup.policy": "compact"},
        )
    )

    code, out, err = run_cli(["topics", "create"])
    assert code == 1, out + err
    assert "2 already existed" in out
    rows = _lines(out)
    assert rows[requests].split()[1:4] == ["1", "1", "DIFFERS:"]
    assert "partitions 1 (catalog: 3)" in rows[requests]
    assert f"retention.ms {_HOUR_MS} (catalog: {catalog.retention_ms})" in rows[calls]
    assert "cleanup.policy compact (catalog: delete)" in rows[calls]
    assert "partitions" not in rows[calls].split("DIFFERS:")[1]
    assert rows[catalog.name(Topic.AGENT_RESPONSE)].endswith("  ok")
    assert f"{requests} has 1" in out  # the partition mismatch, and what to do about it
    assert "`agentstream topics create`" in out
    # Nothing was changed: the topic made by the broker still has its one partition.
    assert asyncio.run(_partitions(kafka_bootstrap, requests))[requests] == 1

    code, out, err = run_cli(["topics", "describe"])
    assert (code, err) == (1, "")
    assert "2 of 21 topic(s) not as the catalog says (0 missing, 2 differing)" in out

    code, out, _ = run_cli(["--json", "topics", "describe"])
    assert code == 1
    described = {r["name"]: r for r in json.loads(out)}
    # The broker made it with its own defaults: one partition, and CreateTime where the
    # catalog wants the broker's append time (the ingress's accept-by check needs it).
    assert described[requests]["differences"] == [
        {"setting": "partitions", "wanted": "3", "actual": "1"},
        {"setting": "message.timestamp.type", "wanted": "LogAppendTime", "actual": "CreateTime"},
    ]
    assert {d["setting"] for d in described[calls]["differences"]} == {
        "retention.ms",
        "cleanup.policy",
    }
    assert sum(not r["ok"] for r in described.values()) == 2

    # status, too, counts the partition mismatch as unhealthy.
    code, out, err = run_cli(["status"])
    assert code == 1
    assert f"{requests}: 1 partitions, 3 configured" in out, out + err


def test_describe_names_missing_topics_and_creates_none(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, kafka_bootstrap, prefix, 2)
    code, out, err = run_cli(["topics", "describe"])
    assert (code, err) == (1, "")
    assert all(line.endswith("MISSING") for line in out.splitlines()[1:-1])
    assert "21 of 21 topic(s) not as the catalog says (21 missing, 0 differing)" in out
    assert asyncio.run(_partitions(kafka_bootstrap, prefix)) == {}


# -- workers --------------------------------------------------------------------------------------


async def test_ensure_topics_refuses_a_partition_mismatch(
    kafka_bootstrap: str, prefix: str
) -> None:
    catalog = Catalog(prefix=prefix, partitions=3)
    await _auto_create(kafka_bootstrap, catalog.name(Topic.TOOL_RESULT))
    bus = KafkaBus(KafkaConfig(bootstrap_servers=kafka_bootstrap))
    await bus.start()
    try:
        with pytest.raises(ConfigError) as raised:
            await ensure_topics(bus, catalog, create=True)
    finally:
        await bus.stop()
    message = str(raised.value)
    assert f"{catalog.name(Topic.TOOL_RESULT)} has 1" in message
    assert "differ from the catalog's 3" in message
    assert "AGENTSTREAM_TOPICS__PARTITIONS" not in message  # the other topics have 3
    # The other topics were created, with the catalog's partitions; the wrong one is left.
    wrong = catalog.name(Topic.TOOL_RESULT)
    expected = {s.name: 3 for s in catalog.specs()} | {wrong: 1}
    assert await _partitions(kafka_bootstrap, prefix) == expected


def test_a_worker_refuses_to_start_on_a_partition_mismatch(
    kafka_bootstrap: str, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every topic has 2 partitions, the settings say 4: the worker exits 1 before joining
    any group, and says to fix the settings or the topics."""
    catalog = Catalog(prefix=prefix, partitions=2)

    async def create() -> None:
        bus = KafkaBus(KafkaConfig(bootstrap_servers=kafka_bootstrap))
        await bus.start()
        try:
            await bus.create_topics([s.description() for s in catalog.specs()])
        finally:
            await bus.stop()

    asyncio.run(create())
    _env(monkeypatch, kafka_bootstrap, prefix, 4)
    monkeypatch.setenv("REDIS_URL", redis_url)
    code, out, err = run_cli(["worker", "tool"])
    assert code == 1
    assert out == ""
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "topic partition counts differ from the catalog's 4" in line
    assert f"{catalog.name(Topic.TOOL_CALL)} has 2" in line
    assert "AGENTSTREAM_TOPICS__PARTITIONS=2" in line
    assert "Traceback" not in err
    assert asyncio.run(_partitions(kafka_bootstrap, prefix)) == dict.fromkeys(
        [s.name for s in catalog.specs()], 2
    )


# -- nothing agentstream sends creates a topic ---------------------------------------------------


def test_no_command_creates_a_missing_topic(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, kafka_bootstrap, prefix, 2)
    commands = [
        ["topics", "describe"],
        ["status"],
        ["--json", "status", "--group", f"{prefix}nobody"],
        ["tail", "user_request", "--no-follow", "--from-beginning"],
        ["tail", f"{prefix}tool_call.dlq", "--no-follow"],
        ["dlq", "list"],
        ["dlq", "list", "--topic", "tool_call"],
        ["dlq", "show", "--request-id", "nope"],
        ["dlq", "replay", "--request-id", "nope", "--yes"],
    ]
    for argv in commands:
        code, _, err = run_cli(argv)
        assert code == 1, (argv, err)
        assert "Traceback" not in err
        assert asyncio.run(_partitions(kafka_bootstrap, prefix)) == {}, argv


async def test_the_bus_never_makes_the_broker_create_a_topic(
    kafka_bootstrap: str, prefix: str
) -> None:
    bus = KafkaBus(KafkaConfig(bootstrap_servers=kafka_bootstrap))
    await bus.start()
    try:
        missing = f"{prefix}absent"
        with pytest.raises(TopicMissing):
            await bus.publish(OutgoingRecord(missing, b"x", b"k"))
        with pytest.raises(TopicMissing):
            await bus.consumer(f"{prefix}group", [missing]).start()
        with pytest.raises(TopicMissing):
            await bus.read(missing)
        assert await bus.describe_topics([missing]) == {}
        assert await _partitions(kafka_bootstrap, prefix) == {}
    finally:
        await bus.stop()


async def test_aiokafka_clients_of_an_agentstream_process_never_auto_create(
    kafka_bootstrap: str, prefix: str
) -> None:
    """A raw aiokafka producer (as ``tail`` and ``dlq`` use raw clients) neither creates a
    topic it sends to, nor re-creates one deleted under it by its periodic metadata refresh:
    importing ``agentstream.topics.kafka`` turned auto-creation off for the whole process."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, metadata_max_age_ms=200, request_timeout_ms=3000
    )
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):  # never in its metadata
            await producer.send_and_wait(f"{prefix}never", b"x")
        kept = f"{prefix}deleted"
        await _create(kafka_bootstrap, kept, 1, {})
        await producer.send_and_wait(kept, b"x")  # the producer now tracks the topic
        async with _admin(kafka_bootstrap) as admin:
            await admin.delete_topics([kept])
        await asyncio.sleep(2)  # ten metadata refreshes naming the deleted topic
        assert await _partitions(kafka_bootstrap, prefix) == {}
    finally:
        await producer.stop()


async def test_a_topic_made_by_hand_with_the_catalog_settings_is_ok(
    kafka_bootstrap: str, prefix: str
) -> None:
    """The comparison is of values, not of how a topic was made: configs given explicitly or
    left to matching broker defaults are both fine."""
    catalog = Catalog(prefix=prefix, partitions=2)
    spec = catalog.spec(Topic.AGENT_RESPONSE)
    await _create(kafka_bootstrap, spec.name, 2, {"retention.ms": str(spec.retention_ms)})
    bus = KafkaBus(KafkaConfig(bootstrap_servers=kafka_bootstrap))
    await bus.start()
    try:
        from agentstream.topics_command import check_topics

        (check,) = await check_topics(bus, [spec.description()])
        assert check.ok, check.differences
        other = TopicDescription(spec.name, 2, 1, {"retention.ms": "1000"})
        (check,) = await check_topics(bus, [other])
        assert [str(d) for d in check.differences] == [
            f"retention.ms {spec.retention_ms} (catalog: 1000)"
        ]
    finally:
        await bus.stop()
