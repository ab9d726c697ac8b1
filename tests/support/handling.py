"""Handlers called directly, one event at a time, on the in-process store.

:class:`Handling` gives each event a fresh :class:`Context` and commits what the handler
staged the way the runtime does (its writes, checked against the versions it read), so a
test drives a worker's handlers event by event without a bus, a worker or the offline
model. ``commit=False`` plays a crash before the commit: the event will be delivered again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from agentstream.handlers.runtime.context import Context, Origin
from agentstream.handlers.stores.base import InProcessStore
from agentstream.schemas import Envelope
from pydantic import BaseModel

__all__ = ["NS", "T0", "Clock", "Handling"]

NS = "test"
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

EventT = TypeVar("EventT", bound=Envelope[Any])
ModelT = TypeVar("ModelT", bound=BaseModel)
Handler = Callable[[EventT, Context], Awaitable[Sequence[Envelope[Any]]]]


@dataclass
class Clock:
    """The handlers' ``now``: fixed until a test moves it."""

    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Handling:
    store: InProcessStore = field(default_factory=InProcessStore)
    clock: Clock = field(default_factory=Clock)
    namespace: str = NS

    def context(self, partition: int = 0) -> Context:
        return Context(self.store, Origin("t", partition, 0, "g"), self.namespace, self.clock)

    async def handle(
        self, handler: Handler[EventT], event: EventT, *, partition: int = 0, commit: bool = True
    ) -> list[Envelope[Any]]:
        """Outputs of ``handler`` for ``event``, its writes committed unless ``commit`` is
        false."""
        return await self.run(lambda ctx: handler(event, ctx), partition=partition, commit=commit)

    async def run(
        self,
        produce: Callable[[Context], Awaitable[Sequence[Envelope[Any]]]],
        *,
        partition: int = 0,
        commit: bool = True,
    ) -> list[Envelope[Any]]:
        ctx = self.context(partition)
        outputs = list(await produce(ctx))
        if commit:
            assert await self.store.commit(expect=ctx.reads, ops=ctx.ops), "commit refused"
        return outputs

    async def load(self, model: type[ModelT], *key: str) -> ModelT | None:
        """The committed state under ``key`` (its parts, without the namespace)."""
        current = await self.store.get(":".join((self.namespace, *key)))
        return None if current.value is None else model.model_validate_json(current.value)

    async def index(self, *key: str) -> list[str]:
        return [m for m, _ in await self.store.index_range(":".join((self.namespace, *key)))]
