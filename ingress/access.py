"""Who is calling, and may they read this request: the FastAPI dependencies of the routers.

Every route but the operational ones needs a caller (:class:`Principal`: API key, then
rate bucket, else 401 or 429) and reads only its own tenant's requests (another tenant's
request is a 404, so ids do not leak). The OpenAPI document says what the server does: with
API keys configured, every such operation requires the bearer scheme; in open mode (no keys,
the embedded default of ``agentstream up``) anonymous calls are served, so the document
declares no scheme and no requirement, and a client generated from it sends no key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agentstream.ingress.auth import Admission, Principal
from agentstream.ingress.errors import ApiError
from agentstream.ingress.records import RequestRecord
from agentstream.ingress.requests import RequestRepository
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["SCHEME", "Access"]

#: The name of the security scheme in the OpenAPI document.
SCHEME = "HTTPBearer"


class Access:
    """The ``caller`` dependency of the routers, and the tenant check on a request."""

    def __init__(self, admission: Admission, repo: RequestRepository) -> None:
        self.admission = admission
        self.repo = repo
        self.caller = self._secured() if self.secured else self._anonymous()

    @property
    def secured(self) -> bool:
        """Whether API keys are configured (else anonymous calls are served)."""
        return not self.admission.keys.open

    @property
    def security(self) -> list[dict[str, list[str]]]:
        """The OpenAPI ``security`` of an operation that needs a caller."""
        return [{SCHEME: []}] if self.secured else []

    async def owned(self, request_id: str, who: Principal) -> RequestRecord:
        """The record of ``request_id`` if it belongs to ``who``; else 404."""
        record = await self.repo.get(request_id)
        if record is None or record.tenant != who.tenant:
            raise ApiError(404, "no such request")
        return record

    def _admit(self, request: Request) -> Principal:
        client = request.client.host if request.client is not None else None
        return self.admission.admit(request.headers.get("authorization"), client)

    def _secured(self) -> Callable[..., Awaitable[Principal]]:
        bearer = HTTPBearer(
            auto_error=False,
            scheme_name=SCHEME,
            description="An API key: `Authorization: Bearer KEY`.",
        )

        async def caller(
            request: Request,
            credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        ) -> Principal:
            # ``credentials`` only documents the scheme; the header is parsed by admit().
            del credentials
            return self._admit(request)

        return caller

    def _anonymous(self) -> Callable[..., Awaitable[Principal]]:
        async def caller(request: Request) -> Principal:
            return self._admit(request)

        return caller
