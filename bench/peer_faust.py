"""The hop of ``bench/peers.py`` written the way a faust-streaming user would write it.

One agent on the source topic answers every ``user_request`` on the sink topic: each event's
bytes are validated into agentstream's own pydantic model, the handler builds the same
completed ``agent_response`` as ``bench/echo_worker.py`` (without its state) and sends it
with the conversation as key and the CloudEvents headers. Faust acknowledges an event when
the agent takes the next one and commits acknowledged offsets in the background
(``broker_commit_interval``); its sends are buffered by the producer. ``--concurrency N``
runs N instances of the agent on the same stream (faust's ``concurrency=``), which takes
events of one key out of order.

Settings are faust's defaults (acks=all, a 60 s session timeout, commits every 2.8 s)
except what a benchmark must change: no web server (several workers share the machine), an
in-memory store and a private data directory. Run on uvloop (``mode.loop.use``), as
agentstream's workers and FastStream's CLI are.

    python bench/peer_faust.py --bootstrap HOST:PORT --source S --sink T --group G
        [--concurrency N] [--datadir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["build_app"]


def build_app(
    bootstrap: str, source: str, sink: str, group: str, concurrency: int, datadir: str
) -> Any:
    """The faust app: one agent of ``concurrency`` instances (see the module docstring)."""
    import faust
    from agentstream.handlers.agent.events import response_event
    from agentstream.schemas import AgentResponseData, UserRequest, encode

    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=datadir,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    requests = app.topic(source, key_type=bytes, value_type=bytes)
    answers = app.topic(sink, key_type=bytes, value_type=bytes)

    @app.agent(requests, concurrency=concurrency)
    async def answer(stream: Any) -> None:
        async for event in stream.events():
            request = UserRequest.model_validate_json(event.value)
            reply = response_event(
                request, AgentResponseData(status="completed", text="ok", steps=1)
            )
            key, value, headers = encode(reply)
            await answers.send(key=key, value=value, headers=headers)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--datadir")
    args = parser.parse_args()
    import mode.loop

    mode.loop.use("uvloop")
    from faust import Worker

    datadir = args.datadir or tempfile.mkdtemp(prefix="bench-faust-")
    app = build_app(args.bootstrap, args.source, args.sink, args.group, args.concurrency, datadir)
    Worker(app, loglevel="WARNING").execute_from_commandline()


if __name__ == "__main__":
    main()
