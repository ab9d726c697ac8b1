"""``agentstream dlq`` on real Kafka and Redis, against a tool worker running in this process.

Poison reaches ``tool_call.dlq`` the way it does in production: bytes that are not JSON
(dead-lettered at once), and a call whose tool keeps failing (dead-lettered once the retry
budget, in place and through ``tool_call.retry``, is spent). The commands then run as
``agentstream.cli.main`` in a worker thread, while the test's loop keeps the worker running:
``list`` and ``show`` read the dead letters, ``replay --dry-run`` publishes nothing, and
``replay`` republishes exactly the selected record, which the worker handles once: replaying
it again is deduplicated by event id. A replay goes to the group that failed it only: another
group reading the same topic passes it by (ADR 17).
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from agentstream.agents import ToolRegistry
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.runtime.worker import Worker
from agentstream.handlers.stores.base import StateStore
from agentstream.process import build_workers
from agentstream.schemas import Envelope, ToolCall, ToolCallData, derive_id, encode, header
from agentstream.settings import RuntimeSettings, Settings, TopicSettings
from agentstream.topics import (
    Bus,
    Catalog,
    KafkaConfig,
    Kind,
    OutgoingRecord,
    Record,
    Topic,
    TopicPartition,
)
from agentstream.wiring import build_bus, build_store, ensure_topics, runtime_config
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from tests.cli_runner import run_cli

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(240)]


# -- helpers ------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> tuple[int, str, str]:
    return run_cli(argv)


async def dlq(*argv: str) -> tuple[int, str, str]:
    code, out, err = await asyncio.to_thread(_cli, ["dlq", *argv])
    assert "Traceback" not in err, err
    return code, out, err


async def dlq_json(*argv: str) -> Any:
    code, out, err = await asyncio.to_thread(_cli, ["--json", "dlq", *argv])
    assert code == 0, err
    return json.loads(out)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait up to a minute for ``check``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def ends(bus: Bus, topic: str, partitions: int = 2) -> dict[TopicPartition, int]:
    return await bus.end_offsets([TopicPartition(topic, p) for p in range(partitions)])


async def read_from(bus: Bus, topic: str, start: dict[TopicPartition, int]) -> list[Record]:
    return await bus.read(topic, start={tp.partition: o for tp, o in start.items()})


class FlakyArgs(BaseModel):
    n: int = 0


@dataclass
class Pipeline:
    bus: Bus
    catalog: Catalog
    broken: dict[str, bool]
    settings: Settings
    store: StateStore

    def results(self, records: list[Record], request_id: str) -> list[Record]:
        return [r for r in records if header(r.headers, "ce_requestid") == request_id]

    async def tool_results(self, request_id: str) -> list[Record]:
        return self.results(await self.bus.read(self.catalog.name(Topic.TOOL_RESULT)), request_id)

    async def dead_letters(self) -> int:
        return sum((await ends(self.bus, self.catalog.name(Topic.TOOL_CALL, Kind.DLQ))).values())


@pytest.fixture
async def pipeline(
    kafka_bootstrap: str, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pipeline]:
    """A tool worker with a ``flaky`` tool that fails while ``broken['on']``; the CLI's
    environment points at the same Kafka and prefix."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PREFIX", prefix)
    monkeypatch.setenv("AGENTSTREAM_LOG_LEVEL", "WARNING")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    settings = Settings(
        bus="kafka",
        kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
        redis_url=redis_url,
        topics=TopicSettings(prefix=prefix, partitions=2),
        runtime=RuntimeSettings(
            in_place_attempts=1,
            max_attempts=2,
            retry_base_delay_s=0.01,
            retry_topic_delay_s=0.2,
            drain_timeout_s=2,
        ),
    )
    broken = {"on": True}
    registry = ToolRegistry(failure_threshold=1000)

    @registry.tool(description="Answers while its backend is up.")
    async def flaky(args: FlakyArgs) -> dict[str, int]:
        if broken["on"]:
            raise RuntimeError("backend down")
        return {"n": args.n}

    bus, store = build_bus(settings), build_store(settings)
    await bus.start()
    catalog = settings.catalog()
    await ensure_topics(bus, catalog, create=True)
    stop = asyncio.Event()
    workers = build_workers(
        ["tool"], settings, bus, store, CollectorRegistry(), stop, registry=registry
    )
    task = asyncio.create_task(workers.run(stop))
    try:
        yield Pipeline(bus, catalog, broken, settings, store)
    finally:
        stop.set()
        await task
        await bus.stop()
        await store.close()


def _call(request_id: str, tool: str) -> ToolCall:
    return ToolCall(
        source="agent-worker",
        request_id=request_id,
        conversation_id=f"conv-{request_id}",
        data=ToolCallData(call_id=f"{request_id}-call", step=1, tool=tool, arguments={"n": 7}),
    )


# -- the test -----------------------------------------------------------------------------------


async def test_list_show_and_replay_dead_letters(pipeline: Pipeline) -> None:
    bus, catalog = pipeline.bus, pipeline.catalog
    tool_call = catalog.name(Topic.TOOL_CALL)
    dlq_topic = catalog.name(Topic.TOOL_CALL, Kind.DLQ)
    bad = OutgoingRecord(tool_call, b"{not json", b"conv-bad", (("ce_requestid", b"req-bad"),))
    call = _call("req-flaky", "flaky")
    key, value, headers = encode(call)
    bad_at = await bus.publish(bad)
    call_at = await bus.publish(OutgoingRecord(tool_call, value, key, tuple(headers)))
    # A well-formed call of an unknown tool is answered with a failed result, not dead-lettered.
    nope_key, nope_value, _ = encode(_call("req-nope", "nope"))
    await bus.publish(OutgoingRecord(tool_call, nope_value, nope_key))
    await eventually(lambda: _is(pipeline.dead_letters(), 2), "two dead letters")
    await eventually(lambda: _some(pipeline.tool_results("req-flaky")), "the dead-letter hook")
    await eventually(lambda: _some(pipeline.tool_results("req-nope")), "the unknown tool's answer")

    # list: both, with where they came from and why.
    listed = await dlq_json("list", "--topic", "tool_call")
    assert len(listed) == 2
    by_request = {e["request_id"]: e for e in listed}
    poison, failed = by_request["req-bad"], by_request["req-flaky"]
    assert (poison["topic"], poison["partition"], poison["offset"]) == (
        tool_call,
        bad_at.partition,
        bad_at.offset,
    )
    assert (poison["error_class"], poison["attempts"], poison["key"]) == (
        "SchemaError",
        1,
        "conv-bad",
    )
    assert poison["handler"] == "tool.tool_call"
    assert poison["group"] == f"{catalog.prefix}agentstream-tool"
    # Through the retry topic, the origin is still the main topic.
    assert (failed["topic"], failed["partition"], failed["offset"]) == (
        tool_call,
        call_at.partition,
        call_at.offset,
    )
    assert (failed["error_class"], failed["attempts"]) == ("RuntimeError", 2)
    assert failed["event_id"] == call.id
    assert all(e["dlq_topic"] == dlq_topic for e in listed)
    code, out, _ = await dlq("list")
    assert code == 0
    assert out.splitlines()[-1] == "2 dead letters"
    assert (await dlq("list", "--request-id", "nobody"))[0] == 1
    assert len(await dlq_json("list", "--error-class", "SchemaError")) == 1
    flaky_at = f"{failed['dlq_partition']}:{failed['dlq_offset']}"
    only = await dlq_json(
        "list",
        "--topic",
        "tool_call.dlq",
        "--partition",
        str(failed["dlq_partition"]),
        "--offset-range",
        flaky_at.split(":")[1],
    )
    assert [e["request_id"] for e in only] == ["req-flaky"]

    # show: headers, the event, the stack trace; the raw bytes when it does not decode.
    code, out, _ = await dlq("show", "--request-id", "req-flaky")
    assert code == 0
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: backend down" in out
    assert '"tool": "flaky"' in out
    assert "x-dlq-attempts: 2" in out
    code, out, _ = await dlq("show", "--request-id", "req-bad")
    assert "value (9 bytes, not an event: value is not JSON" in out
    assert "b'{not json'" in out

    # replay --dry-run, and replay without --yes and without a terminal: nothing published.
    before = await ends(bus, tool_call)
    code, out, _ = await dlq("replay", "--dry-run", "--topic", "tool_call")
    assert code == 0
    assert "nothing was published" in out
    code, _, err = await dlq("replay", "--request-id", "req-flaky")
    assert code == 2
    assert "stdin is not a terminal" in err
    assert await ends(bus, tool_call) == before

    # replay --yes: exactly the selected record, original key, bytes and headers, marked.
    pipeline.broken["on"] = False
    code, out, err = await dlq("replay", "--yes", "--request-id", "req-flaky")
    assert code == 0, err
    coordinates = f"{dlq_topic}/{failed['dlq_partition']}/{failed['dlq_offset']}"
    assert f"replayed {coordinates} -> {tool_call}/" in out
    (replayed,) = await read_from(bus, tool_call, before)
    assert (replayed.key, replayed.value) == (key, value)
    assert header(replayed.headers, "x-replayed-from") == coordinates
    assert header(replayed.headers, "x-replayed-at") is not None
    assert [(k, v) for k, v in replayed.headers if not k.startswith("x-replayed-")] == headers
    await eventually(lambda: _length(pipeline.tool_results("req-flaky"), 2), "the replay")

    # Again: reported as replayed before; the worker's dedup gives back the same result.
    code, out, err = await dlq("replay", "--yes", "--request-id", "req-flaky")
    assert code == 0
    assert f"were replayed before: {coordinates}" in err
    await eventually(lambda: _length(pipeline.tool_results("req-flaky"), 3), "the 2nd replay")
    results = await pipeline.tool_results("req-flaky")
    # One distinct result: the dead-letter hook's failure and both replays share its id.
    assert {header(r.headers, "ce_id") for r in results} == {derive_id(call.id, "result")}
    assert results[2].value == results[1].value  # the recorded outputs, byte for byte
    assert json.loads(results[1].value or b"")["data"]["ok"] is True
    middle = await ends(bus, tool_call)
    code, out, _ = await dlq("replay", "--yes", "--skip-replayed", "--request-id", "req-flaky")
    assert (code, out.strip()) == (
        0,
        "nothing to replay: every selected dead letter was replayed before",
    )
    assert await ends(bus, tool_call) == middle

    # Replaying bytes that still do not decode: back in the DLQ, saying it was a replay.
    replay_json = await dlq_json("replay", "--yes", "--error-class", "SchemaError")
    assert [r["request_id"] for r in replay_json["records"]] == ["req-bad"]
    await eventually(lambda: _is(pipeline.dead_letters(), 3), "the poison's return")
    again = [
        e for e in await dlq_json("show", "--request-id", "req-bad") if e["offset"] != bad_at.offset
    ]
    assert len(again) == 1
    assert again[0]["headers"]["x-replayed-from"] == replay_json["records"][0]["dlq"]
    assert again[0]["topic"] == tool_call


async def _is(count: Awaitable[int], n: int) -> bool:
    return await count == n


async def _length(records: Awaitable[list[Record]], n: int) -> bool:
    return len(await records) == n


async def _some(records: Awaitable[list[Record]]) -> bool:
    return bool(await records)


async def test_a_selection_that_matches_nothing_is_answered_at_once(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every dead-letter topic is read up to its end offsets, and only the partitions that
    hold records: six dead-letter topics of 12 partitions, three dead letters, and no match
    comes back in a second or so, not the 28 s it once took (a fetch round per empty
    partition)."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PREFIX", prefix)
    catalog = Catalog(prefix=prefix)
    bus = build_bus(Settings(bus="kafka", kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap)))
    await bus.start()
    try:
        await ensure_topics(bus, catalog, create=True)
        dead = catalog.name(Topic.TOOL_CALL, Kind.DLQ)
        await bus.publish_many([OutgoingRecord(dead, b"{}", b"conv-1") for _ in range(3)])
    finally:
        await bus.stop()
    loop = asyncio.get_running_loop()
    for argv in (["replay", "--request-id", "nope", "--yes"], ["list", "-r", "nope"]):
        began = loop.time()
        code, _, err = await dlq(*argv)
        took = loop.time() - began
        assert code == 1
        assert "no dead letters match" in err or argv[0] == "list"
        # About 1 s on an idle machine; the old way took 28-40 s on 12 partitions.
        assert took < 10, f"dlq {' '.join(argv)} took {took:.1f}s"
    listed = await dlq_json("list", "--topic", "tool_call")
    assert len(listed) == 3


async def test_a_replay_goes_to_the_group_that_failed_it_only(pipeline: Pipeline) -> None:
    bus, catalog = pipeline.bus, pipeline.catalog
    tool_call = catalog.name(Topic.TOOL_CALL)
    tool_group = f"{catalog.prefix}agentstream-tool"
    # A second group on tool_call (an audit trail, say) that handles every call fine.
    seen: list[str] = []

    async def observe(event: ToolCall, ctx: Context) -> list[Envelope[Any]]:
        seen.append(event.request_id)
        return []

    config = runtime_config(pipeline.settings, "test-observer", "observer")
    metrics = RuntimeMetrics()
    observer = Worker(
        bus,
        pipeline.store,
        catalog,
        [Route(Topic.TOOL_CALL, observe, "observer.tool_call")],
        config,
        metrics=metrics,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(observer.run(stop))
    try:
        call = _call("req-one-group", "flaky")
        key, value, headers = encode(call)
        await bus.publish(OutgoingRecord(tool_call, value, key, tuple(headers)))
        await eventually(lambda: _is(pipeline.dead_letters(), 1), "the tool group's dead letter")
        await eventually(lambda: _async(seen == ["req-one-group"]), "the observer")

        # list names the group that failed; --group selects by it.
        code, out, _ = await dlq("list", "--topic", "tool_call")
        assert code == 0
        assert tool_group in out.splitlines()[1]
        assert out.splitlines()[0].split()[5] == "GROUP"
        [listed] = await dlq_json("list", "--group", tool_group)
        assert listed["group"] == tool_group
        assert (await dlq("list", "--group", config.group_id))[0] == 1  # it failed nothing

        pipeline.broken["on"] = False
        before = await ends(bus, tool_call)
        code, out, err = await dlq("replay", "--yes", "--request-id", "req-one-group")
        assert code == 0, err
        assert f"for {tool_group}" in out
        (replayed,) = await read_from(bus, tool_call, before)
        assert header(replayed.headers, "x-replayed-group") == tool_group
        # The tool group runs it (its answer now succeeds); the observer passes it by.
        await eventually(lambda: _length(pipeline.tool_results("req-one-group"), 2), "the replay")
        # Twice: the tool group's copy in tool_call.retry (before the dead letter), the replay.
        await eventually(
            lambda: _async(_outcomes(metrics, "other_group") == 2), "the observer passing it by"
        )
        assert seen == ["req-one-group"]
        assert _outcomes(metrics, "ok") == 1
    finally:
        stop.set()
        await task


def _outcomes(metrics: RuntimeMetrics, outcome: str) -> float:
    labels = {"handler": "observer.tool_call", "outcome": outcome}
    return metrics.registry.get_sample_value("agentstream_handler_seconds_count", labels) or 0.0


async def _async(value: bool) -> bool:
    return value
