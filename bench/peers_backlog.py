"""The events of ``bench/peers.py`` and one backlog drained by one stage.

Events are agentstream ``user_request`` envelopes (or, for a stage that starts at an agent's
input topic, the router's ``turn`` tasks wrapping them) of a fixed size (1 KiB by default,
padded in ``data.metadata``), over a number of keys (conversations), each carrying its per-key
sequence number (``metadata.seq``). A stage's outputs are matched to its inputs by the
``ce_requestid`` header every stage's answer carries, so per-key order is checked on the
output topic: within a partition, the first output of each event of one key must come in
the order of the inputs.

:func:`drain` publishes a backlog while the stage's processes are stopped (SIGSTOP), resumes
them and times from the resume to the record timestamp of the last output; the CPU time of
the stage, the broker and Redis is read from ``/proc`` at the resume and at the end. With
``kill_at`` it SIGKILLs the stage once that fraction of the outputs is in, restarts it and
waits until every input has an output or no output at all (first or repeated) came for
``settle_s``: the inputs left without one are lost, repeated outputs are duplicates.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.pipeline_batch import BenchError, sink_reader, usage

__all__ = ["Event", "Outputs", "drain", "make_events"]


@dataclass(frozen=True, slots=True)
class Event:
    request_id: str
    key: bytes
    seq: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def make_events(
    n: int, keys: int, tag: str, size: int = 1024, task_for: str | None = None
) -> list[Event]:
    """``n`` chat requests over ``keys`` conversations, interleaved (turn 0 of every
    conversation, then turn 1, ...), each value padded to ``size`` bytes. With
    ``task_for``, each request is wrapped as the router forwards it to that agent (a
    ``turn`` task, :func:`agentstream.handlers.router.turn_task`), padded the same way."""
    from agentstream.handlers.router import turn_task
    from agentstream.schemas import Envelope, UserRequest, UserRequestData, encode

    def wrapped(request: UserRequest) -> Envelope[Any]:
        return request if task_for is None else turn_task(request, task_for)

    events = []
    for i in range(n):
        conv, seq = i % keys, i // keys
        metadata = {"seq": str(seq), "pad": ""}
        data = UserRequestData(
            text=f"Hello there, how are you? This is guest {conv} turn {seq}.",
            user=f"guest-{conv}",
            metadata=metadata,
        )
        request = UserRequest(
            source="bench",
            request_id=f"{tag}-{i}",
            conversation_id=f"{tag}-c{conv}",
            data=data,
        )
        _, value, _ = encode(wrapped(request))
        metadata["pad"] = "x" * max(0, size - len(value))
        request = request.model_copy(
            update={"data": data.model_copy(update={"metadata": metadata})}
        )
        key, value, headers = encode(wrapped(request))
        events.append(Event(request.request_id, key, seq, value, tuple(headers)))
    return events


@dataclass
class Outputs:
    """The first output of each input, when it was produced, and whether it kept order."""

    events: Sequence[Event]
    wanted: set[str] = field(init=False)
    done: list[float] = field(default_factory=list)
    copies: int = 0
    out_of_order: int = 0
    progress: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.index = {e.request_id: e for e in self.events}
        self.wanted = set(self.index)
        self._last_seq: dict[bytes, int] = {}

    def add(self, headers: Sequence[tuple[str, bytes]] | None, ts_ms: int) -> None:
        rid = next((v.decode() for k, v in headers or () if k == "ce_requestid"), None)
        event = self.index.get(rid or "")
        if event is None:
            return
        # Any output is progress: after a restart, a stage may redeliver for a long while
        # before it reaches events that never had an output.
        self.progress = time.monotonic()
        if event.request_id not in self.wanted:
            self.copies += 1
            return
        self.wanted.discard(event.request_id)
        self.done.append(ts_ms / 1000)
        last = self._last_seq.get(event.key, -1)
        if event.seq < last:
            self.out_of_order += 1
        self._last_seq[event.key] = max(last, event.seq)


def _cpu(pids: Sequence[int]) -> float | None:
    used = usage(pids) if pids else None
    return None if used is None else used[0]


async def drain(
    bootstrap: str,
    producer: Any,
    source: str,
    sink: str,
    partitions: int,
    events: Sequence[Event],
    pids: Callable[[], list[int]],
    watch: dict[str, int | None],
    *,
    hold: bool = True,
    kill_at: float | None = None,
    restart: Callable[[], None] | None = None,
    settle_s: float = 30.0,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Publish ``events`` to ``source`` (the stage ``pids()`` held), collect on ``sink``.

    ``watch`` names other processes (the broker, Redis) whose CPU is read beside the
    stage's. Returns the figures of the backlog (see the module docstring)."""
    consumer = await sink_reader(bootstrap, sink, partitions)
    try:
        outputs = Outputs(events)
        if hold:
            _signal(pids(), signal.SIGSTOP)
        published = time.monotonic()
        try:
            futures = [
                await producer.send(source, value=e.value, key=e.key, headers=list(e.headers))
                for e in events
            ]
            await asyncio.gather(*futures)
        finally:
            if hold:
                _signal(pids(), signal.SIGCONT)
        published = time.monotonic() - published
        started = time.time()
        before = {"worker": _cpu(pids()), **{k: _cpu([p] if p else []) for k, p in watch.items()}}
        each_before = [_cpu([p]) for p in pids()]
        deadline = time.monotonic() + timeout_s
        killed = False
        worker_cpu_before_kill = 0.0
        while outputs.wanted and time.monotonic() < deadline:
            if time.monotonic() - outputs.progress > (settle_s if killed else 60.0):
                break
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for m in messages:
                    outputs.add(m.headers, m.timestamp)
            if kill_at is not None and not killed and len(outputs.done) >= kill_at * len(events):
                assert restart is not None
                worker_cpu_before_kill = (_cpu(pids()) or 0.0) - (before["worker"] or 0.0)
                _signal(pids(), signal.SIGKILL)
                restart()
                before["worker"] = _cpu(pids())
                killed = True
        if killed and not outputs.wanted:
            # Redeliveries may trail the last first copy: read what follows for a moment.
            until = time.monotonic() + 3.0
            while time.monotonic() < until:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    for m in messages:
                        outputs.add(m.headers, m.timestamp)
        after = {"worker": _cpu(pids()), **{k: _cpu([p] if p else []) for k, p in watch.items()}}
        if not killed:
            # Per process of a stage of several (the router, the agent): what each cost.
            for i, (b, a) in enumerate(zip(each_before, (_cpu([p]) for p in pids()), strict=True)):
                before[f"worker{i}"], after[f"worker{i}"] = b, a
    finally:
        await consumer.stop()
    if kill_at is None and outputs.wanted:
        raise BenchError(
            f"{len(outputs.wanted)} of {len(events)} events without an output on {sink} "
            f"({len(outputs.done)} answered)"
        )
    return _figures(outputs, started, published, before, after, worker_cpu_before_kill, killed)


def _figures(
    outputs: Outputs,
    started: float,
    published: float,
    before: dict[str, float | None],
    after: dict[str, float | None],
    worker_cpu_before_kill: float,
    killed: bool,
) -> dict[str, Any]:
    n = len(outputs.events)
    elapsed = max(outputs.done) - started if outputs.done else None
    cpu: dict[str, float | None] = {}
    for name, b in before.items():
        a = after.get(name)
        spent = None if a is None or b is None else a - b
        if name == "worker" and spent is not None:
            spent += worker_cpu_before_kill
        cpu[name] = None if spent is None else round(1000 * spent / (n / 1000), 1)
    figures: dict[str, Any] = {
        "events": n,
        "publish_seconds": round(published, 3),
        "seconds": None if elapsed is None else round(elapsed, 3),
        "events_per_s": None if not elapsed else round(n / elapsed, 1),
        "cpu_ms_per_1000": cpu,
        "out_of_order": outputs.out_of_order,
        "duplicates": outputs.copies,
    }
    if killed:
        figures["lost"] = len(outputs.wanted)
    return figures


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        os.kill(pid, sig)
