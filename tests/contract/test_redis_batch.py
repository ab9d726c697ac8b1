"""Auto-pipelining (:mod:`agentstream.handlers.stores.redis_batch`) on a real Redis: every caller
of a shared pipeline gets its own reply or its own error, and a failure of the whole pipeline
reaches every caller in it as ``RetryableError``, within the socket timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from agentstream.handlers.stores.base import Put
from agentstream.handlers.stores.redis_batch import AutoPipeline, pack_in_c
from agentstream.handlers.stores.redis_store import RedisStore
from agentstream.schemas.errors import RetryableError
from redis.exceptions import ResponseError

from tests.services import RedisFactory

pytestmark = pytest.mark.redis


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url)
    await s.ping()
    yield s
    await s.close()


def count_pipelines(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes (in callers) of the pipelines sent from now on."""
    sizes: list[int] = []
    send = AutoPipeline._send

    async def counting(self: AutoPipeline, batch: list[Any]) -> None:
        sizes.append(len(batch))
        await send(self, batch)

    monkeypatch.setattr(AutoPipeline, "_send", counting)
    return sizes


async def test_concurrent_calls_share_pipelines_and_get_their_own_replies(
    store: RedisStore, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = count_pipelines(monkeypatch)
    keys = [f"{prefix}k{i}" for i in range(300)]
    await asyncio.gather(*(store.put(k, k.encode(), ttl_s=60) for k in keys))
    values = await asyncio.gather(*(store.fetch(k) for k in keys))
    assert values == [k.encode() for k in keys]
    rows = await asyncio.gather(*(store.get_many([f"{k}:v", f"{k}:none"]) for k in keys[:50]))
    assert all(r[0].version == 0 and r[1].version == 0 for r in rows)
    # 650 calls issued in three ticks: a handful of pipelines, not one connection each.
    assert sum(sizes) == 650
    assert len(sizes) <= 6, sizes


async def test_an_error_reaches_only_its_caller(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    batch = AutoPipeline(client)
    try:
        await client.set(f"{prefix}text", b"not a number")
        results = await asyncio.gather(
            batch.call("INCR", f"{prefix}text"),
            batch.call("GET", f"{prefix}text"),
            batch.call_many([(("INCR", f"{prefix}n"), {}), (("INCR", f"{prefix}text"), {})]),
            batch.call("INCR", f"{prefix}n"),
            return_exceptions=True,
        )
        assert isinstance(results[0], ResponseError)
        assert results[1] == b"not a number"
        assert isinstance(results[2], ResponseError)  # the first error of its commands
        assert results[3] == 2  # the call_many's first INCR ran: a pipeline is no transaction
    finally:
        await batch.aclose()
        await client.aclose()


async def test_a_cancelled_caller_does_not_disturb_the_others(
    store: RedisStore, prefix: str
) -> None:
    await store.put(f"{prefix}a", b"1")
    doomed = asyncio.ensure_future(store.fetch(f"{prefix}a"))
    others = [asyncio.ensure_future(store.fetch(f"{prefix}a")) for _ in range(5)]
    await asyncio.sleep(0)
    doomed.cancel()
    assert await asyncio.gather(*others) == [b"1"] * 5
    assert doomed.cancelled()


async def test_commit_loads_the_script_again_after_a_flush(
    store: RedisStore, redis_url: str, prefix: str
) -> None:
    assert await store.commit(expect={}, ops=[Put(f"{prefix}s0", b"x")])
    client = aioredis.Redis.from_url(redis_url)
    await client.script_flush()
    await client.aclose()
    results = await asyncio.gather(
        *(
            store.commit(expect={f"{prefix}s{i}": 0}, ops=[Put(f"{prefix}s{i}", b"y")])
            for i in range(1, 11)
        ),
        store.fetch(f"{prefix}nothing"),
    )
    assert results == [True] * 10 + [None]


async def test_concurrent_commits_that_find_no_script_load_it_once(
    store: RedisStore, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each SCRIPT LOAD takes a pooled connection: a worker with thousands of commits in
    # flight on a new server opened a thousand connections when each commit loaded it.
    client = aioredis.Redis.from_url(redis_url)
    await client.script_flush()
    await client.aclose()
    loads = 0
    script_load = store._redis.script_load

    def counted(script: str) -> Any:
        nonlocal loads
        loads += 1
        return script_load(script)

    monkeypatch.setattr(store._redis, "script_load", counted)
    results = await asyncio.gather(
        *(store.commit(expect={}, ops=[Put(f"{prefix}once{i}", b"y")]) for i in range(200))
    )
    assert results == [True] * 200
    assert loads == 1


async def test_an_outage_fails_every_caller_as_retryable(
    private_redis: RedisFactory, prefix: str
) -> None:
    server = private_redis()
    store = RedisStore(server.url, socket_timeout_s=0.5)
    try:
        await store.put(f"{prefix}a", b"1")
        server.stop()
        results = await asyncio.gather(
            *(store.fetch(f"{prefix}a") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, RetryableError) for r in results), results
        server.start()
        assert await store.put_if_absent(f"{prefix}b", b"2")
    finally:
        await store.close()


async def test_a_silent_server_times_out_every_caller() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.3)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.fetch(f"k{i}") for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, RetryableError) for r in results), results
        assert time.monotonic() - started < 10
    finally:
        await store.close()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def test_c_packing_sends_the_bytes_redis_py_would() -> None:
    pool = aioredis.ConnectionPool.from_url("redis://127.0.0.1:1/0")
    plain = pool.make_connection()
    pack_in_c(pool)
    packing = pool.make_connection()
    assert type(packing) is not type(plain)
    for args in [
        ("GET", "k"),
        ("SCRIPT LOAD", "return 1"),
        ("EVALSHA", "ab" * 20, 2, "k1", "k2", "1", b"\x00\xff" * 5000, 604800, "zadd", "m", "1.5"),
        ("SET", "k", "é", "PX", 1000),
    ]:
        assert packing.pack_command(*args) == [b"".join(plain.pack_command(*args))]


async def test_the_store_talks_on_one_connection_to_the_database_of_its_url(
    redis_url: str, prefix: str
) -> None:
    base = redis_url.rsplit("/", 1)[0]
    store = RedisStore(f"{base}/3")
    db3 = aioredis.Redis.from_url(f"{base}/3")
    db0 = aioredis.Redis.from_url(f"{base}/0")
    try:
        await asyncio.gather(*(store.put(f"{prefix}db{i}", b"v", ttl_s=60) for i in range(50)))
        assert await db3.get(f"{prefix}db7") == b"v"
        assert await db0.get(f"{prefix}db7") is None
        clients = [c for c in await db0.client_list() if c.get("db") == "3"]
        assert len(clients) == 2  # the store's one connection, and db3's
        assert await store.index_range(f"{prefix}none") == []
        await store.index_add(f"{prefix}idx", "m", 2.5)
        assert await store.index_range(f"{prefix}idx") == [("m", 2.5)]
        assert await store.put_if_absent(f"{prefix}once", b"1") is True
        assert await store.put_if_absent(f"{prefix}once", b"2") is False
    finally:
        await store.close()
        await db3.aclose()
        await db0.aclose()


def test_the_store_works_on_uvloop(redis_url: str, prefix: str) -> None:
    """Workers run on uvloop, whose transports are not asyncio's classes."""
    import uvloop

    async def use() -> list[bytes | None]:
        store = RedisStore(redis_url)
        try:
            await store.put(f"{prefix}uv", b"1")
            return await asyncio.gather(*(store.fetch(f"{prefix}uv") for _ in range(20)))
        finally:
            await store.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(use()) == [b"1"] * 20


def test_error_replies_get_redis_pys_classes() -> None:
    """A restarting server answers LOADING: retryable like a dropped connection."""
    from agentstream.handlers.stores.redis_wire import _typed_error
    from redis.exceptions import BusyLoadingError, ConnectionError, NoScriptError

    assert isinstance(_typed_error(ResponseError("LOADING Redis is loading")), ConnectionError)
    assert isinstance(_typed_error(ResponseError("LOADING x")), BusyLoadingError)
    assert isinstance(_typed_error(ResponseError("NOSCRIPT No matching")), NoScriptError)
    wrong = _typed_error(ResponseError("WRONGTYPE Operation against a key"))
    assert type(wrong) is ResponseError
