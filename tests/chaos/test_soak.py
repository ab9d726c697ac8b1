"""12. The soak: long conversations through the HTTP ingress while every part gets hurt.

At least 50 conversations of 16 turns each go through ``agentstream ingress`` (a process,
with an API key; every other request carries an ``Idempotency-Key``) to agent, tool and
memory worker processes on a private broker and a private Redis (append-only). A client
posts a conversation's turns at random times, each only once the ingress accepted the one
before it (202), not once it was answered, so turns queue up behind each other. Meanwhile:

- every 5 to 10 s an agent, tool or memory worker (each kind in turn) is SIGKILLed and
  started again 0.2 to 1.5 s later;
- both agent workers are SIGKILLed, Redis is stopped 3 s later (SIGTERM: it writes its
  append-only file) for 3 s, then the agents are started again, once;
- the broker is frozen (SIGSTOP) for longer than the ingress's publish timeout, once, so
  posts are answered 503 and clients retry: the same request with its key, a new request
  without one (a 503 means "not accepted").

Even turns state a new number ("Remember that my number is 4711."), odd turns ask for it
("What is my number times 3?"), so an answer shows which turns ran before it. Afterwards
:mod:`tests.chaos.invariants` and :mod:`tests.chaos.ordering` check: none lost, none
conflicting, no turn out of order (on the topics, in what the answers recall, in the history
the agent was given), and no request answered 503 processed.

The load lasts ``AGENTSTREAM_SOAK_SECONDS`` (75 s by default, the CI run); the full soak is
``AGENTSTREAM_SOAK_SECONDS=210`` (docs/chaos.md). ``AGENTSTREAM_SOAK_CONVERSATIONS`` and
``AGENTSTREAM_SOAK_SEED`` change the number of conversations and the random schedule.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from agentstream.schemas import UserRequest, decode
from agentstream.topics import Topic

from tests.chaos.cluster import Cluster
from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import ChaosReport, verify
from tests.chaos.ordering import check_refused, check_turn_order
from tests.chaos.results import Timeline
from tests.services import KafkaBroker, KafkaFactory, RedisFactory, RedisServer
from tests.services.processes import free_port
from tests.workload import Turn

# Read at import: the suite's autouse fixture clears AGENTSTREAM_* before a test runs.
SECONDS = float(os.environ.get("AGENTSTREAM_SOAK_SECONDS", "75"))
CONVERSATIONS = max(50, int(os.environ.get("AGENTSTREAM_SOAK_CONVERSATIONS", "50")))
SEED = int(os.environ.get("AGENTSTREAM_SOAK_SEED", str(random.randrange(1 << 30))))
TURNS = 16
PUBLISH_TIMEOUT_S = 2.0
FREEZE_S = PUBLISH_TIMEOUT_S + 3
REDIS_OUTAGE_S = 3.0
AGENTS_AHEAD_S = 3.0
API_KEY = "soak-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
WORKERS = {
    "agent-1": "agent",
    "agent-2": "agent",
    "tool-1": "tool",
    "tool-2": "tool",
    "memory-1": "memory",
    "memory-2": "memory",
}

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(int(SECONDS) + 420)]


@dataclass(frozen=True)
class Planned:
    """One turn as the client means it: what it says, what the answer must and must not
    contain, and whether it is posted with an ``Idempotency-Key``."""

    tag: str
    conversation_id: str
    user: str
    index: int
    text: str
    expect: str
    foreign: tuple[str, ...]
    keyed: bool


def plan(run: str, rng: random.Random) -> list[list[Planned]]:
    conversations = []
    for c in range(CONVERSATIONS):
        conv = f"soak-{run}-{c}"
        numbers = rng.sample(range(1000, 10000), TURNS // 2)
        turns = []
        for i in range(TURNS):
            n = numbers[i // 2]
            foreign: tuple[str, ...] = ()
            if i % 2 == 0:
                text, expect = f"Remember that my number is {n}.", f"number is {n}"
            else:
                m = 2 + (i // 2) % 8
                text, expect = f"What is my number times {m}?", f"{n} * {m} = {n * m}"
                # Any other number of this conversation, or none yet: another turn's state.
                others = [f"number is {k}," for k in numbers if k != n]
                foreign = (*others, "do not know your number")
            keyed = (c + i) % 2 == 0
            turns.append(Planned(f"{c}/{i}", conv, f"u-{conv}", i, text, expect, foreign, keyed))
        conversations.append(turns)
    return conversations


@dataclass
class Client:
    """The HTTP side: posts each turn until accepted, and remembers what each post got."""

    http: httpx.AsyncClient
    accepted: dict[str, str] = field(default_factory=dict)  # tag -> request id
    statuses: Counter[str] = field(default_factory=Counter)
    refused_keyless: list[tuple[str, int]] = field(default_factory=list)  # (tag, attempt)
    longest_wait_s: float = 0.0

    async def post(self, turn: Planned) -> None:
        headers = dict(AUTH)
        if turn.keyed:
            headers["Idempotency-Key"] = f"soak-key-{turn.conversation_id}-{turn.index}"
        began = time.monotonic()
        for attempt in range(1, 1000):
            metadata = {"soak_turn": turn.tag}
            if not turn.keyed:  # each keyless post is a request of its own
                metadata["soak_attempt"] = str(attempt)
            body = {
                "text": turn.text,
                "conversation_id": turn.conversation_id,
                "user": turn.user,
                "metadata": metadata,
            }
            try:
                response = await self.http.post("/v1/requests", json=body, headers=headers)
            except httpx.TransportError as exc:
                self.statuses[f"transport error {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            code = response.status_code
            self.statuses[f"{code} {'keyed' if turn.keyed else 'keyless'}"] += 1
            if code in (200, 202):
                self.accepted[turn.tag] = str(response.json()["request_id"])
                self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - began)
                return
            if code == 503 and not turn.keyed:
                self.refused_keyless.append((turn.tag, attempt))
            if code not in (409, 503, 500):
                raise AssertionError(f"{turn.tag}: unexpected {code} {response.text}")
            await asyncio.sleep(min(float(response.headers.get("Retry-After", "0.2")), 2.0))
        raise AssertionError(f"{turn.tag} was never accepted")

    async def converse(self, turns: list[Planned], rng: random.Random, over_s: float) -> None:
        """Post the turns at random times spread over ``over_s`` seconds, each one only
        once the one before it was accepted (202), not answered: a turn often queues up
        behind the one before it, and a slow acceptance bunches them up."""
        began = time.monotonic()
        for turn, at in zip(turns, sorted(rng.uniform(0, over_s) for _ in turns), strict=True):
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            await self.post(turn)


@dataclass
class Chaos:
    """The faults, on a schedule drawn from the seed, while the load lasts.

    It also stands in for the orchestrator: a worker that exits by itself (one restarted
    while the broker is frozen gives up at startup: it cannot describe the topics) is
    started again, and its last log lines kept in ``exits``."""

    cluster: Cluster
    broker: KafkaBroker
    redis: RedisServer
    timeline: Timeline
    rng: random.Random
    kills: Counter[str] = field(default_factory=Counter)
    exits: list[str] = field(default_factory=list)

    async def run(self, seconds: float) -> None:
        began = time.monotonic()
        pending = {"redis": began + 0.3 * seconds, "freeze": began + 0.6 * seconds}
        next_kill = began + self.rng.uniform(5, 10)
        kinds: list[str] = []
        while time.monotonic() - began < seconds:
            now = time.monotonic()
            due = [name for name, at in pending.items() if now >= at]
            if due:
                del pending[due[0]]
                if due[0] == "redis":
                    await self.agents_down_around_redis_restart()
                else:
                    await self.broker_freeze()
                next_kill = max(next_kill, time.monotonic() + 2)
            elif now >= next_kill:
                if not kinds:  # every kind in turn, in a random order each round
                    kinds = self.rng.sample(["agent", "tool", "memory"], 3)
                await self.kill_one(kinds.pop())
                next_kill = time.monotonic() + self.rng.uniform(5, 10)
            self.restart_exited()
            await asyncio.sleep(0.1)

    def restart_exited(self) -> None:
        for name in WORKERS:
            if not self.cluster.alive(name):
                last = " | ".join(self.cluster.tail(name, lines=2, width=200).splitlines())
                self.exits.append(f"{name} exited {self.cluster.procs[name].returncode}: {last}")
                self.cluster.spawn(name)

    async def kill_one(self, kind: str, name: str | None = None) -> None:
        """SIGKILL ``name`` (by default a random worker of ``kind``), start it again soon."""
        name = name or self.rng.choice(sorted(n for n, k in WORKERS.items() if k == kind))
        down_s = self.rng.uniform(0.2, 1.5)
        fault = self.timeline.fault(f"SIGKILL {name}, restarted after {down_s:.1f} s")
        await asyncio.to_thread(self.cluster.kill, name)
        await asyncio.sleep(down_s)
        self.cluster.spawn(name)
        self.timeline.end(fault)
        self.kills[name] += 1

    async def agents_down_around_redis_restart(self) -> None:
        """Both agent workers SIGKILLed, Redis stopped ``AGENTS_AHEAD_S`` later for
        ``REDIS_OUTAGE_S``, the agents started again once Redis is back.

        Turns that arrive meanwhile wait on ``user_request`` for the agent group; the groups
        that read it too (memory, the ingress's projection) handle the early ones, then fail
        on the store and move the later ones to ``user_request.retry``: the case of the last
        line of DESIGN.md §3.7 (retries belong to the group that failed)."""
        agents = sorted(n for n, k in WORKERS.items() if k == "agent")
        fault = self.timeline.fault(f"SIGKILL {', '.join(agents)}, restarted after Redis")
        for name in agents:
            await asyncio.to_thread(self.cluster.kill, name)
            self.kills[name] += 1
        await asyncio.sleep(AGENTS_AHEAD_S)
        await self.redis_restart()
        for name in agents:
            self.cluster.spawn(name)
        self.timeline.end(fault)

    async def redis_restart(self) -> None:
        fault = self.timeline.fault(f"Redis stopped, started again after {REDIS_OUTAGE_S:g} s")
        await asyncio.to_thread(self.redis.stop)
        await asyncio.sleep(REDIS_OUTAGE_S)
        await asyncio.to_thread(self.redis.start)
        self.timeline.end(fault)

    async def broker_freeze(self) -> None:
        fault = self.timeline.fault(f"broker SIGSTOP for {FREEZE_S:g} s")
        self.broker.pause()
        try:
            await asyncio.sleep(FREEZE_S)
        finally:
            self.broker.resume()
        self.timeline.end(fault)


async def _refused_request_ids(cluster: Cluster, client: Client) -> list[str]:
    """The request ids of the keyless posts answered 503 whose record reached the topic:
    each is a request of its own, found by the attempt in its metadata."""
    by_attempt = {}
    for record in await cluster.read(cluster.catalog.name(Topic.USER_REQUEST)):
        event = decode(record.value)
        if isinstance(event, UserRequest) and "soak_attempt" in event.data.metadata:
            meta = event.data.metadata
            by_attempt[(meta["soak_turn"], int(meta["soak_attempt"]))] = event.request_id
    return [by_attempt[a] for a in client.refused_keyless if a in by_attempt]


def _recoveries(report: ChaosReport, timeline: Timeline) -> dict[str, float | None]:
    """Recovery after the Redis restart and after the freeze, and the median and longest
    after a SIGKILL (see :meth:`ChaosReport.recovery`)."""
    recoveries: dict[str, float | None] = {}
    after_kills = []
    for f in timeline.faults:
        recovered = report.recovery(f.start, f.end if f.end is not None else f.start)[0]
        if not f.label.startswith("SIGKILL"):
            recoveries[f.label] = None if recovered is None else round(recovered, 2)
        elif recovered is not None:
            after_kills.append(round(recovered, 2))
    if after_kills:
        after_kills.sort()
        recoveries["SIGKILL, median"] = after_kills[len(after_kills) // 2]
        recoveries["SIGKILL, longest"] = after_kills[-1]
    return recoveries


async def _ingress_ready(http: httpx.AsyncClient, cluster: Cluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not cluster.alive("ingress"):
            raise AssertionError(f"the ingress exited:\n{cluster.tail('ingress')}")
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"the ingress was not ready in {timeout_s} s\n{cluster.tail('ingress')}")


async def test_soak_conversations_through_the_ingress_under_faults(
    private_kafka: KafkaFactory,
    private_redis: RedisFactory,
    cluster: ClusterFactory,
    record_result: RecordResult,
) -> None:
    rng = random.Random(SEED)
    broker = private_kafka()
    redis = private_redis(appendonly=True)
    c = await cluster(broker.bootstrap, redis.url, AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.05")
    for name, kind in WORKERS.items():
        c.spawn(name, *(("router", kind) if kind == "agent" else (kind,)))
    port = free_port()
    c.spawn_ingress(
        "ingress",
        env={
            "AGENTSTREAM_INGRESS__PORT": str(port),
            "AGENTSTREAM_INGRESS__API_KEYS": json.dumps({API_KEY: "soak"}),
            "AGENTSTREAM_INGRESS__PUBLISH_TIMEOUT_S": str(PUBLISH_TIMEOUT_S),
            "AGENTSTREAM_INGRESS__RETRY_AFTER_S": "1",
            "AGENTSTREAM_INGRESS__RATE_PER_SECOND": "10000",
            "AGENTSTREAM_INGRESS__RATE_BURST": "10000",
        },
    )
    conversations = plan(uuid.uuid4().hex[:6], rng)
    timeline = Timeline()
    limits = httpx.Limits(max_connections=CONVERSATIONS + 10)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
    ) as http:
        await _ingress_ready(http, c, 90)
        await c.ready(list(WORKERS), timeout_s=90)
        client = Client(http)
        chaos = Chaos(c, broker, redis, timeline, rng)
        timeline.started = time.time()
        load_began = time.monotonic()
        talks = [
            asyncio.create_task(client.converse(turns, random.Random(rng.random()), SECONDS))
            for turns in conversations
        ]
        try:
            await chaos.run(SECONDS)
            await asyncio.gather(*talks)
        finally:
            for talk in talks:
                talk.cancel()
        load_s = time.monotonic() - load_began

    planned = {t.tag: t for turns in conversations for t in turns}
    sent = [
        Turn(client.accepted[tag], t.conversation_id, t.index, t.text, t.expect)
        for tag, t in planned.items()
    ]
    responses = await c.collect(sent, timeout_s=240, settle_s=3)
    report = await verify(c, c.catalog, sent, responses=responses)
    foreign = {client.accepted[tag]: t.foreign for tag, t in planned.items()}
    await check_turn_order(c, c.catalog, sent, report, responses=responses, foreign=foreign)
    refused = await _refused_request_ids(c, client)
    await check_refused(c, c.catalog, refused, report)
    dead = [n for n in WORKERS if not c.alive(n)]
    record_result(
        "soak",
        report,
        timeline,
        {
            "conversations": CONVERSATIONS,
            "turns_per_conversation": TURNS,
            "seed": SEED,
            "load_s": round(load_s, 1),
            "http": dict(sorted(client.statuses.items())),
            "longest_until_accepted_s": round(client.longest_wait_s, 2),
            "refused_keyless_posts": len(client.refused_keyless),
            "refused_on_topic": len(refused),
            "kills": dict(sorted(chaos.kills.items())),
            "recovery_s": _recoveries(report, timeline),
            "turn_order": report.order_counts,
            "workers_exited_during_load": chaos.exits,
            "workers_dead_at_end": dead,
        },
    )
    assert report.ok, report.describe() + "\n" + "\n".join(report.order_violations[:20]) + c.tails()
    assert not dead, f"workers exited by themselves: {dead}{c.tails()}"
    # The faults all happened: kills all along, the Redis restart and the broker freeze.
    assert sum(chaos.kills.values()) >= SECONDS // 15, chaos.kills
    labels = " ".join(f.label for f in timeline.faults)
    assert "Redis stopped" in labels, labels
    assert "broker SIGSTOP" in labels, labels
