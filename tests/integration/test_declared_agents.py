"""Declared agents end to end (issue 16): the support team of ``examples.support``.

On Kafka and Redis every agent runs in a worker process of its own (``agentstream worker
agent --agent triage``, ...), beside a router, a tool and a memory worker process; in
process, the same workers run as members of their groups on the in-process bus. 300
requests over 60 conversations (:func:`tests.support.agent_team.make_team_turns`) go
straight to ``user_request``, as upstream producers publish them, and each must end in
exactly one distinct terminal answer, by the agent the routing rules name, in the order of
its conversation's requests. Requests naming an undeclared agent and requests a guardrail
refuses end in one ``rejected`` answer each; an agent whose model never produces its
output type ends the request in one ``failed`` answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agentstream.agents import App, Message, ModelReply, ToolSpec, load_app
from agentstream.agents.models.routing import ModelRouter
from agentstream.process import WorkerSet, build_workers
from agentstream.schemas import Usage
from agentstream.settings import Settings, TopicSettings
from agentstream.topics import Bus, Catalog, Record
from agentstream.wiring import build_bus, build_store, ensure_topics
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from tests.chaos.invariants import ChaosReport, Reader, verify
from tests.chaos.ordering import check_turn_order
from tests.support.agent_team import (
    APP,
    TeamCluster,
    TeamReport,
    TeamTurn,
    check_team,
    make_team_turns,
    refusals,
    responses_by_request,
)
from tests.workload import collect, publish

CONVERSATIONS = 60  # x 5 turns: 300 requests


@dataclass
class Deployment:
    """The team on one bus: what a test publishes to and reads from."""

    catalog: Catalog
    reader: Reader
    bus: Bus
    tails: Any = field(default=lambda: "")

    async def publish(self, turns: Sequence[TeamTurn]) -> None:
        await publish(self.bus, self.catalog, list(turns))

    async def collect(self, turns: Sequence[TeamTurn], timeout_s: float) -> list[Record]:
        return await collect(self.bus, self.catalog, list(turns), timeout_s=timeout_s, settle_s=2)


def in_process_team(settings: Settings, bus: Bus, app: App, stop: asyncio.Event) -> WorkerSet:
    """One worker set per agent (its own group) and one for the router, tools and memory,
    as the processes of a deployment would run them."""
    store = build_store(settings)
    sets = [
        build_workers(
            ["router", "tool", "memory"], settings, bus, store, CollectorRegistry(), stop, app=app
        )
    ]
    sets += [
        build_workers(
            ["agent"], settings, bus, store, CollectorRegistry(), stop, agents=[a], app=app
        )
        for a in app.names()
    ]
    team = WorkerSet()
    for s in sets:
        team.workers += s.workers
        team.extras += s.extras
        team.periodic += s.periodic
    return team


@asynccontextmanager
async def deployed(
    where: str, request: pytest.FixtureRequest, prefix: str, tmp_path: Path
) -> AsyncIterator[Deployment]:
    if where == "in_process":
        settings = Settings(app=APP, topics=TopicSettings(prefix=prefix, partitions=4))
        bus = build_bus(settings)
        await bus.start()
        await ensure_topics(bus, settings.catalog(), create=True)
        stop = asyncio.Event()
        team = in_process_team(settings, bus, load_app(APP), stop)
        task = asyncio.create_task(team.run(stop))
        try:
            await asyncio.wait_for(asyncio.gather(*(w.started.wait() for w in team.workers)), 30)
            yield Deployment(settings.catalog(), bus, bus)
        finally:
            stop.set()
            await task
            await bus.stop()
        return
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    redis_url = request.getfixturevalue("redis_url")
    cluster = TeamCluster(
        bootstrap=bootstrap,
        redis_url=redis_url,
        prefix=prefix,
        logs=tmp_path,
        env={"AGENTSTREAM_AGENT__DEADLINE_S": "300"},
    )
    try:
        await cluster.start()
        cluster.spawn_team()
        await cluster.ready()
        yield Deployment(cluster.catalog, cluster, cluster.bus, cluster.tails)
    finally:
        await cluster.close()


async def check_everything(
    team: Deployment, turns: list[TeamTurn], responses: list[Record]
) -> tuple[ChaosReport, TeamReport]:
    report = await verify(team.reader, team.catalog, turns, responses=responses)
    await check_turn_order(team.reader, team.catalog, turns, report, responses=responses)
    return report, await check_team(team.reader, team.catalog, turns, responses=responses)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "where",
    ["in_process", pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.redis])],
)
async def test_support_team_answers_every_request_once_by_the_right_agent_in_order(
    where: str, request: pytest.FixtureRequest, prefix: str, tmp_path: Path
) -> None:
    turns = make_team_turns(CONVERSATIONS)
    refused = refusals()
    everything = turns + refused
    async with deployed(where, request, prefix, tmp_path) as team:
        started = time.monotonic()
        await team.publish(everything)
        responses = await team.collect(everything, timeout_s=120)
        elapsed = time.monotonic() - started
        report, team_report = await check_everything(team, everything, responses)
        tails = team.tails()
    assert report.requests == 306
    assert report.ok, report.describe() + tails
    assert team_report.ok, team_report.describe() + tails
    # Every turn of the scripts completed; the refusals are the only other answers.
    refused_ids = {t.request_id for t in refused if t.status == "rejected"}
    assert {n.split(":")[0] for n in report.not_completed} == refused_ids, report.not_completed
    assert sum(report.dead_letters.values()) == 0, report.dead_letters
    assert sum(team_report.inbox_dead_letters.values()) == 0, team_report.inbox_dead_letters
    # Every path was taken: handoffs to billing and quote, math as a tool and directly.
    assert set(team_report.answered_by) >= {"triage", "billing", "math", "quote", "router"}
    assert team_report.subruns.get("math", 0) == sum(t.via_math for t in turns)
    # The refusals: one answer each, with the reason; their conversations go on.
    answers = responses_by_request(responses)
    unknown, card = (answers[t.request_id] for t in refused if t.status == "rejected")
    assert {(a.data.status, a.source, a.data.agent) for a in unknown} == {
        ("rejected", "router", None)
    }
    assert "'nobody'" in (unknown[0].data.error or "")
    assert {(a.data.status, a.data.agent) for a in card} == {("rejected", "billing")}
    assert "card number" in (card[0].data.error or ""), card[0].data.error
    print(
        f"\n{where}: {report.requests} requests answered in {elapsed:.1f}s, "
        f"{report.duplicates} duplicate copies; {team_report.describe()}"
    )


# -- a structured output the model never produces ---------------------------------------


class Verdict(BaseModel):
    approved: bool
    score: int = Field(ge=0, le=10)


class Rambling:
    """A model that never answers what its agent's output type asks for: prose first, and
    when told so, JSON of the wrong shape."""

    name = "rambling"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply:
        self.calls += 1
        told = "does not match" in (messages[-1].content or "")
        return ModelReply(
            text='{"approved": "perhaps", "score": 42}' if told else "Well, it depends.",
            usage=Usage(prompt_tokens=10, completion_tokens=8, total_tokens=18, model_calls=1),
            model=self.name,
        )


judges = App("judges", default="judge")
judges.agent(
    "judge",
    "You judge proposals and answer with a verdict.",
    description="Judges proposals.",
    tools=[],
    output_type=Verdict,
    output_retries=2,
)


async def test_an_output_type_never_met_ends_in_one_failed_answer(prefix: str) -> None:
    settings = Settings(app=f"{__name__}:judges", topics=TopicSettings(prefix=prefix, partitions=2))
    bus, store = build_bus(settings), build_store(settings)
    await bus.start()
    catalog = settings.catalog()
    await ensure_topics(bus, catalog, create=True)
    model = Rambling()
    stop = asyncio.Event()
    workers = build_workers(
        ["router", "agent"],
        settings,
        bus,
        store,
        CollectorRegistry(),
        stop,
        router=ModelRouter(model),
        app=judges,
    )
    task = asyncio.create_task(workers.run(stop))
    turns = [
        TeamTurn(
            request_id=f"req-{prefix}judge-{i}",
            conversation_id=f"conv-{prefix}judge",
            index=i,
            text=f"Proposal {i}: move the office to the moon.",
            expect="",
            answered_by="judge",
            status="failed",
        )
        for i in range(2)
    ]
    try:
        await publish(bus, catalog, turns)
        responses = await collect(bus, catalog, turns, timeout_s=30, settle_s=0.5)
        report = await check_team(bus, catalog, turns, responses=responses)
    finally:
        stop.set()
        await task
        await bus.stop()
    assert report.ok, report.describe()
    answers = responses_by_request(responses)
    for turn in turns:
        (answer,) = answers[turn.request_id]
        assert answer.data.status == "failed", answer.data
        assert answer.data.output is None
        assert answer.data.agent == "judge"
        error = answer.data.error or ""
        # The validation reason of the last try, as pydantic gives it.
        assert "after 3 tries" in error, error
        assert "score" in error, error
        assert "approved" in error, error
    # The first answer and two retries per request, then the run failed.
    assert model.calls == 2 * 3
