"""The hop of ``bench/peers.py`` written the way a FastStream user would write it.

One subscriber on the source topic answers every ``user_request`` on the sink topic: the
event is decoded and validated by FastStream into agentstream's own pydantic model, the
handler builds the same completed ``agent_response`` as ``bench/echo_worker.py`` does
(without the state the echo worker loads and saves: the peers keep none) and publishes it
with the conversation as key and the CloudEvents headers. The offset is acknowledged after
handling (``AckPolicy.ACK``, auto-commit off), so a crash redelivers instead of losing.
Three shapes:

- sequential (default): one message at a time, a commit after each;
- ``--max-workers N``: FastStream's own concurrency; with an ack policy other than
  ``ACK_FIRST`` it runs N consumers of the group in this process, each handling its
  partitions one message at a time (so per-key order holds, at most N in flight);
- ``--concurrent N``: the add-on ``faststream-concurrent-aiokafka``: each message a task,
  at most N at once, offsets committed in batches up to the lowest unfinished one (its
  quick start: ``AckPolicy.MANUAL``, the middleware registered first). Messages of one key
  run concurrently, so per-key order is not kept.

The producer is configured for durability like agentstream's (acks=all, idempotent); every
other setting is FastStream's default. Run on uvloop, as FastStream's CLI does when it is
installed.

    python bench/peer_faststream.py --bootstrap HOST:PORT --source S --sink T --group G
        [--max-workers N | --concurrent N]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agentstream.handlers.agent.events import response_event  # noqa: E402
from agentstream.schemas import AgentResponseData, UserRequest, encode_headers  # noqa: E402
from faststream import FastStream  # noqa: E402
from faststream.kafka import KafkaBroker  # noqa: E402
from faststream.middlewares import AckPolicy  # noqa: E402

__all__ = ["build_app"]


def build_app(
    bootstrap: str, source: str, sink: str, group: str, max_workers: int, concurrent: int
) -> FastStream:
    """The FastStream app of one shape (see the module docstring)."""
    broker = KafkaBroker(bootstrap, acks="all", enable_idempotence=True)
    lifespan = None
    if concurrent:
        from faststream_concurrent_aiokafka import (
            KafkaConcurrentProcessingMiddleware,
            initialize_concurrent_processing,
            stop_concurrent_processing,
        )

        broker.add_middleware(KafkaConcurrentProcessingMiddleware)

        @contextlib.asynccontextmanager
        async def lifespan(*_: Any) -> AsyncIterator[None]:
            await initialize_concurrent_processing(
                context=broker.context, concurrency_limit=concurrent
            )
            try:
                yield
            finally:
                await stop_concurrent_processing(broker.context)

    publisher = broker.publisher(sink)

    @broker.subscriber(
        source,
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL if concurrent else AckPolicy.ACK,
        max_workers=max_workers,
    )
    async def answer(event: UserRequest) -> None:
        reply = response_event(event, AgentResponseData(status="completed", text="ok", steps=1))
        headers = {name: value.decode() for name, value in encode_headers(reply)}
        await publisher.publish(reply, key=reply.key, headers=headers)

    return FastStream(broker, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--group", required=True)
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--max-workers", type=int, default=1)
    shape.add_argument("--concurrent", type=int, default=0, help="the add-on's limit")
    args = parser.parse_args()
    app = build_app(
        args.bootstrap, args.source, args.sink, args.group, args.max_workers, args.concurrent
    )
    import anyio
    import uvloop

    anyio.run(app.run, backend_options={"loop_factory": uvloop.new_event_loop})


if __name__ == "__main__":
    main()
