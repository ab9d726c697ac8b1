"""``exactly_once`` mode on Kafka: outputs and input offsets in one transaction.

Read_committed readers see each output once; an aborted transaction is never seen by
them; a second producer with the same transactional id fences the first.
"""

from __future__ import annotations

import pytest
from agentstream.schemas import ToolCall, ToolCallData, decode, encode
from agentstream.settings import RuntimeSettings
from agentstream.topics import OutgoingRecord, Topic
from agentstream.topics.bus import Fenced

from tests.pipeline_harness import make_stack, running, wait_for
from tests.workload import check, collect, make_turns, publish

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

EOS = RuntimeSettings(delivery="exactly_once", drain_timeout_s=2)


async def test_pipeline_in_exactly_once_mode_answers_each_request_once(
    kafka_bootstrap: str, redis_url: str, prefix: str
) -> None:
    stack = await make_stack("kafka", prefix, kafka=kafka_bootstrap, redis=redis_url, runtime=EOS)
    turns = make_turns(15)
    try:
        async with running(stack, ["agent", "tool", "memory"]):
            await publish(stack.bus, stack.catalog, turns)
            records = await collect(stack.bus, stack.catalog, turns, timeout_s=90)
        uncommitted = await stack.bus.read(
            stack.catalog.name(Topic.AGENT_RESPONSE), read_committed=False
        )
    finally:
        await stack.bus.stop()
        await stack.store.close()
    report = check(turns, records)
    assert report.ok, report.summary()
    assert report.duplicate_copies == 0
    # Control records (commit markers) take offsets: the log has gaps a plain reader skips.
    assert len(uncommitted) >= len(records)


async def test_an_aborted_transaction_is_never_seen_by_read_committed_readers(
    kafka_bootstrap: str, redis_url: str, prefix: str
) -> None:
    stack = await make_stack("kafka", prefix, kafka=kafka_bootstrap, redis=redis_url, runtime=EOS)
    topic = stack.catalog.name(Topic.TOOL_CALL)
    try:
        txn = await stack.bus.transactions(f"{prefix}abort-test")
        bad = OutgoingRecord(topic, b"never visible", b"k")
        # A record that cannot be sent aborts the whole transaction, the good one with it.
        with pytest.raises(Exception):  # noqa: B017 - whatever the client raises
            await txn.commit(
                [
                    OutgoingRecord(topic, b"also aborted", b"k"),
                    bad,
                    OutgoingRecord("no-such-topic-" + prefix, b"x", b"k"),
                ],
                {},
                "g",
            )
        await txn.close()
        txn = await stack.bus.transactions(f"{prefix}abort-test")
        await txn.commit([OutgoingRecord(topic, b"committed", b"k")], {}, "g")
        await txn.close()
        committed = [r.value for r in await stack.bus.read(topic, read_committed=True)]
    finally:
        await stack.bus.stop()
        await stack.store.close()
    assert committed == [b"committed"]


async def test_a_second_producer_with_the_same_id_fences_the_first(
    kafka_bootstrap: str, redis_url: str, prefix: str
) -> None:
    stack = await make_stack("kafka", prefix, kafka=kafka_bootstrap, redis=redis_url, runtime=EOS)
    topic = stack.catalog.name(Topic.TOOL_CALL)
    try:
        zombie = await stack.bus.transactions(f"{prefix}worker.tool_call.0")
        await zombie.commit([OutgoingRecord(topic, b"before", b"k")], {}, "g")
        successor = await stack.bus.transactions(f"{prefix}worker.tool_call.0")
        with pytest.raises(Fenced):
            await zombie.commit([OutgoingRecord(topic, b"from the zombie", b"k")], {}, "g")
        await successor.commit([OutgoingRecord(topic, b"after", b"k")], {}, "g")
        await successor.close()
        await zombie.close()
        values = [r.value for r in await stack.bus.read(topic, read_committed=True)]
    finally:
        await stack.bus.stop()
        await stack.store.close()
    assert values == [b"before", b"after"]


async def test_tool_worker_in_exactly_once_mode_commits_offsets_in_the_transaction(
    kafka_bootstrap: str, redis_url: str, prefix: str
) -> None:
    stack = await make_stack("kafka", prefix, kafka=kafka_bootstrap, redis=redis_url, runtime=EOS)
    try:
        async with running(stack, ["tool"]):
            for i in range(5):
                call = ToolCall(
                    source="t",
                    request_id=f"r{i}",
                    conversation_id=f"c{i}",
                    data=ToolCallData(
                        call_id=f"call-{i}",
                        step=1,
                        tool="calculator",
                        arguments={"expression": f"{i} * 3"},
                    ),
                )
                key, value, headers = encode(call)
                await stack.bus.publish(
                    OutgoingRecord(stack.catalog.topic_of(call), value, key, tuple(headers))
                )

            async def results() -> list[object]:
                out = await stack.bus.read(stack.catalog.name(Topic.TOOL_RESULT))
                return out if len(out) >= 5 else []

            await wait_for(results, timeout_s=30)
        # The group's committed offsets cover every input: nothing is redelivered.
        group = f"{prefix}agentstream-tool"
        consumer = stack.bus.consumer(group, [stack.catalog.name(Topic.TOOL_CALL)])
        await consumer.start()
        try:
            from agentstream.topics import TopicPartition

            tps = [TopicPartition(stack.catalog.name(Topic.TOOL_CALL), p) for p in range(2)]
            ends = await stack.bus.end_offsets(tps)
            for tp in tps:
                assert await consumer.committed(tp) == ends[tp] or ends[tp] == 0
        finally:
            await consumer.stop()
        values = [
            decode(r.value) for r in await stack.bus.read(stack.catalog.name(Topic.TOOL_RESULT))
        ]
    finally:
        await stack.bus.stop()
        await stack.store.close()
    outputs = [v.data.output for v in values]  # type: ignore[attr-defined]
    assert len(outputs) == 5
    assert sorted(o["result"] for o in outputs) == [0, 3, 6, 9, 12]
