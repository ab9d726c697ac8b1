"""A running handler holds what it needs, not its decoded event (issue 17: thousands of
handlers await a model at once in one worker). The runtime hands the event to the handler
and keeps only the record's bytes, decoding them again, to an equal event, for another
attempt; the agent's handlers drop their task before the model call; a prefetched state's
bytes are let go once parsed."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Sequence
from typing import Any

from agentstream.agents import Message, ToolSpec
from agentstream.handlers.agent.routes import ConversationState
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.retries import RetryPolicy
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.runtime.worker import RuntimeConfig, Worker
from agentstream.handlers.stores.base import InProcessStore, Put
from agentstream.schemas import (
    AgentResponse,
    Envelope,
    RetryableError,
    UserRequest,
    UserRequestData,
    encode,
)
from agentstream.topics import Catalog, Record, Topic
from agentstream.topics.memory import InProcessBus

from tests.support.handling import Handling
from tests.support.scripted_model import FunctionModel
from tests.unit.handlers.test_agent import agent, turn, user_request

CATALOG = Catalog(prefix="life.", partitions=1)


def _record() -> Record:
    event = UserRequest(
        source="test", request_id="r1", conversation_id="c1", data=UserRequestData(text="hi")
    )
    key, value, headers = encode(event)
    topic = CATALOG.name(Topic.USER_REQUEST)
    return Record(topic, 0, 0, key, value, tuple(headers), int(time.time() * 1000))


async def test_the_runtime_keeps_no_decoded_event_while_the_handler_runs(
    bus: InProcessBus,
) -> None:
    seen: list[tuple[str, bool]] = []

    async def handler(event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        alive = weakref.ref(event)
        seen.append((event.data.text, False))
        del event
        gc.collect()
        seen[-1] = (seen[-1][0], alive() is None)
        if len(seen) == 1:
            raise RetryableError("once more")
        return []

    policy = RetryPolicy(base_delay_s=0.001, max_in_place_delay_s=0.01)
    config = RuntimeConfig(group_id="life.g", source="test", retry=policy)
    route = Route(Topic.USER_REQUEST, handler, "h")
    worker = Worker(bus, InProcessStore(), CATALOG, [route], config)
    await worker.process_record(_record())
    # The second attempt gets the same event, decoded again from the record's bytes.
    assert seen == [("hi", True), ("hi", True)]


async def test_the_agent_holds_no_task_while_its_model_runs() -> None:
    task = turn(user_request())
    alive = weakref.ref(task)
    during: list[bool] = []

    def reply(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        gc.collect()
        during.append(alive() is None)
        return "42."

    handlers = agent(FunctionModel(reply))
    handed = [task]
    del task
    outputs = await Handling().run(lambda ctx: handlers.on_event(handed.pop(), ctx))
    assert during == [True]
    assert [type(e) for e in outputs] == [AgentResponse]


async def test_a_prefetched_value_is_let_go_once_loaded_and_the_commit_still_checks_it() -> None:
    store = InProcessStore()
    handling = Handling(store=store)
    assert await store.commit(expect={}, ops=[Put("test:k", b'{"history": [], "active": "a"}')])
    ctx = handling.context()
    await ctx.prefetch("test:k")
    first = await ctx.load("test:k", ConversationState)
    assert first is not None
    assert first.active == "a"
    assert not ctx._prefetched  # parsed once, the bytes not held beside the state
    # Changed meanwhile: a second load reads it again, and the commit checks the version
    # the handler first read.
    assert await store.commit(expect={}, ops=[Put("test:k", b'{"history": [], "active": "b"}')])
    again = await ctx.load("test:k", ConversationState)
    assert again is not None
    assert again.active == "b"
    assert not await store.commit(expect=ctx.reads, ops=ctx.ops)
