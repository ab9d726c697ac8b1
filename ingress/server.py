"""Running the ingress: uvicorn, programmatically, beside the projection worker.

:func:`serve` runs until it is cancelled (or uvicorn stops), then shuts both down: uvicorn
stops accepting, finishes open requests, and the projection worker drains, commits and
leaves its group. It never installs signal handlers (the caller owns them: ``agentstream
ingress`` and ``agentstream up`` cancel it on SIGTERM) and never starts or stops the bus
and store it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.worker import RuntimeConfig, Worker
from agentstream.handlers.stores.base import StateStore
from agentstream.ingress.app import create_app
from agentstream.ingress.config import AppSettings
from agentstream.ingress.observe import IngressMetrics
from agentstream.ingress.projection import PROJECTION_GROUP, Projection, RecentlyRecorded
from agentstream.topics import Bus
from prometheus_client import CollectorRegistry

__all__ = ["IngressServer", "projection_worker", "serve"]

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The embedding process owns signals; it cancels serve() instead.
        yield


def projection_worker(
    settings: AppSettings,
    bus: Bus,
    store: StateStore,
    metrics: RuntimeMetrics,
    config: RuntimeConfig | None = None,
    *,
    recorded: RecentlyRecorded | None = None,
) -> Worker:
    """The projection's consumer-group member (group ``{prefix}ingress-projection``);
    ``recorded``: the one the app of the same process writes to (see :func:`create_app`)."""
    catalog = settings.catalog()
    config = config or RuntimeConfig(
        group_id=f"{catalog.prefix}{PROJECTION_GROUP}",
        source="ingress",
        namespace=settings.namespace,
    )
    projection = Projection(
        settings.namespace,
        ttl_s=settings.ingress.record_ttl_s,
        recorded=recorded,
        agents=catalog.agents,
    )
    return Worker(bus, store, catalog, projection.routes(), config, metrics=metrics)


class IngressServer:
    """The app served by uvicorn plus the projection worker; :attr:`port` once started."""

    def __init__(
        self,
        settings: AppSettings,
        bus: Bus,
        store: StateStore,
        *,
        metrics: CollectorRegistry | None = None,
        projection: RuntimeConfig | None = None,
        run_projection: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        # The app's metrics and the projection worker's, on one registry.
        self.metrics = IngressMetrics(metrics)
        # The projection skips the requests this app recorded itself.
        recorded = RecentlyRecorded() if run_projection else None
        self.app = create_app(settings, bus, store, self.metrics, recorded=recorded)
        self.worker = (
            projection_worker(
                settings,
                bus,
                store,
                RuntimeMetrics(self.metrics.registry),
                projection,
                recorded=recorded,
            )
            if run_projection
            else None
        )
        opts = settings.ingress
        self._sock = sock
        self._server = _Server(
            uvicorn.Config(
                self.app,
                host=opts.host,
                port=opts.port,
                lifespan="off",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=5,
            )
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0); binds the socket if needed."""
        port: int = self.bind().getsockname()[1]
        return port

    def bind(self) -> socket.socket:
        """Bind the listening socket now (an ``OSError`` here, not inside uvicorn)."""
        if self._sock is None:
            opts = self.settings.ingress
            family, kind, proto, _, address = socket.getaddrinfo(
                opts.host, opts.port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    async def run(self, ready: asyncio.Event | None = None) -> None:
        stop = asyncio.Event()
        sockets = [self.bind()]
        tasks = [asyncio.create_task(self._server.serve(sockets), name="ingress-http")]
        if self.worker is not None:
            tasks.append(asyncio.create_task(self.worker.run(stop), name="ingress-projection"))
        watcher = asyncio.create_task(self._signal_ready(ready))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            watcher.cancel()
            self._server.should_exit = True
            stop.set()
            # Shielded: a second cancellation must not leave uvicorn or the worker half-done.
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
            log.info("ingress stopped")

    async def _signal_ready(self, ready: asyncio.Event | None) -> None:
        while not self._server.started or (
            self.worker is not None and not self.worker.started.is_set()
        ):
            await asyncio.sleep(0.02)
        log.info("ingress listening on http://%s:%d", self.settings.ingress.host, self.port)
        if ready is not None:
            ready.set()


async def serve(
    settings: AppSettings,
    bus: Bus,
    store: StateStore,
    *,
    ready: asyncio.Event | None = None,
    metrics: CollectorRegistry | None = None,
    projection: RuntimeConfig | None = None,
) -> None:
    """Serve the ingress on ``settings.ingress.host``/``port`` with its projection worker
    until cancelled; ``ready`` is set once both listen; ``metrics`` is the process'
    Prometheus registry, for the app's and the worker's metrics (a fresh one when None,
    shared with the workers under ``agentstream up``). ``projection`` overrides the
    worker's runtime config (``agentstream.wiring.runtime_config(settings,
    PROJECTION_GROUP, "ingress")`` applies the configured retry policy)."""
    server = IngressServer(settings, bus, store, metrics=metrics, projection=projection)
    await server.run(ready)
