"""The operational routes: ``/healthz`` (alive), ``/readyz`` (broker, topics, store) and
``/metrics`` (Prometheus).

None needs an API key: probes and scrapers carry none, and none tells a tenant's data.
``/readyz`` answers 503 with the failing ``checks`` when the broker cannot be reached, a
main topic is missing, or the store does not answer, each within 3 s, so a load balancer
takes a replica out while it cannot accept requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agentstream.handlers.stores.base import StateStore
from agentstream.ingress.errors import json_response
from agentstream.ingress.models import Health, Readiness
from agentstream.ingress.observe import IngressMetrics
from agentstream.topics import Bus
from fastapi import APIRouter
from fastapi.responses import Response

__all__ = ["operations_router"]

_CHECK_TIMEOUT_S = 3.0


def operations_router(
    bus: Bus, store: StateStore, metrics: IngressMetrics, topics: Sequence[str]
) -> APIRouter:
    """``topics``: the main topics ``/readyz`` requires."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health, summary="Alive")
    async def healthz() -> Health:
        return Health()

    @router.get(
        "/readyz",
        response_model=Readiness,
        summary="Broker reachable, topics present, store reachable",
        responses={503: {"model": Readiness, "description": "Not ready; `checks` say why."}},
    )
    async def readyz() -> Response:
        checks = {"broker": "ok", "topics": "ok", "store": "ok"}
        try:
            found = await asyncio.wait_for(bus.describe_topics(list(topics)), _CHECK_TIMEOUT_S)
            missing = [t for t in topics if t not in found]
            if missing:
                checks["topics"] = f"missing: {', '.join(missing)}"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
            checks["topics"] = "unknown"
        try:
            await asyncio.wait_for(store.ping(), _CHECK_TIMEOUT_S)
        except Exception as exc:
            checks["store"] = f"unreachable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return json_response(Readiness(ready=ready, checks=checks), 200 if ready else 503)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return router
