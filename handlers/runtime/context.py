"""What a handler gets besides its event: reads and staged writes of run state, and
recorded side effects.

A handler never writes the store directly. It ``load``s state (the version it saw is
remembered) and ``save``s new state (staged); the runtime commits the staged writes together
with the event's dedup mark and its outputs, atomically, after the handler returns. If
anything it read changed meanwhile, the commit is refused and the event runs again.

``save`` stages the object itself, like a unit of work: it is serialised when the writes are
taken for the commit (:attr:`Context.ops`), a key saved twice is written once (the last
save wins), and a ``load`` of a key this handler saved gives back that very object. So a
handler that saves a state and later loads, changes and saves it again (the agent's
conversation state, at the start and at the end of a run) pays one serialisation and no
parse; what is committed is the object as it is when the handler returns.

Side effects outside Kafka (an LLM call, a tool run) go through :meth:`Context.once`: the
first run records the result under an idempotency key (``request_id`` + step, or the tool
call id), a redelivered event gets the recorded result back instead of calling again. A
result is recorded at once (a tool that acts on the world must not act twice after a crash)
or, with ``with_commit=True``, with the handler's commit (an LLM reply: calling again after
a crash only costs the call, and the reply saves a round trip).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from agentstream.handlers.stores.base import (
    Delete,
    IndexAdd,
    IndexRemove,
    Op,
    Put,
    PutValue,
    StateStore,
    Versioned,
)
from pydantic import BaseModel

__all__ = ["Context", "Origin"]

ModelT = TypeVar("ModelT", bound=BaseModel)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the event being handled came from."""

    topic: str
    partition: int
    offset: int
    group: str
    attempt: int = 1


@dataclass(slots=True)
class _Save:
    key: str
    value: BaseModel
    ttl_s: int | None


@dataclass(slots=True)
class Context:
    store: StateStore
    origin: Origin
    namespace: str
    now: Callable[[], datetime]
    effect_ttl_s: int = 7 * 24 * 3600
    reads: dict[str, int] = field(default_factory=dict)
    _ops: list[Op | _Save] = field(default_factory=list)
    _staged: dict[str, BaseModel | None] = field(default_factory=dict)
    _prefetched: dict[str, Versioned] = field(default_factory=dict)
    _values: dict[str, bytes | None] = field(default_factory=dict)

    def key(self, *parts: str) -> str:
        """A store key in this deployment's namespace."""
        return ":".join((self.namespace, *parts))

    async def prefetch(self, *keys: str, effects: Sequence[str] = ()) -> None:
        """Read ``keys`` in one round trip; later ``load``s of them need none. A key only
        prefetched, never loaded, does not count as read. ``effects``: idempotency keys of
        :meth:`once` calls to come, read in the same round trip."""
        wanted = [k for k in keys if k not in self._prefetched and k not in self._staged]
        values = [self.key("effect", k) for k in effects]
        values = [k for k in values if k not in self._values]
        if not wanted and not values:
            return
        versioned, plain = await self.store.read_many(wanted, values)
        self._prefetched.update(zip(wanted, versioned, strict=True))
        self._values.update(zip(values, plain, strict=True))

    @property
    def ops(self) -> list[Op]:
        """The staged writes, in order, as the store commits them: saved objects serialised
        now, a key saved more than once written once, by its last save."""
        last = {op.key: i for i, op in enumerate(self._ops) if isinstance(op, _Save | Delete)}
        ops: list[Op] = []
        for i, op in enumerate(self._ops):
            if not isinstance(op, _Save):
                ops.append(op)
            elif last[op.key] == i:
                ops.append(Put(op.key, op.value.model_dump_json().encode(), op.ttl_s))
        return ops

    async def load(self, key: str, model: type[ModelT]) -> ModelT | None:
        """The state at ``key`` as ``model``. A key this handler saved gives back the saved
        object itself (or None after a delete)."""
        if key in self._staged:
            staged = self._staged[key]
            if staged is None or isinstance(staged, model):
                return staged
            return model.model_validate_json(staged.model_dump_json())
        # A prefetched value is parsed once, then let go: a handler holds its parsed state
        # while it awaits a model, not the bytes too (issue 17). Loaded again, the key is read
        # again; the version first read is the one the commit checks.
        current = self._prefetched.pop(key, None) or await self.store.get(key)
        self.reads.setdefault(key, current.version)
        return None if current.value is None else model.model_validate_json(current.value)

    def save(self, key: str, value: BaseModel, ttl_s: int | None = None) -> None:
        """Stage ``value`` as the new state at ``key`` (serialised for the commit, see the
        module docstring)."""
        self._staged[key] = value
        self._ops.append(_Save(key, value, ttl_s))

    def delete(self, key: str) -> None:
        self._staged[key] = None
        self._ops.append(Delete(key))

    def index_add(self, key: str, member: str, score: float) -> None:
        self._ops.append(IndexAdd(key, member, score))

    def index_remove(self, key: str, member: str) -> None:
        self._ops.append(IndexRemove(key, member))

    def put_value(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Write the plain value ``key`` with the commit (a cache entry: lost if the run
        does not count)."""
        self._ops.append(PutValue(key, value, ttl_s))

    async def once(
        self,
        key: str,
        model: type[ModelT],
        call: Callable[[], Awaitable[ModelT]],
        *,
        with_commit: bool = False,
    ) -> tuple[ModelT, bool]:
        """Run the side effect ``call`` once per idempotency ``key``; returns the result and
        whether it was recorded before (True: not called again). The result is recorded
        at once, or with the commit when ``with_commit`` (see the module docstring)."""
        effect_key = self.key("effect", key)
        if effect_key in self._values:
            stored = self._values[effect_key]
        else:
            stored = await self.store.fetch(effect_key)
        if stored is not None:
            return model.model_validate_json(stored), True
        result = await call()
        data = result.model_dump_json().encode()
        if with_commit:
            self.put_value(effect_key, data, self.effect_ttl_s)
        else:
            await self.store.put(effect_key, data, self.effect_ttl_s)
        self._values[effect_key] = data
        return result, False
