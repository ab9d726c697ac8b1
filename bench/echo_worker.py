"""The runtime with a trivial handler, for measuring the runtime apart from the agent.

It runs the real :class:`agentstream.handlers.runtime.worker.Worker` on the configured bus and
store (Kafka and Redis from ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL``, like ``agentstream
worker``) with one route on ``user_request``: load a small state of the conversation, save it,
answer with a completed ``agent_response``. Same dedup mark, outbox, commit and publish as the
agent, no model and no run state. ``bench/README.md`` ("Where the gap is") compares it with the bare
relay, the guarded relay and the agent.

    KAFKA_BOOTSTRAP_SERVERS=... REDIS_URL=... AGENTSTREAM_TOPICS__PREFIX=... \\
        python bench/echo_worker.py
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agentstream.handlers.agent.events import response_event  # noqa: E402
from agentstream.handlers.runtime.context import Context  # noqa: E402
from agentstream.handlers.runtime.route import Route  # noqa: E402
from agentstream.handlers.runtime.worker import Worker  # noqa: E402
from agentstream.schemas import AgentResponseData, Envelope, UserRequest  # noqa: E402
from agentstream.settings import Settings  # noqa: E402
from agentstream.topics import Topic  # noqa: E402
from agentstream.wiring import build_bus, build_store, runtime_config  # noqa: E402
from pydantic import BaseModel  # noqa: E402


class Seen(BaseModel):
    requests: int = 0


async def echo(event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
    key = ctx.key("echo", event.conversation_id)
    await ctx.prefetch(key)
    seen = await ctx.load(key, Seen) or Seen()
    seen.requests += 1
    ctx.save(key, seen, 3600)
    return [response_event(event, AgentResponseData(status="completed", text="ok", steps=1))]


async def main() -> None:
    settings = Settings()
    bus, store = build_bus(settings), build_store(settings)
    await bus.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(
        bus,
        store,
        settings.catalog(),
        [Route(Topic.USER_REQUEST, echo, "echo")],
        runtime_config(settings, "agentstream-echo", "echo"),
    )
    try:
        await worker.run(stop)
    finally:
        await bus.stop()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
