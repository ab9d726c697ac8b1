"""The state store's semantics, written once and run on both stores (in-process, Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from agentstream.handlers.stores.base import (
    Delete,
    IndexAdd,
    IndexRemove,
    InProcessStore,
    Put,
    PutValue,
    StateStore,
)
from agentstream.handlers.stores.redis_store import RedisStore


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield InProcessStore()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisStore(url)
    await redis_store.ping()
    yield redis_store
    await redis_store.close()


async def test_versioned_commit_with_mark(store: StateStore, prefix: str) -> None:
    k, mark = f"{prefix}state", f"{prefix}mark"
    assert (await store.get(k)).version == 0
    assert await store.commit(expect={k: 0}, ops=[Put(k, b"one")], mark=(mark, b"[]", 60))
    current = await store.get(k)
    assert (current.value, current.version) == (b"one", 1)
    # The same event again: refused, nothing written.
    assert not await store.commit(expect={k: 1}, ops=[Put(k, b"two")], mark=(mark, b"[x]", 60))
    assert (await store.get(k)).value == b"one"
    assert await store.fetch(mark) == b"[]"
    # A stale read: refused.
    assert not await store.commit(expect={k: 0}, ops=[Put(k, b"three")])
    assert await store.commit(expect={k: 1}, ops=[Put(k, b"three"), Delete(f"{prefix}none")])
    assert (await store.get(k)).version == 2


async def test_a_plain_value_is_written_only_by_a_commit_that_counts(
    store: StateStore, prefix: str
) -> None:
    k, effect, mark = f"{prefix}state", f"{prefix}effect", f"{prefix}mark"
    # Refused (a stale read): the plain value is not written either.
    assert not await store.commit(expect={k: 3}, ops=[PutValue(effect, b"reply", 60)])
    assert await store.fetch(effect) is None
    assert await store.commit(
        expect={k: 0}, ops=[Put(k, b"s"), PutValue(effect, b"reply", 60)], mark=(mark, b"[]", 60)
    )
    assert await store.fetch(effect) == b"reply"
    # Refused because the mark exists: the value stays what the first commit wrote.
    assert not await store.commit(
        expect={}, ops=[PutValue(effect, b"other", 60)], mark=(mark, b"[]", 60)
    )
    assert await store.fetch(effect) == b"reply"
    # It expires like any plain value.
    await store.commit(expect={}, ops=[PutValue(f"{prefix}short", b"x", 0.2)])
    assert await store.fetch(f"{prefix}short") == b"x"
    await asyncio.sleep(0.4)
    assert await store.fetch(f"{prefix}short") is None


async def test_read_many_reads_state_and_plain_values_together(
    store: StateStore, prefix: str
) -> None:
    a, b, plain = f"{prefix}a", f"{prefix}b", f"{prefix}plain"
    await store.commit(expect={}, ops=[Put(a, b"A")])
    await store.put(plain, b"P")
    versioned, values = await store.read_many([a, b], [plain, f"{prefix}none"])
    assert [(v.value, v.version) for v in versioned] == [(b"A", 1), (None, 0)]
    assert values == [b"P", None]
    assert await store.read_many([], []) == ([], [])


async def test_concurrent_commits_one_winner(store: StateStore, prefix: str) -> None:
    k = f"{prefix}race"
    results = await asyncio.gather(
        *(store.commit(expect={k: 0}, ops=[Put(k, str(i).encode())]) for i in range(20))
    )
    assert sum(results) == 1


async def test_indexes(store: StateStore, prefix: str) -> None:
    idx = f"{prefix}idx"
    await store.commit(expect={}, ops=[IndexAdd(idx, "a", 10.0), IndexAdd(idx, "b", 5.0)])
    assert await store.index_range(idx) == [("b", 5.0), ("a", 10.0)]
    assert await store.index_range(idx, max_score=7) == [("b", 5.0)]
    await store.commit(expect={}, ops=[IndexRemove(idx, "b")])
    await store.index_add(idx, "c", 1.0)
    assert [m for m, _ in await store.index_range(idx)] == ["c", "a"]
    await store.index_remove(idx, "c")
    assert [m for m, _ in await store.index_range(idx, limit=1)] == ["a"]


async def test_plain_values_lists_and_ttl(store: StateStore, prefix: str) -> None:
    key = f"{prefix}plain"
    assert await store.put_if_absent(key, b"1", ttl_s=60)
    assert not await store.put_if_absent(key, b"2", ttl_s=60)
    assert await store.fetch(key) == b"1"
    await store.put(f"{prefix}short", b"x", ttl_s=0.2)
    await asyncio.sleep(0.4)
    assert await store.fetch(f"{prefix}short") is None
    lst = f"{prefix}list"
    assert await store.append(lst, b"a") == 1
    assert await store.append(lst, b"b") == 2
    assert await store.list_range(lst) == [b"a", b"b"]
    assert await store.list_range(lst, 1) == [b"b"]
    await store.delete(key)
    assert await store.fetch(key) is None


async def test_get_many_reads_versions_in_one_call(store: StateStore, prefix: str) -> None:
    a, b = f"{prefix}a", f"{prefix}b"
    await store.commit(expect={}, ops=[Put(a, b"1"), Put(a, b"2")])
    got = await store.get_many([a, b])
    assert [(v.value, v.version) for v in got] == [(b"2", 2), (None, 0)]
