"""7. Poison input produced straight to the topics, ahead of 200 good requests.

On ``user_request``: bytes that are not JSON, an envelope whose data breaks the schema, an
unknown event type. On ``tool_call``: garbage bytes, and a call of ``always_fails``, a tool
that raises every time. Each one lands in the dead-letter topic of its topic with headers
saying where it came from (topic, partition, offset, for the tool call the original ones
although it went through the retry topic) and why (error class, attempts, handler, group,
stack trace); a request that can be answered is answered (``rejected``), the failed tool
call gets a failed result; and the partitions keep flowing: the good requests published
after the poison on the same partitions (same keys) are all answered.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from agentstream.schemas import (
    AgentResponse,
    DeadLetter,
    ToolCall,
    ToolCallData,
    ToolResult,
    decode,
)
from agentstream.topics import Kind, OutgoingRecord, RecordMetadata, Topic

from tests.chaos import chaos_tools
from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.pipeline_harness import wait_for
from tests.workload import make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

MAX_ATTEMPTS = 4  # below the tool's circuit-breaker threshold (5), so the error stays the tool's


def _envelope(kind: str, request_id: str, conversation_id: str, data: Any) -> bytes:
    return json.dumps(
        {
            "type": kind,
            "id": f"{request_id}-event",
            "source": "chaos",
            "time": "2026-01-01T00:00:00Z",
            "request_id": request_id,
            "conversation_id": conversation_id,
            "data": data,
        }
    ).encode()


async def test_poison_input_is_dead_lettered_and_partitions_keep_flowing(
    kafka_bootstrap: str,
    redis_url: str,
    cluster: ClusterFactory,
    record_result: RecordResult,
    tmp_path: Path,
) -> None:
    state = tmp_path / "tools"
    state.mkdir()
    c = await cluster(
        kafka_bootstrap,
        redis_url,
        AGENTSTREAM_TOOLS_MODULE="tests.chaos.chaos_tools",
        AGENTSTREAM_RUNTIME__MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        CHAOS_TOOLS_DIR=str(state),
    )
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    run = uuid.uuid4().hex[:6]
    conv_a, conv_b = turns[0].conversation_id, turns[1].conversation_id
    requests = c.catalog.name(Topic.USER_REQUEST)
    calls = c.catalog.name(Topic.TOOL_CALL)
    schema_rid, type_rid = f"poison-schema-{run}", f"poison-type-{run}"
    always = ToolCall(
        source="chaos",
        request_id=f"poison-tool-{run}",
        conversation_id=conv_b,
        data=ToolCallData(
            call_id=f"always-{run}", step=1, tool="always_fails", arguments={"key": f"always-{run}"}
        ),
    )
    poison = {
        "not-json": OutgoingRecord(requests, b"{not json", conv_a.encode()),
        "wrong-schema": OutgoingRecord(
            requests,
            _envelope("agentstream.user_request.v1", schema_rid, conv_a, {"text": 42}),
            conv_a.encode(),
        ),
        "unknown-type": OutgoingRecord(
            requests,
            _envelope("agentstream.nonsense.v9", type_rid, conv_a, {"text": "hi"}),
            conv_a.encode(),
        ),
        "garbage-call": OutgoingRecord(calls, b"\x00\xff\xfe garbage", conv_b.encode()),
        "always-fails": OutgoingRecord(calls, always.model_dump_json().encode(), conv_b.encode()),
    }
    timeline = Timeline()
    placed: dict[str, RecordMetadata] = {}
    for name, record in poison.items():
        placed[name] = await c.bus.publish(record)
    timeline.instant("poison produced")
    await c.publish(turns)
    responses = await c.collect(turns, timeout_s=120)

    async def dead_letters() -> dict[str, list[DeadLetter]] | None:
        found: dict[str, list[DeadLetter]] = {}
        for topic in (Topic.USER_REQUEST, Topic.TOOL_CALL):
            for r in await c.read(c.catalog.name(topic, Kind.DLQ)):
                info = DeadLetter.from_headers(r.headers)
                found.setdefault(f"{info.topic}/{info.offset}/{info.handler}", []).append(info)
        return found if len(found) >= 3 * 2 + 2 else None

    dead = await wait_for(dead_letters, timeout_s=60)
    responses = await c.responses()
    report = await verify(c, c.catalog, turns, responses=responses)
    record_result(
        "poison-input",
        report,
        timeline,
        {"dead_letters_by_origin": {k: len(v) for k, v in dead.items()}},
    )
    assert report.ok, report.describe() + c.tails()

    # The router is the group that reads user_request for the agents (ADR 23).
    router_group, tool_group = c.group("router"), c.group("tool")
    for name in ("not-json", "wrong-schema", "unknown-type"):
        meta = placed[name]
        copies = dead.get(f"{requests}/{meta.offset}/router.user_request", [])
        assert len(copies) == 1, (name, dead.keys())
        info = copies[0]
        assert (info.topic, info.partition, info.offset) == (requests, meta.partition, meta.offset)
        assert (info.error_class, info.attempts, info.group) == ("SchemaError", 1, router_group)
        assert "Traceback" in info.stacktrace
        assert "SchemaError" in info.stacktrace
        # The memory worker's group reads user_request too and dead-letters it on its own.
        assert len(dead.get(f"{requests}/{meta.offset}/memory.user_request", [])) == 1

    garbage = dead[f"{calls}/{placed['garbage-call'].offset}/tool.tool_call"]
    assert [(g.error_class, g.attempts, g.group) for g in garbage] == [
        ("SchemaError", 1, tool_group)
    ]
    failing = dead[f"{calls}/{placed['always-fails'].offset}/tool.tool_call"]
    assert len(failing) == 1
    info = failing[0]
    # The original coordinates, although the last attempts came from the retry topic.
    assert (info.topic, info.partition) == (calls, placed["always-fails"].partition)
    assert (info.error_class, info.attempts, info.group) == (
        "RuntimeError",
        MAX_ATTEMPTS,
        tool_group,
    )
    assert "always_fails" in info.stacktrace
    assert chaos_tools.attempts(state, f"always-{run}") == MAX_ATTEMPTS

    # Answers where someone can be answered: the two requests that carry their ids are
    # rejected (once); the failed tool call gets one failed result.
    by_request: dict[str, list[AgentResponse]] = {}
    for r in responses:
        event = decode(r.value)
        if isinstance(event, AgentResponse):
            by_request.setdefault(event.request_id, []).append(event)
    for rid in (schema_rid, type_rid):
        answers = by_request.get(rid, [])
        assert len({a.id for a in answers}) == 1, (rid, answers)
        assert answers[0].data.status == "rejected"
    results = [
        e
        for r in await c.read(c.catalog.name(Topic.TOOL_RESULT))
        if isinstance(e := decode(r.value), ToolResult) and e.data.call_id == f"always-{run}"
    ]
    assert len({e.id for e in results}) == 1
    assert results[0].data.ok is False

    # The partitions of the poison kept flowing: the conversations keyed like it (same
    # partition, same lane) got all their answers, after the poison.
    for conv in (conv_a, conv_b):
        answered = {t.request_id for t in turns if t.conversation_id == conv} - set(report.lost)
        assert len(answered) == 4, conv
