"""The deadline sweeper of the agent worker: ends runs whose tools never answered.

A run with a deadline is indexed under ``deadlines:<agent>:<partition>`` (``index``) when it
starts and removed
when it ends. The sweeper reads the expired entries of the partitions this worker owns and
runs each expiry as a job in the conversation's lane, through
:meth:`agentstream.handlers.agent.routes.AgentHandlers.expire`, so it is ordered and committed like
one of that conversation's events and answers the request once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.periodic import run_periodically
from agentstream.handlers.runtime.route import Job
from agentstream.handlers.runtime.worker import Worker
from agentstream.schemas import Envelope

__all__ = ["DeadlineSweeper", "Expiring"]


class Expiring(Protocol):
    """What the sweeper ends runs with: :class:`~agentstream.handlers.agent.routes.AgentHandlers`
    (a protocol, so this module does not import the routes that import it)."""

    async def expire(self, run_id: str, ctx: Context) -> Sequence[Envelope[Any]]: ...


class DeadlineSweeper:
    """Ends runs whose deadline passed while they waited for tools.

    Every ``interval_s`` it looks up the expired runs of the partitions this worker owns and
    submits a job into the conversation's lane, so the expiry is ordered with that
    conversation's events and committed like one (its mark makes it happen once).
    """

    def __init__(
        self,
        worker: Worker,
        handlers: Expiring,
        namespace: str,
        topic_name: str,
        interval_s: float = 1.0,
        *,
        index: str = "deadlines",
        name: str = "agent.deadline",
    ) -> None:
        self.worker = worker
        self.handlers = handlers
        self.namespace = namespace
        self.topic_name = topic_name
        self.interval_s = interval_s
        self.index = index
        self.name = name
        self._submitted: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodically(self.worker, stop, self.interval_s, self.sweep, "deadline sweep")

    async def sweep(self, partitions: Iterable[int] | None = None, *, wait: bool = False) -> int:
        """Submit (or, with ``wait``, run one by one) the expiry of every run whose deadline
        passed, on ``partitions`` (default: those this worker owns). Returns how many.

        Running without owning a partition is safe: the expiry commits with the same
        version checks and dedup mark as any event, so it cannot race a handler into a
        second answer. The Lambda deployment uses that from a schedule."""
        now = self.worker.now().timestamp()
        owned = self.worker.owned_partitions(self.topic_name)
        expired: set[str] = set()
        for partition in sorted(owned if partitions is None else partitions):
            index = f"{self.namespace}:{self.index}:{partition}"
            for member, _ in await self.worker.store.index_range(index, max_score=now):
                expired.add(member)
                if member in self._submitted:
                    continue
                request_id, _, conversation_id = member.partition("|")
                self._submitted.add(member)
                job = Job(
                    key=conversation_id.encode(),
                    partition=partition,
                    mark_id=f"deadline:{request_id}",
                    name=self.name,
                    run=self._expiry(request_id, member),
                    delivered=self._delivered(index, member),
                )
                if wait:
                    await self.worker.run_job(job)
                else:
                    self.worker.submit_job(job)
        # Forget jobs that were abandoned on a rebalance, so they are submitted again.
        self._submitted &= expired
        return len(expired)

    def _delivered(self, index: str, member: str) -> Callable[[], Awaitable[None]]:
        # Until the answer is delivered the entry stays, and so does the member in
        # ``_submitted``: a sweep in between must not submit the job a second time.
        async def remove() -> None:
            await self.worker.store.index_remove(index, member)
            self._submitted.discard(member)

        return remove

    def _expiry(self, request_id: str, member: str) -> Any:
        async def run(ctx: Context) -> Sequence[Envelope[Any]]:
            return await self.handlers.expire(request_id, ctx)

        return run
