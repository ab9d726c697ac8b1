"""Declared agents under SIGKILL: the support team of ``examples.support``, one worker
process per agent (``agentstream worker agent --agent NAME``), a slow model (0.2 s a call)
so that work is in flight when a worker dies.

1. The *target* of handoffs dies: triage hands every conversation's first turn to billing,
   and billing's only worker is SIGKILLed while handoff tasks wait on ``agent.billing`` or
   are half run, then restarted. The run state travels in Redis, so the restarted billing
   takes each handoff over where it was; nothing is lost or answered twice.
2. The *callee* of agents as tools dies: triage asks math for every sum (a sub-run per
   call), and math's only worker is SIGKILLed while sub-runs are in flight, then restarted.
   Each call keeps its one sub-run (its id derived from the calling step), and its result
   is used once: in the answer's text, and in the usage rolled up into it.

Both check the chaos invariants (:func:`tests.chaos.invariants.verify`, turn order) and the
team's own (:func:`tests.support.agent_team.check_team`): the right agent answers each turn,
one sub-run id per agent-tool call, one result per call, no conflicting event on any
agent's input topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from agentstream.schemas import AgentResponse, AgentTask, ToolResult

from tests.chaos.conftest import RecordResult
from tests.chaos.invariants import verify
from tests.chaos.ordering import check_turn_order, decode_or_none
from tests.chaos.results import Timeline
from tests.support.agent_team import (
    ARITHMETIC,
    TeamCluster,
    TeamTurn,
    check_team,
    make_team_turns,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

LATENCY = {"AGENTSTREAM_MODEL__OFFLINE_LATENCY_S": "0.2"}
#: How long the victim stays dead before its restart (from the SIGKILL): its tasks pile up.
DOWN_S = 2.0

TeamFactory = Callable[[], Awaitable[TeamCluster]]


@pytest.fixture
async def team(
    kafka_bootstrap: str, redis_url: str, prefix: str, tmp_path: Path
) -> AsyncIterator[TeamFactory]:
    made: list[TeamCluster] = []

    async def make() -> TeamCluster:
        c = TeamCluster(
            bootstrap=kafka_bootstrap,
            redis_url=redis_url,
            prefix=prefix,
            logs=tmp_path,
            env=LATENCY,
        )
        made.append(c)
        await c.start()
        c.spawn_team()
        await c.ready()
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.close()


async def tasks_on(c: TeamCluster, agent: str, kind: str) -> set[tuple[str, str]]:
    """The ``kind`` tasks on ``agent``'s input topic, as (request id, calling tool call id)."""
    tasks = set()
    for record in await c.read(c.catalog.inbox(agent)):
        event = decode_or_none(record)
        if isinstance(event, AgentTask) and event.data.kind == kind:
            parent = event.data.parent
            tasks.add((event.request_id, parent.call_id if parent is not None else ""))
    return tasks


async def answered(c: TeamCluster, agent: str, kind: str) -> set[tuple[str, str]]:
    """The ``kind`` tasks ``agent`` has answered: a response of its own for a handoff, a
    result on its caller's input topic for a sub-run."""
    if kind == "handoff":
        return {
            (e.request_id, "")
            for e in map(decode_or_none, await c.responses())
            if isinstance(e, AgentResponse) and e.data.agent == agent
        }
    done = set()
    for caller in c.catalog.agents:
        for record in await c.read(c.catalog.inbox(caller)):
            event = decode_or_none(record)
            if isinstance(event, ToolResult) and event.data.usage is not None:
                done.add((event.request_id, event.data.call_id))
    return done


async def kill_in_flight(
    c: TeamCluster, victim: str, kind: str, *, at_least: int, timeline: Timeline
) -> dict[str, object]:
    """SIGKILL ``victim`` (an agent's only worker) once at least ``at_least`` ``kind`` tasks
    reached it, restart it ``DOWN_S`` later. What it had not answered when it died (counted
    while it is down: nothing answers them then) was in flight."""
    deadline = time.monotonic() + 60
    while len(await tasks_on(c, victim, kind)) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"never {at_least} {kind} tasks on {victim}{c.tails()}")
        await asyncio.sleep(0.05)
    fault = timeline.fault(f"SIGKILL {victim}")
    c.kill(victim)
    tasks = await tasks_on(c, victim, kind)
    done = await answered(c, victim, kind) & tasks
    await asyncio.sleep(max(0.0, DOWN_S - (time.time() - fault.start)))
    c.spawn_agent(victim, victim)
    timeline.end(fault)
    return {"victim": victim, f"{kind}_tasks_at_kill": len(tasks), "in_flight": len(tasks - done)}


async def run_scenario(
    c: TeamCluster,
    turns: list[TeamTurn],
    victim: str,
    kind: str,
    scenario: str,
    record_result: RecordResult,
) -> None:
    timeline = Timeline()
    await c.publish(turns)
    details = await kill_in_flight(c, victim, kind, at_least=16, timeline=timeline)
    responses = await c.collect(turns, timeout_s=120)
    report = await verify(c, c.catalog, turns, responses=responses)
    await check_turn_order(c, c.catalog, turns, report, responses=responses)
    team_report = await check_team(c, c.catalog, turns, responses=responses)
    details.update(team_report.summary())
    result = record_result(scenario, report, timeline, details)
    print(f"\n{result.line()}; at the kill: {details}\n{team_report.describe()}")
    assert report.ok, report.describe() + c.tails()
    assert team_report.ok, team_report.describe() + c.tails()
    assert report.not_completed == [], report.not_completed[:5]
    assert isinstance(details["in_flight"], int)
    assert details["in_flight"] > 0, f"nothing in flight on {victim} when it died: {details}"


async def test_sigkill_of_the_handoff_target_mid_handoffs(
    team: TeamFactory, record_result: RecordResult
) -> None:
    c = await team()
    # Every conversation starts with a handoff to billing (and a second billing turn, two
    # math sub-runs and a handoff to quote follow).
    turns = make_team_turns(40, scripts=("billing",))
    await run_scenario(c, turns, "billing", "handoff", "team-sigkill-handoff-target", record_result)


async def test_sigkill_of_the_agent_tool_callee_mid_subruns(
    team: TeamFactory, record_result: RecordResult
) -> None:
    c = await team()
    # Every turn is a sum or a product triage asks math: a sub-run per turn.
    turns = make_team_turns(40, scripts=(ARITHMETIC,))
    await run_scenario(c, turns, "math", "subrun", "team-sigkill-agent-tool-callee", record_result)
