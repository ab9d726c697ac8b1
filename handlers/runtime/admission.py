"""Admission: when a fetched record starts, paced so a backlog is taken up smoothly.

The fetch loop hands records to :class:`PacedAdmission`; they wait in its backlog until the
in-flight budget has room, and are started at no more than a paced rate: ``pace`` times the
budget's measured turnover (``max_in_flight`` / mean time a record is held). Why pace at
all: started together, records finish together. A worker that takes up a backlog of
hundreds of requests at once starts as many LLM calls in one instant; they return in one
instant too, their post-processing queues behind one another while no call is in flight,
and the worker runs in waves at a fraction of its budget (and hands the provider bursts
that trip its rate limits). Paced, the starts spread over the hold time and the waves
never form; in steady state the pace is above the turnover, so it never limits throughput.

Why 1.1 and not more: once waves exist, records start when slots free, so starts copy the
completions of one hold time before; a pace caps the density of a wave at ``pace`` times
the mean rate, and the loop's work per request is spread over at least ``1 / pace`` of the
time. At 1.5 a worker with a 0.5 s model still alternated busy phases at a full core with
idle ones (traced every 20 ms); at 1.1 the waves flatten within a few hold times
(bench/README.md, "Pace").

With no measurement yet the hold time is taken as ``initial_hold_s``; fast handlers bring
the estimate down within a few records.

Running and waiting are counted apart (ADR 24). The budget, ``max_in_flight``, counts
records whose handler runs. A record whose conversation already has a turn running waits in
that conversation's lane instead, holding memory but no slot, up to ``max_waiting`` such
records; when the turn ahead of it is done, its lane is *ready* and is started before any
new record, through the same budget and the same pace. Before, a later turn admitted while
the earlier one was in its model call held a slot for nothing: with 1000 in flight and
1000 conversations, about a third of the budget waited in lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Container

from agentstream.topics import Record, TopicPartition

__all__ = ["PacedAdmission"]

_TICK_S = 0.01
_BURST_S = 0.05
_RECHECK_S = 0.05


class PacedAdmission:
    def __init__(
        self,
        max_in_flight: int,
        *,
        max_waiting: int | None = None,
        pace: float = 1.1,
        initial_hold_s: float = 1.0,
        prefetch: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        #: Records waiting in their lane at most: no record is queued in a lane beyond it,
        #: and fetching pauses there.
        self.max_waiting = max_waiting if max_waiting is not None else 2 * max_in_flight
        self.pace = pace
        #: Fetched records waiting at most: fetching pauses beyond it.
        self.prefetch = prefetch if prefetch is not None else max(16, max_in_flight // 2)
        self._hold_s = initial_hold_s
        self._clock = clock
        self._backlog: deque[Record] = deque()
        self._ready: deque[bytes] = deque()
        self._tokens = 1.0
        self._refilled = clock()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        """Fetched records not yet started nor queued in a lane."""
        return len(self._backlog)

    @property
    def hold_s(self) -> float:
        """Mean time a record runs, start to finish (exponentially weighted)."""
        return self._hold_s

    @property
    def rate(self) -> float:
        """Records started per second at most."""
        return self.pace * self.max_in_flight / max(self._hold_s, 1e-4)

    def offer(self, records: list[Record]) -> None:
        if records:
            self._backlog.extend(records)
            self._wake.set()

    def ready(self, key: bytes) -> None:
        """The lane of ``key`` has its next record waiting and none running: it is started
        before the backlog (its record was fetched earlier and holds memory already)."""
        self._ready.append(key)
        self._wake.set()

    def finished(self, held_s: float) -> None:
        """A started record is done after ``held_s`` seconds: a slot is free."""
        self._hold_s += 0.05 * (held_s - self._hold_s)
        self._wake.set()

    def wake(self) -> None:
        """Slots may have been freed without a record finishing: look again."""
        self._wake.set()

    def purge(self, tps: Container[TopicPartition] | None = None) -> int:
        """Forget waiting records (of ``tps``, or all): they were never started, so their
        offsets were never counted and the next owner (or this one, later) fetches them."""
        before = len(self._backlog)
        if tps is None:
            self._backlog.clear()
        else:
            self._backlog = deque(r for r in self._backlog if r.tp not in tps)
        return before - len(self._backlog)

    async def run(
        self,
        running: Callable[[], int],
        start: Callable[[Record], bool],
        resume: Callable[[bytes], bool] = lambda key: False,
        waiting: Callable[[], int] = lambda: 0,
        queues: Callable[[Record], bool] = lambda record: False,
    ) -> None:
        """Start records while ``running()`` is below the budget, at the paced rate;
        forever (cancel to stop). ``start(record)`` says whether the record runs now (a
        record queued behind its lane's running one, or dropped, takes neither a slot nor
        the pace); ``resume(key)`` runs the next record of a ready lane; ``waiting()`` is
        the number of records queued in lanes; ``queues(record)`` whether ``start`` would
        queue it behind a running record of its lane."""
        while True:
            # A record whose lane is busy can take no slot before its lane's turn comes:
            # into the lane at once, so the lane's next turn is ready when the current one
            # ends, and the backlog's room goes to records that can run.
            while self._backlog and waiting() < self.max_waiting and queues(self._backlog[0]):
                start(self._backlog.popleft())
            # What is left at the head runs when started, or waits for waiting room (a
            # full waiting room blocks only records that would wait).
            takes = bool(self._backlog) and not queues(self._backlog[0])
            if not (self._ready or takes) or running() >= self.max_in_flight:
                self._wake.clear()
                # Woken by an offer, a ready lane or a finished record; the timeout covers
                # slots freed otherwise (work abandoned on a revoke, a partition lost to
                # fencing).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RECHECK_S):
                        await self._wake.wait()
                continue
            now = self._clock()
            rate = self.rate
            # Starts come in groups, a tick apart: records started together share their
            # store round trips, and a tick is short next to the hold time it spreads over.
            # Up to a few ticks' worth is saved up, so a late wake-up on a busy loop (or
            # slots freed together) loses no rate. Fast handlers get a large group at once
            # and are never held back.
            burst = max(1.0, rate * _BURST_S)
            self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens < 1.0:
                await asyncio.sleep(max(_TICK_S, (1.0 - self._tokens) / rate))
                continue
            # The room is read once per group (running() may sum over parts).
            room = self.max_in_flight - running()
            while room > 0 and self._tokens >= 1.0:
                if self._ready:
                    started = resume(self._ready.popleft())
                elif self._backlog and (
                    waiting() < self.max_waiting or not queues(self._backlog[0])
                ):
                    started = start(self._backlog.popleft())
                else:
                    break
                if started:
                    self._tokens -= 1.0
                    room -= 1
            # Let what was just started run before starting more.
            await asyncio.sleep(0)
