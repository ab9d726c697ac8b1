"""The runtime's building blocks: commit offsets, per-key lanes, retry verdicts, store commits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from agentstream.handlers.runtime.context import Context, Origin
from agentstream.handlers.runtime.lanes import Lanes
from agentstream.handlers.runtime.offsets import PartitionOffsets
from agentstream.handlers.runtime.retries import RetryPolicy, Verdict, is_permanent
from agentstream.handlers.stores.base import Delete, IndexAdd, InProcessStore, Put
from agentstream.schemas import RetryableError, SchemaError
from pydantic import BaseModel, ValidationError


def test_committable_offset_is_lowest_unfinished() -> None:
    offsets = PartitionOffsets()
    assert offsets.committable() is None
    for o in (10, 11, 12, 13):
        offsets.begin(o)
    offsets.finish(11)
    offsets.finish(13)
    assert offsets.committable() == 10
    offsets.finish(10)
    assert offsets.committable() == 12
    offsets.finish(12)
    assert offsets.committable() == 14
    assert offsets.to_commit() == 14
    offsets.committed = 14
    assert offsets.to_commit() is None


async def test_lanes_serialise_one_key_and_overlap_keys() -> None:
    running: dict[bytes, int] = {}
    max_same_key = 0
    overlap = 0
    order: list[tuple[bytes, int]] = []

    async def run(item: tuple[bytes, int]) -> None:
        nonlocal max_same_key, overlap
        key, _ = item
        running[key] = running.get(key, 0) + 1
        max_same_key = max(max_same_key, running[key])
        overlap = max(overlap, sum(1 for v in running.values() if v))
        await asyncio.sleep(0.01)
        order.append(item)
        running[key] -= 1

    lanes: Lanes[tuple[bytes, int]] = Lanes(run)
    for n in range(5):
        for key in (b"a", b"b", b"c"):
            lanes.submit(key, (key, n))
    while len(lanes):
        await asyncio.sleep(0.01)
    assert max_same_key == 1
    assert overlap == 3
    for key in (b"a", b"b", b"c"):
        assert [n for k, n in order if k == key] == [0, 1, 2, 3, 4]


async def test_lanes_abandon_cancels_matching_and_keeps_the_rest() -> None:
    done: list[int] = []
    gate = asyncio.Event()

    async def run(item: int) -> None:
        if item == 1:
            await gate.wait()
        done.append(item)

    lanes: Lanes[int] = Lanes(run)
    lanes.submit(b"k", 1)
    lanes.submit(b"k", 2)
    lanes.submit(b"k", 3)
    await asyncio.sleep(0.01)
    dropped = await lanes.abandon(lambda i: i in (1, 2))
    assert sorted(dropped) == [1, 2]
    while len(lanes):
        await asyncio.sleep(0.01)
    assert done == [3]


async def test_a_lane_with_on_ready_waits_to_be_resumed_and_counts_its_items() -> None:
    ran: list[int] = []
    ready: list[bytes] = []

    async def run(item: int) -> None:
        await asyncio.sleep(0.01)
        ran.append(item)

    lanes: Lanes[int] = Lanes(run, on_ready=ready.append)
    assert lanes.submit(b"k", 1) is True  # an idle lane: runs now
    assert lanes.submit(b"k", 2) is False  # waits, holding no running slot
    assert lanes.submit(b"j", 3) is True
    assert (lanes.running, lanes.waiting, lanes.busy(b"k")) == (2, 1, True)
    while len(ran) < 2:
        await asyncio.sleep(0.01)
    # Done with 1: the lane does not go on by itself, it says it is ready.
    assert (ready, lanes.running, lanes.waiting) == ([b"k"], 0, 1)
    assert lanes.resume(b"k") is True
    assert lanes.resume(b"k") is False  # runs already
    assert (lanes.running, lanes.waiting) == (1, 0)
    while len(lanes):
        await asyncio.sleep(0.01)
    assert ran == [1, 3, 2]
    assert (lanes.running, lanes.waiting, lanes.busy(b"k")) == (0, 0, False)


async def test_abandoning_a_ready_lane_leaves_nothing_to_resume() -> None:
    ready: list[bytes] = []

    async def run(item: int) -> None:
        return None

    lanes: Lanes[int] = Lanes(run, on_ready=ready.append)
    lanes.submit(b"k", 1)
    lanes.submit(b"k", 2)
    while not ready:
        await asyncio.sleep(0.01)
    assert await lanes.abandon(lambda i: i == 2) == [2]
    assert (len(lanes), lanes.waiting, lanes.resume(b"k")) == (0, 0, False)


async def test_an_item_begun_while_abandon_waits_queues_behind_the_requeued_ones() -> None:
    # A lane runs "a" (revoked) with "b" (another partition) queued. While abandon waits
    # for "a" to wind down, the admission begins "c" of the same key, which runs at once:
    # "b" must go after it in its lane, not run beside it in a lane of its own.
    running: set[str] = set()
    both: list[set[str]] = []
    ran: list[str] = []
    ready: list[bytes] = []
    lanes: Lanes[str] = Lanes(lambda item: run(item), on_ready=ready.append)

    async def run(item: str) -> None:
        running.add(item)
        if len(running) > 1:
            both.append(set(running))
        try:
            await asyncio.sleep(0.05 if item != "a" else 10)
            ran.append(item)
        except asyncio.CancelledError:
            lanes.submit(b"k", "c")  # begun during the cancellation's wind-down
            raise
        finally:
            running.discard(item)

    lanes.submit(b"k", "a")
    lanes.submit(b"k", "b")
    await asyncio.sleep(0.01)
    assert await lanes.abandon(lambda item: item == "a") == ["a"]
    while len(ran) < 2:
        if ready:
            lanes.resume(ready.pop(0))
        await asyncio.sleep(0.01)
    assert (ran, both) == (["c", "b"], [])
    assert (lanes.running, lanes.waiting, len(lanes)) == (0, 0, 0)


def test_retry_verdicts() -> None:
    policy = RetryPolicy(in_place_attempts=3, max_attempts=6)
    transient = RetryableError("503")
    assert policy.verdict(transient, 1) is Verdict.RETRY_IN_PLACE
    assert policy.verdict(transient, 2) is Verdict.RETRY_IN_PLACE
    assert policy.verdict(transient, 3) is Verdict.RETRY_LATER
    assert policy.verdict(transient, 6) is Verdict.DEAD_LETTER
    assert policy.verdict(SchemaError("bad"), 1) is Verdict.DEAD_LETTER
    assert policy.verdict(ValueError("bug"), 1) is Verdict.RETRY_IN_PLACE


def test_retry_after_sets_the_delay() -> None:
    policy = RetryPolicy()
    assert policy.delay(RetryableError("429", retry_after=7.0), 3, in_place=False) == 7.0
    backoff = [policy.delay(ValueError(), n, in_place=True) for n in (1, 2, 3)]
    assert backoff[0] < backoff[2]


@pytest.fixture
def store() -> InProcessStore:
    return InProcessStore()


async def test_commit_is_refused_when_a_read_version_changed(store: InProcessStore) -> None:
    assert await store.commit(expect={"k": 0}, ops=[Put("k", b"1")])
    assert (await store.get("k")).version == 1
    assert not await store.commit(expect={"k": 0}, ops=[Put("k", b"2")])
    assert (await store.get("k")).value == b"1"


async def test_commit_is_refused_when_the_mark_exists(store: InProcessStore) -> None:
    assert await store.commit(expect={}, ops=[Put("k", b"1")], mark=("m", b"out", 60))
    assert not await store.commit(expect={}, ops=[Put("k", b"2")], mark=("m", b"out2", 60))
    assert await store.fetch("m") == b"out"
    assert (await store.get("k")).value == b"1"


async def test_commit_index_and_delete(store: InProcessStore) -> None:
    await store.commit(expect={}, ops=[IndexAdd("i", "a", 2.0), IndexAdd("i", "b", 1.0)])
    assert await store.index_range("i") == [("b", 1.0), ("a", 2.0)]
    assert await store.index_range("i", max_score=1.5) == [("b", 1.0)]
    await store.commit(expect={}, ops=[Put("x", b"1"), Delete("x")])
    assert (await store.get("x")).value is None


def test_a_claim_start_drops_what_the_previous_owner_finished() -> None:
    offsets = PartitionOffsets()
    offsets.start_at(40)
    assert offsets.highest_seen == 39  # the runtime drops records at or below this
    assert offsets.committable() == 40
    assert offsets.to_commit() is None  # nothing new to commit yet
    offsets.begin(40)
    offsets.finish(40)
    assert offsets.to_commit() == 41


class _Conv(BaseModel):
    history: list[str] = []
    active: str | None = None


async def test_context_save_stages_the_object_and_writes_each_key_once() -> None:
    store = InProcessStore()
    await store.commit(expect={}, ops=[Put("ns:conv", b'{"history":["a"],"active":null}')])
    ctx = Context(store, Origin("t", 0, 0, "g"), "ns", lambda: datetime.now(UTC))
    conv = await ctx.load("ns:conv", _Conv)
    assert conv is not None
    assert conv.history == ["a"]
    conv.active = "r1"
    ctx.save("ns:conv", conv, 60)
    ctx.index_add("ns:deadlines", "r1", 1.0)
    # Loaded again in the same handler: the saved object itself, no parse.
    again = await ctx.load("ns:conv", _Conv)
    assert again is conv
    again.history = ["a", "b"]
    again.active = None
    ctx.save("ns:conv", again, 60)
    ctx.save("ns:gone", _Conv(), None)
    ctx.delete("ns:gone")
    ops = ctx.ops
    # One write of the conversation (the last save, as the object is at commit time), the
    # index op kept in order, a save followed by a delete is only the delete.
    assert [type(op).__name__ for op in ops] == ["IndexAdd", "Put", "Delete"]
    assert isinstance(ops[1], Put)
    assert _Conv.model_validate_json(ops[1].value) == _Conv(history=["a", "b"])
    assert ops[1].ttl_s == 60
    assert await ctx.load("ns:gone", _Conv) is None
    assert await store.commit(expect=ctx.reads, ops=ops)
    stored = await store.get("ns:conv")
    assert stored.value is not None
    assert _Conv.model_validate_json(stored.value).history == ["a", "b"]


async def test_context_load_of_a_saved_key_as_another_model_parses_a_copy() -> None:
    class _Other(BaseModel):
        active: str | None = None

    ctx = Context(InProcessStore(), Origin("t", 0, 0, "g"), "ns", lambda: datetime.now(UTC))
    ctx.save("ns:conv", _Conv(active="r2"))
    other = await ctx.load("ns:conv", _Other)
    assert other == _Other(active="r2")


def test_a_validation_error_is_permanent() -> None:
    # Our models reject the same input on every attempt: retrying only holds the partition.
    class Limited(BaseModel):
        name: str

    with pytest.raises(ValidationError) as caught:
        Limited.model_validate({"name": 42})
    policy = RetryPolicy(in_place_attempts=3, max_attempts=6)
    assert is_permanent(caught.value)
    assert policy.verdict(caught.value, 1) is Verdict.DEAD_LETTER
    assert not is_permanent(RetryableError("503"))
    assert not is_permanent(ValueError("bug"))


async def test_a_lane_abandoned_before_it_began_frees_its_running_slot() -> None:
    # A revoke in the same turn of the loop as a start cancels the lane's task before its
    # first step: the task's body never runs, its ``finally`` included. Its running slot
    # was held for ever before, and a worker's budget shrank with every such revoke until
    # nothing could start.
    ran: list[int] = []

    async def run(item: int) -> None:
        ran.append(item)

    for on_ready in (None, [].append):
        lanes: Lanes[int] = Lanes(run, on_ready=on_ready)
        lanes.submit(b"k", 1)
        lanes.submit(b"k", 2)
        lanes.submit(b"j", 3)
        assert lanes.running == 2
        assert sorted(await lanes.abandon(lambda i: True)) == [1, 2, 3]
        assert (lanes.running, lanes.waiting, len(lanes)) == (0, 0, 0)
        assert ran == []
