"""Ingress throughput: accepted requests per second and latency at a fixed concurrency.

Six servers are measured in the same run, each in its own process, by the same load
generator (``--concurrency`` keep-alive connections posting for ``--duration`` seconds):

- ``bare``: a bare ASGI app on uvicorn that reads the body and answers 202: the floor,
- ``fastapi``: a bare FastAPI app validating the same body model and answering 202 (what
  the web framework alone costs),
- ``produce``: the bare app that also publishes the body to Kafka with aiokafka (acks=all,
  idempotent, the ingress's linger) and answers 202 once the broker acknowledged it: the
  floor of any Python ingress that keeps "202 only after the ack", on this machine,
- ``fastapi-produce``: what a user would write instead of the ingress: a plain FastAPI app
  that validates the same body model, publishes it with aiokafka (acks=all, idempotent, the
  same linger, the producer started in the app's lifespan) and answers 202 with the ids
  once the broker acknowledged it; no auth, idempotency key, record or projection,
- ``memory``: the ingress on the in-process bus and store (the embedded default),
- ``kafka``: the ingress on real Kafka (acks=all) and real Redis.

The ingress runs its projection worker too, as in production. The load generator is a
minimal HTTP/1.1 client on raw asyncio streams, so that it costs the machine less than the
servers it measures. Every server is measured ``--rounds`` times, interleaved, and the
median round is reported, so that a burst of load from elsewhere on the machine does not
decide a ratio. On Linux the server's CPU time per request is reported too: it depends much
less on what else runs on the machine than the rate does. Kafka and Redis come from
``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL``, or are started locally
(``infra/kafka/start.sh``, ``redis-server``) and stopped afterwards.

    python bench/ingress.py [--duration 10] [--concurrency 32] [--rounds 3]
                            [--servers bare,fastapi,...] [--out bench/results/ingress.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEY = "bench-key"
BODY = json.dumps({"text": "What is 12 * 7?"}).encode()
TARGET_RATIO = 0.6
KINDS = ("bare", "fastapi", "produce", "fastapi-produce", "memory", "kafka")


# -- servers (run in child processes) -----------------------------------------------------


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor: read the body, answer 202 with a small JSON body."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"request_id":"x","conversation_id":"y","status":"accepted"}'
    await send(
        {
            "type": "http.response.start",
            "status": 202 if scope["path"] == "/v1/requests" else 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def fastapi_app() -> Any:
    """The framework alone: the same body model validated, 202 answered, nothing else."""
    from agentstream.ingress.models import CreateRequest
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI()

    async def create(body: CreateRequest) -> Response:
        return Response(
            b'{"request_id":"x","conversation_id":"y","status":"accepted"}',
            status_code=202,
            media_type="application/json",
        )

    # Postponed annotations: hand FastAPI the class itself, it is local to this function.
    create.__annotations__["body"] = CreateRequest
    app.post("/v1/requests", status_code=202)(create)
    return app


def produce_app(bootstrap: str, topic: str) -> Any:
    """The bare app plus the one thing an ingress must do: publish, wait for the ack."""
    from aiokafka import AIOKafkaProducer

    producer: AIOKafkaProducer | None = None
    body_202 = b'{"request_id":"x","conversation_id":"y","status":"accepted"}'

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal producer
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=int(os.environ.get("BENCH_PRODUCE_LINGER_MS", "2")),
            )
            await producer.start()
        await producer.send_and_wait(topic, b"".join(chunks), key=b"k")
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body_202})

    return app


def fastapi_produce_app(bootstrap: str, topic: str) -> Any:
    """What a user would write instead of the ingress: FastAPI validates the body, aiokafka
    publishes it (acks=all, idempotent), 202 once the broker acknowledged it."""
    from agentstream.ingress.models import CreateRequest
    from aiokafka import AIOKafkaProducer
    from fastapi import FastAPI

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=int(os.environ.get("BENCH_PRODUCE_LINGER_MS", "2")),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await producer.start()
        try:
            yield
        finally:
            await producer.stop()

    app = FastAPI(lifespan=lifespan)

    async def create(body: CreateRequest) -> dict[str, str]:
        request_id = uuid.uuid4().hex
        conversation_id = body.conversation_id or uuid.uuid4().hex
        await producer.send_and_wait(
            topic,
            body.model_dump_json(exclude_none=True).encode(),
            key=conversation_id.encode(),
            headers=[("request_id", request_id.encode())],
        )
        return {"request_id": request_id, "conversation_id": conversation_id, "status": "accepted"}

    # Postponed annotations: hand FastAPI the class itself, it is local to this function.
    create.__annotations__["body"] = CreateRequest
    app.post("/v1/requests", status_code=202)(create)
    return app


async def _produce_topic(name: str) -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = os.environ["BENCH_PREFIX"] + name
    admin = AIOKafkaAdminClient(bootstrap_servers=os.environ["BENCH_KAFKA"])
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, 1)])
    finally:
        await admin.close()
    return topic


async def serve_target(kind: str, port: int) -> None:
    import uvicorn

    if kind in ("bare", "fastapi", "produce", "fastapi-produce"):
        lifespan = "off"
        if kind == "produce":
            app = produce_app(os.environ["BENCH_KAFKA"], await _produce_topic("produce_floor"))
        elif kind == "fastapi-produce":
            topic = await _produce_topic("fastapi_produce")
            app, lifespan = fastapi_produce_app(os.environ["BENCH_KAFKA"], topic), "on"
        else:
            app = bare_app if kind == "bare" else fastapi_app()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan=lifespan,
            log_level="warning",
            access_log=False,
        )
        await uvicorn.Server(config).serve()
        return

    from agentstream.ingress.server import serve
    from agentstream.settings import IngressSettings, Settings, TopicSettings
    from agentstream.topics import KafkaConfig
    from agentstream.wiring import build_bus, build_store, ensure_topics
    from pydantic import SecretStr

    ingress = IngressSettings(
        host="127.0.0.1",
        port=port,
        api_keys={KEY: "bench"},
        rate_per_second=1e9,
        rate_burst=1_000_000_000,
    )
    topics = TopicSettings(prefix=os.environ["BENCH_PREFIX"], partitions=6)
    if kind == "memory":
        settings = Settings(bus="memory", ingress=ingress, topics=topics)
    else:
        settings = Settings(
            bus="kafka",
            kafka=KafkaConfig(bootstrap_servers=os.environ["BENCH_KAFKA"]),
            redis_url=SecretStr(os.environ["BENCH_REDIS"]),
            ingress=ingress,
            topics=topics,
        )
    bus, store = build_bus(settings), build_store(settings)
    await bus.start()
    await ensure_topics(bus, settings.catalog(), create=True)
    task = asyncio.create_task(serve(settings, bus, store))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await bus.stop()
        await store.close()


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


# -- load generator -----------------------------------------------------------------------


def _request(port: int) -> bytes:
    return (
        f"POST /v1/requests HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _one_client(
    port: int, stop_at: float, latencies: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _request(port)
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` (Linux), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    port: int, concurrency: int, duration: float, pid: int | None = None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    # Warm-up: connections, caches, the producer's metadata.
    await asyncio.gather(
        *(_one_client(port, loop.time() + 1.0, [], {}) for _ in range(concurrency))
    )
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    cpu_before = cpu_seconds(pid) if pid is not None else None
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _one_client(port, loop.time() + duration, latencies, statuses)
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds(pid) if pid is not None else None
    cpu_ms = None
    if cpu_before is not None and cpu_after is not None and latencies:
        cpu_ms = round(1000 * (cpu_after - cpu_before) / len(latencies), 3)
    accepted = statuses.get(202, 0)
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "accepted": accepted,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(elapsed, 3),
        "accepted_per_s": round(accepted / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 2) if ordered else None,
        "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2) if ordered else None,
        "server_cpu_ms_per_request": cpu_ms,
    }


# -- orchestration ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s")


@contextlib.contextmanager
def server(kind: str, env: dict[str, str]) -> Iterator[tuple[int, int]]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )
    try:
        _wait_port(port, process)
        time.sleep(3.0 if kind == "kafka" else 0.5)  # the projection joins its group
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def kafka() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    data_dir = tempfile.mkdtemp(prefix="agentstream-bench-kafka-")
    result = subprocess.run(
        [
            "bash",
            str(REPO / "infra/kafka/start.sh"),
            "--data-dir",
            data_dir,
            "--owner-pid",
            str(os.getpid()),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    bootstrap = result.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        yield bootstrap
    finally:
        subprocess.run(
            ["bash", str(REPO / "infra/kafka/stop.sh"), "--data-dir", data_dir],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def redis() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(KINDS), help="a subset, for short runs")
    parser.add_argument("--out", default=str(REPO / "bench/results/ingress.json"))
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_target(args.serve, args.port))
        return

    kinds = [k for k in KINDS if k in args.servers.split(",")]
    rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with kafka() as bootstrap, redis() as redis_url, contextlib.ExitStack() as servers:
        env = {
            "BENCH_KAFKA": bootstrap,
            "BENCH_REDIS": redis_url,
            "BENCH_PREFIX": f"bench{uuid.uuid4().hex[:8]}.",
        }
        running = {kind: servers.enter_context(server(kind, env)) for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                port, pid = running[kind]
                rounds[kind].append(
                    asyncio.run(measure(port, args.concurrency, args.duration, pid))
                )
    results: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        ordered = sorted(rounds[kind], key=lambda r: r["accepted_per_s"])
        results[kind] = {
            **ordered[len(ordered) // 2],
            "rounds_per_s": [r["accepted_per_s"] for r in rounds[kind]],
        }
    for kind in ("fastapi", "produce", "fastapi-produce", "memory", "kafka"):
        for floor in ("bare", "fastapi", "produce", "fastapi-produce"):
            if kind not in results or floor not in results:
                continue
            if KINDS.index(floor) >= KINDS.index(kind):
                continue
            base = results[floor]["accepted_per_s"] or 1.0
            results[kind][f"ratio_to_{floor}"] = round(results[kind]["accepted_per_s"] / base, 3)

    print(
        f"ingress benchmark: {args.concurrency} concurrent clients, {args.duration:g}s per "
        f"round, median of {args.rounds} rounds"
    )
    print(
        f"{'server':<16} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>11} "
        f"{'vs bare':>8} {'vs fastapi':>11} {'vs fastapi-produce':>19}"
    )
    for kind, r in results.items():
        cpu = r["server_cpu_ms_per_request"]
        print(
            f"{kind:<16} {r['accepted_per_s']:>11.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{'-' if cpu is None else f'{cpu:.3f}':>11} "
            f"{r.get('ratio_to_bare', 1.0):>8.2f} {r.get('ratio_to_fastapi', 1.0):>11.2f} "
            f"{_ratio(r.get('ratio_to_fastapi-produce')):>19}"
        )
    report = {
        "benchmark": "ingress",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "target_ratio": TARGET_RATIO,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
