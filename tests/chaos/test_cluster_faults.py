"""Brokers of a replicated cluster fail under load; the pipeline keeps its guarantees.

A three-node KRaft cluster (:class:`tests.services.kafka_cluster.KafkaCluster`: each node a
broker and a controller, 256 MB heaps), topics with replication factor 3,
``min.insync.replicas=2`` and unclean leader election off; agent, tool and memory workers
as processes, requests paced over the fault so every partition has work while it happens.

14. SIGKILL of the broker leading the most partitions of the pipeline's topics: the
    controller fences it after the broker session (Kafka's default, 9 s) and moves its
    leaderships to in-sync replicas; producers (acks=all, idempotent) and consumers follow
    the new leaders. Restarted afterwards, it catches up.
15. Rolling restart of the three brokers (SIGTERM: a controlled shutdown that moves
    leaderships first; started again; the next one only once every partition is back in
    sync, as an operator's roll does), the active controller last.
16. SIGKILL of the active controller (also a broker): the quorum elects another leader.

Each: nothing lost, nothing conflicting, order kept. Recorded: ``recovery`` (from the
fault's end to the slowest partition's first answer after it) and, in the details, the
longest stall of any partition's agent outputs during the fault, how long the leaderships
or the controller took to move, and how long the cluster took to be in sync again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from agentstream.topics import Inbox, Topic

from tests.chaos.cluster import Cluster
from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import ChaosReport, verify
from tests.chaos.results import Timeline
from tests.chaos.unserved import longest_stall, output_times
from tests.services import ServiceError, unavailable
from tests.services.kafka_cluster import KafkaCluster
from tests.workload import Turn, make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(300)]

MAIN_TOPICS = (
    Topic.USER_REQUEST,
    Topic.TOOL_CALL,
    Topic.MEMORY_CALL,
    Topic.TOOL_RESULT,
    Topic.AGENT_RESPONSE,
    Inbox("assistant"),
)


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """One three-node cluster for the module; each test starts with every node up."""
    cluster = KafkaCluster(3, heap="256m")
    try:
        cluster.start()
    except ServiceError as exc:
        cluster.close()
        unavailable(f"cannot start a three-node Kafka cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def replicated(kafka_cluster: KafkaCluster) -> KafkaCluster:
    """The module's cluster with every node running and every partition in sync (a node
    killed by the previous test is started again here)."""
    for node in kafka_cluster.nodes.values():
        if not node.running:
            await asyncio.to_thread(kafka_cluster.start_node, node.node_id)
    await asyncio.to_thread(kafka_cluster.wait_in_sync)
    return kafka_cluster


async def _pipeline(kafka: KafkaCluster, redis_url: str, cluster: ClusterFactory) -> Cluster:
    c = await cluster(
        kafka.bootstrap,
        redis_url,
        AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.1",
        AGENTSTREAM_TOPICS__REPLICATION_FACTOR="3",
    )
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    return c


def _main_topics(c: Cluster) -> list[str]:
    return [c.catalog.name(t) for t in MAIN_TOPICS]


async def _until_led_elsewhere(kafka: KafkaCluster, topics: list[str], gone: int) -> float:
    """Seconds until no partition of ``topics`` is led by node ``gone`` or leaderless."""
    began = time.monotonic()
    while time.monotonic() - began < 120:
        try:
            leaders = await asyncio.to_thread(kafka.leaders, topics)
        except Exception:  # a node just died: the admin client may fail once
            leaders = {}
        if leaders and all(n not in (gone, -1) for n in leaders.values()):
            return round(time.monotonic() - began, 2)
        await asyncio.sleep(0.25)
    raise AssertionError(f"node {gone} still leads partitions after 120 s")


async def _until(done: asyncio.Event, c: Cluster, turns: list[Turn], per_s: int = 2) -> None:
    """Publish ``per_s`` turns a second, in order, until ``done``; then the rest at once."""
    for i in range(0, len(turns), per_s):
        await c.publish(turns[i : i + per_s])
        if not done.is_set():
            await asyncio.sleep(1)


async def _finish(
    c: Cluster,
    turns: list[Turn],
    timeline: Timeline,
    publishing: asyncio.Task[None],
) -> tuple[ChaosReport, dict[str, object]]:
    await publishing
    responses = await c.collect(turns, timeout_s=150)
    report = await verify(c, c.catalog, turns, responses=responses)
    window = timeline.window
    assert window is not None
    partition, stall = longest_stall(await output_times(c), *window)
    return report, {"longest_stall_s": stall, "longest_stall_partition": partition}


async def test_sigkill_of_the_broker_leading_the_busiest_partitions(
    replicated: KafkaCluster, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    kafka = replicated
    c = await _pipeline(kafka, redis_url, cluster)
    topics = _main_topics(c)
    turns = make_turns(50)
    timeline = Timeline()
    publishing = asyncio.create_task(c.paced(turns, over_s=16, batches=16))
    await c.wait_answered(turns, 0.1)
    led = Counter((await asyncio.to_thread(kafka.leaders, topics)).values())
    victim, count = led.most_common(1)[0]
    kafka.kill(victim)
    timeline.instant(f"SIGKILL broker {victim} (leads {count}/{sum(led.values())})")
    moved_s = await _until_led_elsewhere(kafka, topics, victim)
    report, details = await _finish(c, turns, timeline, publishing)
    await asyncio.to_thread(kafka.start_node, victim)
    in_sync_s = await asyncio.to_thread(kafka.wait_in_sync)
    details |= {
        "killed_node": victim,
        "partitions_led": count,
        "leaders_moved_s": moved_s,
        "back_in_sync_after_restart_s": round(in_sync_s, 1),
    }
    result = record_result("cluster-sigkill-busiest-leader", report, timeline, details)
    assert report.ok, report.describe() + c.tails()
    assert all(c.alive(n) for n in c.procs), "a worker died with the broker"
    assert result.recovery_s is not None, "no answer after the kill"


async def test_rolling_restart_of_all_three_brokers(
    replicated: KafkaCluster, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    kafka = replicated
    c = await _pipeline(kafka, redis_url, cluster)
    turns = make_turns(50)
    controller = await asyncio.to_thread(kafka.active_controller)
    order = [n for n in kafka.nodes if n != controller] + [controller]
    timeline = Timeline()
    # The roll takes one to two minutes (a node's JVM starts in 9 to 30 s on the test
    # machine): requests keep coming, 2 a second, until its last step is over.
    rolled = asyncio.Event()
    publishing = asyncio.create_task(_until(rolled, c, turns))
    await c.wait_answered(turns, 0.05)
    steps: list[dict[str, float]] = []
    for node_id in order:
        fault = timeline.fault(f"restart broker {node_id}")
        began = time.monotonic()
        await asyncio.to_thread(kafka.stop, node_id)
        stopped = time.monotonic()
        await asyncio.to_thread(kafka.start_node, node_id)
        started = time.monotonic()
        await asyncio.to_thread(kafka.wait_in_sync)
        timeline.end(fault)
        steps.append(
            {
                "node": node_id,
                "stop_s": round(stopped - began, 1),
                "start_s": round(started - stopped, 1),
                "in_sync_s": round(time.monotonic() - started, 1),
            }
        )
    rolled.set()
    report, details = await _finish(c, turns, timeline, publishing)
    details |= {"order": order, "steps": steps}
    record_result("cluster-rolling-restart", report, timeline, details)
    assert report.ok, report.describe() + c.tails()
    assert all(c.alive(n) for n in c.procs), "a worker died during the roll"


async def test_sigkill_of_the_active_controller(
    replicated: KafkaCluster, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    kafka = replicated
    c = await _pipeline(kafka, redis_url, cluster)
    topics = _main_topics(c)
    turns = make_turns(50)
    controller = await asyncio.to_thread(kafka.active_controller)
    timeline = Timeline()
    publishing = asyncio.create_task(c.paced(turns, over_s=16, batches=16))
    await c.wait_answered(turns, 0.1)
    led = Counter((await asyncio.to_thread(kafka.leaders, topics)).values())[controller]
    kafka.kill(controller)
    began = time.monotonic()
    timeline.instant(f"SIGKILL active controller {controller} (leads {led} partitions)")
    new_controller = -1
    while time.monotonic() - began < 60:
        try:
            new_controller = await asyncio.to_thread(kafka.active_controller)
        except ServiceError:
            new_controller = -1
        if new_controller not in (-1, controller):
            break
        await asyncio.sleep(0.2)
    elected_s = round(time.monotonic() - began, 2)
    moved_s = await _until_led_elsewhere(kafka, topics, controller)
    report, details = await _finish(c, turns, timeline, publishing)
    details |= {
        "killed_controller": controller,
        "new_controller": new_controller,
        "new_controller_known_s": elected_s,
        "partitions_led": led,
        # From the kill, like new_controller_known_s (both polled: upper bounds).
        "leaders_moved_s": round(elected_s + moved_s, 2),
    }
    record_result("cluster-sigkill-active-controller", report, timeline, details)
    assert report.ok, report.describe() + c.tails()
    assert new_controller not in (-1, controller), "no new active controller"
    assert all(c.alive(n) for n in c.procs), "a worker died with the controller"
