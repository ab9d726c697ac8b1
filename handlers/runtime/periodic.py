"""Background loops of a worker (deadline sweeps, window closing): one step every interval.

A step that fails (the store may be down for a while) is logged and tried again at the next
tick; the loop starts once the worker has joined its group and ends when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agentstream.handlers.runtime.worker import Worker

__all__ = ["run_periodically"]

log = logging.getLogger(__name__)


async def run_periodically(
    worker: Worker,
    stop: asyncio.Event,
    interval_s: float,
    step: Callable[[], Awaitable[object]],
    what: str,
) -> None:
    await worker.started.wait()
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            log.warning("%s failed: %r", what, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
