"""Auto-pipelining for the Redis store: the commands of one event-loop tick in one pipeline.

A worker has hundreds of handlers in flight, and each store call used to take its own pooled
connection, with redis-py's per-command overhead (pool checkout, a timeout context, packing,
observability hooks): about 90 µs of CPU per command, most of the worker's CPU per event.
:class:`AutoPipeline` queues every command issued before the loop comes back to its
scheduler and sends the queue as one non-transactional pipeline on one connection, as
ioredis' ``enableAutoPipelining`` does. The handlers resumed by one pipeline's replies issue
their next commands in the same tick, so under load batches form by themselves; an idle
worker pays one ``call_soon`` of latency.

Each caller still gets its own outcome: its reply, or its own ``ResponseError`` (a
``NOSCRIPT`` of one script call fails that call only). A failure of the whole pipeline (the
connection dropped, a read timed out) reaches every caller in it. A pipeline is not a
transaction: the commands of a batch are independent, exactly as when they ran on separate
connections.

:func:`pack_in_c` makes the pool's connections pack commands with hiredis' C packer, as
redis-py's synchronous client already does (its asyncio one packs in Python, about 40 µs for
a commit call).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from agentstream.handlers.stores.redis_wire import RedisWire
from redis.exceptions import DataError

try:
    import hiredis

    _C_PACKER = hasattr(hiredis, "pack_command")
except ImportError:  # optional: redis-py packs and parses in Python without it
    _C_PACKER = False

__all__ = ["AutoPipeline", "Command", "pack_in_c"]

#: A command's arguments and its redis-py options (used by the reply callbacks, e.g.
#: ``withscores``).
Command = tuple[tuple[Any, ...], dict[str, Any]]

_NO_OPTIONS: dict[str, Any] = {}


class _Entry:
    """One caller's commands and the future that receives their replies."""

    __slots__ = ("commands", "future", "single")

    def __init__(self, commands: list[Command], future: asyncio.Future[Any], single: bool):
        self.commands = commands
        self.future = future
        self.single = single


class AutoPipeline:
    """Queues commands and sends each tick's queue as one pipeline (module docstring).

    ``max_batch`` bounds the commands of one pipeline (the reply of a larger queue would sit
    in one connection's buffer); a longer queue is split over several pipelines, sent
    concurrently on as many pooled connections.
    """

    def __init__(
        self, redis: aioredis.Redis, *, max_batch: int = 512, wire: RedisWire | None = None
    ) -> None:
        self._redis = redis
        #: When set, batches go on this one pipelined connection instead of redis-py's
        #: pipelines (:mod:`agentstream.handlers.stores.redis_wire`); ``max_batch`` then does not
        # split them.
        self._wire = wire
        self._max_batch = max_batch
        self._queue: list[_Entry] = []
        self._queued_commands = 0
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def call(self, *args: Any, **options: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply (after redis-py's callback)."""
        return self._enqueue([(args, options or _NO_OPTIONS)], single=True)

    def call_many(self, commands: list[Command]) -> asyncio.Future[list[Any]]:
        """Queue several commands sent together; the future gets the list of their replies,
        or the first error among them."""
        return self._enqueue(commands, single=False)

    def _enqueue(self, commands: list[Command], *, single: bool) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not commands:
            future.set_result([])
            return future
        self._queue.append(_Entry(commands, future, single))
        self._queued_commands += len(commands)
        if self._wire is None and self._queued_commands >= self._max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        batch, self._queue, self._queued_commands = self._queue, [], 0
        task = asyncio.get_running_loop().create_task(self._send(batch))
        # The loop keeps only weak references to tasks; hold this one until it ends.
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Entry]) -> None:
        try:
            if self._wire is not None:
                commands = [c for entry in batch for c in entry.commands]
                raw = await self._wire.send([args for args, _ in commands])
                replies = [_shaped(c, r) for c, r in zip(commands, raw, strict=True)]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for entry in batch:
                    for args, options in entry.commands:
                        pipe.execute_command(*args, **options)
                replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for entry in batch:
                entry.future.cancel()
            raise
        except Exception as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        i = 0
        for entry in batch:
            n = len(entry.commands)
            mine = replies[i : i + n]
            i += n
            if entry.future.done():  # the caller was cancelled; the command ran anyway
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                entry.future.set_exception(error)
            else:
                entry.future.set_result(mine[0] if entry.single else mine)

    async def aclose(self) -> None:
        """Send what is queued and wait for every pipeline in flight."""
        self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


def _shaped(command: Command, reply: Any) -> Any:
    """A raw reply as redis-py's callbacks give it, for the commands the store sends."""
    args, options = command
    if isinstance(reply, Exception):
        return reply
    if options.get("withscores"):
        cast = options.get("score_cast_func", float)
        return [(reply[i], cast(reply[i + 1])) for i in range(0, len(reply), 2)]
    if args[0] == "SET" and reply == b"OK":
        return True
    return reply


class _CPacking:
    """Mixed into a redis-py asyncio connection class: ``pack_command`` by hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # Like redis-py: a command name with spaces ("SCRIPT LOAD") is several arguments.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


def pack_in_c(pool: aioredis.ConnectionPool) -> None:
    """Make the connections ``pool`` opens from now on pack commands in C, if hiredis is
    installed (whatever their class: TCP, TLS or Unix socket)."""
    if not _C_PACKER:
        return
    base = pool.connection_class
    if not issubclass(base, _CPacking):
        pool.connection_class = type(f"CPacking{base.__name__}", (_CPacking, base), {})
