"""A ``user_request`` appended after its accept-by deadline runs in no consumer group.

On both buses: the ``user_request`` topic stamps the append time (the catalog makes it
``LogAppendTime`` on Kafka; the in-process bus always does), the acknowledgement reports
it, consumers read the same stamp, and the runtime runs no handler for a record appended
after its ``x-accept-by`` header (``topics/deadline.py``, ADR 6). The ingress projection
records it as ``refused`` instead. A record within its deadline runs as usual.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.ingress.projection import ProjectionKeys, RequestRecord
from agentstream.ingress.server import projection_worker
from agentstream.schemas import UserRequest, UserRequestData, encode, new_id
from agentstream.topics import OutgoingRecord, RecordMetadata, Topic
from agentstream.topics.deadline import accept_by_header, acked_in_time, landed_late

from tests.pipeline_harness import Stack, running, wait_for

GROUPS = ("agent", "tool", "memory", "stats")


def request(text: str) -> UserRequest:
    return UserRequest(
        id=new_id(),
        source="ingress",
        request_id=new_id(),
        conversation_id=new_id(),
        tenant="acme",
        data=UserRequestData(text=text),
    )


async def publish(stack: Stack, event: UserRequest, deadline_ms: int) -> RecordMetadata:
    key, value, headers = encode(event)
    topic = stack.catalog.name(Topic.USER_REQUEST)
    record = OutgoingRecord(topic, value, key, (*headers, accept_by_header(deadline_ms)))
    return await stack.bus.publish(record)


@asynccontextmanager
async def projecting(stack: Stack) -> AsyncIterator[None]:
    worker = projection_worker(stack.settings, stack.bus, stack.store, RuntimeMetrics())
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.started.wait(), 30)
        yield
    finally:
        stop.set()
        await task


async def test_a_request_appended_after_its_deadline_runs_in_no_group(stack: Stack) -> None:
    now_ms = time.time_ns() // 1_000_000
    late, on_time = request("too late"), request("in time")
    late_deadline = now_ms - 60_000
    late_ack = await publish(stack, late, late_deadline)
    on_time_ack = await publish(stack, on_time, now_ms + 60_000)
    # The acknowledgement carries the broker's append time, and decides like consumers do.
    assert late_ack.log_append_time
    assert on_time_ack.log_append_time
    assert late_ack.timestamp_ms is not None
    assert late_ack.timestamp_ms >= now_ms - 5_000
    assert not acked_in_time(late_ack, late_deadline)
    assert acked_in_time(on_time_ack, now_ms + 60_000)
    [seen] = [
        r
        for r in await stack.read(stack.catalog.name(Topic.USER_REQUEST))
        if r.offset == late_ack.offset and r.partition == late_ack.partition
    ]
    assert seen.timestamp_ms == late_ack.timestamp_ms  # consumers read the same stamp
    assert landed_late(seen)

    keys = ProjectionKeys(stack.settings.namespace)

    async def refused_record() -> RequestRecord | None:
        raw = (await stack.store.get(keys.request(late.request_id))).value
        record = None if raw is None else RequestRecord.model_validate_json(raw)
        return record if record is not None and record.status == "refused" else None

    async with running(stack, GROUPS), projecting(stack):
        await wait_for(lambda: _responded(stack, on_time.request_id))
        record = await wait_for(refused_record)
        # Every group has read past the refused record by now (it came first on its
        # partition or the groups are idle): give them a moment more all the same.
        await asyncio.sleep(1.0)

    assert record.text == "too late"
    responses = await stack.responses()
    assert late.request_id not in responses
    assert len(responses[on_time.request_id]) == 1
    prefix, ns = stack.settings.topics.prefix, stack.settings.namespace
    # (the tool and agent groups read no user_request: the router forwards it, ADR 23)
    for kind in ("router", "memory", "stats"):
        mark = f"{ns}:done:{prefix}agentstream-{kind}:"
        assert await stack.store.fetch(mark + on_time.id) is not None, kind
        assert await stack.store.fetch(mark + late.id) is None, kind
    log = await stack.store.list_range(keys.log(late.request_id))
    assert [b'"kind":"refused"' in entry for entry in log] == [True]


async def _responded(stack: Stack, request_id: str) -> bool:
    return request_id in await stack.responses()
