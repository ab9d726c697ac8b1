"""``/healthz``, ``/readyz`` and ``/metrics`` of a worker process, on its own port.

``/healthz`` answers while the event loop runs (liveness: restart me if this fails).
``/readyz`` answers 200 only when every worker of the process has joined its group, the
broker answers and the catalog's topics exist, and the state store answers (readiness:
send me traffic, count me in a rollout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from agentstream.handlers.runtime.metrics import render
from agentstream.handlers.stores.base import StateStore
from agentstream.settings import Settings
from agentstream.topics import Bus
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from agentstream.process import WorkerSet

__all__ = ["QuietServer", "health_app", "serve_health"]

log = logging.getLogger(__name__)


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone: the process's own SIGTERM handler
    drains the workers first and then stops the server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(
    settings: Settings,
    bus: Bus,
    store: StateStore,
    metrics: CollectorRegistry,
    workers: WorkerSet,
) -> FastAPI:
    app = FastAPI(title="agentstream worker", docs_url=None, redoc_url=None)
    catalog = settings.catalog()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problems: list[str] = []
        if not all(w.started.is_set() for w in workers.workers):
            problems.append("not every worker has joined its consumer group yet")
        try:
            names = [s.name for s in catalog.specs()]
            found = await asyncio.wait_for(bus.describe_topics(names), 5)
            missing = [n for n in names if n not in found]
            if missing:
                problems.append(f"missing topics: {', '.join(missing)}")
        except Exception as exc:
            problems.append(f"broker unreachable: {exc}")
        try:
            await asyncio.wait_for(store.ping(), 5)
        except Exception as exc:
            problems.append(f"state store unreachable: {exc}")
        status = 503 if problems else 200
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=status)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(render(metrics), media_type="text/plain; version=0.0.4")

    return app


async def serve_health(
    settings: Settings,
    bus: Bus,
    store: StateStore,
    metrics: CollectorRegistry,
    workers: WorkerSet,
    stop: asyncio.Event,
) -> None:
    config = uvicorn.Config(
        health_app(settings, bus, store, metrics, workers),
        host="0.0.0.0",
        port=settings.metrics_port,
        log_level="warning",
        lifespan="off",
    )
    server = QuietServer(config)
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    with contextlib.suppress(Exception):
        await task
