"""``agentstream status`` on a real broker reports what Kafka's own consumer-groups tool does.

Each test builds a group with known committed offsets and lag, then runs ``agentstream
--json status`` (``agentstream.cli.main`` with ``KAFKA_BOOTSTRAP_SERVERS`` set) and
``kafka-consumer-groups --describe`` (``org.apache.kafka.tools.consumer.group.
ConsumerGroupCommand`` from the jars of ``infra/kafka``) and requires the same offsets, lag,
members and state from both, with an active member and after it left.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from agentstream.agents.app import load_app
from agentstream.schemas import ToolCall, ToolCallData, ToolResult, ToolResultData
from agentstream.schemas.codec import encode
from agentstream.status import deployment_groups, group_status, list_groups, worker_group
from agentstream.topics import (
    Catalog,
    Consumer,
    KafkaConfig,
    OutgoingRecord,
    Topic,
    TopicDescription,
    TopicPartition,
)
from agentstream.topics.kafka import KafkaBus

from tests.cli_runner import run_cli
from tests.services import KAFKA_DIR, unavailable

_TOOL = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


# -- helpers ------------------------------------------------------------------------------------


@functools.cache
def _libs() -> str:
    fetched = subprocess.run(
        ["bash", str(KAFKA_DIR / "fetch.sh")], capture_output=True, text=True, check=False
    )
    if fetched.returncode != 0:
        message = f"infra/kafka/fetch.sh failed: {fetched.stderr[-2000:]}"
        unavailable(message)
    return fetched.stdout.strip().splitlines()[-1]


def kafka_consumer_groups(bootstrap: str, *args: str) -> str:
    """Kafka's ``kafka-consumer-groups`` with ``args``; its stdout."""
    result = subprocess.run(
        [
            "java",
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp",
            f"{_libs()}/*",
            _TOOL,
            "--bootstrap-server",
            bootstrap,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _table(text: str, first_columns: tuple[str, str]) -> list[dict[str, str]]:
    """The rows of the whitespace-aligned table whose header starts with ``first_columns``."""
    lines = [line for line in text.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if tuple(line.split()[:2]) == first_columns)
    columns = lines[start].split()
    return [dict(zip(columns, line.split(), strict=True)) for line in lines[start + 1 :]]


def _kafka_partitions(bootstrap: str, group: str) -> dict[tuple[str, int], dict[str, str]]:
    rows = _table(
        kafka_consumer_groups(bootstrap, "--describe", "--group", group), ("GROUP", "TOPIC")
    )
    return {(r["TOPIC"], int(r["PARTITION"])): r for r in rows}


def _kafka_members(bootstrap: str, group: str) -> list[dict[str, str]]:
    text = kafka_consumer_groups(
        bootstrap, "--describe", "--group", group, "--members", "--verbose"
    )
    if "has no active members" in text:
        return []
    return _table(text, ("GROUP", "CONSUMER-ID"))


def _kafka_state(bootstrap: str, group: str) -> str:
    text = kafka_consumer_groups(bootstrap, "--describe", "--group", group, "--state")
    (row,) = [line for line in text.splitlines() if line.startswith(group + " ")]
    return row.split()[-2]  # ... STATE #MEMBERS; "COORDINATOR (ID)" holds a space


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    return run_cli(argv)


async def status_json(*args: str) -> tuple[int, dict[str, Any]]:
    """``agentstream --json status ARGS`` run in a thread, so this loop keeps heartbeating."""
    code, out, err = await asyncio.to_thread(_cli, ["--json", "status", *args])
    assert "Traceback" not in err
    return code, json.loads(out)


def assert_same_as_kafka(bootstrap: str, ours: dict[str, Any]) -> None:
    """Offsets, lag and owners per partition, members and state: ours equal Kafka's."""
    group = ours["group_id"]
    with ThreadPoolExecutor(3) as pool:  # three JVM starts at once
        partitions = pool.submit(_kafka_partitions, bootstrap, group)
        members_table = pool.submit(_kafka_members, bootstrap, group)
        state = pool.submit(_kafka_state, bootstrap, group)
    kafka = partitions.result()
    mine = {(p["topic"], p["partition"]): p for p in ours["partitions"]}
    assert set(mine) == set(kafka)
    for key, row in kafka.items():
        p = mine[key]
        assert _dash(p["committed"]) == row["CURRENT-OFFSET"], key
        assert _dash(p["end_offset"]) == row["LOG-END-OFFSET"], key
        assert _dash(p["lag"]) == row["LAG"], key
        assert (p["member_id"] or "-") == row["CONSUMER-ID"], key
        assert (p["host"] or "-") == row["HOST"], key
        assert (p["client_id"] or "-") == row["CLIENT-ID"], key
    assert ours["total_lag"] == sum(int(r["LAG"]) for r in kafka.values() if r["LAG"] != "-")

    members = members_table.result()
    assert {m["CONSUMER-ID"] for m in members} == {m["member_id"] for m in ours["members"]}
    for row in members:
        (m,) = [m for m in ours["members"] if m["member_id"] == row["CONSUMER-ID"]]
        assert (m["host"], m["client_id"]) == (row["HOST"], row["CLIENT-ID"])
        owned = sum(len(ps) for ps in m["assignment"].values())
        assert owned == int(row["#PARTITIONS"])
        assignment = ";".join(
            f"{t}:{','.join(map(str, ps))}" for t, ps in sorted(m["assignment"].items())
        )
        assert assignment == row["CURRENT-ASSIGNMENT"]
    assert ours["state"] == state.result()


async def _await_assignment(consumer: Consumer, partitions: int) -> None:
    for _ in range(200):
        await consumer.getmany(timeout_ms=100)
        if len(consumer.assignment()) == partitions:
            return
    raise AssertionError(f"the member never got its {partitions} partitions")


def _config(bootstrap: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        client_id="status-test",
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
    )


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_status_reports_the_offsets_and_lag_kafka_reports(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, group = f"{prefix}status-events", f"{prefix}status-group"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PREFIX", prefix)
    bus = KafkaBus(_config(kafka_bootstrap))
    await bus.start()
    try:
        await bus.create_topics([TopicDescription(topic, 3, 1)])
        for partition, count in ((0, 5), (1, 3), (2, 4)):
            await bus.publish_many(
                [OutgoingRecord(topic, b"x", partition=partition) for _ in range(count)]
            )
        consumer = bus.consumer(group, [topic])
        await consumer.start()
        try:
            await _await_assignment(consumer, 3)
            await consumer.commit({TopicPartition(topic, 0): 2, TopicPartition(topic, 1): 3})

            code, report = await status_json("--group", group)
            # The deployment's topics were never created: status says so, and exits 1.
            assert code == 1
            assert report["topics"]
            assert not any(t["exists"] for t in report["topics"])
            (ours,) = report["groups"]
            by_partition = {p["partition"]: p for p in ours["partitions"]}
            assert [
                (p["committed"], p["end_offset"], p["lag"]) for _, p in sorted(by_partition.items())
            ] == [(2, 5, 3), (3, 3, 0), (None, 4, None)]
            assert ours["total_lag"] == 3
            assert ours["state"] == "Stable"
            assert len(ours["members"]) == 1
            assert ours["members"][0]["client_id"] == "status-test"
            assert ours["members"][0]["assignment"] == {topic: [0, 1, 2]}
            await asyncio.to_thread(assert_same_as_kafka, kafka_bootstrap, ours)

            direct = await group_status(bus, [group])
            assert direct[0].model_dump(mode="json") == ours
            assert group in await list_groups(bus)
        finally:
            await consumer.stop()

        # The member left: Kafka lists committed partitions only, and so does status.
        await bus.publish(OutgoingRecord(topic, b"more", partition=1))
        code, report = await status_json("--group", group)
        (ours,) = report["groups"]
        assert ours["state"] == "Empty"
        assert ours["members"] == []
        assert [(p["partition"], p["committed"], p["lag"]) for p in ours["partitions"]] == [
            (0, 2, 3),
            (1, 3, 1),
        ]
        await asyncio.to_thread(assert_same_as_kafka, kafka_bootstrap, ours)
    finally:
        await bus.stop()


@pytest.mark.kafka
async def test_status_of_a_deployment_its_groups_and_topics(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PREFIX", prefix)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PARTITIONS", "2")
    catalog = Catalog(prefix=prefix, partitions=2)
    tool_group = worker_group(prefix, "tool")
    bus = KafkaBus(_config(kafka_bootstrap))
    await bus.start()
    try:
        await bus.create_topics([s.description() for s in catalog.specs()])
        calls = [
            ToolCall(
                source="test",
                request_id=f"r{i}",
                conversation_id="conv-1",
                data=ToolCallData(call_id=f"c{i}", step=0, tool="clock"),
            )
            for i in range(3)
        ]
        records = [encode(c) for c in calls]
        metas = await bus.publish_many(
            [OutgoingRecord(catalog.name(Topic.TOOL_CALL), v, k, tuple(h)) for k, v, h in records]
        )
        partition = metas[0].partition  # one conversation: one partition
        consumer = bus.consumer(tool_group, [catalog.name(Topic.TOOL_CALL)])
        await consumer.start()
        try:
            await _await_assignment(consumer, 2)
            await consumer.commit({TopicPartition(catalog.name(Topic.TOOL_CALL), partition): 1})
        finally:
            await consumer.stop()

        code, report = await status_json()
        assert code == 0
        assert [g["group_id"] for g in report["groups"]] == deployment_groups(prefix)
        groups = {g["group_id"]: g for g in report["groups"]}
        tool = groups[tool_group]
        assert tool["exists"]
        assert tool["state"] == "Empty"
        assert [(p["partition"], p["committed"], p["end_offset"], p["lag"])
                for p in tool["partitions"]] == [(partition, 1, 3, 2)]  # fmt: skip
        await asyncio.to_thread(assert_same_as_kafka, kafka_bootstrap, tool)
        for name in deployment_groups(prefix):
            if name != tool_group:
                assert not groups[name]["exists"]
                assert groups[name]["partitions"] == []
        assert all(t["exists"] and t["partitions"] == 2 for t in report["topics"])
        topic_count = len(list(catalog.specs()))
        assert len(report["topics"]) == topic_count

        code, human, _ = await asyncio.to_thread(_cli, ["status"])
        assert code == 0
        assert f"GROUP {tool_group}  Empty" in human
        assert f"{catalog.name(Topic.TOOL_CALL)}" in human
        assert f"TOPICS  {topic_count}/{topic_count} present" in human
        agent_group = worker_group(prefix, "agent", "assistant")
        absent = "(no such group: nothing joined or committed yet)  (agent assistant)"
        assert f"GROUP {agent_group}  {absent}" in human
        assert groups[agent_group]["kind"] == "agent"
        assert groups[agent_group]["agent"] == "assistant"
        assert groups[tool_group]["kind"] == "tool"
        assert groups[tool_group]["agent"] is None
    finally:
        await bus.stop()


@pytest.mark.kafka
async def test_status_of_an_app_shows_a_group_per_declared_agent(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--app``, the agent worker's groups are the app's: ``agentstream-agent.<name>``
    for each declared agent, with the lag of its input topic ``agent.<name>``."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PREFIX", prefix)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PARTITIONS", "1")
    monkeypatch.setenv("AGENTSTREAM_APP", "examples.support")
    agents = load_app("examples.support").names()
    catalog = Catalog(prefix=prefix, partitions=1, agents=agents)
    billing = worker_group(prefix, "agent", "billing")
    assert billing == f"{prefix}agentstream-agent.billing"
    bus = KafkaBus(_config(kafka_bootstrap))
    await bus.start()
    try:
        await bus.create_topics([s.description() for s in catalog.specs()])
        inbox = catalog.inbox("billing")
        results = [
            ToolResult(
                source="test",
                request_id=f"r{i}",
                conversation_id="conv-1",
                data=ToolResultData(call_id=f"c{i}", step=0, tool="clock", ok=True),
            )
            for i in range(3)
        ]
        records = [encode(r) for r in results]
        await bus.publish_many([OutgoingRecord(inbox, v, k, tuple(h)) for k, v, h in records])
        consumer = bus.consumer(billing, [inbox])
        await consumer.start()
        try:
            await _await_assignment(consumer, 1)
            await consumer.commit({TopicPartition(inbox, 0): 1})
        finally:
            await consumer.stop()

        code, report = await status_json()
        assert code == 0
        ids = [g["group_id"] for g in report["groups"]]
        assert ids == deployment_groups(prefix, agents)
        assert [g["agent"] for g in report["groups"] if g["kind"] == "agent"] == list(agents)
        group = next(g for g in report["groups"] if g["group_id"] == billing)
        assert [(p["topic"], p["committed"], p["end_offset"], p["lag"])
                for p in group["partitions"]] == [(inbox, 1, 3, 2)]  # fmt: skip
        assert group["total_lag"] == 2
        await asyncio.to_thread(assert_same_as_kafka, kafka_bootstrap, group)

        code, report = await status_json("--agent", "billing", "--group", billing)
        assert code == 0
        assert [g["group_id"] for g in report["groups"]] == [billing]
        code, human, _ = await asyncio.to_thread(_cli, ["status", "--agent", "billing"])
        assert code == 0
        assert f"GROUP {billing}  Empty" in human
        assert "lag 2  (agent billing)" in human
        code, _, err = await asyncio.to_thread(_cli, ["status", "--agent", "nobody"])
        assert code != 0
        assert f"no such agent: nobody (declared: {', '.join(agents)}" in err
    finally:
        await bus.stop()


@pytest.mark.kafka
@pytest.mark.parametrize("as_json", [False, True])
def test_status_of_a_group_that_does_not_exist_exits_1(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PREFIX", prefix)
    group = f"{prefix}no-such-group"
    code, out, err = _cli(
        ["--json", "status", "--group", group] if as_json else ["status", "-g", group]
    )
    assert code == 1
    assert err.splitlines() == [
        f"error: no such consumer group: {group} (no member joined it and no offsets were "
        "committed)",
        "hint: `agentstream status --all` lists every group of the cluster",
    ]
    if as_json:
        (reported,) = json.loads(out)["groups"]
        assert (reported["group_id"], reported["exists"]) == (group, False)
    else:
        assert f"GROUP {group}  (no such group" in out


def test_status_on_the_in_process_bus_says_it_needs_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    code, out, err = _cli(["status"])
    assert code == 2
    assert out == ""
    assert "`agentstream status` needs Kafka" in err
    assert "KAFKA_BOOTSTRAP_SERVERS" in err


@pytest.mark.parametrize(
    ("bootstrap", "why"),
    [
        ("127.0.0.1:1", "no bootstrap server answered"),
        ("no-such-host.invalid:9092", "cannot resolve host name no-such-host.invalid"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_status_without_a_broker_is_one_line_and_a_hint(
    monkeypatch: pytest.MonkeyPatch, bootstrap: str, why: str, as_json: bool
) -> None:
    """Nothing but the readable line and the hint: aiokafka's own ERROR log line of the
    failed bootstrap (timestamped, before them) is not shown by a one-shot command."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    monkeypatch.setenv("AGENTSTREAM_LOG_JSON", "false")
    code, out, err = _cli(["--json", "status"] if as_json else ["status"])
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"error: cannot reach Kafka at {bootstrap}: {why}",
        f"hint: is Kafka reachable at {bootstrap}? set KAFKA_BOOTSTRAP_SERVERS, or start one "
        "with infra/kafka/start.sh",
    ]


def test_worker_commands_keep_the_kafka_client_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Services (``worker``, ``ingress``, ``up``) log what the Kafka client says; only the
    one-shot commands leave it out. ``--debug`` shows it everywhere."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("AGENTSTREAM_LOG_JSON", "false")
    code, _, err = _cli(["worker", "tool"])
    assert code == 1
    assert "aiokafka" in err
    assert err.splitlines()[-2].startswith("error: cannot reach Kafka at 127.0.0.1:1")
