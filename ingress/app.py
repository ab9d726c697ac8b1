"""The HTTP ingress: a FastAPI app that turns requests into ``user_request`` events.

``POST /v1/requests`` answers 202 only after the broker acknowledged the event (acks=all);
if the broker cannot be reached in ``publish_timeout_s`` it answers 503 with
``Retry-After`` and leaves no accepted record behind. Everything a client reads afterwards
(``GET /v1/requests/{id}``, the bounded wait, the SSE stream, conversations) comes from the
state store, written by the projection (:mod:`agentstream.ingress.projection`), so the app holds no
state that another replica would miss. Limits (size, rate, schema) and authentication
reject a request before anything is published.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn

from agentstream.handlers.stores.base import StateStore
from agentstream.ingress.auth import Admission, ApiKeys, Principal
from agentstream.ingress.config import AppSettings
from agentstream.ingress.create import PATH, CreateEndpoint, FastPath
from agentstream.ingress.errors import (
    ApiError,
    documented_errors,
    install_error_handlers,
    json_response,
    without_null_parameters,
)
from agentstream.ingress.intake import CREATE_OPENAPI, wait_seconds
from agentstream.ingress.limits import BodySizeLimit, RateLimiter
from agentstream.ingress.models import (
    AcceptedResponse,
    ConversationView,
    CreateRequest,
    Health,
    Readiness,
    RequestView,
    Turn,
)
from agentstream.ingress.observe import HttpMetrics, IngressMetrics
from agentstream.ingress.projection import RecentlyRecorded, RequestRecord
from agentstream.ingress.requests import RequestRepository
from agentstream.ingress.sse import event_stream
from agentstream.topics import Bus, Kind, Topic
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Security
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import Route

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
    request_topic = catalog.name(Topic.USER_REQUEST)
    main_topics = [catalog.name(t, Kind.MAIN) for t in Topic]
    keys = ApiKeys.from_config(opts.api_keys)
    admission = Admission(keys, RateLimiter(opts.rate_per_second, opts.rate_burst))
    repo = RequestRepository(
        store,
        settings.namespace,
        record_ttl_s=opts.record_ttl_s,
        idempotency_ttl_s=opts.idempotency_ttl_s,
        pending_ttl_s=2 * opts.publish_timeout_s + 5,
        poll_interval_s=opts.poll_interval_s,
        recorded=recorded,
    )
    retry_after = {"Retry-After": str(opts.retry_after_s)}
    bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer KEY`.")

    app = FastAPI(
        title="agentstream ingress",
        version="1.0.0",
        summary="Send requests to the agent pipeline and read their answers.",
        description=(
            "Requests become `user_request` events on Kafka. A 202 means the broker "
            "acknowledged the event. Answers arrive by polling, a bounded wait on POST, "
            "or Server-Sent Events."
        ),
    )
    app.add_middleware(BodySizeLimit, max_bytes=opts.max_body_bytes)
    app.add_middleware(HttpMetrics, metrics=metrics)

    install_error_handlers(app, retry_after)

    # -- dependencies -------------------------------------------------------------------

    async def caller(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    ) -> Principal:
        # ``credentials`` only documents the scheme; the header is parsed by authorize().
        del credentials
        client = request.client.host if request.client is not None else None
        return admission.admit(request.headers.get("authorization"), client)

    async def owned(request_id: str, who: Principal) -> RequestRecord:
        record = await repo.get(request_id)
        if record is None or record.tenant != who.tenant:
            raise ApiError(404, "no such request")
        return record

    # -- routes -------------------------------------------------------------------------

    @app.post(
        "/v1/requests",
        status_code=202,
        response_model=AcceptedResponse,
        tags=["requests"],
        summary="Send a request to the agent",
        responses={
            200: {"model": RequestView, "description": "Answered within the asked wait."},
            **documented_errors(401, 409, 413, 422, 429, 503),
        },
        openapi_extra={**CREATE_OPENAPI, "security": [{"HTTPBearer": []}]},
    )
    async def create_request() -> NoReturn:
        # Documentation only: the operation is served by ``create`` (below), which
        # FastPath and the router both reach before this route.
        raise AssertionError("POST /v1/requests is served by ingress.create.CreateEndpoint")

    @app.get(
        "/v1/requests/{request_id}",
        response_model=RequestView,
        tags=["requests"],
        summary="Status and response of a request",
        responses=documented_errors(401, 404, 422, 429, 503),
    )
    async def get_request(
        request_id: str = Path(min_length=1, max_length=200),
        who: Principal = Depends(caller),
        wait: float | None = Query(
            default=None, ge=0, le=3600, description="Long-poll: wait up to N s for the end."
        ),
    ) -> Response:
        record = await owned(request_id, who)
        waited = wait_seconds(wait, None, opts.max_wait_s)
        if waited and not record.terminal:
            record = await repo.wait_terminal(request_id, waited) or record
        return json_response(RequestView.of(record))

    @app.get(
        "/v1/requests/{request_id}/events",
        tags=["requests"],
        summary="Progress and response as Server-Sent Events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": (
                    "`text/event-stream`: one event per log entry (`tool_call`, "
                    "`memory_call`, `tool_result`, then `response`), each with `id` = its "
                    "index; the stream ends after `response`. Comment lines are heartbeats."
                ),
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "example": 'id: 0\nevent: tool_call\ndata: {"index":0,...}\n\n',
                    }
                },
            },
            **documented_errors(401, 404, 422, 429, 503),
        },
    )
    async def stream_events(
        request_id: str = Path(min_length=1, max_length=200),
        who: Principal = Depends(caller),
        last_event_id: int | None = Header(
            default=None,
            alias="Last-Event-ID",
            ge=0,
            description="Resume after this event id (the SSE reconnection header).",
        ),
    ) -> StreamingResponse:
        await owned(request_id, who)
        stream = event_stream(
            repo,
            request_id,
            last_event_id=last_event_id,
            poll_interval_s=opts.poll_interval_s,
            heartbeat_s=opts.heartbeat_s,
            on_open=metrics.ingress_streams.inc,
            on_close=metrics.ingress_streams.dec,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/v1/conversations/{conversation_id}",
        response_model=ConversationView,
        tags=["conversations"],
        summary="The turns of a conversation",
        responses=documented_errors(401, 404, 422, 429, 503),
    )
    async def get_conversation(
        conversation_id: str = Path(min_length=1, max_length=200),
        who: Principal = Depends(caller),
    ) -> Response:
        records = await repo.conversation(who.tenant, conversation_id)
        if not records:
            raise ApiError(404, "no such conversation")
        view = ConversationView(
            conversation_id=conversation_id, turns=[Turn.of(r) for r in records]
        )
        return json_response(view)

    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Alive")
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["operations"],
        summary="Broker reachable, topics present, store reachable",
        responses={503: {"model": Readiness, "description": "Not ready; `checks` say why."}},
    )
    async def readyz() -> Response:
        checks = {"broker": "ok", "topics": "ok", "store": "ok"}
        try:
            found = await asyncio.wait_for(bus.describe_topics(main_topics), 3.0)
            missing = [t for t in main_topics if t not in found]
            if missing:
                checks["topics"] = f"missing: {', '.join(missing)}"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
            checks["topics"] = "unknown"
        try:
            await asyncio.wait_for(store.ping(), 3.0)
        except Exception as exc:
            checks["store"] = f"unreachable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return json_response(Readiness(ready=ready, checks=checks), 200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
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

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_null_parameters(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                )
            )
            schemas = app.openapi_schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["CreateRequest"] = CreateRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # -- the hot path -------------------------------------------------------------------
    # POST /v1/requests bypasses FastAPI (docs/adr/0013-ingress-fast-path.md). FastPath
    # takes the plain case in front of every middleware, and the endpoint applies the
    # same metrics and body limit itself; anything it lets through (a root_path) still
    # reaches the endpoint through a Starlette route placed before the documentation-only
    # one, inside the app's middlewares.
    [documented] = [
        r
        for r in app.routes
        if isinstance(r, APIRoute) and r.path == PATH and r.methods == {"POST"}
    ]
    create = CreateEndpoint(
        opts=opts,
        admission=admission,
        repo=repo,
        bus=bus,
        request_topic=request_topic,
        metrics=metrics,
        route=documented,
    )
    app.router.routes.insert(0, Route(PATH, create, methods=["POST"], include_in_schema=False))
    app.add_middleware(FastPath, endpoint=create.direct)
    return app
