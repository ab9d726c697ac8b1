"""Consumer groups under churn, and handlers slower than the poll interval.

5. Rebalance storm: every 2.5 s (5 times) an extra agent or tool worker joins and another
   leaves (SIGTERM: drain, commit, leave) while requests flow; every member that leaves exits
   cleanly, nothing is lost, no answer conflicts.
6. Every model call (2.5 s) takes longer than ``max.poll.interval.ms`` (2 s): the runtime
   keeps polling while handlers await, so no member is evicted, no rebalance happens after
   the groups formed, and every request is answered exactly once.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.workload import make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

MAX_POLL_INTERVAL_MS = 2000
SLOW_MODEL_S = 2.5


async def test_rebalance_storm_of_members_joining_and_leaving(
    kafka_bootstrap: str, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    c = await cluster(kafka_bootstrap, redis_url, AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.3")
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    c.spawn("agent-x0", "router", "agent")
    c.spawn("tool-x0", "tool")
    await c.ready()
    turns = make_turns(50)
    timeline = Timeline()
    publishing = asyncio.create_task(c.paced(turns, over_s=16))
    await c.wait_answered(turns, 0.02)
    extras = {"agent": ["agent-x0"], "tool": ["tool-x0"]}
    left: dict[str, bool] = {}  # member that left -> whether it had joined its group
    for step in range(1, 6):
        await asyncio.sleep(2.5)
        kind = ("agent", "tool")[step % 2]
        leaving = extras[kind].pop(0)
        left[leaving] = bool(c.assignments(leaving))
        c.terminate(leaving)
        joining = f"{kind}-x{step}"
        c.spawn(joining, kind)
        extras[kind].append(joining)
        timeline.instant(f"{leaving} leaves (SIGTERM), {joining} joins")
    await publishing
    responses = await c.collect(turns, timeout_s=120)
    report = await verify(c, c.catalog, turns, responses=responses)
    codes = {name: await c.wait_exit(name) for name in left}
    record_result(
        "rebalance-storm",
        report,
        timeline,
        {
            "members_left": len(left),
            "assignments": c.assignment_count(c.procs),
            "exit_codes": codes,
        },
    )
    assert report.ok, report.describe() + c.tails()
    # A member that had joined drains, commits, leaves and exits 0 on SIGTERM; one still
    # starting (Python imports on a busy machine) may die of the signal, owning nothing.
    unclean = {n: code for n, code in codes.items() if code != 0 and (left[n] or code != -15)}
    assert not unclean, f"members did not leave cleanly: {unclean}"


async def test_handlers_slower_than_max_poll_interval(
    kafka_bootstrap: str, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    c = await cluster(
        kafka_bootstrap,
        redis_url,
        AGENTSTREAM_MODEL__OFFLINE_LATENCY_S=str(SLOW_MODEL_S),
        AGENTSTREAM_KAFKA__MAX_POLL_INTERVAL_MS=str(MAX_POLL_INTERVAL_MS),
    )
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    formed = c.assignment_count(c.procs)
    turns = make_turns(50)
    timeline = Timeline()
    await c.publish(turns)
    responses = await c.collect(turns, timeout_s=150)
    report = await verify(c, c.catalog, turns, responses=responses)
    later = c.assignment_count(c.procs) - formed
    record_result(
        "handler-slower-than-max-poll-interval",
        report,
        timeline,
        {
            "model_latency_s": SLOW_MODEL_S,
            "max_poll_interval_ms": MAX_POLL_INTERVAL_MS,
            "assignments_after_start": later,
        },
    )
    assert report.ok, report.describe() + c.tails()
    assert later == 0, f"{later} assignment(s) after the groups formed: members were evicted"
    assert report.duplicates == 0, "a request was answered more than once (redelivery)"
