"""What a worker consumes and what it does with it.

A :class:`Route` binds one logical topic to one handler: an async function that takes one
typed event and a :class:`~agentstream.handlers.runtime.context.Context` and returns the events to
emit. The handler never touches Kafka, Redis connections or ``os.environ``; the runtime decodes,
deduplicates, retries, commits and publishes around it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentstream.handlers.runtime.context import Context
from agentstream.schemas import Envelope
from agentstream.topics import LogicalTopic

__all__ = ["DeadLetterHook", "Handler", "Job", "Route"]

Handler = Callable[[Any, Context], Awaitable[Sequence[Envelope[Any]]]]

#: Called once an event is dead-lettered, to emit what keeps callers from hanging (a
#: ``failed`` response, a failed tool result). ``event`` is None when the bytes never
#: decoded; ``raw`` is the original value.
DeadLetterHook = Callable[
    [Envelope[Any] | None, bytes | None, BaseException, Context],
    Awaitable[Sequence[Envelope[Any]]],
]


@dataclass(frozen=True, slots=True)
class Route:
    """``handler`` consumes ``topic``; ``publishes`` names every topic it (or its
    ``on_dead_letter`` hook) may emit to, in the order a reader expects.

    ``publishes`` is the declaration the AsyncAPI document and the deployment checks read
    (:mod:`agentstream.workers`), as FastStream declares a subscriber with its publishers. The
    runtime does not enforce it; ``tests/unit/test_workers.py`` holds a pipeline run to it.

    ``on_refused`` runs instead of ``handler`` for a record that landed after its
    accept-by deadline (:mod:`agentstream.topics.deadline`): its producer answered that it
    was refused, so no handler runs it. None (most routes): the record is skipped."""

    topic: LogicalTopic
    handler: Handler
    name: str
    on_dead_letter: DeadLetterHook | None = None
    publishes: tuple[LogicalTopic, ...] = ()
    on_refused: Handler | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """Work that is not a record (a deadline firing), run in the lane of ``key``.

    ``mark_id`` makes it idempotent like an event id: a job whose mark exists replays its
    recorded outputs instead of running again. ``partition`` ties the job to the partition
    that owns the key, so it is abandoned when that partition is revoked. ``delivered``
    runs once the outputs are on the broker: what schedules the job (a deadline index
    entry) is removed only then, so a crash before the publish leaves the job to run again
    and replay its recorded outputs.
    """

    key: bytes
    partition: int
    mark_id: str
    name: str
    run: Callable[[Context], Awaitable[Sequence[Envelope[Any]]]]
    delivered: Callable[[], Awaitable[None]] | None = None
