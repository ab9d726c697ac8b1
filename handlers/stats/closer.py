"""The window closer of the stats worker: emits every window that is due, once.

It runs beside the stats handlers and turns each due (partition, window) into a job in the
partition's lane that calls :meth:`agentstream.handlers.stats.routes.StatsHandlers.close`
(docs/adr/0011-live-stats.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.periodic import run_periodically
from agentstream.handlers.runtime.route import Job
from agentstream.handlers.runtime.worker import Worker
from agentstream.handlers.stats.windows import WindowKeys
from agentstream.schemas import Envelope

__all__ = ["Closing", "WindowCloser"]


class Closing(Protocol):
    """What the closer seals windows with: :class:`~agentstream.handlers.stats.routes.StatsHandlers`
    (a protocol, so this module does not import the routes that import it)."""

    async def close(self, partition: int, start: int, ctx: Context) -> Sequence[Envelope[Any]]: ...


class WindowCloser:
    """Emits the windows that are due.

    Every ``interval_s`` it looks up the due windows of the partitions this worker owns on
    ``topic_name`` (``agent_response``: one owner per partition number in the group) and
    submits one job per (partition, window) into the partition's own lane; the job's mark
    makes the emission happen once, whoever runs it. A job that never started (abandoned
    on a rebalance) is submitted again after ``resubmit_after_s``.
    """

    def __init__(
        self,
        worker: Worker,
        handlers: Closing,
        namespace: str,
        topic_name: str,
        interval_s: float = 1.0,
        resubmit_after_s: float = 30.0,
    ) -> None:
        self.worker = worker
        self.handlers = handlers
        self.namespace = namespace
        self.topic_name = topic_name
        self.interval_s = interval_s
        self.resubmit_after_s = resubmit_after_s
        self._pending: dict[str, float] = {}
        self._running: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodically(self.worker, stop, self.interval_s, self.sweep, "stats window sweep")

    async def sweep(self, partitions: Iterable[int] | None = None, *, wait: bool = False) -> int:
        """Submit (or, with ``wait``, run one by one) the closing of every due window of
        ``partitions`` (default: those this worker owns). Returns how many are due."""
        now = self.worker.now().timestamp()
        owned = self.worker.owned_partitions(self.topic_name)
        due: set[str] = set()
        for partition in sorted(owned if partitions is None else partitions):
            keys = WindowKeys(self.namespace, partition)
            windows = await self.worker.store.index_range(keys.windows, max_score=now)
            for member, _ in sorted(windows, key=lambda item: int(item[0])):
                tag = f"{partition}:{member}"
                due.add(tag)
                submitted = self._pending.get(tag)
                if tag in self._running or (
                    submitted is not None and time.monotonic() - submitted < self.resubmit_after_s
                ):
                    continue
                self._pending[tag] = time.monotonic()
                job = Job(
                    key=f"stats:{partition}".encode(),
                    partition=partition,
                    mark_id=f"stats:{partition}:{member}",
                    name="stats.close",
                    run=self._closing(partition, int(member), tag),
                )
                if wait:
                    await self.worker.run_job(job)
                else:
                    self.worker.submit_job(job)
        self._pending = {tag: at for tag, at in self._pending.items() if tag in due}
        return len(due)

    def _closing(self, partition: int, start: int, tag: str) -> Any:
        async def run(ctx: Context) -> Sequence[Envelope[Any]]:
            self._pending.pop(tag, None)
            self._running.add(tag)
            try:
                return await self.handlers.close(partition, start, ctx)
            finally:
                self._running.discard(tag)

        return run
