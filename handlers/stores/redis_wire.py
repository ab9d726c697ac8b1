"""One pipelined Redis connection speaking RESP through hiredis: what the store's
auto-pipelining sends its batches on.

redis-py's asyncio pipeline costs more CPU than the commands it sends: a pool checkout under
a timeout and a condition, a retry wrapper, a Python parse step and response callbacks per
command, about a fifth of a worker's CPU. :class:`RedisWire` writes a batch's commands packed
by hiredis in one write and feeds the replies to a ``hiredis.Reader``, matching them to the
waiting batches in order (Redis answers in order on one connection). Redis runs commands
one at a time anyway, so one connection carries all of a worker's traffic.

Failures: a lost connection, a refused reconnect or a reply slower than ``timeout_s``
fails every batch waiting on the connection with ``ConnectionError``/``TimeoutError``
(the store turns them into ``RetryableError``); the next batch connects again. URLs:
``redis://`` and ``rediss://``, read by redis-py's own ``parse_url`` (user, password,
database, and for ``rediss://`` the TLS options of its query string: ``ssl_ca_certs``,
``ssl_cert_reqs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``...), whose TLS
context is the one redis-py's ``SSLConnection`` builds from them, defaults included (the
certificate and the host name verified); anything else stays on redis-py (:func:`supported`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, cast
from urllib.parse import urlparse

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import RedisSSLContext, SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RedisWire", "supported"]


def supported(url: str) -> bool:
    return urlparse(url).scheme in ("redis", "rediss") and hasattr(hiredis, "pack_command")


class _Batch:
    __slots__ = ("future", "replies", "sent", "size")

    def __init__(self, size: int, future: asyncio.Future[list[Any]]) -> None:
        self.size = size
        self.future = future
        self.replies: list[Any] = []
        self.sent = time.monotonic()


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[_Batch] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()

    def usable(self) -> bool:
        """Open, and on the running event loop (a store may outlive the loop it first ran
        on, whose connections died with it)."""
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and self.loop is asyncio.get_running_loop()
        )

    def send(self, packed: bytes, size: int) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            future.set_exception(RedisConnectionError("Redis connection closed"))
            return future
        self.waiting.append(_Batch(size, future))
        self.transport.write(packed)
        if self._timer is None:
            self._timer = loop.call_later(self.timeout_s, self._check_timeout)
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while waiting:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                break
            batch = waiting[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.size:
                waiting.popleft()
                if not batch.future.done():
                    batch.future.set_result(batch.replies)

    def _check_timeout(self) -> None:
        self._timer = None
        if not self.waiting:
            return
        late = time.monotonic() - self.waiting[0].sent
        if late >= self.timeout_s:
            self._fail(RedisTimeoutError(f"no reply from Redis in {self.timeout_s:g}s"))
            if self.transport is not None:
                self.transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.timeout_s - late, self._check_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            batch = self.waiting.popleft()
            if not batch.future.done():
                batch.future.set_exception(error)


class RedisWire:
    """Batches of commands on one connection, connected on first use and after a failure."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        # redis-py's reading of the URL, so the wire connects where, as whom and how the
        # store's redis-py pool does: ``?db=`` over the path, percent-decoding, TLS options.
        options: dict[str, Any] = dict(parse_url(url))
        self._host: str = options.get("host", "localhost")
        self._port: int = options.get("port", 6379)
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._db: int = options.get("db", 0)
        self._tls: RedisSSLContext | None = None
        if options.get("connection_class") is SSLConnection:
            # redis-py's SSLConnection checks the options and holds their defaults
            # (ssl_cert_reqs "required", ssl_check_hostname on); an unknown ``ssl_`` option
            # or value fails here, at construction, as it fails redis-py's first connect.
            tls = {k: v for k, v in options.items() if k.startswith("ssl_")}
            try:
                self._tls = SSLConnection(host=self._host, port=self._port, **tls).ssl_context
            except TypeError as exc:
                raise ValueError(f"unsupported TLS option in the Redis URL: {exc}") from exc
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._connecting_loop: asyncio.AbstractEventLoop | None = None

    async def send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands`` in order; an error reply is returned, not raised, as
        the exception redis-py would raise for it (:func:`_typed_error`)."""
        protocol = self._protocol
        if protocol is None or not protocol.usable():
            protocol = await self._connect()
        packed = b"".join(hiredis.pack_command(_command_args(c)) for c in commands)
        replies = await protocol.send(packed, len(commands))
        return [_typed_error(r) if isinstance(r, ResponseError) else r for r in replies]

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._connecting_loop is not loop:
            self._connecting, self._connecting_loop = asyncio.Lock(), loop
        async with self._connecting:
            if self._protocol is not None and self._protocol.usable():
                return self._protocol
            try:
                # Built on first use, like redis-py: CA and key files are read when connecting
                # (a missing file is an OSError, below); the context is shared afterwards.
                tls = self._tls.get() if self._tls is not None else None
                async with asyncio.timeout(self._timeout_s):
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self._timeout_s), self._host, self._port, ssl=tls
                    )
            except TimeoutError as exc:
                raise RedisTimeoutError(f"connecting to Redis timed out: {exc}") from exc
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            hello: list[tuple[Any, ...]] = []
            if self._password is not None:
                auth = ("AUTH", self._username, self._password) if self._username else None
                hello.append(auth or ("AUTH", self._password))
            if self._db:
                hello.append(("SELECT", self._db))
            if hello:
                packed = b"".join(hiredis.pack_command(c) for c in hello)
                for reply in await protocol.send(packed, len(hello)):
                    if isinstance(reply, ResponseError):
                        protocol.closed = True
                        if protocol.transport is not None:
                            protocol.transport.close()
                        raise RedisConnectionError(f"Redis refused the connection: {reply}")
            self._protocol = protocol
            return protocol

    async def aclose(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.closed = True
            with contextlib.suppress(RuntimeError):  # its event loop is gone already
                protocol.transport.close()


def _command_args(command: tuple[Any, ...]) -> tuple[Any, ...]:
    # Like redis-py: a command name with a space ("SCRIPT LOAD") is several arguments.
    name = command[0]
    if isinstance(name, str) and " " in name:
        return (*name.split(), *command[1:])
    return command


def _typed_error(error: ResponseError) -> Exception:
    """The error class redis-py gives this reply: ``LOADING`` (a restarting server) is a
    ``ConnectionError``, ``NOSCRIPT`` a ``NoScriptError``..."""
    typed: Exception = BaseParser.parse_error(str(error))  # type: ignore[no-untyped-call]
    return typed
