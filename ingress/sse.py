"""Server-Sent Events of one request: its progress, then its response, then the end.

Each SSE event's ``id`` is the entry's index in the request's event log in the store, so a
client that lost its connection reconnects with ``Last-Event-ID`` and gets exactly the
entries after it: none missed, none repeated, from whichever replica it reaches. The stream
reads the store every ``poll_interval_s``, sends a comment line every ``heartbeat_s`` while
nothing happens (so proxies keep the connection open), and ends after the terminal entry.
After ``settle_s`` of quiet it asks the repository to release a response the projection
still holds back for progress that never came, so that no stream waits forever. A request
answered 503 has one entry, ``refused``, which ends its stream too.

:func:`events_router` serves it as ``GET /v1/requests/{id}/events``. Its OpenAPI entry
describes each event (:data:`EVENT_SCHEMA`, an OpenAPI 3.2 ``itemSchema`` as FastAPI writes
for its own SSE routes): ``id`` the log index, ``event`` the entry's kind, and ``data`` a
JSON text whose object is a :class:`~agentstream.ingress.models.StreamEvent`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, get_args

from agentstream.ingress.access import Access
from agentstream.ingress.auth import Principal
from agentstream.ingress.config import IngressOptions
from agentstream.ingress.errors import documented_errors
from agentstream.ingress.observe import IngressMetrics
from agentstream.ingress.records import EntryKind, LogEntry
from agentstream.ingress.requests import RequestRepository
from fastapi import APIRouter, Depends, Header, Path
from fastapi.responses import StreamingResponse

__all__ = ["EVENT_SCHEMA", "event_stream", "events_router", "format_event"]

#: One event of the stream, for the OpenAPI document (``itemSchema`` of
#: ``text/event-stream``); heartbeats are comments and the ``retry`` line carries no data,
#: so neither is an event.
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "The entry's index in the request's log; resume with `Last-Event-ID`.",
        },
        "event": {
            "type": "string",
            "enum": list(get_args(EntryKind)),
            "description": "The entry's kind; the stream ends after `response` or `refused`.",
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/StreamEvent"},
        },
        "retry": {"type": "integer", "minimum": 0},
    },
}


def format_event(index: int, entry: LogEntry) -> bytes:
    """One SSE event: ``id`` (log index), ``event`` (entry kind) and JSON ``data``."""
    data = {
        "index": index,
        "event_id": entry.event_id,
        "kind": entry.kind,
        "time": entry.time.isoformat().replace("+00:00", "Z"),
        "data": entry.data,
    }
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {index}\nevent: {entry.kind}\ndata: {payload}\n\n".encode()


async def event_stream(
    repo: RequestRepository,
    request_id: str,
    *,
    last_event_id: int | None,
    poll_interval_s: float,
    heartbeat_s: float,
    settle_s: float = 5.0,
    on_open: Callable[[], None] | None = None,
    on_close: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body for ``request_id``, resuming after ``last_event_id`` when given."""
    start = 0 if last_event_id is None else last_event_id + 1
    loop = asyncio.get_running_loop()
    if on_open is not None:
        on_open()
    try:
        seen, ended = await repo.seen_before(request_id, start)
        # Tell the client how long to wait before reconnecting, then open the stream.
        yield b"retry: 1000\n\n"
        quiet_since = settled = loop.time()
        while not ended:
            entries, start = await repo.entries(request_id, start, seen)
            for index, entry in entries:
                yield format_event(index, entry)
                if entry.terminal:
                    return
            if entries:
                quiet_since = settled = loop.time()
            else:
                if loop.time() - quiet_since >= heartbeat_s:
                    yield b": keep-alive\n\n"
                    quiet_since = loop.time()
                if loop.time() - settled >= settle_s:
                    settled = loop.time()
                    await repo.release_held(request_id)
            await asyncio.sleep(poll_interval_s)
    finally:
        if on_close is not None:
            on_close()


def events_router(access: Access, opts: IngressOptions, metrics: IngressMetrics) -> APIRouter:
    router = APIRouter(tags=["requests"])

    @router.get(
        "/v1/requests/{request_id}/events",
        summary="Progress and response as Server-Sent Events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": (
                    "`text/event-stream`: one event per log entry (`tool_call`, "
                    "`memory_call`, `tool_result`, `handoff`, `subrun`, then `response`; "
                    "or just `refused` for a "
                    "request answered 503), each with `id` = its index and a JSON `data` "
                    "object; the stream ends after `response` or `refused`. Comment lines "
                    "are heartbeats."
                ),
                "content": {
                    "text/event-stream": {
                        "itemSchema": EVENT_SCHEMA,
                        "example": (
                            'id: 0\nevent: tool_call\ndata: {"index":0,"event_id":"...",'
                            '"kind":"tool_call","time":"2026-01-01T00:00:00Z","data":{}}\n\n'
                        ),
                    }
                },
            },
            **documented_errors(401, 404, 422, 429, 503),
        },
    )
    async def stream_events(
        request_id: str = Path(min_length=1, max_length=200),
        who: Principal = Depends(access.caller),
        last_event_id: int | None = Header(
            default=None,
            alias="Last-Event-ID",
            ge=0,
            description="Resume after this event id (the SSE reconnection header).",
        ),
    ) -> StreamingResponse:
        await access.owned(request_id, who)
        stream = event_stream(
            access.repo,
            request_id,
            last_event_id=last_event_id,
            poll_interval_s=opts.poll_interval_s,
            heartbeat_s=opts.heartbeat_s,
            on_open=metrics.ingress_streams.inc,
            on_close=metrics.ingress_streams.dec,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router
