"""9. Duplicate input: one response per request, whatever was sent twice.

At the ingress: every request is posted twice with its ``Idempotency-Key`` (one after the
other, at the same time, or again once it was answered); both posts name the same request,
exactly one ``user_request`` reaches Kafka, and the request gets one answer.

On Kafka: every ``user_request`` is produced twice, either as the very same event (same
id, as a producer retry would) or as the same request under a new event id (as a client
retry through another path would), right after the first or after all the others. The
runtime's dedup by event id and the agent's by request id leave one distinct answer each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter

import httpx
import pytest
from agentstream.handlers.stores.redis_store import RedisStore
from agentstream.ingress import IngressServer
from agentstream.schemas import UserRequest, decode, new_id
from agentstream.settings import IngressSettings
from agentstream.topics import Topic

from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.workload import Turn, make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

API_KEY = "chaos-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_the_same_idempotency_key_posted_twice_to_the_ingress(
    kafka_bootstrap: str, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    c = await cluster(kafka_bootstrap, redis_url)
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    settings = c.settings.model_copy(
        update={
            "ingress": IngressSettings(
                port=0,
                api_keys={API_KEY: "chaos"},
                rate_per_second=10_000,
                rate_burst=10_000,
                max_wait_s=20,
            )
        }
    )
    store = RedisStore(redis_url)
    server = IngressServer(settings, c.bus, store)
    ready = asyncio.Event()
    serving = asyncio.create_task(server.run(ready))
    conflicts = Counter[str]()
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await c.ready()
        turns = make_turns(50)
        timeline = Timeline()
        accepted: dict[str, str] = {}  # turn's own id -> the ingress's request id
        late: list[Turn] = []
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", timeout=30
        ) as client:

            async def post(turn: Turn) -> str:
                body = {
                    "text": turn.text,
                    "conversation_id": turn.conversation_id,
                    "user": f"user-{turn.conversation_id}",
                }
                headers = {**AUTH, "Idempotency-Key": f"key-{turn.request_id}"}
                for _ in range(50):
                    response = await client.post("/v1/requests", json=body, headers=headers)
                    if response.status_code == 409:  # the first use is still in flight
                        conflicts["409"] += 1
                        await asyncio.sleep(0.1)
                        continue
                    assert response.status_code in (200, 202), response.text
                    return str(response.json()["request_id"])
                raise AssertionError(f"key-{turn.request_id} stayed in conflict")

            async def twice(turn: Turn, n: int) -> None:
                if n % 3 == 0:
                    first = await post(turn)
                    second = await post(turn)
                elif n % 3 == 1:
                    first, second = await asyncio.gather(post(turn), post(turn))
                else:
                    first = second = await post(turn)
                    late.append(turn)
                assert first == second, (turn, first, second)
                accepted[turn.request_id] = first

            # Turn by turn, so each conversation's requests are accepted in order.
            for index in range(4):
                wave = [t for t in turns if t.index == index]
                await asyncio.gather(*(twice(t, n) for n, t in enumerate(wave)))
            sent = [dataclasses.replace(t, request_id=accepted[t.request_id]) for t in turns]
            responses = await c.collect(sent, timeout_s=120)
            # Posted again once answered: the same request, no new event.
            again = await asyncio.gather(*(post(t) for t in late))
            assert again == [accepted[t.request_id] for t in late]
            view = await client.get(f"/v1/requests/{sent[-1].request_id}", headers=AUTH)
            assert view.status_code == 200, view.text
            assert view.json()["status"] == "completed", view.text
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await store.close()
    published = Counter(
        e.request_id
        for r in await c.read(c.catalog.name(Topic.USER_REQUEST))
        if isinstance(e := decode(r.value), UserRequest)
    )
    report = await verify(c, c.catalog, sent, responses=responses)
    posts = 2 * len(turns) + len(late)
    record_result(
        "duplicate-idempotency-key-ingress",
        report,
        timeline,
        {"posts": posts, "in_flight_409": conflicts["409"]},
    )
    assert report.ok, report.describe() + c.tails()
    assert len(set(accepted.values())) == len(turns)
    twice_published = {rid: n for rid, n in published.items() if n != 1}
    assert not twice_published, f"requests published more than once: {twice_published}"
    assert set(published) == {t.request_id for t in sent}


async def test_the_same_user_request_produced_twice_to_kafka(
    kafka_bootstrap: str, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    c = await cluster(kafka_bootstrap, redis_url, AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.05")
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    conversations = sorted({t.conversation_id for t in turns})
    timeline = Timeline()
    now: list[UserRequest] = []
    later: list[UserRequest] = []
    kinds = Counter[str]()
    for turn in turns:
        event = turn.event()
        same_id = conversations.index(turn.conversation_id) % 2 == 0
        copy = event if same_id else event.model_copy(update={"id": new_id()})
        immediately = turn.index in (0, 2)
        now += [event, copy] if immediately else [event]
        if not immediately:
            later.append(copy)
        kinds[f"{'same id' if same_id else 'new id'}, {'next' if immediately else 'late'}"] += 1
    await c.publish_events(now)
    await c.publish_events(later)
    responses = await c.collect(turns, timeout_s=120)
    report = await verify(c, c.catalog, turns, responses=responses)
    record_result(
        "duplicate-user-request-kafka",
        report,
        timeline,
        {"produced": len(now) + len(later), "duplicates_sent": dict(kinds)},
    )
    assert report.ok, report.describe() + c.tails()
