"""The Lambda handler on real Kafka and Redis: MSK-format batches in, events out on Kafka.

Input records are first published to the real topics and read back, so the batches carry
real partitions, offsets and headers; they are then shaped as the documented MSK event
(base64 key and value, headers as arrays of signed byte values) and handed to
``agentstream.lambda_handler.handler`` on a thread of its own, where it keeps its event loop
between invocations as it does on Lambda. What the handler publishes is read back from Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
from agentstream import lambda_handler
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.stores.redis_store import RedisStore
from agentstream.lambda_handler import BatchFailed, LambdaRuntime, batch_response, parse_event
from agentstream.schemas import (
    ConfigError,
    DeadLetter,
    Envelope,
    RetryableError,
    ToolCall,
    ToolCallData,
    ToolResult,
    UserRequest,
    UserRequestData,
    decode,
    encode,
)
from agentstream.settings import Settings, TopicSettings
from agentstream.topics import Headers, KafkaConfig, Kind, OutgoingRecord, Record, Topic
from agentstream.topics.deadline import accept_by_header
from agentstream.topics.kafka import KafkaBus
from agentstream.wiring import ensure_topics
from pydantic import SecretStr

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


# -- the function, its events and its context ---------------------------------------------


class _LambdaContext:
    """The part of Lambda's context object the handler reads."""

    def __init__(self, remaining_ms: int) -> None:
        self._deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _Function:
    """One function instance: a single thread that runs the handler, as Lambda does."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool

    def configure(self, settings: Settings, **options: Any) -> LambdaRuntime:
        return self._pool.submit(partial(lambda_handler.configure, settings, **options)).result()

    async def invoke(self, event: dict[str, Any], remaining_ms: int = 60_000) -> dict[str, Any]:
        context = _LambdaContext(remaining_ms)
        loop = asyncio.get_running_loop()
        result: dict[str, Any] = await loop.run_in_executor(
            self._pool, lambda_handler.handler, event, context
        )
        return result


def msk_event(records: Sequence[Record]) -> dict[str, Any]:
    """``records`` as Lambda hands them to a function of an MSK event source mapping."""
    batches: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        item: dict[str, Any] = {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp_ms,
            "timestampType": "CREATE_TIME",
            # Java's bytes are signed: values above 127 arrive negative.
            "headers": [{k: [b - 256 if b > 127 else b for b in v]} for k, v in r.headers],
        }
        if r.key is not None:
            item["key"] = base64.b64encode(r.key).decode()
        if r.value is not None:
            item["value"] = base64.b64encode(r.value).decode()
        batches.setdefault(f"{r.topic}-{r.partition}", []).append(item)
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/agentstream/0a1b2c3d-e",
        "bootstrapServers": "b-1.agentstream.kafka.eu-west-1.amazonaws.com:9096",
        "records": batches,
    }


def tool_call(conversation: str, call_id: str, expression: str = "12 * 7") -> ToolCall:
    request = UserRequest(
        source="test",
        request_id=f"req-{call_id}",
        conversation_id=conversation,
        data=UserRequestData(text=f"what is {expression}?"),
    )
    return request.derive(
        ToolCall,
        ToolCallData(
            call_id=call_id, step=0, tool="calculator", arguments={"expression": expression}
        ),
        step=0,
        source="agent-worker",
    )


Input = tuple[int, Envelope[Any] | bytes]


async def produce(bus: KafkaBus, topic: str, inputs: Sequence[Input]) -> list[Record]:
    """Publish ``inputs`` (partition, event or raw bytes) and read them back as records."""
    outgoing = []
    for partition, item in inputs:
        headers: Headers = ()
        if isinstance(item, bytes):
            key: bytes | None = b"conv-a"
            value = item
        else:
            key, value, header_list = encode(item)
            headers = tuple(header_list)
        outgoing.append(OutgoingRecord(topic, value, key, headers, partition=partition))
    metas = await bus.publish_many(outgoing)
    read = {(r.partition, r.offset): r for r in await bus.read(topic)}
    return [read[(m.partition, m.offset)] for m in metas]


async def results(bus: KafkaBus, settings: Settings) -> list[ToolResult]:
    records = await bus.read(settings.catalog().name(Topic.TOOL_RESULT))
    events = [decode(r.value) for r in records]
    assert all(isinstance(e, ToolResult) for e in events)
    return [e for e in events if isinstance(e, ToolResult)]


class FlakyStore(RedisStore):
    """Redis, except that what partition 0 of ``tool_call`` needs before its handler runs
    (its parked-keys index) is out of reach while ``down`` is set. The runtime waits out
    such an outage rather than lose the record, so it stays unsettled until the
    invocation's time runs out."""

    down = True

    async def index_range(
        self, key: str, max_score: float = float("inf"), limit: int = 1000
    ) -> list[tuple[str, float]]:
        if self.down and ":parked:" in key and key.endswith(":tool_call:0"):
            raise RetryableError("Redis unreachable (test)")
        return await super().index_range(key, max_score, limit)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def settings(kafka_bootstrap: str, redis_url: str, prefix: str) -> Settings:
    return Settings(
        bus="kafka",
        kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
        redis_url=SecretStr(redis_url),
        topics=TopicSettings(prefix=prefix, partitions=2, create_on_start=False),
    )


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[KafkaBus]:
    bus = KafkaBus(settings.kafka)
    await bus.start()
    await ensure_topics(bus, settings.catalog(), create=True)
    try:
        yield bus
    finally:
        await bus.stop()


@pytest.fixture
def function() -> Iterator[_Function]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lambda") as pool:
        try:
            yield _Function(pool)
        finally:
            pool.submit(lambda_handler.shutdown).result()


# -- tests ----------------------------------------------------------------------------------


async def test_a_tool_call_batch_publishes_the_results_on_kafka(
    settings: Settings, bus: KafkaBus, function: _Function
) -> None:
    calls = [tool_call("conv-a", "c1", "12 * 7"), tool_call("conv-b", "c2", "6 * 7")]
    calls.append(tool_call("conv-a", "c3", "2 + 3"))
    topic = settings.catalog().name(Topic.TOOL_CALL)
    records = await produce(bus, topic, [(0, calls[0]), (1, calls[1]), (0, calls[2])])
    function.configure(settings, kind="tool")

    assert await function.invoke(msk_event(records)) == {"batchItemFailures": []}

    by_call = {r.data.call_id: r for r in await results(bus, settings)}
    assert {k: r.data.output for k, r in by_call.items()} == {
        "c1": {"expression": "12 * 7", "result": 84},
        "c2": {"expression": "6 * 7", "result": 42},
        "c3": {"expression": "2 + 3", "result": 5},
    }
    for call in calls:
        result = by_call[call.data.call_id]
        assert result.data.ok
        assert result.causation_id == call.id
        assert result.conversation_id == call.conversation_id


async def test_a_request_appended_after_its_deadline_runs_no_handler(
    settings: Settings, bus: KafkaBus, function: _Function
) -> None:
    """The Lambda handler runs records through the worker's own path, so a ``user_request``
    the ingress answered 503 (appended after its ``x-accept-by``, ADR 6) runs nothing here
    either; one in time runs as usual."""
    topic = settings.catalog().name(Topic.USER_REQUEST)
    now_ms = time.time_ns() // 1_000_000
    requests = {
        text: UserRequest(
            id=f"{text}-event",
            source="ingress",
            request_id=text,
            conversation_id=f"conv-{text}",
            tenant="acme",
            data=UserRequestData(text=text),
        )
        for text in ("late", "in-time")
    }
    outgoing = []
    for text, deadline in (("late", now_ms - 60_000), ("in-time", now_ms + 60_000)):
        key, value, headers = encode(requests[text])
        stamped = (*headers, accept_by_header(deadline))
        outgoing.append(OutgoingRecord(topic, value, key, stamped, partition=0))
    metas = await bus.publish_many(outgoing)
    read = {(r.partition, r.offset): r for r in await bus.read(topic)}
    records = [read[(m.partition, m.offset)] for m in metas]
    seen: list[str] = []

    async def handle(event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        seen.append(event.request_id)
        return []

    routes = [Route(Topic.USER_REQUEST, handle, "test.user_request")]
    function.configure(settings, kind="agent", routes=routes)

    assert await function.invoke(msk_event(records)) == {"batchItemFailures": []}
    assert seen == ["in-time"]


async def test_a_poison_record_is_dead_lettered_and_the_batch_goes_on(
    settings: Settings, bus: KafkaBus, function: _Function
) -> None:
    topic = settings.catalog().name(Topic.TOOL_CALL)
    first, poison, last = await produce(
        bus,
        topic,
        [(0, tool_call("conv-a", "p1")), (0, b"{not json"), (0, tool_call("conv-a", "p2"))],
    )
    function.configure(settings, kind="tool")

    assert await function.invoke(msk_event([first, poison, last])) == {"batchItemFailures": []}

    assert {r.data.call_id for r in await results(bus, settings)} == {"p1", "p2"}
    [dead] = await bus.read(settings.catalog().name(Topic.TOOL_CALL, Kind.DLQ))
    assert (dead.key, dead.value) == (b"conv-a", b"{not json")
    info = DeadLetter.from_headers(dead.headers)
    assert (info.topic, info.partition, info.offset) == (topic, 0, poison.offset)
    assert info.error_class == "SchemaError"
    assert info.group == f"{settings.topics.prefix}agentstream-tool"
    assert info.handler == "tool.tool_call"
    assert info.attempts == 1


async def test_a_redelivered_batch_gives_no_second_distinct_output(
    settings: Settings, bus: KafkaBus, function: _Function
) -> None:
    topic = settings.catalog().name(Topic.TOOL_CALL)
    records = await produce(bus, topic, [(1, tool_call("conv-r", "r1"))])
    runtime = function.configure(settings, kind="tool")
    event = msk_event(records)

    assert await function.invoke(event) == {"batchItemFailures": []}
    assert await function.invoke(event) == {"batchItemFailures": []}

    out = await bus.read(settings.catalog().name(Topic.TOOL_RESULT))
    assert len(out) == 2, "the redelivery republishes the recorded output"
    assert len({decode(r.value).id for r in out}) == 1
    assert out[0].value == out[1].value
    duplicates = runtime.metrics.registry.get_sample_value(
        "agentstream_duplicates_dropped_total", {"handler": "tool.tool_call"}
    )
    assert duplicates == 1


async def test_a_record_that_cannot_be_settled_stops_its_partition_only(
    settings: Settings, bus: KafkaBus, function: _Function, redis_url: str
) -> None:
    topic = settings.catalog().name(Topic.TOOL_CALL)
    a1, down, a2, b1, b2 = await produce(
        bus,
        topic,
        [
            (0, tool_call("conv-a", "a1")),
            (0, tool_call("conv-down", "d1")),
            (0, tool_call("conv-a", "a2")),
            (1, tool_call("conv-b", "b1")),
            (1, tool_call("conv-b", "b2")),
        ],
    )
    store = FlakyStore(redis_url)
    function.configure(settings, kind="tool", store=store)

    started = time.monotonic()
    response = await function.invoke(msk_event([a1, down, a2, b1, b2]), remaining_ms=4_000)
    assert time.monotonic() - started < 4.0

    # Partition 0 could not be settled: all of it is reported, from its first record, so
    # Lambda resumes it there; partition 1 went on.
    assert response == batch_response(
        [(f"{topic}-0", a1.offset), (f"{topic}-0", down.offset), (f"{topic}-0", a2.offset)]
    )
    assert response["batchItemFailures"][0] == {
        "itemIdentifier": {"partition": f"{topic}-0", "offset": a1.offset}
    }
    assert {r.data.call_id for r in await results(bus, settings)} == {"b1", "b2"}

    store.down = False
    assert await function.invoke(msk_event([a1, down, a2])) == {"batchItemFailures": []}
    after = await results(bus, settings)
    assert sorted(r.data.call_id for r in after) == ["a1", "a2", "b1", "b2", "d1"]


async def test_records_still_running_near_the_time_limit_are_reported(
    settings: Settings, bus: KafkaBus, function: _Function
) -> None:
    handled: list[str] = []

    async def slow_on_one_conversation(event: ToolCall, ctx: Context) -> list[Envelope[Any]]:
        if event.conversation_id == "conv-slow":
            await asyncio.sleep(60)
        handled.append(event.data.call_id)
        return []

    topic = settings.catalog().name(Topic.TOOL_CALL)
    f1, slow, f2, f3 = await produce(
        bus,
        topic,
        [
            (0, tool_call("conv-a", "f1")),
            (0, tool_call("conv-slow", "s1")),
            (0, tool_call("conv-a", "f2")),
            (1, tool_call("conv-b", "f3")),
        ],
    )
    route = Route(Topic.TOOL_CALL, slow_on_one_conversation, "test.tool_call")
    function.configure(settings, kind="tool", routes=[route])

    started = time.monotonic()
    response = await function.invoke(msk_event([f1, slow, f2, f3]), remaining_ms=3_000)

    assert time.monotonic() - started < 3.0
    assert response == batch_response([(f"{topic}-0", slow.offset), (f"{topic}-0", f2.offset)])
    assert sorted(handled) == ["f1", "f3"]


async def test_without_partial_responses_a_failed_record_fails_the_invocation(
    settings: Settings, bus: KafkaBus, function: _Function, redis_url: str
) -> None:
    topic = settings.catalog().name(Topic.TOOL_CALL)
    records = await produce(bus, topic, [(0, tool_call("conv-down", "x1"))])
    function.configure(settings, kind="tool", store=FlakyStore(redis_url), report_failures=False)

    with pytest.raises(BatchFailed):
        await function.invoke(msk_event(records), remaining_ms=3_000)


async def test_records_of_another_deployment_fail_the_whole_invocation(
    settings: Settings, function: _Function
) -> None:
    stray = Record("elsewhere.tool_call", 0, 7, b"conv-a", b"{}")
    function.configure(settings, kind="tool")

    with pytest.raises(ConfigError, match="not of this deployment"):
        await function.invoke(msk_event([stray]))


def test_the_msk_event_format_is_read_as_documented() -> None:
    headers: Headers = (("ce_id", b"e1"), ("bin", bytes([0, 127, 128, 255])))
    records = [
        Record("t", 1, 16, None, b"second", headers, 1_700_000_000_001),
        Record("t", 1, 15, b"k", b"first", (), 1_700_000_000_000),
        Record("t", 0, 3, b"k", b"other", ()),
    ]
    event = msk_event(records)
    assert event["records"]["t-1"][0]["headers"][1] == {"bin": [0, 127, -128, -1]}

    parsed = parse_event(event)

    assert parsed == {"t-1": [records[1], records[0]], "t-0": [records[2]]}
    with pytest.raises(ConfigError):
        parse_event({"eventSource": "aws:sqs", "Records": []})
