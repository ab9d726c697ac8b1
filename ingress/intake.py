"""Turning ``POST /v1/requests`` into a validated request: parameters, body, event, ids.

``POST /v1/requests`` is the hot path and does not go through FastAPI at all
(:mod:`agentstream.ingress.create`, ``docs/adr/0013-ingress-fast-path.md``), so its parameters are
parsed here from the raw query string and header values. The OpenAPI document still
describes them (:data:`CREATE_OPENAPI`), and a bad value is a 422 naming the field, like
everywhere else.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from agentstream.ingress.models import CreateRequest
from agentstream.ingress.requests import Claim
from agentstream.schemas import UserRequest, UserRequestData, derive_id, new_id
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

__all__ = [
    "CREATE_OPENAPI",
    "MAX_WAIT_PARAM_S",
    "CreateParams",
    "build_event",
    "check_content_type",
    "claim_for",
    "parse_body",
    "parse_params",
    "valid_traceparent",
    "wait_seconds",
]

MAX_WAIT_PARAM_S = 3600.0
_KEY_MAX = 255
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)

#: The parameters and body of ``POST /v1/requests`` for the OpenAPI document.
CREATE_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "wait",
            "in": "query",
            "required": False,
            "description": "Wait up to this many seconds (capped by the server) for the answer.",
            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_PARAM_S},
        },
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "description": "RFC 7240 `wait=N`, same as `?wait=N`.",
            "schema": {"type": "string"},
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Same key and body: the same request, never a second event.",
            "schema": {"type": "string", "minLength": 1, "maxLength": _KEY_MAX},
        },
        {
            "name": "traceparent",
            "in": "header",
            "required": False,
            "description": "W3C trace context, passed along unchanged (ignored if invalid).",
            "schema": {"type": "string"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateRequest"}}},
    },
}


@dataclass(frozen=True, slots=True)
class CreateParams:
    wait: float | None
    idempotency_key: str | None
    traceparent: str | None


def _invalid(loc: tuple[str | int, ...], msg: str, kind: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": msg, "type": kind}])


def parse_params(
    query_string: bytes,
    idempotency_key: str | None,
    prefer: str | None,
    traceparent: str | None,
    max_wait_s: float,
) -> CreateParams:
    """The query and header parameters, from the raw query string and the header values;
    :class:`RequestValidationError` when one is bad. A repeated query parameter counts by
    its last value, as in Starlette's ``request.query_params``."""
    wait: float | None = None
    raw_wait = None
    if query_string:
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name == "wait":
                raw_wait = value
    if raw_wait is not None:
        try:
            wait = float(raw_wait)
        except ValueError:
            raise _invalid(("query", "wait"), "Input should be a number", "float_parsing") from None
        if not math.isfinite(wait) or not 0 <= wait <= MAX_WAIT_PARAM_S:
            raise _invalid(
                ("query", "wait"), f"Input should be between 0 and {MAX_WAIT_PARAM_S:g}", "range"
            )
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= _KEY_MAX:
        raise _invalid(
            ("header", "Idempotency-Key"),
            f"String should have 1 to {_KEY_MAX} characters",
            "string_length",
        )
    return CreateParams(
        wait=wait_seconds(wait, prefer, max_wait_s),
        idempotency_key=idempotency_key,
        traceparent=valid_traceparent(traceparent),
    )


def check_content_type(content_type: str | None) -> None:
    """A JSON media type, or none at all; :class:`RequestValidationError` otherwise."""
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise _invalid(
                ("header", "content-type"), "Expected an application/json body", "content_type"
            )


def check_agent(body: CreateRequest, agents: frozenset[str]) -> None:
    """The agent the body names is declared, or :class:`RequestValidationError` (a 422)."""
    if body.agent is not None and body.agent not in agents:
        known = ", ".join(sorted(agents))
        raise _invalid(
            ("body", "agent"), f"Unknown agent {body.agent!r} (declared: {known})", "unknown_agent"
        )


def parse_body(raw: bytes) -> CreateRequest:
    """The JSON body as :class:`CreateRequest`; :class:`RequestValidationError` naming the
    fields otherwise."""
    try:
        return CreateRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]}
                for err in exc.errors(include_url=False, include_input=False)
            ]
        ) from None


def claim_for(tenant: str, key: str, body: CreateRequest, generation: int = 0) -> Claim:
    """The request an ``Idempotency-Key`` stands for. Its ids are derived from (tenant, key,
    body, generation), so a post retried after an ambiguous failure (a lost connection, a
    crash) republishes the very same event, which every consumer deduplicates; after a 503
    the key's generation moves on (:meth:`RequestRepository.refused`) and the retry is a
    request of its own, never the refused one. The conversation stays the same."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True)
    body_hash = hashlib.sha256(canonical.encode()).hexdigest()
    key_hash = hashlib.sha256(key.encode()).hexdigest()
    seed = f"idempotency/{tenant}/{key_hash}/{body_hash}"
    request_seed = seed if generation == 0 else f"{seed}/{generation}"
    return Claim(
        body_hash=body_hash,
        request_id=derive_id(request_seed, "request"),
        conversation_id=body.conversation_id or derive_id(seed, "conversation"),
        generation=generation,
    )


def build_event(
    body: CreateRequest,
    tenant: str,
    traceparent: str | None,
    claim: Claim | None = None,
) -> UserRequest:
    """The ``user_request`` to publish: ids from ``claim``, or fresh ones."""
    if claim is not None:
        request_id, conversation_id = claim.request_id, claim.conversation_id
    else:
        request_id, conversation_id = new_id(), body.conversation_id or new_id()
    return UserRequest(
        id=derive_id(request_id, "user_request"),
        source="ingress",
        request_id=request_id,
        conversation_id=conversation_id,
        tenant=tenant,
        traceparent=traceparent,
        data=UserRequestData(
            text=body.text,
            user=body.user,
            model=body.model,
            max_steps=body.max_steps,
            metadata=body.metadata,
            agent=body.agent,
        ),
    )


def valid_traceparent(value: str | None) -> str | None:
    """``value`` if it is a valid W3C ``traceparent``, else None (ignored, never an error)."""
    if not value:
        return None
    value = value.strip()
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, _, rest = match.groups()
    if version == "ff" or set(trace_id) == {"0"} or set(parent_id) == {"0"}:
        return None
    if version == "00" and rest:
        return None
    return value


def wait_seconds(wait: float | None, prefer: str | None, cap: float) -> float | None:
    """The bounded wait asked by ``?wait=`` or ``Prefer: wait=``, capped; None: not asked."""
    asked = wait
    if asked is None and prefer:
        match = _PREFER_WAIT.search(prefer)
        if match is not None:
            asked = float(match.group(1))
    return None if asked is None else min(asked, cap)
