"""What the ingress keeps of a request in the state store: its record, its event log, the keys.

Written by the projection (:mod:`agentstream.ingress.projection`) and by the ingress itself
(:mod:`agentstream.ingress.requests`), read by every route; the store layout is described in
the projection's docstring. A record's status is terminal once the request ended (its
``agent_response``) or was ``refused`` (answered 503, never run); a log entry's index is its
SSE ``id``, and the log ends with a ``response`` or ``refused`` entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Literal

from agentstream.schemas import TERMINAL_STATUSES, AgentResponseData, Envelope, UserRequest
from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "REFUSED_MESSAGE",
    "EntryKind",
    "LogEntry",
    "ProjectionKeys",
    "RecentlyRecorded",
    "RequestRecord",
    "RequestStatus",
    "refusal_entry",
    "unique_entries",
]

RequestStatus = Literal[
    "accepted", "running", "completed", "failed", "timed_out", "rejected", "refused"
]
#: ``handoff``: one agent handed the request to another; ``subrun``: an agent called another
#: as a tool (its answer follows as the call's ``tool_result``).
EntryKind = Literal[
    "tool_call", "memory_call", "tool_result", "handoff", "subrun", "response", "refused"
]
#: What GET and the SSE stream say of a request answered 503 (never run).
REFUSED_MESSAGE = (
    "the broker did not acknowledge the request in time; it was refused and will never run"
)

_RECORDED_CAPACITY = 10_000


class ProjectionKeys:
    """The store keys of the projection and of the ingress (see the module docstring)."""

    def __init__(self, namespace: str) -> None:
        self.base = f"{namespace}:ingress"

    def request(self, request_id: str) -> str:
        return f"{self.base}:request:{request_id}"

    def log(self, request_id: str) -> str:
        return f"{self.base}:log:{request_id}"

    def conversation(self, tenant: str, conversation_id: str) -> str:
        return f"{self.base}:conversation:{tenant}:{conversation_id}"

    def idempotency(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.base}:idempotency:{tenant}:{digest}"

    def refusals(self, tenant: str, key: str) -> str:
        """How many posts with this ``Idempotency-Key`` were refused (503)."""
        return f"{self.idempotency(tenant, key)}:refused"


class LogEntry(BaseModel):
    """One entry of a request's event log, as streamed to SSE clients."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str
    kind: EntryKind
    time: datetime
    data: dict[str, JsonValue]

    @property
    def terminal(self) -> bool:
        return self.kind in ("response", "refused")


class RequestRecord(BaseModel):
    """What the ingress knows of one request: who owns it, where it stands, its answer."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str
    conversation_id: str
    tenant: str
    event_id: str | None = None
    source: str | None = None
    text: str | None = None
    user: str | None = None
    model: str | None = None
    status: RequestStatus = "accepted"
    created_at: datetime
    updated_at: datetime
    response: AgentResponseData | None = None
    response_event_id: str | None = None
    #: Progress entries logged so far, and the response entry while it waits for them.
    calls_logged: int = 0
    results_logged: int = 0
    handoffs_logged: int = 0
    held: LogEntry | None = None
    response_logged: bool = False
    #: Call ids logged so far, and results that arrived before their call (held back).
    calls_seen: list[str] = Field(default_factory=list)
    held_results: list[LogEntry] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES or self.status == "refused"

    @property
    def response_ready(self) -> bool:
        """Whether the held response may go to the log: the calls (agents called as tools
        included) and handoffs it accounts for (and, for a completed run, the calls'
        results) are logged before it."""
        if self.held is None or self.response is None:
            return False
        expected = len(self.response.tool_calls)
        if self.calls_logged < expected or self.handoffs_logged < len(self.response.handoffs):
            return False
        return self.status != "completed" or self.results_logged >= expected

    @classmethod
    def from_request(cls, event: UserRequest) -> RequestRecord:
        return cls(
            request_id=event.request_id,
            conversation_id=event.conversation_id,
            tenant=event.tenant,
            event_id=event.id,
            source=event.source,
            text=event.data.text,
            user=event.data.user,
            model=event.data.model,
            created_at=event.time,
            updated_at=event.time,
        )

    @classmethod
    def refused(cls, event: UserRequest) -> RequestRecord:
        """The record of a request answered 503: it never runs (ADR 6)."""
        return cls.from_request(event).model_copy(update={"status": "refused"})

    @classmethod
    def placeholder(cls, event: Envelope[Any]) -> RequestRecord:
        """A record for an event whose ``user_request`` this projection has not seen."""
        return cls(
            request_id=event.request_id,
            conversation_id=event.conversation_id,
            tenant=event.tenant,
            created_at=event.time,
            updated_at=event.time,
        )


class RecentlyRecorded:
    """Ids of requests whose first record (with its text and conversation index) this
    process wrote itself, not yet seen by its projection.

    The ingress adds an id once its ``accepted`` record is committed; the projection takes
    it back (:meth:`take`) when it consumes the request's ``user_request`` and then writes
    nothing, as it would have after reading the complete record back. A miss only costs that
    read: a request accepted by another replica, a redelivery, an id pushed out by newer
    ones. Hence the bound: ids whose event another replica projects are never taken here,
    and the oldest go first past ``capacity``.
    """

    def __init__(self, capacity: int = _RECORDED_CAPACITY) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, request_id: str) -> None:
        ids = self._ids
        ids[request_id] = None
        if len(ids) > self.capacity:
            del ids[next(iter(ids))]

    def take(self, request_id: str) -> bool:
        """Whether ``request_id`` was recorded here (and forget it: asked once)."""
        return self._ids.pop(request_id, False) is None


def refusal_entry(event: UserRequest) -> LogEntry:
    """The one log entry of a refused request (its SSE stream ends with it)."""
    return LogEntry(
        event_id=event.id,
        kind="refused",
        time=event.time,
        data={"status": "refused", "message": REFUSED_MESSAGE},
    )


def unique_entries(
    raw: Iterable[bytes], start: int = 0, seen: set[str] | None = None
) -> Iterator[tuple[int, LogEntry]]:
    """``(index, entry)`` of the log items ``raw`` (the first at index ``start``), dropping
    entries whose event id is in ``seen`` or came earlier; ``seen`` is updated."""
    seen = set() if seen is None else seen
    for offset, item in enumerate(raw):
        entry = LogEntry.model_validate_json(item)
        if entry.event_id in seen:
            continue
        seen.add(entry.event_id)
        yield start + offset, entry
