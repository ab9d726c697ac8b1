"""Error answers: the one error body, the handlers that produce it, their OpenAPI entries.

Every refusal of the ingress, whoever raises it (a route, FastAPI's validation, the body-size
middleware, a store that cannot be reached), answers with
:class:`~agentstream.ingress.models.ErrorBody` and the status the OpenAPI document lists for it, so
clients handle errors one way and schemathesis can check every response against the document.
"""

from __future__ import annotations

import logging
from typing import Any

from agentstream.ingress.models import ErrorBody, FieldError, RefusedBody
from agentstream.schemas import RetryableError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

__all__ = [
    "ApiError",
    "RequestRefused",
    "documented_errors",
    "error_for",
    "error_response",
    "install_error_handlers",
    "json_response",
    "without_null_parameters",
]

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}
_DESCRIPTIONS = {
    401: "Missing or unknown API key.",
    404: "No such request or conversation for this tenant.",
    409: "The Idempotency-Key was used with another body, or its first use is in flight.",
    413: "The body is larger than the limit.",
    422: "The request does not match the schema (or is not JSON); `detail` names the fields.",
    429: "Too many requests for this API key.",
    503: "The broker or the store cannot be reached; nothing was accepted. Retry later.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}


class ApiError(Exception):
    """An error answer: HTTP ``status``, :class:`ErrorBody` code and message, headers."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class RequestRefused(ApiError):
    """503: a published request was not acknowledged in time and is refused for good
    (:class:`~agentstream.ingress.models.RefusedBody`)."""

    def __init__(
        self, message: str, *, request_id: str, retry_safe: bool, headers: dict[str, str]
    ) -> None:
        super().__init__(503, message, headers=headers)
        self.request_id = request_id
        self.retry_safe = retry_safe


def documented_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entries of a route for these error statuses."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[code]}
        if code in (429, 503):
            entry["headers"] = _RETRY_AFTER
        if code == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        documented[code] = entry
    return documented


def json_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        model.model_dump_json(), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(error=_CODES.get(status, "error"), message=message)
    return json_response(body, status, headers)


def error_for(exc: Exception, retry_after: dict[str, str]) -> Response | None:
    """The answer to ``exc`` (an :class:`ApiError`, an :class:`HTTPException`, a
    :class:`RequestValidationError`, a :class:`RetryableError`); None for any other
    exception, which is a 500. The FastAPI handlers and the ``POST /v1/requests`` fast path
    (:mod:`agentstream.ingress.create`) both answer through this, so their errors cannot drift
    apart."""
    if isinstance(exc, RequestRefused):
        refused = RefusedBody(
            error=_CODES[503],
            message=exc.message,
            request_id=exc.request_id,
            retry_safe=exc.retry_safe,
        )
        return json_response(refused, 503, exc.headers)
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, RequestValidationError):
        return _invalid_response(exc)
    if isinstance(exc, HTTPException):
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8): a schema error too.
            invalid = FieldError(loc=["body"], msg="body is not UTF-8 JSON", type="json_invalid")
            body = ErrorBody(
                error="validation_error", message="invalid request: body", detail=[invalid]
            )
            return json_response(body, 422)
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    if isinstance(exc, RetryableError):
        log.warning("ingress dependency unavailable: %s", exc)
        return error_response(503, "a dependency is unavailable, retry later", retry_after)
    return None


def _invalid_response(exc: RequestValidationError) -> Response:
    fields = [
        FieldError(
            loc=[p if isinstance(p, int) else str(p) for p in err.get("loc", ())],
            msg=str(err.get("msg", "")),
            type=str(err.get("type", "")),
        )
        for err in exc.errors()
    ]
    named = "; ".join(f"{'.'.join(str(p) for p in f.loc)}: {f.msg}" for f in fields[:10])
    body = ErrorBody(error="validation_error", message=f"invalid request: {named}", detail=fields)
    return json_response(body, 422)


def install_error_handlers(app: FastAPI, retry_after: dict[str, str]) -> None:
    """Answer every error of ``app`` with :class:`ErrorBody`; ``retry_after`` goes on 503s."""

    async def _handle(_: Request, exc: Exception) -> Response:
        response = error_for(exc, retry_after)
        if response is None:  # only registered for the classes error_for answers
            raise exc
        return response

    for cls in (ApiError, HTTPException, RequestValidationError, RetryableError):
        app.add_exception_handler(cls, _handle)


def without_null_parameters(document: dict[str, Any]) -> dict[str, Any]:
    """An optional query or header parameter is absent when not given, never ``null``:
    drop the ``null`` branch FastAPI writes for ``X | None`` parameters."""
    for path in document.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", ()):
                schema = parameter.get("schema", {})
                branches = schema.get("anyOf")
                if branches is None:
                    continue
                kept = [b for b in branches if b.get("type") != "null"]
                if len(kept) == 1:
                    extra = {k: v for k, v in schema.items() if k != "anyOf"}
                    parameter["schema"] = {**kept[0], **extra}
    return document
