"""Worker processes SIGKILLed under load: nothing accepted is lost, no request gets two
different answers, each conversation's answers stay in order.

1. An agent worker killed while its handlers await a slow model (0.3 s per call).
2. Agent and tool workers killed again and again at random moments (and restarted), so
   some die between producing their outputs and committing their input: the redelivered
   input republishes the recorded outputs, with the same ids.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.workload import make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]


async def test_sigkill_of_an_agent_awaiting_the_model(
    kafka_bootstrap: str, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    c = await cluster(kafka_bootstrap, redis_url, AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.3")
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    timeline = Timeline()
    await c.publish(turns)
    # Mid-run: every lane of agent-1 is in a model call most of the time (0.3 s each).
    await c.wait_answered(turns, 0.25)
    c.kill("agent-1")
    timeline.instant("SIGKILL agent-1")
    responses = await c.collect(turns, timeout_s=120)
    report = await verify(c, c.catalog, turns, responses=responses)
    record_result("sigkill-agent-awaiting-model", report, timeline)
    assert report.ok, report.describe() + c.tails()


async def test_repeated_sigkills_of_agent_and_tool_workers(
    kafka_bootstrap: str, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    c = await cluster(kafka_bootstrap, redis_url, AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.1")
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("tool-1", "tool")
    c.spawn("aux-2", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    timeline = Timeline()
    rng = random.Random(7)
    publishing = asyncio.create_task(c.paced(turns, over_s=8))
    await c.wait_answered(turns, 0.05)
    # Every 2 s for 10 s, one of the victims dies at a random moment of its work and is
    # started again at once; the survivors (agent-2, aux-2) keep each group alive.
    kills = []
    for round_ in range(5):
        await asyncio.sleep(rng.uniform(1.5, 2.5))
        victim = ("agent-1", "tool-1")[round_ % 2]
        c.kill(victim)
        timeline.instant(f"SIGKILL {victim}")
        kills.append(victim)
        c.spawn(victim)
    await publishing
    responses = await c.collect(turns, timeout_s=120)
    report = await verify(c, c.catalog, turns, responses=responses)
    record_result("sigkill-repeated-agent-and-tool", report, timeline, {"kills": kills})
    assert report.ok, report.describe() + c.tails()
