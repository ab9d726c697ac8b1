"""The state store: where workers keep run state, dedup marks and recorded side effects.

Workers are stateless; everything a request needs to continue on another instance lives
here (Redis in production, :class:`InProcessStore` in the embedded default). Two kinds of
data:

- *Versioned state* (``get`` / ``commit``): values with a version number. A handler reads
  what it needs, the runtime commits the handler's writes together with the event's dedup
  mark in one atomic step that succeeds only if nothing it read changed and the event was
  not already handled. That is what makes a zombie or a concurrent redelivery harmless: the
  loser's commit is refused and it replays the winner's outputs instead.
- *Plain values* (``fetch`` / ``put`` / ``put_if_absent``): recorded effects (an LLM reply,
  a tool result), caches, idempotency keys, ingress projections. Written directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "Delete",
    "InProcessStore",
    "IndexAdd",
    "IndexRemove",
    "Op",
    "Put",
    "PutValue",
    "StateStore",
    "Versioned",
]


@dataclass(frozen=True, slots=True)
class Versioned:
    """A versioned value; version 0 and value None mean the key does not exist."""

    value: bytes | None
    version: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    ttl_s: int | None = None


@dataclass(frozen=True, slots=True)
class PutValue:
    """A plain value (a recorded effect, a cache entry) written with the commit: unversioned,
    readable with ``fetch``. For what only matters if the handler's run counts."""

    key: str
    value: bytes
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class IndexAdd:
    """Add ``member`` with ``score`` to the sorted index ``key`` (e.g. runs by deadline)."""

    key: str
    member: str
    score: float


@dataclass(frozen=True, slots=True)
class IndexRemove:
    key: str
    member: str


Op = Put | PutValue | Delete | IndexAdd | IndexRemove


@runtime_checkable
class StateStore(Protocol):
    async def ping(self) -> None:
        """Raise ``RetryableError`` when the store cannot be reached."""

    async def close(self) -> None: ...

    async def get(self, key: str) -> Versioned: ...

    async def get_many(self, keys: Sequence[str]) -> list[Versioned]:
        """Several versioned values in one round trip."""

    async def read_many(
        self, keys: Sequence[str], value_keys: Sequence[str]
    ) -> tuple[list[Versioned], list[bytes | None]]:
        """Versioned values of ``keys`` and plain values of ``value_keys``, one round trip."""

    async def commit(
        self,
        *,
        expect: dict[str, int],
        ops: Sequence[Op],
        mark: tuple[str, bytes, int] | None = None,
    ) -> bool:
        """Apply ``ops`` atomically iff every key in ``expect`` still has that version and the
        ``mark`` key (name, value, ttl seconds) does not exist yet; then set the mark.
        Returns False, changing nothing, otherwise."""

    async def fetch(self, key: str) -> bytes | None:
        """A plain value, or a dedup mark."""

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        """Set ``key`` only if it does not exist; True when this call set it."""

    async def delete(self, key: str) -> None: ...

    async def index_add(self, key: str, member: str, score: float) -> None:
        """Add (or move) ``member`` in the sorted index ``key`` outside any commit."""

    async def index_remove(self, key: str, member: str) -> None: ...

    async def index_range(
        self, key: str, max_score: float = float("inf"), limit: int = 1000
    ) -> list[tuple[str, float]]:
        """Members of the sorted index ``key`` with score <= ``max_score``, lowest first."""

    async def append(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        """Append to the list ``key``; returns the new length."""

    async def list_range(self, key: str, start: int = 0, end: int = -1) -> list[bytes]: ...


class InProcessStore:
    """The embedded default: the same semantics in one process's memory."""

    def __init__(self) -> None:
        self._versioned: dict[str, tuple[bytes, int, float | None]] = {}
        self._plain: dict[str, tuple[bytes, float | None]] = {}
        self._indexes: dict[str, dict[str, float]] = {}
        self._lists: dict[str, list[bytes]] = {}

    @staticmethod
    def _expired(expires: float | None) -> bool:
        return expires is not None and expires <= time.monotonic()

    @staticmethod
    def _expiry(ttl_s: float | None) -> float | None:
        return None if ttl_s is None else time.monotonic() + ttl_s

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get(self, key: str) -> Versioned:
        entry = self._versioned.get(key)
        if entry is None or self._expired(entry[2]):
            return Versioned(None, 0)
        return Versioned(entry[0], entry[1])

    async def get_many(self, keys: Sequence[str]) -> list[Versioned]:
        return [await self.get(key) for key in keys]

    async def read_many(
        self, keys: Sequence[str], value_keys: Sequence[str]
    ) -> tuple[list[Versioned], list[bytes | None]]:
        return await self.get_many(keys), [await self.fetch(k) for k in value_keys]

    async def commit(
        self,
        *,
        expect: dict[str, int],
        ops: Sequence[Op],
        mark: tuple[str, bytes, int] | None = None,
    ) -> bool:
        for key, version in expect.items():
            if (await self.get(key)).version != version:
                return False
        if mark is not None and await self.fetch(mark[0]) is not None:
            return False
        for op in ops:
            if isinstance(op, Put):
                version = (await self.get(op.key)).version
                self._versioned[op.key] = (op.value, version + 1, self._expiry(op.ttl_s))
            elif isinstance(op, PutValue):
                self._plain[op.key] = (op.value, self._expiry(op.ttl_s))
            elif isinstance(op, Delete):
                self._versioned.pop(op.key, None)
            elif isinstance(op, IndexAdd):
                self._indexes.setdefault(op.key, {})[op.member] = op.score
            else:
                self._indexes.get(op.key, {}).pop(op.member, None)
        if mark is not None:
            self._plain[mark[0]] = (mark[1], self._expiry(mark[2]))
        return True

    async def fetch(self, key: str) -> bytes | None:
        entry = self._plain.get(key)
        if entry is None or self._expired(entry[1]):
            self._plain.pop(key, None)
            return None
        return entry[0]

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._plain[key] = (value, self._expiry(ttl_s))

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        if await self.fetch(key) is not None:
            return False
        await self.put(key, value, ttl_s)
        return True

    async def delete(self, key: str) -> None:
        self._plain.pop(key, None)
        self._versioned.pop(key, None)
        self._lists.pop(key, None)
        self._indexes.pop(key, None)

    async def index_add(self, key: str, member: str, score: float) -> None:
        self._indexes.setdefault(key, {})[member] = score

    async def index_remove(self, key: str, member: str) -> None:
        self._indexes.get(key, {}).pop(member, None)

    async def index_range(
        self, key: str, max_score: float = float("inf"), limit: int = 1000
    ) -> list[tuple[str, float]]:
        members = sorted(self._indexes.get(key, {}).items(), key=lambda item: (item[1], item[0]))
        return [(m, s) for m, s in members if s <= max_score][:limit]

    async def append(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        items = self._lists.setdefault(key, [])
        items.append(value)
        return len(items)

    async def list_range(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        items = self._lists.get(key, [])
        stop = len(items) if end == -1 else end + 1
        return items[start:stop]
