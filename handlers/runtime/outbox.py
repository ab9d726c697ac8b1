"""The outbox: run a handler once per event, its writes and outputs committed with its mark.

An event's dedup mark holds its outputs: the mark, the handler's staged state writes and the
encoded outputs are committed to the store atomically, then the runtime publishes them. A
redelivered event whose mark exists gets the recorded outputs back, byte for byte the same,
so consumers drop them as duplicates; nothing runs twice. The mark is keyed by the consumer
group, so two groups reading one topic handle each event once each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from agentstream.handlers.runtime.context import Context, Origin
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.stores.base import StateStore
from agentstream.schemas import EVENT_TYPES, Envelope, RetryableError, SkipEvent, encode
from agentstream.topics import Catalog, OutgoingRecord, Record

__all__ = ["CommitConflict", "Outbox"]


class CommitConflict(RetryableError):
    """The state the handler read changed, or another member handled the event first."""


class Outbox:
    def __init__(
        self,
        store: StateStore,
        catalog: Catalog,
        metrics: RuntimeMetrics,
        *,
        group_id: str,
        namespace: str,
        dedup_ttl_s: int,
        now: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.metrics = metrics
        self.group_id = group_id
        self.namespace = namespace
        self.dedup_ttl_s = dedup_ttl_s
        self.now = now

    async def settle(
        self,
        mark_id: str,
        handler_name: str,
        record: Record | None,
        attempt: int,
        produce: Callable[[Context], Any],
        out: list[OutgoingRecord],
        partition: int = -1,
    ) -> None:
        """Run ``produce`` once per ``mark_id``: commit its writes with its outbox; add its
        outputs to ``out``. A mark that exists already gives back the recorded outputs."""
        mark_key = self._mark_key(mark_id)
        ctx = self._context(record, attempt, partition)
        # The dedup mark is not read first: the commit checks it anyway, and duplicates are
        # rare, so the mark is read only when the commit (or the handler) fails.
        try:
            try:
                outputs = list(await produce(ctx))
            except SkipEvent:
                outputs = []
        except Exception:
            if await self._replay_if_done(mark_key, handler_name, out):
                return
            raise
        records = self._encode(outputs)
        # The outbox holds the very bytes published: each event is serialised once.
        outbox = b"[" + b",".join(r.value for r in records if r.value is not None) + b"]"
        committed = await self.store.commit(
            expect=ctx.reads, ops=ctx.ops, mark=(mark_key, outbox, self.dedup_ttl_s)
        )
        if not committed:
            if await self._replay_if_done(mark_key, handler_name, out):
                return
            raise CommitConflict(f"state changed while handling {mark_id}; handling again")
        out += records

    async def _replay_if_done(
        self, mark_key: str, handler_name: str, out: list[OutgoingRecord]
    ) -> bool:
        """Whether the event was handled before; if so its recorded outputs go to ``out``
        (the same bytes as the first time, so consumers drop them as duplicates)."""
        stored = await self.store.fetch(mark_key)
        if stored is None:
            return False
        self.metrics.duplicates.labels(handler_name).inc()
        out += self._encode(_outbox_events(stored))
        return True

    def _mark_key(self, mark_id: str) -> str:
        return f"{self.namespace}:done:{self.group_id}:{mark_id}"

    def _context(self, record: Record | None, attempt: int, partition: int = -1) -> Context:
        origin = Origin(
            topic=record.topic if record else "",
            partition=record.partition if record else partition,
            offset=record.offset if record else -1,
            group=self.group_id,
            attempt=attempt,
        )
        return Context(self.store, origin, self.namespace, self.now)

    def _encode(self, events: Sequence[Envelope[Any]]) -> list[OutgoingRecord]:
        records = []
        for event in events:
            key, value, headers = encode(event)
            records.append(OutgoingRecord(self.catalog.topic_of(event), value, key, tuple(headers)))
        return records


def _outbox_events(raw: bytes) -> list[Envelope[Any]]:
    return [EVENT_TYPES[item["type"]].model_validate(item) for item in json.loads(raw)]
