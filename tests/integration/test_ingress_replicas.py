"""Two ingress processes sharing only Kafka and Redis: either one answers any request.

Each replica is a separate Python process configured from the environment, as a deployment
runs it. A request accepted by replica A is read, waited for and streamed from replica B,
whose projection worker (same consumer group, partitions split between the two) or A's
writes the status into the shared Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    ToolCall,
    ToolCallData,
    ToolResult,
    ToolResultData,
    encode,
)
from agentstream.settings import Settings, TopicSettings
from agentstream.topics import KafkaConfig, OutgoingRecord
from agentstream.topics.kafka import KafkaBus
from agentstream.wiring import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
KEY = "replica-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

# What `agentstream ingress` does: settings from the environment, Kafka and Redis, serve()
# until SIGTERM.
LAUNCHER = """
import asyncio, signal
from agentstream.settings import load_settings
from agentstream.wiring import build_bus, build_store, runtime_config
from agentstream.ingress.projection import PROJECTION_GROUP
from agentstream.ingress import serve

async def main() -> None:
    settings = load_settings()
    bus, store = build_bus(settings), build_store(settings)
    await bus.start()
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    ready = asyncio.Event()
    server = asyncio.create_task(serve(
        settings, bus, store, ready=ready,
        projection=runtime_config(settings, PROJECTION_GROUP, "ingress"),
    ))
    try:
        await ready.wait()
        print("READY", flush=True)
        await server
    except asyncio.CancelledError:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
    finally:
        await bus.stop()
        await store.close()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def replica(env: dict[str, str], port: int) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER],
        cwd=REPO,
        env={**env, "AGENTSTREAM_INGRESS__PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "READY", f"replica did not start (exit {process.poll()})"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_a_request_accepted_by_one_replica_is_answered_by_the_other(
    kafka_bootstrap: str, redis_url: str, prefix: str
) -> None:
    settings = Settings(
        bus="kafka",
        kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
        topics=TopicSettings(prefix=prefix, partitions=4),
    )
    bus = KafkaBus(settings.kafka)
    await bus.start()
    await ensure_topics(bus, settings.catalog(), create=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "AGENTSTREAM_BUS": "kafka",
        "AGENTSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "AGENTSTREAM_TOPICS__PREFIX": prefix,
        "AGENTSTREAM_TOPICS__PARTITIONS": "4",
        "AGENTSTREAM_INGRESS__API_KEYS": json.dumps({KEY: "acme"}),
        "AGENTSTREAM_INGRESS__HOST": "127.0.0.1",
        "AGENTSTREAM_LOG_LEVEL": "WARNING",
    }
    try:
        with replica(env, free_port()) as url_a, replica(env, free_port()) as url_b:
            async with httpx.AsyncClient(timeout=30) as client:
                accepted = await client.post(
                    f"{url_a}/v1/requests", json={"text": "12*7"}, headers=AUTH
                )
                assert accepted.status_code == 202
                body = accepted.json()
                request_id = body["request_id"]
                # B knows it at once: A wrote the record into the shared store.
                seen = await client.get(f"{url_b}/v1/requests/{request_id}", headers=AUTH)
                assert seen.status_code == 200
                assert seen.json()["text"] == "12*7"

                stream_task = asyncio.create_task(
                    client.get(f"{url_b}/v1/requests/{request_id}/events", headers=AUTH)
                )
                waited_task = asyncio.create_task(
                    client.get(f"{url_b}/v1/requests/{request_id}?wait=25", headers=AUTH)
                )
                await asyncio.sleep(0.5)
                await feed(bus, settings, body)
                stream, waited = await asyncio.gather(stream_task, waited_task)
    finally:
        await bus.stop()

    assert waited.json()["status"] == "completed"
    assert waited.json()["response"]["text"] == "84"
    ids = [line[4:] for line in stream.text.splitlines() if line.startswith("id: ")]
    kinds = [line[7:] for line in stream.text.splitlines() if line.startswith("event: ")]
    assert ids == ["0", "1", "2"]
    assert kinds == ["tool_call", "tool_result", "response"]


async def feed(bus: KafkaBus, settings: Settings, body: dict[str, Any]) -> None:
    common = {
        "request_id": body["request_id"],
        "conversation_id": body["conversation_id"],
        "tenant": "acme",
    }
    events = [
        ToolCall(
            id="call-0",
            source="agent-worker",
            data=ToolCallData(call_id="c0", step=0, tool="calculator"),
            **common,
        ),
        ToolResult(
            id="result-0",
            source="tool-worker",
            data=ToolResultData(call_id="c0", step=0, tool="calculator", ok=True, output=84),
            **common,
        ),
        AgentResponse(
            id="response",
            source="agent-worker",
            data=AgentResponseData(
                status="completed", text="84", steps=1, tool_calls=["calculator"]
            ),
            **common,
        ),
    ]
    catalog = settings.catalog()
    for event in events:
        key, value, headers = encode(event)
        await bus.publish(OutgoingRecord(catalog.topic_of(event), value, key, tuple(headers)))
