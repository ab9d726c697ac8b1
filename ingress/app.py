"""The HTTP ingress: a FastAPI app that turns requests into ``user_request`` events.

``POST /v1/requests`` answers 202 only once the broker appended the event within its
accept-by deadline (acks=all); otherwise 503 with ``Retry-After``, and then the request
never runs, even if its record lands later (ADR 6). Everything a client reads afterwards
(``GET /v1/requests/{id}``, the bounded wait, the SSE stream, conversations) comes from the
state store, written by the projection (:mod:`agentstream.ingress.projection`), so the app
holds no state that another replica would miss. Limits (size, rate, schema) and
authentication reject a request before anything is published.

:func:`create_app` only assembles: the routers live in their own modules
(:mod:`~agentstream.ingress.request_routes`, :mod:`~agentstream.ingress.sse`,
:mod:`~agentstream.ingress.conversation_routes`, :mod:`~agentstream.ingress.operations`),
and ``POST /v1/requests`` is served by the fast path of
:mod:`agentstream.ingress.create`, mounted last (ADR 13).
"""

from __future__ import annotations

import logging
from typing import Any

from agentstream.handlers.stores.base import StateStore
from agentstream.ingress.access import Access
from agentstream.ingress.auth import Admission, ApiKeys
from agentstream.ingress.config import AppSettings
from agentstream.ingress.conversation_routes import conversations_router
from agentstream.ingress.create import CLOCK_MARGIN_S, CreateEndpoint
from agentstream.ingress.errors import ApiError, install_error_handlers, without_null_parameters
from agentstream.ingress.limits import BodySizeLimit, RateLimiter
from agentstream.ingress.models import CreateRequest, StreamEvent
from agentstream.ingress.observe import HttpMetrics, IngressMetrics
from agentstream.ingress.operations import operations_router
from agentstream.ingress.records import RecentlyRecorded
from agentstream.ingress.request_routes import documented_create, mount_fast_path, requests_router
from agentstream.ingress.requests import RequestRepository
from agentstream.ingress.sse import events_router
from agentstream.topics import Bus, Kind, Topic
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["ApiError", "create_app"]

log = logging.getLogger(__name__)


def create_app(
    settings: AppSettings,
    bus: Bus,
    store: StateStore,
    metrics: IngressMetrics | None = None,
    *,
    recorded: RecentlyRecorded | None = None,
) -> FastAPI:
    """The ingress app on a started ``bus`` and ``store`` (neither is started or stopped
    here); ``metrics`` is what ``/metrics`` renders; ``recorded`` is shared with the
    projection worker of the same process, if any (it then skips the requests recorded
    here, :class:`~agentstream.ingress.projection.RecentlyRecorded`)."""
    opts = settings.ingress
    metrics = metrics or IngressMetrics()
    catalog = settings.catalog()
    admission = Admission(
        ApiKeys.from_config(opts.api_keys), RateLimiter(opts.rate_per_second, opts.rate_burst)
    )
    repo = RequestRepository(
        store,
        settings.namespace,
        record_ttl_s=opts.record_ttl_s,
        idempotency_ttl_s=opts.idempotency_ttl_s,
        pending_ttl_s=2 * (opts.publish_timeout_s + CLOCK_MARGIN_S) + 5,
        poll_interval_s=opts.poll_interval_s,
        recorded=recorded,
    )
    access = Access(admission, repo)

    app = FastAPI(
        title="agentstream ingress",
        version="1.0.0",
        summary="Send requests to the agent pipeline and read their answers.",
        description=(
            "Requests become `user_request` events on Kafka. A 202 means the broker "
            "acknowledged the event; a 503 means the request was refused and never runs. "
            "Answers arrive by polling, a bounded wait on POST, or Server-Sent Events."
        ),
    )
    app.add_middleware(BodySizeLimit, max_bytes=opts.max_body_bytes)
    app.add_middleware(HttpMetrics, metrics=metrics)
    install_error_handlers(app, {"Retry-After": str(opts.retry_after_s)})

    requests = requests_router(access, opts)
    app.include_router(requests)
    app.include_router(events_router(access, opts, metrics))
    app.include_router(conversations_router(access))
    main_topics = [catalog.name(t, Kind.MAIN) for t in catalog.topics()]
    app.include_router(operations_router(bus, store, metrics, main_topics))
    agents = tuple(sorted(catalog.agents))
    app.openapi = lambda: _document(app, agents)  # type: ignore[method-assign]

    create = CreateEndpoint(
        opts=opts,
        admission=admission,
        repo=repo,
        bus=bus,
        request_topic=catalog.name(Topic.USER_REQUEST),
        metrics=metrics,
        route=documented_create(requests),
        agents=catalog.agents,
    )
    mount_fast_path(app, create)
    return app


def _document(app: FastAPI, agents: tuple[str, ...] = ()) -> dict[str, Any]:
    """The OpenAPI document, generated once: FastAPI's, without ``null`` branches on
    optional parameters, plus the schemas no route returns as JSON: the body of the fast
    path's ``POST`` and the ``data`` of an SSE event."""
    if app.openapi_schema is None:
        document = without_null_parameters(
            get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (CreateRequest, StreamEvent):
            schemas[model.__name__] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        if agents:  # the agents of this deployment's app: another name is a 422
            agent = schemas["CreateRequest"]["properties"]["agent"]
            agent["anyOf"] = [{"type": "string", "enum": list(agents)}, {"type": "null"}]
            agent["examples"] = [agents[0]]
        app.openapi_schema = document
    return app.openapi_schema
