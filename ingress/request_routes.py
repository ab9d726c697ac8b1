"""``/v1/requests``: the POST that creates a request, and the GET that reads it.

``POST /v1/requests`` is served by the raw ASGI endpoint of :mod:`agentstream.ingress.create`
(``docs/adr/0013-ingress-fast-path.md``); :func:`mount_fast_path` puts it in front of FastAPI,
in the one place that does. The FastAPI route declared here for it only generates its
OpenAPI entry (status codes, parameters, body) and gives the HTTP metrics its route label;
its function is never called. ``GET /v1/requests/{id}`` answers from the store, optionally
waiting for the end (long poll); a request answered 503 reads ``refused`` (ADR 6).
"""

from __future__ import annotations

from typing import NoReturn

from agentstream.ingress.access import Access
from agentstream.ingress.auth import Principal
from agentstream.ingress.config import IngressOptions
from agentstream.ingress.create import PATH, CreateEndpoint, FastPath
from agentstream.ingress.errors import documented_errors, json_response
from agentstream.ingress.intake import CREATE_OPENAPI, wait_seconds
from agentstream.ingress.models import AcceptedResponse, RefusedBody, RequestView
from fastapi import APIRouter, Depends, FastAPI, Path, Query
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Route

__all__ = ["documented_create", "mount_fast_path", "requests_router"]


def requests_router(access: Access, opts: IngressOptions) -> APIRouter:
    router = APIRouter(tags=["requests"])
    refused = {
        **documented_errors(503)[503],
        "model": RefusedBody,
        "description": (
            "Not accepted: the broker did not acknowledge the request in time, or the "
            "store cannot be reached. A published request refused this way never runs "
            "(`request_id` names it, and GET says `refused`), so a retry makes exactly "
            "one request. Retry after `Retry-After` seconds."
        ),
    }

    @router.post(
        PATH,
        status_code=202,
        response_model=AcceptedResponse,
        summary="Send a request to the agent",
        responses={
            200: {"model": RequestView, "description": "Answered within the asked wait."},
            **documented_errors(401, 409, 413, 422, 429),
            503: refused,
        },
        openapi_extra={**CREATE_OPENAPI, "security": access.security},
    )
    async def create_request() -> NoReturn:
        # Documentation only: the operation is served by CreateEndpoint, which FastPath
        # and the router both reach before this route.
        raise AssertionError("POST /v1/requests is served by ingress.create.CreateEndpoint")

    @router.get(
        "/v1/requests/{request_id}",
        response_model=RequestView,
        summary="Status and response of a request",
        responses=documented_errors(401, 404, 422, 429, 503),
    )
    async def get_request(
        request_id: str = Path(min_length=1, max_length=200),
        who: Principal = Depends(access.caller),
        wait: float | None = Query(
            default=None, ge=0, le=3600, description="Long-poll: wait up to N s for the end."
        ),
    ) -> Response:
        record = await access.owned(request_id, who)
        waited = wait_seconds(wait, None, opts.max_wait_s)
        if waited and not record.terminal:
            record = await access.repo.wait_terminal(request_id, waited) or record
        return json_response(RequestView.of(record))

    return router


def documented_create(router: APIRouter) -> APIRoute:
    """The documentation-only route of ``POST /v1/requests`` in ``router`` (of
    :func:`requests_router`): the route template the HTTP metrics label it with."""
    [route] = [
        r
        for r in router.routes
        if isinstance(r, APIRoute) and r.path == PATH and r.methods == {"POST"}
    ]
    return route


def mount_fast_path(app: FastAPI, endpoint: CreateEndpoint) -> None:
    """Serve ``POST /v1/requests`` with ``endpoint``, around FastAPI (ADR 13).

    :class:`FastPath` takes the plain case in front of every middleware, and the endpoint
    applies the same metrics and body limit itself; anything it lets through (a
    ``root_path``) still reaches the endpoint through a Starlette route placed before the
    documentation-only one, inside the app's middlewares. Call it last: the middleware must
    be the outermost."""
    app.router.routes.insert(0, Route(PATH, endpoint, methods=["POST"], include_in_schema=False))
    app.add_middleware(FastPath, endpoint=endpoint.direct)
