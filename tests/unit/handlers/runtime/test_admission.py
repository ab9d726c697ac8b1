"""Admission and the in-flight budget: records start paced, never more than the budget at
once, fetching pauses while the backlog is full; and side effects recorded with the commit."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from agentstream.handlers.runtime.admission import PacedAdmission
from agentstream.handlers.runtime.context import Context, Origin
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.runtime.worker import RuntimeConfig, Worker
from agentstream.handlers.stores.base import InProcessStore
from agentstream.schemas import UserRequest, UserRequestData, encode
from agentstream.topics import Catalog, OutgoingRecord, Record, Topic
from agentstream.topics.memory import InProcessBus
from agentstream.wiring import ensure_topics
from pydantic import BaseModel


async def _publish_requests(bus: InProcessBus, catalog: Catalog, n: int) -> None:
    """``n`` user requests, each of its own conversation."""
    await _publish_turns(bus, catalog, [f"c{i}" for i in range(n)])


async def _publish_turns(bus: InProcessBus, catalog: Catalog, conversations: list[str]) -> None:
    """One user request per entry, of that conversation, in this order; the text of each
    is ``<conversation>:<its turn>``."""
    topic = catalog.name(Topic.USER_REQUEST)
    records = []
    for i, conversation in enumerate(conversations):
        turn = conversations[:i].count(conversation)
        event = UserRequest(
            source="test",
            request_id=f"r{i}",
            conversation_id=conversation,
            data=UserRequestData(text=f"{conversation}:{turn}"),
        )
        key, value, headers = encode(event)
        records.append(OutgoingRecord(topic, value, key, tuple(headers)))
    await bus.publish_many(records)


def _record(offset: int, partition: int = 0) -> Record:
    return Record("t", partition, offset, b"k%d" % offset, b"v", (), 0)


async def test_a_backlog_is_started_at_the_paced_rate_not_at_once() -> None:
    # Budget 10, records held 1 s (the initial estimate): 1.5 x 10 / 1 s = 15 starts per second.
    admission = PacedAdmission(10, pace=1.5, initial_hold_s=1.0)
    started: list[float] = []
    admission.offer([_record(i) for i in range(6)])

    def start(record: Record) -> bool:
        started.append(time.monotonic())
        return True

    task = asyncio.create_task(admission.run(lambda: 0, start))
    try:
        while len(started) < 6:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    spread = started[-1] - started[0]
    assert 5 / 15 * 0.8 <= spread <= 5 / 15 * 3, spread


async def test_fast_handlers_are_not_held_back_and_the_budget_is_kept() -> None:
    admission = PacedAdmission(4, initial_hold_s=1.0)
    for _ in range(200):
        admission.finished(0.001)  # the estimate follows what is measured
    assert admission.hold_s < 0.01
    in_flight = 0

    def start_one(record: Record) -> bool:
        nonlocal in_flight
        in_flight += 1
        return True

    admission.offer([_record(i) for i in range(10)])
    task = asyncio.create_task(admission.run(lambda: in_flight, start_one))
    try:
        await asyncio.sleep(0.05)
        assert in_flight == 4  # all the budget at once (fast), not one more
        assert len(admission) == 6
        in_flight -= 2
        admission.finished(0.001)
        await asyncio.sleep(0.05)
        assert in_flight == 4
        assert len(admission) == 4
    finally:
        task.cancel()
    assert admission.purge({_record(0).tp}) == 4
    assert len(admission) == 0


class _Reply(BaseModel):
    n: int


async def test_an_effect_recorded_with_the_commit_is_read_back_in_the_prefetch() -> None:
    store = InProcessStore()
    calls = 0

    async def call() -> _Reply:
        nonlocal calls
        calls += 1
        return _Reply(n=calls)

    def context() -> Context:
        return Context(store, Origin("t", 0, 0, "g"), "ns", lambda: datetime.now(UTC))

    first = context()
    reply, replayed = await first.once("model:r:0", _Reply, call, with_commit=True)
    assert (reply.n, replayed) == (1, False)
    assert await store.fetch("ns:effect:model:r:0") is None  # nothing before the commit
    # A run whose commit is refused leaves no effect behind: the next run calls again.
    assert not await store.commit(expect={"ns:x": 5}, ops=first.ops)
    assert await store.fetch("ns:effect:model:r:0") is None
    second = context()
    reply, _ = await second.once("model:r:0", _Reply, call, with_commit=True)
    assert reply.n == 2
    assert await store.commit(expect=second.reads, ops=second.ops)
    # Redelivered: the recorded reply comes with the prefetch, no call and no extra read.
    third = context()
    await third.prefetch("ns:run", effects=["model:r:0"])
    reads = 0
    fetch = store.fetch

    async def counting_fetch(key: str) -> bytes | None:
        nonlocal reads
        reads += 1
        return await fetch(key)

    store.fetch = counting_fetch  # type: ignore[method-assign]
    reply, replayed = await third.once("model:r:0", _Reply, call, with_commit=True)
    assert (reply.n, replayed, calls, reads) == (2, True, 2, 0)


async def test_the_worker_never_runs_more_than_its_budget_and_pauses_fetching() -> None:
    bus = InProcessBus(default_partitions=2)
    await bus.start()
    catalog = Catalog(prefix="adm.", partitions=2)
    await ensure_topics(bus, catalog, create=True)
    running = 0
    peak = 0
    done = 0
    release = asyncio.Event()

    async def handler(event: Any, ctx: Context) -> list[Any]:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        done += 1
        return []

    config = RuntimeConfig(group_id="g", source="test", max_in_flight=8, commit_interval_s=0.05)
    worker = Worker(
        bus, InProcessStore(), catalog, [Route(Topic.USER_REQUEST, handler, "h")], config
    )
    await _publish_requests(bus, catalog, 120)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 10
        while running < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert running == peak == 8  # the budget, and not one more
        # Fetched and waiting at most half the budget (16 at least); the rest stays
        # on the broker while the budget is full.
        assert worker.held - worker.in_flight <= 16
        assert worker.held < 120
        release.set()
        while done < 120 and time.monotonic() < deadline + 20:
            await asyncio.sleep(0.02)
        assert done == 120
        assert peak == 8
    finally:
        stop.set()
        await task
        await bus.stop()


async def test_fast_handlers_do_not_make_the_worker_pause_after_every_fetch(
    monkeypatch: Any,
) -> None:
    # A fetch fills the backlog up to the pause threshold before the admission takes any.
    # Pausing then would not be free on Kafka (the client drops what it buffered for a
    # paused partition and fetches it again): with room in the budget, the worker lets the
    # admission start the records and goes on fetching.
    bus = InProcessBus(default_partitions=2)
    await bus.start()
    catalog = Catalog(prefix="fast.", partitions=2)
    await ensure_topics(bus, catalog, create=True)
    pauses = 0
    make_consumer = bus.consumer

    def consumer(*args: Any, **kwargs: Any) -> Any:
        made = make_consumer(*args, **kwargs)
        pause = made.pause

        def counted(*tps: Any) -> None:
            nonlocal pauses
            pauses += 1
            pause(*tps)

        made.pause = counted  # type: ignore[method-assign]
        return made

    monkeypatch.setattr(bus, "consumer", consumer)
    done = 0

    async def handler(event: Any, ctx: Context) -> list[Any]:
        nonlocal done
        done += 1
        return []

    config = RuntimeConfig(group_id="g", source="test", max_in_flight=64, commit_interval_s=0.05)
    worker = Worker(
        bus, InProcessStore(), catalog, [Route(Topic.USER_REQUEST, handler, "h")], config
    )
    await _publish_requests(bus, catalog, 600)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 20
        while done < 600 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert done == 600
        # Only while the hold-time estimate still starts at 1 s (the first fetches start
        # slowly); pausing after every fetch was 19 pauses here.
        assert pauses <= 5, pauses
    finally:
        stop.set()
        await task
        await bus.stop()


async def test_a_record_waiting_in_its_lane_holds_no_running_slot() -> None:
    # Budget 2, two conversations of 3 turns, all of "a" fetched first. Before, a's second
    # turn took the second slot and waited in its lane: one handler ran. Now both
    # conversations run while the later turns wait, in order, without a slot.
    bus = InProcessBus(default_partitions=1)
    await bus.start()
    catalog = Catalog(prefix="lane.", partitions=1)
    await ensure_topics(bus, catalog, create=True)
    running: set[str] = set()
    both = 0
    order: list[str] = []
    release = asyncio.Event()

    async def handler(event: Any, ctx: Context) -> list[Any]:
        nonlocal both
        running.add(event.conversation_id)
        both = max(both, len(running))
        await release.wait()
        order.append(event.data.text)
        running.discard(event.conversation_id)
        return []

    config = RuntimeConfig(group_id="g", source="test", max_in_flight=2, commit_interval_s=0.05)
    worker = Worker(
        bus, InProcessStore(), catalog, [Route(Topic.USER_REQUEST, handler, "h")], config
    )
    await _publish_turns(bus, catalog, ["a", "a", "a", "b", "b", "b"])
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 10
        while (len(running) < 2 or worker.waiting < 4) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert running == {"a", "b"}
        assert (worker.running, worker.waiting, worker.in_flight) == (2, 4, 6)
        release.set()
        while len(order) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [t for t in order if t[0] == "a"] == ["a:0", "a:1", "a:2"]
        assert [t for t in order if t[0] == "b"] == ["b:0", "b:1", "b:2"]
        assert both == 2
        # Committed up to the lowest unfinished offset: all six are done.
        while (
            worker._offsets
            and any(o.committed != 6 for o in worker._offsets.values())
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
        assert [o.committed for o in worker._offsets.values()] == [6]
    finally:
        stop.set()
        await task
        await bus.stop()


async def test_waiting_records_are_bounded_and_fetching_pauses_when_they_fill_up() -> None:
    # One conversation of 60 turns, budget 1, at most 3 waiting: the fourth waiting record
    # stays in the backlog, the backlog fills, and the consumer is paused; nothing is
    # fetched beyond that. Released, every turn runs, in order.
    bus = InProcessBus(default_partitions=1)
    await bus.start()
    catalog = Catalog(prefix="wait.", partitions=1)
    await ensure_topics(bus, catalog, create=True)
    order: list[str] = []
    peak_waiting = 0
    release = asyncio.Event()

    async def handler(event: Any, ctx: Context) -> list[Any]:
        await release.wait()
        order.append(event.data.text)
        return []

    config = RuntimeConfig(
        group_id="g", source="test", max_in_flight=1, max_waiting=3, commit_interval_s=0.05
    )
    worker = Worker(
        bus, InProcessStore(), catalog, [Route(Topic.USER_REQUEST, handler, "h")], config
    )
    await _publish_turns(bus, catalog, ["solo"] * 60)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 10
        while worker.waiting < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for _ in range(15):
            await asyncio.sleep(0.02)
            peak_waiting = max(peak_waiting, worker.waiting)
        assert (worker.running, peak_waiting) == (1, 3)
        assert worker._consumer is not None
        assert worker._consumer.paused()
        # The backlog (16 at least, half the budget otherwise) and nothing more.
        assert worker.held <= 1 + 3 + 16
        release.set()
        while len(order) < 60 and time.monotonic() < deadline + 10:
            peak_waiting = max(peak_waiting, worker.waiting)
            await asyncio.sleep(0.005)
        assert order == [f"solo:{i}" for i in range(60)]
        assert peak_waiting == 3
    finally:
        stop.set()
        await task
        await bus.stop()


async def test_a_ready_lane_is_started_before_the_backlog_and_at_the_pace() -> None:
    admission = PacedAdmission(2, max_waiting=5, initial_hold_s=1.0)
    for _ in range(200):
        admission.finished(0.001)  # fast: no pacing in the way
    running = 0
    started: list[str] = []

    def start(record: Record) -> bool:
        nonlocal running
        if record.offset % 2:  # odd offsets: queued behind a running record of their key
            started.append(f"queued {record.offset}")
            return False
        running += 1
        started.append(f"started {record.offset}")
        return True

    def resume(key: bytes) -> bool:
        nonlocal running
        running += 1
        started.append(f"resumed {key.decode()}")
        return True

    admission.offer([_record(i) for i in range(6)])
    task = asyncio.create_task(admission.run(lambda: running, start, resume, lambda: 0))
    try:
        await asyncio.sleep(0.05)
        # Queued records take no slot: the budget goes to records that run.
        assert started == ["started 0", "queued 1", "started 2"]
        admission.ready(b"x")
        running -= 1
        admission.finished(0.001)
        await asyncio.sleep(0.05)
        assert started[3:] == ["resumed x"]  # before the backlog's next record
        assert len(admission) == 3
    finally:
        task.cancel()


async def test_at_shutdown_records_waiting_in_their_lane_are_drained_and_committed() -> None:
    # The admission starts a lane's next record; it keeps running while the worker drains,
    # so records that waited in their lane when the stop came are handled, not dropped.
    bus = InProcessBus(default_partitions=1)
    await bus.start()
    catalog = Catalog(prefix="drain.", partitions=1)
    await ensure_topics(bus, catalog, create=True)
    order: list[str] = []

    async def handler(event: Any, ctx: Context) -> list[Any]:
        await asyncio.sleep(0.1)
        order.append(event.data.text)
        return []

    config = RuntimeConfig(group_id="g", source="test", max_in_flight=1, commit_interval_s=0.05)
    worker = Worker(
        bus, InProcessStore(), catalog, [Route(Topic.USER_REQUEST, handler, "h")], config
    )
    await _publish_turns(bus, catalog, ["a", "a", "a"])
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 10
        while worker.waiting < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert (worker.running, worker.waiting) == (1, 2)
        stop.set()
        await task
        assert order == ["a:0", "a:1", "a:2"]
        assert [o.committed for o in worker._offsets.values()] == [3]
    finally:
        stop.set()
        await task
        await bus.stop()


@pytest.mark.parametrize("max_waiting", [None, 30])
async def test_with_turns_queued_the_whole_budget_runs_and_the_waiting_stay_bounded(
    max_waiting: int | None,
) -> None:
    # 150 conversations of 3 turns, each conversation's turns fetched together (the worst
    # case), budget 50, a slow handler. Before ADR 24 a queued turn held a slot: at most
    # 26 of the 50 ran at once (450 records in 4.5 s against 2.65 s now). Now the budget
    # runs in full while later turns wait, and the waiting records never exceed
    # max_waiting (twice the budget by default): what the worker holds stays bounded.
    budget, conversations, turns = 50, 150, 3
    bus = InProcessBus(default_partitions=1)
    await bus.start()
    catalog = Catalog(prefix="full.", partitions=1)
    await ensure_topics(bus, catalog, create=True)
    running = peak_running = 0
    order: dict[str, list[str]] = {}

    async def handler(event: Any, ctx: Context) -> list[Any]:
        nonlocal running, peak_running
        running += 1
        peak_running = max(peak_running, running)
        await asyncio.sleep(0.2)
        running -= 1
        order.setdefault(event.conversation_id, []).append(event.data.text)
        return []

    config = RuntimeConfig(
        group_id="g",
        source="test",
        max_in_flight=budget,
        max_waiting=max_waiting,
        commit_interval_s=0.05,
    )
    worker = Worker(
        bus, InProcessStore(), catalog, [Route(Topic.USER_REQUEST, handler, "h")], config
    )
    limit = max_waiting if max_waiting is not None else 2 * budget
    peak_waiting = peak_held = 0
    submit = worker._lanes.submit

    def counted(key: bytes, item: Any) -> bool:
        nonlocal peak_waiting, peak_held
        runs = submit(key, item)
        peak_waiting = max(peak_waiting, worker.waiting)
        peak_held = max(peak_held, worker.held)
        return runs

    worker._lanes.submit = counted  # type: ignore[method-assign]
    await _publish_turns(
        bus, catalog, [f"c{i}" for i in range(conversations) for _ in range(turns)]
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 30
        while sum(map(len, order.values())) < conversations * turns:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert all(o == [f"{c}:{t}" for t in range(turns)] for c, o in order.items())
        assert peak_waiting <= limit
        # Running + waiting + the backlog (max(16, budget / 2)) and nothing more.
        assert peak_held <= budget + limit + max(16, budget // 2)
        if max_waiting is None:
            assert peak_running == budget
        else:
            # 30 waiting are 15 conversations' later turns: 15 run, then 16 once the
            # first of them is ready and leaves room.
            assert peak_waiting == limit
            assert limit // (turns - 1) <= peak_running <= budget
    finally:
        stop.set()
        await task
        await bus.stop()
