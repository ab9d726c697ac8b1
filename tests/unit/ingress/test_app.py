"""The ingress app through httpx's ASGI transport, on a recording bus and the in-process store.

The bus here is a small recorder (it can fail or hang on demand, which is what these tests
need); the same scenarios run on real Kafka and Redis in ``tests/integration/``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from agentstream.handlers.runtime.context import Context, Origin
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.stores.base import InProcessStore
from agentstream.ingress import create_app
from agentstream.ingress.create import CLOCK_MARGIN_S
from agentstream.ingress.intake import valid_traceparent, wait_seconds
from agentstream.ingress.observe import IngressMetrics
from agentstream.ingress.projection import Projection, ProjectionKeys, RecentlyRecorded
from agentstream.ingress.server import projection_worker
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    Envelope,
    RetryableError,
    ToolCall,
    ToolCallData,
    ToolResult,
    ToolResultData,
    UserRequest,
    decode,
    encode,
    header,
)
from agentstream.settings import IngressSettings, Settings, TopicSettings
from agentstream.topics import OutgoingRecord, Record, RecordMetadata, TopicDescription
from agentstream.topics.bus import RecordTooLarge
from agentstream.topics.deadline import accept_by, landed_late
from agentstream.topics.memory import InProcessBus
from agentstream.wiring import ensure_topics
from prometheus_client import CollectorRegistry

KEY_A, KEY_B = "key-of-acme", "key-of-globex"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
PREFIX = "unit."
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class RecordingBus:
    """Just enough of the Bus protocol for the ingress: publish and describe_topics.
    Acknowledgements carry an append time, as a ``LogAppendTime`` topic's do: now plus
    ``append_delay_ms`` (a broker that appended late); ``append_time`` False: the
    producer's time, as on a ``CreateTime`` topic."""

    def __init__(self) -> None:
        self.published: list[OutgoingRecord] = []
        self.fail: Exception | None = None
        self.hang = False
        self.topics: set[str] | None = None  # None: every topic exists
        self.append_delay_ms = 0
        self.append_time = True

    async def publish(self, record: OutgoingRecord) -> RecordMetadata:
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail is not None:
            raise self.fail
        self.published.append(record)
        stamp = time.time_ns() // 1_000_000 + self.append_delay_ms
        return RecordMetadata(record.topic, 0, len(self.published) - 1, stamp, self.append_time)

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> list[RecordMetadata]:
        return [await self.publish(r) for r in records]

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        return {
            n: TopicDescription(n, 1, 1) for n in names if self.topics is None or n in self.topics
        }

    def events(self) -> list[Envelope[Any]]:
        return [decode(r.value) for r in self.published]


def settings(**ingress: Any) -> Settings:
    options: dict[str, Any] = {
        "api_keys": {
            KEY_A: "acme",
            f"sha256:{hashlib.sha256(KEY_B.encode()).hexdigest()}": "globex",
        },
        "rate_per_second": 1000.0,
        "rate_burst": 1000,
        "max_wait_s": 5.0,
        "publish_timeout_s": 0.3,
        "poll_interval_s": 0.02,
        "heartbeat_s": 0.1,
    }
    options.update(ingress)
    return Settings(ingress=IngressSettings(**options), topics=TopicSettings(prefix=PREFIX))


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
def store() -> InProcessStore:
    return InProcessStore()


@pytest.fixture
async def client(bus: RecordingBus, store: InProcessStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings(), bus, store, IngressMetrics())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as c:
        yield c


async def project(store: InProcessStore, event: Envelope[Any]) -> None:
    """Feed one event to the projection, committing like the runtime does."""
    projection = Projection(Settings(topics=TopicSettings(prefix=PREFIX)).namespace)
    ctx = Context(store, Origin("t", 0, 0, "g"), projection.keys.base, lambda: datetime.now(UTC))
    ctx.namespace = "unused"
    handler = {
        UserRequest: projection.on_user_request,
        ToolCall: projection.on_tool_call,
        ToolResult: projection.on_tool_result,
        AgentResponse: projection.on_agent_response,
    }[type(event)]
    await handler(event, ctx)
    assert await store.commit(expect=ctx.reads, ops=ctx.ops)


def progress(request: UserRequest) -> list[Envelope[Any]]:
    call = request.derive(
        ToolCall, ToolCallData(call_id="k1", step=0, tool="calculator"), step=0, source="agent"
    )
    result = call.derive(
        ToolResult,
        ToolResultData(call_id="k1", step=0, tool="calculator", ok=True, output=84),
        step="result",
        source="tool",
    )
    final = request.derive(
        AgentResponse,
        AgentResponseData(status="completed", text="84", steps=1, tool_calls=["calculator"]),
        step="final",
        source="agent",
    )
    return [call, result, final]


# -- accepting ----------------------------------------------------------------------------


async def test_post_publishes_then_answers_202(
    client: httpx.AsyncClient, bus: RecordingBus
) -> None:
    reply = await client.post(
        "/v1/requests",
        json={"text": "What is 12 * 7?", "user": "alice", "metadata": {"channel": "web"}},
        headers={**AUTH_A, "traceparent": TRACEPARENT},
    )
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["status"] == "accepted"
    assert reply.headers["location"] == f"/v1/requests/{body['request_id']}"
    [record] = bus.published
    assert record.topic == f"{PREFIX}user_request"
    assert record.key == body["conversation_id"].encode()
    assert header(record.headers, "ce_type") == "agentstream.user_request.v1"
    [event] = bus.events()
    assert isinstance(event, UserRequest)
    assert (event.request_id, event.tenant, event.source) == (body["request_id"], "acme", "ingress")
    assert event.traceparent == TRACEPARENT
    assert (event.data.text, event.data.user, event.data.metadata) == (
        "What is 12 * 7?",
        "alice",
        {"channel": "web"},
    )
    status = await client.get(f"/v1/requests/{body['request_id']}", headers=AUTH_A)
    assert status.status_code == 200
    assert status.json()["status"] == "accepted"
    assert status.json()["text"] == "What is 12 * 7?"


async def test_conversation_id_is_kept_and_bad_traceparent_dropped(
    client: httpx.AsyncClient, bus: RecordingBus
) -> None:
    reply = await client.post(
        "/v1/requests",
        json={"text": "hi", "conversation_id": "c-42"},
        headers={**AUTH_A, "traceparent": "garbage"},
    )
    assert reply.status_code == 202
    assert reply.json()["conversation_id"] == "c-42"
    assert bus.events()[0].traceparent is None


@pytest.mark.parametrize("failure", ["raise", "hang"])
async def test_broker_failure_is_503_refused_for_good(
    client: httpx.AsyncClient, bus: RecordingBus, store: InProcessStore, failure: str
) -> None:
    if failure == "raise":
        bus.fail = RetryableError("broker unreachable")
    else:
        bus.hang = True
    headers = {**AUTH_A, "Idempotency-Key": "k-1"}
    started = time.monotonic()
    reply = await client.post("/v1/requests", json={"text": "hi"}, headers=headers)
    # Unacknowledged, the record may still land: the 503 waits until the broker's clock is
    # surely past the deadline (publish_timeout_s 0.3 plus the clock margin).
    assert time.monotonic() - started >= 0.3 + CLOCK_MARGIN_S - 0.05
    assert reply.status_code == 503
    assert int(reply.headers["retry-after"]) >= 1
    body = reply.json()
    assert body["error"] == "unavailable"
    assert body["retry_safe"] is True
    assert "never run" in body["message"]
    assert bus.published == []
    # GET says what the 503 said, and the stream ends with it.
    refused = await client.get(f"/v1/requests/{body['request_id']}", headers=AUTH_A)
    assert refused.status_code == 200
    assert refused.json()["status"] == "refused"
    async with client.stream(
        "GET", f"/v1/requests/{body['request_id']}/events", headers=AUTH_A
    ) as stream:
        text = (await stream.aread()).decode()
    assert "event: refused" in text
    # The same key works once the broker is back, as a request of its own (new ids).
    bus.fail, bus.hang = None, False
    again = await client.post("/v1/requests", json={"text": "hi"}, headers=headers)
    assert again.status_code == 202
    assert again.json()["request_id"] != body["request_id"]
    assert [decode(r.value).request_id for r in bus.published] == [again.json()["request_id"]]
    # ... and stays that one request.
    replay = await client.post("/v1/requests", json={"text": "hi"}, headers=headers)
    assert replay.json()["request_id"] == again.json()["request_id"]
    assert len(bus.published) == 1
    still = await client.get(f"/v1/requests/{body['request_id']}", headers=AUTH_A)
    assert still.json()["status"] == "refused"


async def test_an_ack_after_the_deadline_is_a_503(
    client: httpx.AsyncClient, bus: RecordingBus
) -> None:
    """The broker appended the record, but after its accept-by deadline: every consumer
    will refuse it, so the ingress answers 503 too, at once."""
    bus.append_delay_ms = 400  # publish_timeout_s is 0.3
    reply = await client.post("/v1/requests", json={"text": "late"}, headers=AUTH_A)
    assert reply.status_code == 503
    assert reply.json()["retry_safe"] is True
    [record] = bus.published
    deadline = accept_by(record.headers)
    assert deadline is not None
    late = Record("t", 0, 0, record.key, record.value, record.headers, deadline + 1)
    assert landed_late(late)
    assert not landed_late(dataclasses.replace(late, timestamp_ms=deadline))
    status = await client.get(f"/v1/requests/{reply.json()['request_id']}", headers=AUTH_A)
    assert status.json()["status"] == "refused"
    bus.append_delay_ms = 0
    assert (
        await client.post("/v1/requests", json={"text": "x"}, headers=AUTH_A)
    ).status_code == 202


async def test_a_refusal_by_the_broker_is_answered_at_once(
    client: httpx.AsyncClient, bus: RecordingBus
) -> None:
    """A permanent error means the broker refused the record: it cannot land later, so
    there is nothing to wait for."""
    bus.fail = RecordTooLarge("too large")
    started = time.monotonic()
    reply = await client.post("/v1/requests", json={"text": "hi"}, headers=AUTH_A)
    assert reply.status_code == 503
    assert time.monotonic() - started < 0.3


async def test_without_append_times_a_503_is_not_retry_safe(
    client: httpx.AsyncClient, bus: RecordingBus
) -> None:
    """A ``CreateTime`` topic: acknowledgements are accepted as before, and a 503 says
    that it cannot promise the request never runs."""
    bus.append_time, bus.append_delay_ms = False, 10_000
    assert (
        await client.post("/v1/requests", json={"text": "a"}, headers=AUTH_A)
    ).status_code == 202
    bus.fail = RetryableError("broker unreachable")
    reply = await client.post("/v1/requests", json={"text": "b"}, headers=AUTH_A)
    assert reply.status_code == 503
    assert reply.json()["retry_safe"] is False


# -- idempotency --------------------------------------------------------------------------


async def test_same_idempotency_key_same_body_is_the_same_request(
    client: httpx.AsyncClient, bus: RecordingBus
) -> None:
    headers = {**AUTH_A, "Idempotency-Key": "order-7"}
    first = await client.post("/v1/requests", json={"text": "hi", "max_steps": 3}, headers=headers)
    second = await client.post(
        "/v1/requests",
        content=b'{"max_steps": 3, "text": "hi"}',
        headers={**headers, "content-type": "application/json"},
    )
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert len(bus.published) == 1
    conflict = await client.post("/v1/requests", json={"text": "other"}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "conflict"
    assert len(bus.published) == 1
    # Keys are per tenant: another tenant's identical key is another request.
    other = await client.post(
        "/v1/requests",
        json={"text": "hi", "max_steps": 3},
        headers={**AUTH_B, "Idempotency-Key": "order-7"},
    )
    assert other.status_code == 202
    assert other.json()["request_id"] != first.json()["request_id"]


async def test_concurrent_identical_posts_publish_once(
    client: httpx.AsyncClient, bus: RecordingBus
) -> None:
    headers = {**AUTH_A, "Idempotency-Key": "race"}
    replies = await asyncio.gather(
        *(client.post("/v1/requests", json={"text": "hi"}, headers=headers) for _ in range(8))
    )
    assert {r.status_code for r in replies} == {202}
    assert len({r.json()["request_id"] for r in replies}) == 1
    assert len(bus.published) == 1


# -- auth and limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY_A}"}],
)
async def test_401_without_a_known_key(
    client: httpx.AsyncClient, bus: RecordingBus, headers: dict[str, str]
) -> None:
    reply = await client.post("/v1/requests", json={"text": "hi"}, headers=headers)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["error"] == "unauthorized"
    assert bus.published == []


async def test_sha256_configured_key_authenticates(client: httpx.AsyncClient) -> None:
    reply = await client.post("/v1/requests", json={"text": "hi"}, headers=AUTH_B)
    assert reply.status_code == 202


async def test_tenant_sees_only_its_own(client: httpx.AsyncClient, store: InProcessStore) -> None:
    reply = await client.post(
        "/v1/requests", json={"text": "hi", "conversation_id": "shared-name"}, headers=AUTH_A
    )
    request_id = reply.json()["request_id"]
    for path in (
        f"/v1/requests/{request_id}",
        f"/v1/requests/{request_id}/events",
        "/v1/conversations/shared-name",
    ):
        assert (await client.get(path, headers=AUTH_B)).status_code == 404, path
    assert (await client.get("/v1/conversations/shared-name", headers=AUTH_A)).status_code == 200
    assert (await client.get("/v1/requests/nope", headers=AUTH_A)).status_code == 404


async def test_413_before_the_body_is_read(client: httpx.AsyncClient, bus: RecordingBus) -> None:
    big = json.dumps({"text": "x" * 300_000}).encode()
    reply = await client.post("/v1/requests", content=big, headers=AUTH_A)
    assert reply.status_code == 413
    assert reply.json()["error"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"text": "'
        for _ in range(40):
            yield b"y" * 10_000
        yield b'"}'

    streamed = await client.post("/v1/requests", content=chunks(), headers=AUTH_A)
    assert streamed.status_code == 413
    assert bus.published == []


async def test_422_names_the_fields(client: httpx.AsyncClient, bus: RecordingBus) -> None:
    reply = await client.post(
        "/v1/requests",
        json={"text": "", "max_steps": 0, "surprise": 1, "conversation_id": "bad id"},
        headers=AUTH_A,
    )
    assert reply.status_code == 422
    body = reply.json()
    assert body["error"] == "validation_error"
    locs = {tuple(d["loc"]) for d in body["detail"]}
    assert {
        ("body", "text"),
        ("body", "max_steps"),
        ("body", "surprise"),
        ("body", "conversation_id"),
    } <= locs
    for name in ("text", "max_steps", "surprise", "conversation_id"):
        assert name in body["message"]
    bad_json = await client.post(
        "/v1/requests", content=b"{nope", headers={**AUTH_A, "content-type": "application/json"}
    )
    assert bad_json.status_code == 422
    assert bus.published == []


async def test_an_undeclared_agent_is_a_422_and_a_declared_one_is_published(
    client: httpx.AsyncClient, bus: RecordingBus
) -> None:
    reply = await client.post(
        "/v1/requests", json={"text": "hi", "agent": "billing"}, headers=AUTH_A
    )
    assert reply.status_code == 422
    body = reply.json()
    assert [tuple(d["loc"]) for d in body["detail"]] == [("body", "agent")]
    assert "Unknown agent 'billing' (declared: assistant)" in body["message"]
    malformed = await client.post(
        "/v1/requests", json={"text": "hi", "agent": "Not A Name"}, headers=AUTH_A
    )
    assert malformed.status_code == 422
    assert bus.published == []
    ok = await client.post(
        "/v1/requests", json={"text": "hi", "agent": "assistant"}, headers=AUTH_A
    )
    assert ok.status_code == 202
    [record] = bus.published
    assert json.loads(record.value)["data"]["agent"] == "assistant"
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]
    agent = schema["CreateRequest"]["properties"]["agent"]
    assert agent["anyOf"][0]["enum"] == ["assistant"]


async def test_429_with_retry_after(bus: RecordingBus, store: InProcessStore) -> None:
    app = create_app(settings(rate_per_second=0.5, rate_burst=2), bus, store, IngressMetrics())  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingress"
    ) as client:
        codes = [
            (await client.post("/v1/requests", json={"text": "hi"}, headers=AUTH_A)).status_code
            for _ in range(3)
        ]
        assert codes == [202, 202, 429]
        limited = await client.post("/v1/requests", json={"text": "hi"}, headers=AUTH_A)
        assert limited.headers["retry-after"] == "2"
        assert limited.json()["error"] == "rate_limited"
        # Another key has its own bucket.
        assert (
            await client.post("/v1/requests", json={"text": "hi"}, headers=AUTH_B)
        ).status_code == 202
    assert len(bus.published) == 3


# -- waiting and streaming ----------------------------------------------------------------


async def test_wait_returns_200_with_the_response(
    client: httpx.AsyncClient, bus: RecordingBus, store: InProcessStore
) -> None:
    async def answer_soon() -> None:
        while not bus.published:
            await asyncio.sleep(0.01)
        request = bus.events()[0]
        assert isinstance(request, UserRequest)
        await asyncio.sleep(0.1)
        for event in progress(request):
            await project(store, event)

    helper = asyncio.create_task(answer_soon())
    reply = await client.post("/v1/requests?wait=3", json={"text": "12*7"}, headers=AUTH_A)
    await helper
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "completed"
    assert body["response"]["text"] == "84"


async def test_wait_times_out_with_202(client: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await client.post(
        "/v1/requests", json={"text": "hi"}, headers={**AUTH_A, "Prefer": "wait=0.3"}
    )
    assert reply.status_code == 202
    assert 0.25 <= loop.time() - started < 2


async def test_sse_streams_progress_then_response_and_resumes(
    client: httpx.AsyncClient, bus: RecordingBus, store: InProcessStore
) -> None:
    reply = await client.post("/v1/requests", json={"text": "12*7"}, headers=AUTH_A)
    request_id = reply.json()["request_id"]
    request = bus.events()[0]
    assert isinstance(request, UserRequest)
    for event in progress(request):
        await project(store, event)
    # A replayed tool result appended twice must still be streamed once.
    await store.append(
        ProjectionKeys(Settings(topics=TopicSettings(prefix=PREFIX)).namespace).log(request_id),
        (
            await store.list_range(
                ProjectionKeys(Settings(topics=TopicSettings(prefix=PREFIX)).namespace).log(
                    request_id
                ),
                1,
                1,
            )
        )[0],
    )
    stream = await client.get(f"/v1/requests/{request_id}/events", headers=AUTH_A)
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(stream.text)
    assert [(e["id"], e["event"]) for e in events] == [
        ("0", "tool_call"),
        ("1", "tool_result"),
        ("2", "response"),
    ]
    assert json.loads(events[2]["data"])["data"]["text"] == "84"
    resumed = await client.get(
        f"/v1/requests/{request_id}/events", headers={**AUTH_A, "Last-Event-ID": "0"}
    )
    assert [e["id"] for e in parse_sse(resumed.text)] == ["1", "2"]
    done = await client.get(
        f"/v1/requests/{request_id}/events", headers={**AUTH_A, "Last-Event-ID": "2"}
    )
    assert parse_sse(done.text) == []
    conversation = await client.get(
        f"/v1/conversations/{reply.json()['conversation_id']}", headers=AUTH_A
    )
    assert conversation.json()["turns"] == [
        {
            "request_id": request_id,
            "status": "completed",
            "text": "12*7",
            "answer": "84",
            "created_at": conversation.json()["turns"][0]["created_at"],
        }
    ]


def parse_sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ": " not in line:
                continue
            name, value = line.split(": ", 1)
            fields[name] = value
        if "id" in fields:
            events.append(fields)
    return events


# -- operations ---------------------------------------------------------------------------


async def test_health_ready_metrics(client: httpx.AsyncClient, bus: RecordingBus) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    bus.topics = {f"{PREFIX}user_request"}
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert "agent_response" in not_ready.json()["checks"]["topics"]
    await client.post("/v1/requests", json={"text": "hi"}, headers=AUTH_A)
    text = (await client.get("/metrics")).text
    assert 'agentstream_http_requests_total{route="/v1/requests",status="202"} 1.0' in text
    assert f'agentstream_events_produced_total{{topic="{PREFIX}user_request"}} 1.0' in text


def test_wait_and_traceparent_parsing() -> None:
    assert wait_seconds(None, None, 10) is None
    assert wait_seconds(3, "wait=9", 10) == 3
    assert wait_seconds(None, "respond-async, wait=7", 5) == 5
    assert wait_seconds(None, "return=minimal", 5) is None
    assert valid_traceparent(TRACEPARENT) == TRACEPARENT
    assert valid_traceparent("00-" + "0" * 32 + "-00f067aa0ba902b7-01") is None
    assert valid_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") is None


# -- the whole ingress on the in-process bus ----------------------------------------------


async def test_in_process_bus_end_to_end() -> None:
    """POST, the projection worker consuming the bus, progress, SSE and conversation."""
    config = settings(poll_interval_s=0.01)
    bus, store, metrics = InProcessBus(default_partitions=3), InProcessStore(), CollectorRegistry()
    await bus.start()
    await ensure_topics(bus, config.catalog(), create=True)
    recorded = RecentlyRecorded()
    worker = projection_worker(config, bus, store, RuntimeMetrics(metrics), recorded=recorded)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    app = create_app(config, bus, store, IngressMetrics(metrics), recorded=recorded)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingress"
        ) as client:
            body = (await client.post("/v1/requests", json={"text": "12*7"}, headers=AUTH_A)).json()
            [record] = await bus.read(f"{PREFIX}user_request")
            request = decode(record.value)
            assert isinstance(request, UserRequest)
            assert request.request_id == body["request_id"]
            # The projection took the request the app recorded (nothing left to write).
            for _ in range(500):
                if not recorded:
                    break
                await asyncio.sleep(0.01)
            assert len(recorded) == 0
            catalog = config.catalog()
            for event in progress(request):
                key, value, headers = encode(event)
                await bus.publish(
                    OutgoingRecord(catalog.topic_of(event), value, key, tuple(headers))
                )
            done = await client.get(f"/v1/requests/{body['request_id']}?wait=5", headers=AUTH_A)
            assert done.json()["status"] == "completed"
            stream = await client.get(f"/v1/requests/{body['request_id']}/events", headers=AUTH_A)
            assert [e["event"] for e in parse_sse(stream.text)] == [
                "tool_call",
                "tool_result",
                "response",
            ]
    finally:
        stop.set()
        await running
        await bus.stop()
    # The app's metrics and the projection worker's, on the one registry given to both.
    request_topic = {"topic": f"{PREFIX}user_request"}
    assert metrics.get_sample_value("agentstream_events_produced_total", request_topic) == 1.0
    group = {**request_topic, "group": f"{PREFIX}ingress-projection"}
    assert metrics.get_sample_value("agentstream_events_consumed_total", group) == 1.0
    route = {"route": "/v1/requests", "status": "202"}
    assert metrics.get_sample_value("agentstream_http_requests_total", route) == 1.0
    assert metrics.get_sample_value("agentstream_ingress_streams") == 0.0
