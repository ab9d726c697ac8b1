"""Server-Sent Events of one request: its progress, then its response, then the end.

Each SSE event's ``id`` is the entry's index in the request's event log in the store, so a
client that lost its connection reconnects with ``Last-Event-ID`` and gets exactly the
entries after it: none missed, none repeated, from whichever replica it reaches. The stream
reads the store every ``poll_interval_s``, sends a comment line every ``heartbeat_s`` while
nothing happens (so proxies keep the connection open), and ends after the terminal entry.
After ``settle_s`` of quiet it asks the repository to release a response the projection
still holds back for progress that never came, so that no stream waits forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from agentstream.ingress.projection import LogEntry
from agentstream.ingress.requests import RequestRepository

__all__ = ["event_stream", "format_event"]


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
