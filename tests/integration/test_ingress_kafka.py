"""The ingress served by uvicorn on loopback, on a real Kafka broker and a real Redis.

A real HTTP client (httpx) talks to it. Progress of a request is fed by publishing
``tool_call``/``tool_result``/``agent_response`` events for it straight to the topics: the
projection running inside the ingress picks them up (no agent worker needed). After every
rejected request, the ``user_request`` topic is read back to check nothing was published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from agentstream.handlers.stores.base import Delete
from agentstream.handlers.stores.redis_store import RedisStore
from agentstream.ingress import IngressServer
from agentstream.ingress.create import CLOCK_MARGIN_S
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    Envelope,
    RetryableError,
    ToolCall,
    ToolCallData,
    ToolResult,
    ToolResultData,
    decode,
    derive_id,
    encode,
)
from agentstream.settings import IngressSettings, Settings, TopicSettings
from agentstream.topics import KafkaConfig, OutgoingRecord, Topic
from agentstream.topics.kafka import KafkaBus
from agentstream.wiring import ensure_topics

from tests.pipeline_harness import Stack, running, wait_for
from tests.services import KafkaFactory

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

KEY_A, KEY_B = "acme-key", "globex-key"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
WORKERS: tuple[str, ...] = ("agent", "tool", "memory", "stats")


@dataclass
class Ingress:
    url: str
    settings: Settings
    bus: KafkaBus
    store: RedisStore
    redis_url: str

    @property
    def request_topic(self) -> str:
        return self.settings.catalog().name(Topic.USER_REQUEST)

    async def published_requests(self) -> list[Envelope[Any]]:
        """Every record of the user_request topic, read by a fresh client."""
        reader = KafkaBus(self.settings.kafka)
        await reader.start()
        try:
            return [decode(r.value) for r in await reader.read(self.request_topic)]
        finally:
            await reader.stop()

    async def request_records(self) -> list[bytes]:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            keys: list[bytes] = await client.keys(f"{self.settings.namespace}:ingress:request:*")
            return keys
        finally:
            await client.aclose()

    async def feed(self, *events: Envelope[Any]) -> None:
        """Publish events straight to their topics, as the agent and tool workers would."""
        catalog = self.settings.catalog()
        for event in events:
            key, value, headers = encode(event)
            await self.bus.publish(
                OutgoingRecord(catalog.topic_of(event), value, key, tuple(headers))
            )


def make_settings(prefix: str, bootstrap: str, redis_url: str, **ingress: Any) -> Settings:
    options: dict[str, Any] = {
        "port": 0,
        "api_keys": {KEY_A: "acme", KEY_B: "globex"},
        "rate_per_second": 1000.0,
        "rate_burst": 1000,
        "max_wait_s": 20.0,
        "publish_timeout_s": 10.0,
        "heartbeat_s": 0.5,
    }
    options.update(ingress)
    return Settings(
        bus="kafka",
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        redis_url=redis_url,
        topics=TopicSettings(prefix=prefix, partitions=3),
        ingress=IngressSettings(**options),
    )


@contextlib.asynccontextmanager
async def running_ingress(settings: Settings, redis_url: str) -> AsyncIterator[Ingress]:
    bus = KafkaBus(settings.kafka)
    await bus.start()
    store = RedisStore(redis_url)
    await ensure_topics(bus, settings.catalog(), create=True)
    server = IngressServer(settings, bus, store)
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        yield Ingress(f"http://127.0.0.1:{server.port}", settings, bus, store, redis_url)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await bus.stop()
        await store.close()


@pytest.fixture
async def ingress(kafka_bootstrap: str, redis_url: str, prefix: str) -> AsyncIterator[Ingress]:
    settings = make_settings(prefix, kafka_bootstrap, redis_url)
    async with running_ingress(settings, redis_url) as running:
        yield running


def progress_events(
    body: dict[str, Any], tenant: str, count: int, *, final: bool
) -> list[Envelope[Any]]:
    """``count`` tool call/result pairs of the request ``body`` describes, then maybe the end."""
    common = {
        "request_id": body["request_id"],
        "conversation_id": body["conversation_id"],
        "tenant": tenant,
    }
    events: list[Envelope[Any]] = []
    for step in range(count):
        call = ToolCall(
            id=f"{body['request_id']}-call-{step}",
            source="agent-worker",
            data=ToolCallData(call_id=f"c{step}", step=step, tool="calculator"),
            **common,
        )
        result = ToolResult(
            id=f"{body['request_id']}-result-{step}",
            source="tool-worker",
            causation_id=call.id,
            data=ToolResultData(
                call_id=f"c{step}", step=step, tool="calculator", ok=True, output=step
            ),
            **common,
        )
        events += [call, result]
    if final:
        events.append(
            AgentResponse(
                id=f"{body['request_id']}-response",
                source="agent-worker",
                data=AgentResponseData(
                    status="completed", text="84", steps=count, tool_calls=["calculator"] * count
                ),
                **common,
            )
        )
    return events


async def read_sse(response: httpx.Response, limit: int | None = None) -> list[dict[str, Any]]:
    """Events of an open SSE response, up to ``limit`` (None: until the server ends it)."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "id" in fields:
                events.append(
                    {
                        "id": int(fields["id"]),
                        "event": fields["event"],
                        "data": json.loads(fields["data"]),
                    }
                )
                if limit is not None and len(events) >= limit:
                    return events
            fields = {}
        elif not line.startswith(":") and ": " in line:
            name, value = line.split(": ", 1)
            fields[name] = value
    return events


# -- accepted means durable ---------------------------------------------------------------


async def test_202_after_ack_then_503_when_the_broker_is_down(
    private_kafka: KafkaFactory, redis_url: str, prefix: str
) -> None:
    broker = private_kafka()
    settings = make_settings(prefix, broker.bootstrap, redis_url, publish_timeout_s=4.0)
    # Batches the broker never acknowledges expire inside the publish timeout here, so
    # nothing lands later (the freeze test below lets it land, and shows it refused).
    settings.kafka = KafkaConfig(
        bootstrap_servers=broker.bootstrap, request_timeout_ms=2_000, delivery_timeout_ms=3_000
    )
    async with (
        running_ingress(settings, redis_url) as ingress,
        httpx.AsyncClient(base_url=ingress.url, timeout=30) as client,
    ):
        accepted = await client.post("/v1/requests", json={"text": "first"}, headers=AUTH_A)
        assert accepted.status_code == 202
        [event] = await ingress.published_requests()  # on the topic when the 202 came
        assert event.request_id == accepted.json()["request_id"]
        assert len(await ingress.request_records()) == 1

        broker.stop()
        refused = await client.post(
            "/v1/requests",
            json={"text": "second"},
            headers={**AUTH_A, "Idempotency-Key": "while-down"},
        )
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["retry_safe"] is True
        # The refused request is on record as such (and never runs).
        assert len(await ingress.request_records()) == 2
        status = await client.get(f"/v1/requests/{refused.json()['request_id']}", headers=AUTH_A)
        assert status.json()["status"] == "refused"
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["broker"] != "ok"

        broker.restart()
        # The idempotency key was released: the same post is accepted now, as a request of
        # its own (the refused one never runs, so the two are never conflated).
        for _ in range(60):
            again = await client.post(
                "/v1/requests",
                json={"text": "second"},
                headers={**AUTH_A, "Idempotency-Key": "while-down"},
            )
            if again.status_code == 202:
                break
            await asyncio.sleep(0.5)
        assert again.status_code == 202
        assert again.json()["request_id"] != refused.json()["request_id"]
        # The two requests have different conversations, so they may sit on different
        # partitions: compare as a set, not by position.
        published = await ingress.published_requests()
        assert [e.id for e in published if e.data.text == "first"] == [event.id]
        seconds = {e.request_id for e in published if e.data.text == "second"}
        assert again.json()["request_id"] in seconds
        assert seconds <= {again.json()["request_id"], refused.json()["request_id"]}


async def post_until_accepted(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """POST (waiting up to 30 s for the answer) until it is not a 503: a 503 never runs, so
    retrying it is safe (and with a key, each retry after a 503 is a new request)."""
    for _ in range(10):
        reply = await client.post("/v1/requests?wait=30", json=body, headers=headers)
        if reply.status_code != 503:
            return reply
    return reply


async def test_a_503_is_never_processed_even_when_its_record_lands_later(
    private_kafka: KafkaFactory, redis_url: str, prefix: str
) -> None:
    """Issue 14 item 3. The broker is frozen (SIGSTOP) longer than the publish timeout:
    the posts get 503, their records stay in the producer's hands and land once the broker
    is thawed. No consumer group runs them (no response, no dedup mark in the agent, memory
    and stats groups), GET says ``refused`` (the projection records it even when the
    ingress's own record is gone), and a retry with the same Idempotency-Key is a request
    of its own that runs once."""
    broker = private_kafka()
    settings = make_settings(prefix, broker.bootstrap, redis_url, publish_timeout_s=2.0)
    settings.kafka = KafkaConfig(
        bootstrap_servers=broker.bootstrap, session_timeout_ms=30_000, request_timeout_ms=30_000
    )
    conversation = "frozen-conversation"  # one partition, one lane: the late records first
    async with (
        running_ingress(settings, redis_url) as ingress,
        running(Stack(settings, ingress.bus, ingress.store), WORKERS),
        httpx.AsyncClient(base_url=ingress.url, timeout=60) as client,
    ):
        # (A fresh broker on a busy machine may miss the short timeout at first.)
        warm = await post_until_accepted(
            client, {"text": "warm up", "conversation_id": conversation}, AUTH_A
        )
        assert warm.status_code == 200, warm.text

        broker.pause()
        try:
            started = time.monotonic()
            keyed, bare = await asyncio.gather(
                client.post(
                    "/v1/requests",
                    json={"text": "keyed", "conversation_id": conversation},
                    headers={**AUTH_A, "Idempotency-Key": "frozen"},
                ),
                client.post(
                    "/v1/requests",
                    json={"text": "bare", "conversation_id": conversation},
                    headers=AUTH_A,
                ),
            )
            answered = time.monotonic() - started
            for reply in (keyed, bare):
                assert reply.status_code == 503, reply.text
                assert reply.json()["retry_safe"] is True
                assert int(reply.headers["retry-after"]) >= 1
            assert 2.0 + CLOCK_MARGIN_S - 0.1 <= answered < 10
            refused = {keyed.json()["request_id"], bare.json()["request_id"]}
            for request_id in refused:
                status = await client.get(f"/v1/requests/{request_id}", headers=AUTH_A)
                assert status.json()["status"] == "refused"
            # Forget the ingress's own record of one: the projection must find out by itself.
            await ingress.store.commit(
                expect={},
                ops=[Delete(f"{settings.namespace}:ingress:request:{bare.json()['request_id']}")],
            )
            await asyncio.sleep(3.0)  # frozen for about 6 s in all
        finally:
            broker.resume()

        async def landed() -> bool:
            try:
                published = await ingress.published_requests()
            except RetryableError:  # the thawed broker may not answer at once
                return False
            return refused <= {e.request_id for e in published}

        await wait_for(landed, timeout_s=60)  # the producer delivered them after the thaw

        async def projected() -> bool:
            reply = await client.get(f"/v1/requests/{bare.json()['request_id']}", headers=AUTH_A)
            return reply.status_code == 200 and reply.json()["status"] == "refused"

        await wait_for(projected, timeout_s=60)

        retry = await post_until_accepted(
            client,
            {"text": "keyed", "conversation_id": conversation},
            {**AUTH_A, "Idempotency-Key": "frozen"},
        )
        assert retry.status_code == 200, retry.text
        assert retry.json()["status"] == "completed"
        assert retry.json()["request_id"] not in refused
        same = await client.post(
            "/v1/requests",
            json={"text": "keyed", "conversation_id": conversation},
            headers={**AUTH_A, "Idempotency-Key": "frozen"},
        )
        assert same.json()["request_id"] == retry.json()["request_id"]

        # Every group handled the retry, which follows the late records in the same lane.
        marks = {
            kind: f"{settings.namespace}:done:{prefix}agentstream-{kind}:"
            for kind in ("router", "memory", "stats")
        }
        retry_event = derive_id(retry.json()["request_id"], "user_request")

        async def all_handled() -> bool:
            found = [await ingress.store.fetch(m + retry_event) for m in marks.values()]
            return all(f is not None for f in found)

        await wait_for(all_handled, timeout_s=60)
        for kind, mark in marks.items():
            for request_id in refused:
                late_event = derive_id(request_id, "user_request")
                assert await ingress.store.fetch(mark + late_event) is None, kind
        responses = await Stack(settings, ingress.bus, ingress.store).responses()
        assert not refused & set(responses)
        assert len(responses[retry.json()["request_id"]]) == 1
        for request_id in refused:
            status = await client.get(f"/v1/requests/{request_id}", headers=AUTH_A)
            assert status.json()["status"] == "refused"


async def test_idempotency_key_publishes_once(ingress: Ingress) -> None:
    async with httpx.AsyncClient(base_url=ingress.url, timeout=30) as client:
        headers = {**AUTH_A, "Idempotency-Key": "order-1"}
        first, second = await asyncio.gather(
            client.post("/v1/requests", json={"text": "hi"}, headers=headers),
            client.post("/v1/requests", json={"text": "hi"}, headers=headers),
        )
        third = await client.post("/v1/requests", json={"text": "hi"}, headers=headers)
        assert first.status_code == second.status_code == third.status_code == 202
        assert first.json() == second.json() == third.json()
        conflict = await client.post("/v1/requests", json={"text": "bye"}, headers=headers)
        assert conflict.status_code == 409
    published = await ingress.published_requests()
    assert [e.request_id for e in published] == [first.json()["request_id"]]


# -- rejections ---------------------------------------------------------------------------


async def test_rejected_requests_publish_nothing(
    kafka_bootstrap: str, redis_url: str, prefix: str
) -> None:
    settings = make_settings(
        prefix,
        kafka_bootstrap,
        redis_url,
        rate_per_second=0.001,
        rate_burst=3,
        max_body_bytes=4096,
    )
    async with (
        running_ingress(settings, redis_url) as ingress,
        httpx.AsyncClient(base_url=ingress.url, timeout=30) as client,
    ):
        accepted = await client.post("/v1/requests", json={"text": "mine"}, headers=AUTH_A)
        assert accepted.status_code == 202
        request_id = accepted.json()["request_id"]

        # 401: no key, unknown key
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = await client.post("/v1/requests", json={"text": "x"}, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
        # 404: another tenant's request
        assert (await client.get(f"/v1/requests/{request_id}", headers=AUTH_B)).status_code == 404
        # 413: declared and streamed bodies over the limit
        big = json.dumps({"text": "x" * 10_000})
        assert (await client.post("/v1/requests", content=big, headers=AUTH_A)).status_code == 413

        async def chunked() -> AsyncIterator[bytes]:
            yield b'{"text": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        assert (
            await client.post("/v1/requests", content=chunked(), headers=AUTH_A)
        ).status_code == 413
        # 422: schema
        invalid = await client.post("/v1/requests", json={"text": ""}, headers=AUTH_B)
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["loc"] == ["body", "text"]
        # 429: globex spent its burst of 3 (the 404 and the 422 above, then this one)
        assert (await client.post("/v1/requests", json={}, headers=AUTH_B)).status_code == 422
        limited = await client.post("/v1/requests", json={"text": "y"}, headers=AUTH_B)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1

    assert [e.request_id for e in await ingress.published_requests()] == [request_id]


# -- answers ------------------------------------------------------------------------------


async def test_wait_status_and_conversation(ingress: Ingress) -> None:
    async with httpx.AsyncClient(base_url=ingress.url, timeout=30) as client:
        first = await client.post("/v1/requests", json={"text": "12*7"}, headers=AUTH_A)
        body = first.json()
        await ingress.feed(*progress_events(body, "acme", 1, final=True))
        status = await client.get(f"/v1/requests/{body['request_id']}?wait=20", headers=AUTH_A)
        assert status.json()["status"] == "completed"
        assert status.json()["response"]["text"] == "84"

        async def answer_later() -> None:
            while True:
                records = await ingress.published_requests()
                if len(records) == 2:
                    break
                await asyncio.sleep(0.2)
            second_body = {
                "request_id": records[1].request_id,
                "conversation_id": records[1].conversation_id,
            }
            await ingress.feed(*progress_events(second_body, "acme", 0, final=True))

        helper = asyncio.create_task(answer_later())
        waited = await client.post(
            "/v1/requests",
            json={"text": "and again", "conversation_id": body["conversation_id"]},
            headers={**AUTH_A, "Prefer": "wait=20"},
        )
        await helper
        assert waited.status_code == 200, waited.text
        assert waited.json()["response"]["status"] == "completed"

        turns = (
            await client.get(f"/v1/conversations/{body['conversation_id']}", headers=AUTH_A)
        ).json()["turns"]
        assert [(t["text"], t["status"], t["answer"]) for t in turns] == [
            ("12*7", "completed", "84"),
            ("and again", "completed", "84"),
        ]
        assert (
            await client.get(f"/v1/conversations/{body['conversation_id']}", headers=AUTH_B)
        ).status_code == 404


async def test_sse_resumes_after_a_dropped_connection(ingress: Ingress) -> None:
    async with httpx.AsyncClient(base_url=ingress.url, timeout=30) as client:
        body = (await client.post("/v1/requests", json={"text": "go"}, headers=AUTH_A)).json()
        events = progress_events(body, "acme", 3, final=True)
        url = f"/v1/requests/{body['request_id']}/events"
        await ingress.feed(*events[:2])
        async with client.stream("GET", url, headers=AUTH_A) as first:
            assert first.headers["content-type"].startswith("text/event-stream")
            received = await read_sse(first, limit=1)
        # The connection is gone; more happens meanwhile.
        await ingress.feed(*events[2:4])
        await asyncio.sleep(0.5)
        async with client.stream(
            "GET", url, headers={**AUTH_A, "Last-Event-ID": str(received[-1]["id"])}
        ) as second:
            received += await read_sse(second, limit=2)
        await ingress.feed(*events[4:])
        async with client.stream(
            "GET", url, headers={**AUTH_A, "Last-Event-ID": str(received[-1]["id"])}
        ) as third:
            received += await read_sse(third)  # to the end: the server closes after response

    assert [e["id"] for e in received] == list(range(len(events)))
    assert [e["data"]["event_id"] for e in received] == [e.id for e in events]
    assert received[-1]["event"] == "response"
    assert received[-1]["data"]["data"]["text"] == "84"
