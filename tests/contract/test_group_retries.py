"""Retries and dead letters belong to the group that failed, and a permanent error is dead-
lettered at once, on both buses (ADR 17).

Every group that reads ``user_request`` (the agent, the memory worker, the ingress projection,
the stats worker) shares ``user_request.retry``. A retry copy written by one group must not be
acted on by another: the agent group would answer that turn ahead of its own backlog on the
main topic, out of order, without the earlier turns in its history. Nothing is killed here: one
group fails one turn transiently while the agent group is still behind on the main topic.

A permanent error anywhere (the handler, the decode, the dead-letter hook that builds the
terminal answer) goes to the dead-letter topic at once, and the partition moves on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from agentstream.agents import Message, ModelReply, OfflineModel, ToolSpec
from agentstream.agents.models import ModelRouter
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.runtime.worker import Worker
from agentstream.process import build_workers
from agentstream.schemas import (
    DeadLetter,
    Envelope,
    RetryableError,
    UserRequest,
    UserRequestData,
    decode,
)
from agentstream.settings import RuntimeSettings
from agentstream.topics import Kind, OutgoingRecord, Topic, TopicPartition
from agentstream.topics.memory import InProcessBus
from agentstream.wiring import runtime_config
from prometheus_client import CollectorRegistry

from tests.contract.conftest import StackMaker
from tests.pipeline_harness import Stack, publish_event, wait_for

#: One attempt in place, then the retry topic: a transient failure leaves for
#: ``user_request.retry`` at once. One partition: every conversation shares the agent's backlog.
_RETRY_AT_ONCE = RuntimeSettings(
    in_place_attempts=1,
    max_attempts=6,
    retry_base_delay_s=0.01,
    retry_topic_delay_s=0.2,
    drain_timeout_s=2,
    max_in_flight=2,
)
_FILLER = 60


class SlowModel:
    """The offline model, a little slow: the agent group works through a backlog."""

    name = "slow"

    def __init__(self, latency_s: float) -> None:
        self.inner = OfflineModel()
        self.latency_s = latency_s

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply:
        await asyncio.sleep(self.latency_s)
        return await self.inner.complete(messages, tools, max_tokens=max_tokens)


def _request(text: str, rid: str, conv: str) -> UserRequest:
    return UserRequest(
        source="test",
        request_id=rid,
        conversation_id=conv,
        data=UserRequestData(text=text, user="ada"),
    )


class FlakyGroup:
    """A consumer group of its own on ``user_request`` (like the memory worker) whose handling
    of one request fails once, transiently: that request goes through ``user_request.retry``."""

    def __init__(self, stack: Stack, fail: str) -> None:
        self.fail = fail
        self.seen: list[tuple[str, str]] = []
        route = Route(Topic.USER_REQUEST, self.on_user_request, "flaky.user_request")
        config = runtime_config(stack.settings, "test-flaky", "flaky-worker")
        self.group_id = config.group_id
        self.worker = Worker(stack.bus, stack.store, stack.catalog, [route], config)

    async def on_user_request(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        self.seen.append((event.request_id, ctx.origin.topic))
        if event.request_id == self.fail and len([s for s in self.seen if s[0] == self.fail]) == 1:
            raise RetryableError("the store blinked")
        return []


@asynccontextmanager
async def running_worker(worker: Worker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.started.wait(), 30)
        yield
    finally:
        stop.set()
        await task


@asynccontextmanager
async def running_agent(
    stack: Stack, metrics: CollectorRegistry, model: Any
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    workers = build_workers(
        ["router", "agent"],
        stack.settings,
        stack.bus,
        stack.store,
        metrics,
        stop,
        router=ModelRouter(model),
    )
    task = asyncio.create_task(workers.run(stop))
    try:
        await asyncio.wait_for(asyncio.gather(*(w.started.wait() for w in workers.workers)), 30)
        yield
    finally:
        stop.set()
        await task


def _sample(metrics: CollectorRegistry, name: str, **labels: str) -> float:
    value = metrics.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_another_groups_retry_is_not_acted_on_and_turns_stay_in_order(
    make_stack_for: StackMaker,
) -> None:
    stack = await make_stack_for(runtime=_RETRY_AT_ONCE, partitions=1)
    retry_topic = stack.catalog.name(Topic.USER_REQUEST, Kind.RETRY)
    # The agent group's backlog: other conversations first, then two turns of c1.
    for i in range(_FILLER):
        await publish_event(stack, _request("hello", f"f{i}", f"c-filler-{i}"))
    await publish_event(stack, _request("hello, first turn", "t1", "c1"))
    await publish_event(stack, _request("hello, second turn", "t2", "c1"))

    # Another group fails the second turn once: its copy waits in user_request.retry.
    flaky = FlakyGroup(stack, fail="t2")
    async with running_worker(flaky.worker):
        await wait_for(lambda: _async(("t2", retry_topic) in flaky.seen), timeout_s=30)
    assert [rid for rid, _ in flaky.seen if rid in ("t1", "t2")] == ["t1", "t2", "t2"]
    assert len(await stack.read(retry_topic)) == 1

    # The agent group, behind on the main topic, starts now: the retry copy is due already.
    metrics = CollectorRegistry()
    async with running_agent(stack, metrics, SlowModel(0.02)):
        await wait_for(lambda: _answered(stack, {"t1", "t2"}), timeout_s=60)
    order = [
        decode(r.value).request_id
        for r in await stack.read(stack.catalog.name(Topic.AGENT_RESPONSE))
        if r.key == b"c1"
    ]
    assert order == ["t1", "t2"], "the agent group answered c1's turns out of order"
    # The router group (it reads user_request for the agents, ADR 23) saw the other group's
    # copy and left it alone: it handled t2 once, from the main topic (acting on the copy
    # would have made the main-topic t2 a duplicate).
    assert (
        _sample(metrics, "agentstream_duplicates_dropped_total", handler="router.user_request") == 0
    )
    skipped = _sample(
        metrics,
        "agentstream_handler_seconds_count",
        handler="router.user_request",
        outcome="other_group",
    )
    assert skipped == 1
    responses = await stack.responses()
    assert len(responses["t2"]) == 1
    assert responses["t2"][0].data.status == "completed"


async def _async(value: Any) -> Any:
    return value


async def _answered(stack: Stack, ids: set[str]) -> bool:
    return ids <= set(await stack.responses())


async def _committed(stack: Stack, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset of ``tp``, read from outside the group."""
    if isinstance(stack.bus, InProcessBus):
        snapshot = stack.bus.describe_group(group)
        return None if snapshot is None else snapshot.committed.get(tp)
    from agentstream.status import group_status
    from agentstream.topics.kafka import KafkaBus

    assert isinstance(stack.bus, KafkaBus)
    [status] = await group_status(stack.bus, [group])
    return next(
        (p.committed for p in status.partitions if (p.topic, p.partition) == tuple(tp)), None
    )


async def test_a_request_no_answer_can_be_built_for_is_dead_lettered_at_once(
    make_stack_for: StackMaker,
) -> None:
    # Straight to Kafka, a conversation_id one character too long: the record does not
    # decode, and the dead-letter hook cannot build the terminal answer either (the response
    # would break the same limit). Before: the hook was retried 19 times, ~30 s, while the
    # partition's committed offset stood still.
    stack = await make_stack_for(partitions=1)
    topic = stack.catalog.name(Topic.USER_REQUEST)
    conv = "c" * 201
    raw = json.dumps(
        {
            "type": "agentstream.user_request.v1",
            "id": "long-1",
            "request_id": "r-long",
            "conversation_id": conv,
            "source": "upstream",
            "time": "2026-12-07T10:00:00Z",
            "data": {"text": "hello"},
        }
    ).encode()
    group = runtime_config(stack.settings, "agentstream-router", "router-worker").group_id
    dlq = stack.catalog.name(Topic.USER_REQUEST, Kind.DLQ)
    metrics = CollectorRegistry()
    async with running_agent(stack, metrics, OfflineModel()):
        at = await stack.bus.publish(OutgoingRecord(topic, raw, conv.encode()))
        started = time.monotonic()
        await wait_for(lambda: stack.read(dlq), timeout_s=60, interval_s=0.05)
        dead_after = time.monotonic() - started
        tp = TopicPartition(topic, at.partition)
        await wait_for(
            lambda: _past(_committed(stack, group, tp), at.offset), timeout_s=60, interval_s=0.1
        )
        committed_after = time.monotonic() - started
        # The partition flows: a good request behind it is answered.
        await publish_event(stack, _request("hello", "r-fine", "c-fine"))
        await wait_for(lambda: _answered(stack, {"r-fine"}), timeout_s=30)
    assert dead_after < 3, f"the dead letter took {dead_after:.1f}s"
    assert committed_after < 4, f"the committed offset moved after {committed_after:.1f}s"
    [dead] = await stack.read(dlq)
    info = DeadLetter.from_headers(dead.headers)
    assert (info.error_class, info.attempts, info.group) == ("SchemaError", 1, group)
    assert dead.value == raw
    # No answer could be built (its conversation_id breaks the response's schema too): the
    # dead letter is the end.
    assert "r-long" not in await stack.responses()


async def _past(committed: Any, offset: int) -> bool:
    value = await committed
    return value is not None and value > offset
