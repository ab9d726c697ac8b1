"""``POST /v1/requests`` as a raw ASGI app: the ingress's hot path, served in front of FastAPI.

FastAPI's per-request machinery (routing, the ``Request`` object, dependency solving, the
exception middleware, ``Response`` objects) cost more CPU than everything the ingress does
to accept a request, so this one operation is served by :class:`CreateEndpoint` directly
and :class:`FastPath` hands it the requests before FastAPI sees them (see
``docs/adr/0013-ingress-fast-path.md``). Everything else stays on FastAPI, and so does the
operation's OpenAPI entry: a documentation-only FastAPI route describes it.

The endpoint keeps the contract of ADR 6 step by step: the API key and the rate limit
first, then the parameters, the content type and the body (under the size limit), then
the idempotency claim, the publish (202 only once the broker appended it by its accept-by
deadline, 503 otherwise, and then it never runs) and the first record. Errors are
answered by :func:`agentstream.ingress.errors.error_for`, the very function behind the FastAPI
handlers, so both sides of the ingress answer errors alike; any other exception is left to
Starlette's 500, as on every other route. Taken by :class:`FastPath`
(:meth:`CreateEndpoint.direct`), the endpoint also does what the app's
:class:`~agentstream.ingress.limits.BodySizeLimit` and
:class:`~agentstream.ingress.observe.HttpMetrics` do around every other route, inline: the same
answers and counts, without two more ASGI layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from agentstream.ingress.auth import Admission
from agentstream.ingress.config import IngressOptions
from agentstream.ingress.errors import ApiError, RequestRefused, error_for
from agentstream.ingress.intake import (
    build_event,
    check_agent,
    check_content_type,
    claim_for,
    parse_body,
    parse_params,
)
from agentstream.ingress.limits import BodyTooLarge, content_length, refuse_too_large
from agentstream.ingress.models import AcceptedResponse, RequestView
from agentstream.ingress.observe import IngressMetrics, RouteMetrics
from agentstream.ingress.records import RequestRecord
from agentstream.ingress.requests import Claim, ClaimConflict, RequestRepository
from agentstream.schemas import DEFAULT_AGENT, PermanentError, RetryableError, UserRequest, encode
from agentstream.topics import Bus, OutgoingRecord, RecordMetadata
from agentstream.topics.deadline import accept_by_header, acked_in_time
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CLOCK_MARGIN_S", "PATH", "CreateEndpoint", "FastPath"]

log = logging.getLogger(__name__)

#: The path of the operation served here.
PATH = "/v1/requests"
#: How far the broker's clock may lag this host's: an unacknowledged publish is answered
#: 503 this long after its accept-by deadline, when no append can fall before it any more.
CLOCK_MARGIN_S = 1.0

_JSON = (b"content-type", b"application/json")
#: (status, body, headers) of an answer; headers in Starlette's order (extra headers, then
#: content-length, then content-type), so that the bytes match a ``Response``'s exactly.
_Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


def _json(status: int, body: str, extra: list[tuple[bytes, bytes]] | None = None) -> _Answer:
    raw = body.encode()
    headers = [*(extra or ()), (b"content-length", str(len(raw)).encode()), _JSON]
    return status, raw, headers


async def _read_body(receive: Receive, limit: int | None) -> bytes:
    """The whole body, like Starlette's ``request.body()`` (a disconnect raises
    :class:`ClientDisconnect`); past ``limit`` bytes :class:`BodyTooLarge`, as
    :class:`~agentstream.ingress.limits.BodySizeLimit` raises it."""
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                received += len(chunk)
                if limit is not None and received > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class CreateEndpoint:
    """``POST /v1/requests``: validate, claim the idempotency key, publish, record, answer.

    Called as an ASGI app (the router's way in), it relies on the app's middlewares for
    the body limit and the HTTP metrics; :meth:`direct` (FastPath's) does both itself.
    ``route`` is set as ``scope["route"]``, as FastAPI's router would, so that the HTTP
    metrics label the request with the route template."""

    def __init__(
        self,
        *,
        opts: IngressOptions,
        admission: Admission,
        repo: RequestRepository,
        bus: Bus,
        request_topic: str,
        metrics: IngressMetrics,
        route: BaseRoute | None = None,
        agents: Iterable[str] = (DEFAULT_AGENT,),
    ) -> None:
        self.opts = opts
        #: The declared agents a request may name.
        self.agents = frozenset(agents)
        self.admission = admission
        self.repo = repo
        self.bus = bus
        self.request_topic = request_topic
        self.metrics = metrics
        self.route = route
        self.retry_after = {"Retry-After": str(opts.retry_after_s)}
        self._produced = metrics.produced.labels(request_topic)
        self._routes = RouteMetrics(metrics)
        self._route_name: str = getattr(route, "path", "other")
        #: False once an acknowledgement showed that the topic has no append times: a 503
        #: then cannot promise that the request never runs.
        self._append_time = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send, None)

    async def direct(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request with the body limit and the HTTP metrics of the app's
        middlewares done here: a ``Content-Length`` over the limit is refused unread (and
        counted under route ``other``, as the middleware refuses it before routing), a
        longer body is cut while read; every answer is counted by status, a failure as 500."""
        started = time.perf_counter()
        limit = self.opts.max_body_bytes
        route, status = "other", 500
        try:
            declared = content_length(scope)
            if declared is not None and declared > limit:
                status = 413
                await refuse_too_large(send, limit)
                return
            route = self._route_name
            status = await self._serve(scope, receive, send, limit)
        finally:
            self._routes.observe(route, status, time.perf_counter() - started)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, limit: int | None) -> int:
        """Answer the request; returns the status sent."""
        if self.route is not None:
            scope["route"] = self.route
        try:
            status, body, headers = await self._create(scope, receive, limit)
        except Exception as exc:
            response = error_for(exc, self.retry_after)
            if response is None:
                raise
            await response(scope, receive, send)
            return response.status_code
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    async def _create(self, scope: Scope, receive: Receive, limit: int | None) -> _Answer:
        # The first value of each header counts, as with Starlette's ``request.headers``.
        authorization = content_type = key = prefer = traceparent = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"content-type":
                if content_type is None:
                    content_type = value.decode("latin-1")
            elif name == b"idempotency-key":
                if key is None:
                    key = value.decode("latin-1")
            elif name == b"prefer":
                if prefer is None:
                    prefer = value.decode("latin-1")
            elif name == b"traceparent" and traceparent is None:
                traceparent = value.decode("latin-1")
        client = scope.get("client")
        who = self.admission.admit(authorization, client[0] if client else None)
        params = parse_params(
            scope.get("query_string", b""), key, prefer, traceparent, self.opts.max_wait_s
        )
        check_content_type(content_type)
        body = parse_body(await _read_body(receive, limit))
        check_agent(body, self.agents)

        tenant = who.tenant
        claim: Claim | None = None
        if key is not None:
            claim = claim_for(tenant, key, body)
            try:
                earlier = await self.repo.claim(
                    tenant, key, claim, wait_s=self.opts.publish_timeout_s + CLOCK_MARGIN_S + 1
                )
            except ClaimConflict as exc:
                headers = self.retry_after if exc.in_flight else None
                raise ApiError(409, str(exc), headers=headers) from None
            if earlier is not None:
                self.metrics.ingress_idempotent_replays.inc()
                record = await self.repo.get(earlier.request_id)
                if record is None:  # expired before its key did
                    same = AcceptedResponse(
                        request_id=earlier.request_id,
                        conversation_id=earlier.conversation_id,
                        status="accepted",
                    )
                    return _json(202, same.model_dump_json())
                return await self._answer(record, params.wait)
            # This post holds the key now; after refused posts, it is a request of its own.
            generation = await self.repo.refusals(tenant, key)
            if generation:
                claim = claim_for(tenant, key, body, generation)
                await self.repo.hold(tenant, key, claim)

        event = build_event(body, tenant, params.traceparent, claim)
        try:
            await self._publish(event)
        except RequestRefused:
            # Refused for good: say so to GET, and let the key's next post be a new request.
            with contextlib.suppress(Exception):
                await self.repo.refuse(event)
            if claim is not None and key is not None:
                with contextlib.suppress(Exception):
                    await self.repo.refused(tenant, key, claim)
            raise
        # The event is durable now: a store hiccup below must not turn it into an error
        # (the projection writes the record anyway; a retry with the key republishes the
        # same event id, which is deduplicated).
        record = RequestRecord.from_request(event)
        try:
            record = await self.repo.accept(event, record)
            if claim is not None and key is not None:
                await self.repo.confirm(tenant, key, claim)
        except RetryableError as exc:
            log.warning("request %s accepted but not recorded: %s", event.request_id, exc)
        return await self._answer(record, params.wait)

    async def _answer(self, record: RequestRecord, wait: float | None) -> _Answer:
        if wait is not None and wait > 0 and not record.terminal:
            record = await self.repo.wait_terminal(record.request_id, wait) or record
        if wait is not None and record.terminal:
            return _json(200, RequestView.of(record).model_dump_json())
        accepted = AcceptedResponse(
            request_id=record.request_id,
            conversation_id=record.conversation_id,
            status=record.status,
        )
        location = f"{PATH}/{record.request_id}".encode("latin-1")
        return _json(202, accepted.model_dump_json(), [(b"location", location)])

    async def _publish(self, event: UserRequest) -> None:
        """Publish ``event`` with its accept-by deadline; :class:`RequestRefused` unless
        the broker appended it by then (:mod:`agentstream.topics.deadline`). Without an
        acknowledgement the record may still land, so the refusal waits until the broker's
        clock is surely past the deadline: ``CLOCK_MARGIN_S`` after it, by this host's."""
        key, value, headers = encode(event)
        timeout = self.opts.publish_timeout_s
        deadline_ms = time.time_ns() // 1_000_000 + round(timeout * 1000)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout + CLOCK_MARGIN_S
        record = OutgoingRecord(
            self.request_topic, value, key, (*headers, accept_by_header(deadline_ms))
        )
        try:
            async with asyncio.timeout_at(give_up):
                metadata = await self.bus.publish(record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, PermanentError):
                # Not refused by the broker: the record may be in flight still.
                await asyncio.sleep(max(0.0, give_up - loop.time()))
            log.warning(
                "publish of request %s failed, answering 503: %r",
                event.request_id,
                exc,
                extra={"request_id": event.request_id, "topic": self.request_topic},
            )
            raise self._refused(event) from exc
        if not metadata.log_append_time:
            self._no_append_time(metadata)
        elif not acked_in_time(metadata, deadline_ms):
            log.warning(
                "request %s was appended %d ms after its deadline, answering 503",
                event.request_id,
                (metadata.timestamp_ms or 0) - deadline_ms,
                extra={"request_id": event.request_id, "topic": self.request_topic},
            )
            raise self._refused(event)
        self._produced.inc()

    def _refused(self, event: UserRequest) -> RequestRefused:
        return RequestRefused(
            "the broker did not acknowledge the request in time; it was refused and will "
            "never run: retry",
            request_id=event.request_id,
            retry_safe=self._append_time,
            headers=self.retry_after,
        )

    def _no_append_time(self, metadata: RecordMetadata) -> None:
        if self._append_time:
            self._append_time = False
            log.warning(
                "topic %s does not stamp LogAppendTime: a request answered 503 may still "
                "run once the broker is back (set message.timestamp.type=LogAppendTime, "
                "docs/adr/0006-ingress.md)",
                metadata.topic,
                extra={"topic": metadata.topic},
            )


class FastPath:
    """ASGI middleware: ``POST /v1/requests`` goes to ``endpoint``, everything else to
    ``app``. Only the exact path without a ``root_path`` is taken here; anything else goes
    on to the app, whose router serves this operation with the same endpoint."""

    def __init__(self, app: ASGIApp, *, endpoint: ASGIApp) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)
