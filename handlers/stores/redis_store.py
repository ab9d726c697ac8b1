"""The state store on Redis (``REDIS_URL``): what makes workers stateless.

Versioned values are hashes ``{v: version, d: data}``; :meth:`RedisStore.commit` is one Lua
script, so the version checks, the dedup mark and the writes happen atomically on the server
(no connection is held while a handler awaits its LLM, unlike WATCH/MULTI). Connection
failures become ``RetryableError``: the runtime retries the event, it is never lost.

Commands go through :class:`agentstream.handlers.stores.redis_batch.AutoPipeline`: those issued by
concurrent handlers in one event-loop tick share one pipeline, sent on one pipelined connection
(:mod:`agentstream.handlers.stores.redis_wire`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from agentstream.handlers.stores.base import Delete, IndexAdd, Op, Put, PutValue, Versioned
from agentstream.handlers.stores.redis_batch import AutoPipeline, Command, pack_in_c
from agentstream.handlers.stores.redis_wire import RedisWire, supported
from agentstream.schemas.errors import RetryableError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RedisStore"]

# KEYS: [mark?, expect..., op keys...]; ARGV: has_mark, mark_value, mark_ttl, n_expect,
# versions..., then per op: kind, a, b.
_COMMIT = """
local has_mark = ARGV[1] == '1'
local n_expect = tonumber(ARGV[4])
local k = 1
if has_mark then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  k = 2
end
for i = 1, n_expect do
  local v = tonumber(redis.call('HGET', KEYS[k], 'v') or '0')
  if v ~= tonumber(ARGV[4 + i]) then return 0 end
  k = k + 1
end
local a = 5 + n_expect
while a <= #ARGV do
  local kind, x, y = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local key = KEYS[k]
  if kind == 'put' then
    redis.call('HINCRBY', key, 'v', 1)
    redis.call('HSET', key, 'd', x)
    if tonumber(y) > 0 then redis.call('EXPIRE', key, tonumber(y))
    else redis.call('PERSIST', key) end
  elseif kind == 'set' then
    if tonumber(y) > 0 then redis.call('SET', key, x, 'PX', tonumber(y))
    else redis.call('SET', key, x) end
  elseif kind == 'del' then
    redis.call('DEL', key)
  elseif kind == 'zadd' then
    redis.call('ZADD', key, y, x)
  else
    redis.call('ZREM', key, x)
  end
  k = k + 1
  a = a + 3
end
if has_mark then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
"""


class RedisStore:
    def __init__(
        self, url: str, *, socket_timeout_s: float = 5.0, max_connections: int = 256
    ) -> None:
        self.url = url
        # A blocking pool: with more handlers in flight than connections, a command waits
        # for a free connection instead of failing at once.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=15,
            max_connections=max_connections,
            timeout=socket_timeout_s * 4,
        )
        pack_in_c(pool)
        self._redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._commit = self._redis.register_script(_COMMIT)
        self._wire = RedisWire(url, timeout_s=socket_timeout_s) if supported(url) else None
        self._batch = AutoPipeline(self._redis, wire=self._wire)
        self._script_lock = asyncio.Lock()
        self._script_loads = 0

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RetryableError(f"Redis unreachable at {self._safe_url()}: {exc}") from exc

    def _safe_url(self) -> str:
        # Never print a password that may be in the URL: in its user part, or as the
        # ``password``/``ssl_password`` options of its query string.
        parsed = urlsplit(self.url)
        netloc = parsed.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        query = urlencode(
            [(k, "***" if "password" in k else v) for k, v in parse_qsl(parsed.query)], safe="/*"
        )
        return urlunsplit((parsed.scheme, netloc, parsed.path, query, ""))

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._batch.aclose()
        if self._wire is not None:
            await self._wire.aclose()
        await self._redis.aclose(close_connection_pool=True)

    async def get(self, key: str) -> Versioned:
        return _versioned(await self._call(self._batch.call("HMGET", key, "v", "d")))

    async def get_many(self, keys: Sequence[str]) -> list[Versioned]:
        versioned, _ = await self.read_many(keys, ())
        return versioned

    async def read_many(
        self, keys: Sequence[str], value_keys: Sequence[str]
    ) -> tuple[list[Versioned], list[bytes | None]]:
        commands: list[Command] = [(("HMGET", k, "v", "d"), {}) for k in keys]
        commands += [(("GET", k), {}) for k in value_keys]
        rows = await self._call(self._batch.call_many(commands))
        return [_versioned(row) for row in rows[: len(keys)]], list(rows[len(keys) :])

    async def commit(
        self,
        *,
        expect: dict[str, int],
        ops: Sequence[Op],
        mark: tuple[str, bytes, int] | None = None,
    ) -> bool:
        keys: list[str] = []
        args: list[Any] = []
        if mark is not None:
            keys.append(mark[0])
            args += ["1", mark[1], max(1, mark[2])]
        else:
            args += ["0", "", 0]
        args.append(len(expect))
        for key, version in expect.items():
            keys.append(key)
            args.append(version)
        for op in ops:
            keys.append(op.key)
            if isinstance(op, Put):
                args += ["put", op.value, op.ttl_s or 0]
            elif isinstance(op, PutValue):
                args += ["set", op.value, _ms(op.ttl_s) if op.ttl_s else 0]
            elif isinstance(op, Delete):
                args += ["del", "", 0]
            elif isinstance(op, IndexAdd):
                args += ["zadd", op.member, repr(op.score)]
            else:
                args += ["zrem", op.member, 0]
        command = ("EVALSHA", self._commit.sha, len(keys), *keys, *args)
        loads = self._script_loads
        try:
            result = await self._call(self._batch.call(*command))
        except NoScriptError:
            # The server lost its script cache (a restart, SCRIPT FLUSH), or never had it (a
            # new server). Nothing ran: load the script and send the call again.
            await self._load_script(loads)
            result = await self._call(self._batch.call(*command))
        return bool(result)

    async def _load_script(self, seen: int) -> None:
        """Load the commit script once for every commit that found it missing since load
        number ``seen``: each SCRIPT LOAD takes a pooled connection, and a worker with
        thousands of commits in flight opened a thousand connections (and kept their
        buffers) when each loaded it itself."""
        async with self._script_lock:
            if self._script_loads == seen:
                await self._call(self._redis.script_load(_COMMIT))
                self._script_loads += 1

    async def fetch(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(self._batch.call("GET", key))
        return value

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self._call(self._batch.call("SET", key, value, *_px(ttl_s)))

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return bool(await self._call(self._batch.call("SET", key, value, *_px(ttl_s), "NX")))

    async def delete(self, key: str) -> None:
        await self._call(self._batch.call("DEL", key))

    async def index_add(self, key: str, member: str, score: float) -> None:
        await self._call(self._batch.call("ZADD", key, repr(score), member))

    async def index_remove(self, key: str, member: str) -> None:
        await self._call(self._batch.call("ZREM", key, member))

    async def index_range(
        self, key: str, max_score: float = float("inf"), limit: int = 1000
    ) -> list[tuple[str, float]]:
        upper = "+inf" if max_score == float("inf") else repr(max_score)
        rows = await self._call(
            self._batch.call(
                "ZRANGEBYSCORE",
                key,
                "-inf",
                upper,
                "WITHSCORES",
                "LIMIT",
                0,
                limit,
                withscores=True,
                score_cast_func=float,
            )
        )
        return [(m.decode() if isinstance(m, bytes) else str(m), float(s)) for m, s in rows]

    async def append(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, value)
            if ttl_s:
                pipe.expire(key, int(ttl_s))
            results = await self._call(pipe.execute())
        return int(results[0])

    async def list_range(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        items: list[bytes] = await self._call(self._batch.call("LRANGE", key, start, end))
        return items


def _versioned(row: Sequence[Any]) -> Versioned:
    """A versioned value from its hash fields ``[v, d]`` (both None: no such key)."""
    version, data = row
    return Versioned(None, 0) if version is None else Versioned(data, int(version))


def _ms(ttl_s: float) -> int:
    """A time to live in whole milliseconds, at least one."""
    return max(1, int(ttl_s * 1000))


def _px(ttl_s: float | None) -> tuple[Any, ...]:
    """The ``PX`` arguments of a SET with this time to live (none without one)."""
    return () if ttl_s is None else ("PX", _ms(ttl_s))
