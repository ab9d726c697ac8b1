"""The ingress's view of the state store: request records, event logs, idempotency claims.

The HTTP side keeps nothing in memory that another replica would need: it reads what the
projection (:mod:`agentstream.ingress.projection`) wrote, and writes only two things itself, the
first record of a request it accepted (so an immediate ``GET`` works before the projection
caught up) and its ``Idempotency-Key`` claims.

An idempotency claim is taken with ``put_if_absent`` *before* publishing, in state
``pending`` with a short TTL, and confirmed (full TTL) once the broker acknowledged; a
refused publish (503) counts one more refusal for the key, then deletes the claim. Two
concurrent posts with one key therefore publish once: the loser waits for the winner's
claim to be confirmed (same answer) or released (it tries again). The refusal count is
read by the holder of the claim only, after taking it, so it is never stale: the post after
a refusal gets ids of its own, and the refused request (which never runs) and the one that
does are never conflated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from agentstream.handlers.stores.base import IndexAdd, Put, StateStore
from agentstream.ingress.records import (
    LogEntry,
    ProjectionKeys,
    RecentlyRecorded,
    RequestRecord,
    refusal_entry,
    unique_entries,
)
from agentstream.schemas import UserRequest
from pydantic import BaseModel, ConfigDict

__all__ = ["Claim", "ClaimConflict", "RequestRepository"]

log = logging.getLogger(__name__)


class Claim(BaseModel):
    """The request an ``Idempotency-Key`` stands for, and the hash of the body it came with.
    ``generation``: how many posts with the key were refused before this one (its ids are
    derived from it, so a refused request and its retry are two requests)."""

    model_config = ConfigDict(frozen=True)

    body_hash: str
    request_id: str
    conversation_id: str
    state: Literal["pending", "accepted"] = "pending"
    generation: int = 0


class ClaimConflict(Exception):
    """The key was used with another body (409), or its first use is still in flight."""

    def __init__(self, message: str, *, in_flight: bool = False) -> None:
        super().__init__(message)
        self.in_flight = in_flight


class RequestRepository:
    def __init__(
        self,
        store: StateStore,
        namespace: str,
        *,
        record_ttl_s: int,
        idempotency_ttl_s: int,
        pending_ttl_s: float = 60.0,
        poll_interval_s: float = 0.1,
        recorded: RecentlyRecorded | None = None,
    ) -> None:
        """``recorded``: where :meth:`accept` notes the records it wrote, for the
        projection of the same process
        (:class:`~agentstream.ingress.projection.RecentlyRecorded`)."""
        self.store = store
        self.keys = ProjectionKeys(namespace)
        self.record_ttl_s = record_ttl_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self.pending_ttl_s = pending_ttl_s
        self.poll_interval_s = poll_interval_s
        self.recorded = recorded

    # -- records ------------------------------------------------------------------------

    async def get(self, request_id: str) -> RequestRecord | None:
        raw = (await self.store.get(self.keys.request(request_id))).value
        return None if raw is None else RequestRecord.model_validate_json(raw)

    async def accept(
        self, event: UserRequest, record: RequestRecord | None = None
    ) -> RequestRecord:
        """Write the ``accepted`` record of a request just published (``record``, if the
        caller built it already), unless the projection (or an earlier accept) already
        wrote one; return whichever is stored."""
        record = record or RequestRecord.from_request(event)
        committed = await self.store.commit(
            expect={self.keys.request(event.request_id): 0},
            ops=[
                Put(
                    self.keys.request(event.request_id),
                    record.model_dump_json().encode(),
                    self.record_ttl_s,
                ),
                IndexAdd(
                    self.keys.conversation(event.tenant, event.conversation_id),
                    event.request_id,
                    event.time.timestamp(),
                ),
            ],
        )
        if committed:
            if self.recorded is not None:
                self.recorded.add(event.request_id)
            return record
        return await self.get(event.request_id) or record

    async def refuse(self, event: UserRequest) -> None:
        """Record a request answered 503 as ``refused`` (it never runs), unless a record
        exists already; its SSE log gets its one terminal entry."""
        committed = await self.store.commit(
            expect={self.keys.request(event.request_id): 0},
            ops=[
                Put(
                    self.keys.request(event.request_id),
                    RequestRecord.refused(event).model_dump_json().encode(),
                    self.record_ttl_s,
                )
            ],
        )
        if committed:
            await self.store.append(
                self.keys.log(event.request_id),
                refusal_entry(event).model_dump_json().encode(),
                self.record_ttl_s,
            )

    async def conversation(self, tenant: str, conversation_id: str) -> list[RequestRecord]:
        """The requests of a conversation, oldest first; expired records are pruned."""
        index = self.keys.conversation(tenant, conversation_id)
        members = await self.store.index_range(index, limit=10_000)
        records = await asyncio.gather(*(self.get(m) for m, _ in members))
        found = []
        for (member, _), record in zip(members, records, strict=True):
            if record is None:
                await self.store.index_remove(index, member)
            else:
                found.append(record)
        return found

    async def wait_terminal(self, request_id: str, timeout_s: float) -> RequestRecord | None:
        """The record once terminal, or as it stands after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            record = await self.get(request_id)
            if record is None or record.terminal or loop.time() >= deadline:
                return record
            await asyncio.sleep(min(self.poll_interval_s, max(0.0, deadline - loop.time())))

    # -- event log ----------------------------------------------------------------------

    async def release_held(self, request_id: str) -> bool:
        """Append a response the projection still holds back (waiting for progress that
        never came); True when there was one. The stream must end some time."""
        key = self.keys.request(request_id)
        current = await self.store.get(key)
        if current.value is None:
            return False
        record = RequestRecord.model_validate_json(current.value)
        if record.held is None or record.response_logged:
            return False
        log.warning(
            "request %s: response logged before %d call(s)/%d result(s) it accounts for",
            request_id,
            record.calls_logged,
            record.results_logged,
            extra={"request_id": request_id},
        )
        await self.store.append(
            self.keys.log(request_id), record.held.model_dump_json().encode(), self.record_ttl_s
        )
        released = record.model_copy(update={"held": None, "response_logged": True})
        await self.store.commit(
            expect={key: current.version},
            ops=[Put(key, released.model_dump_json().encode(), self.record_ttl_s)],
        )
        return True

    async def entries(
        self, request_id: str, start: int, seen: set[str]
    ) -> tuple[list[tuple[int, LogEntry]], int]:
        """Log entries from index ``start`` minus duplicates of ids in ``seen`` (updated),
        and the index to read from next."""
        raw = await self.store.list_range(self.keys.log(request_id), start, -1)
        return list(unique_entries(raw, start, seen)), start + len(raw)

    async def seen_before(self, request_id: str, start: int) -> tuple[set[str], bool]:
        """Event ids of the entries before ``start`` (what a resuming client already has),
        and whether the terminal entry is among them."""
        seen: set[str] = set()
        ended = False
        if start > 0:
            raw = await self.store.list_range(self.keys.log(request_id), 0, start - 1)
            ended = any(entry.terminal for _, entry in unique_entries(raw, 0, seen))
        return seen, ended

    # -- idempotency keys ---------------------------------------------------------------

    async def claim(self, tenant: str, key: str, claim: Claim, wait_s: float) -> Claim | None:
        """Take ``key`` for ``claim``: None when this call took it (publish, then
        :meth:`confirm` or :meth:`release`); the accepted earlier claim when the same body
        was posted before. :class:`ClaimConflict` for another body, or when the first post
        is still publishing after ``wait_s``."""
        store_key = self.keys.idempotency(tenant, key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            if await self.store.put_if_absent(
                store_key, claim.model_dump_json().encode(), self.pending_ttl_s
            ):
                return None
            raw = await self.store.fetch(store_key)
            if raw is not None:
                existing = Claim.model_validate_json(raw)
                if existing.body_hash != claim.body_hash:
                    raise ClaimConflict(
                        "this Idempotency-Key was already used with a different request body"
                    )
                if existing.state == "accepted":
                    return existing
            # else: released or expired meanwhile; take it on the next round
            if loop.time() >= deadline:
                raise ClaimConflict(
                    "a request with this Idempotency-Key is still being published",
                    in_flight=True,
                )
            await asyncio.sleep(self.poll_interval_s)

    async def refusals(self, tenant: str, key: str) -> int:
        """How many posts with ``key`` were refused; read by the claim's holder."""
        raw = await self.store.fetch(self.keys.refusals(tenant, key))
        return 0 if raw is None else int(raw)

    async def hold(self, tenant: str, key: str, claim: Claim) -> None:
        """Replace the pending claim this post holds (with the ids of its generation)."""
        await self.store.put(
            self.keys.idempotency(tenant, key), claim.model_dump_json().encode(), self.pending_ttl_s
        )

    async def refused(self, tenant: str, key: str, claim: Claim) -> None:
        """The post holding ``claim`` was refused: the next one is generation + 1 (with new
        ids); then release the key."""
        await self.store.put(
            self.keys.refusals(tenant, key),
            str(claim.generation + 1).encode(),
            self.idempotency_ttl_s,
        )
        await self.release(tenant, key)

    async def confirm(self, tenant: str, key: str, claim: Claim) -> None:
        accepted = claim.model_copy(update={"state": "accepted"})
        await self.store.put(
            self.keys.idempotency(tenant, key),
            accepted.model_dump_json().encode(),
            self.idempotency_ttl_s,
        )

    async def release(self, tenant: str, key: str) -> None:
        await self.store.delete(self.keys.idempotency(tenant, key))
