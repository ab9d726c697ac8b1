"""Bearer API keys mapped to tenants.

Keys come from ``settings.ingress.api_keys`` (the key itself, or ``sha256:<hex>`` of it, so
a config file need not hold the secret). Only their SHA-256 digests are kept in memory, and a
presented key is hashed and compared with every known digest by ``hmac.compare_digest``, so
neither the comparison nor an early exit tells a caller how close a guess was.

No keys configured: the ingress runs open and every caller is tenant ``default``. That is for
the embedded default on a laptop only; :func:`ApiKeys.from_config` logs a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from agentstream.ingress.errors import ApiError
from agentstream.ingress.limits import RateLimiter
from agentstream.schemas.errors import ConfigError

__all__ = ["OPEN_TENANT", "Admission", "ApiKeys", "Principal"]

log = logging.getLogger(__name__)

#: The tenant of every caller when no API keys are configured.
OPEN_TENANT = "default"

_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``key_id`` (a digest prefix, never the key) names its rate
    bucket."""

    tenant: str
    key_id: str


class ApiKeys:
    def __init__(self, digests: list[tuple[bytes, str]]) -> None:
        self._digests = digests

    @classmethod
    def from_config(cls, api_keys: Mapping[str, str]) -> ApiKeys:
        digests: list[tuple[bytes, str]] = []
        for key, tenant in api_keys.items():
            if not key or not tenant:
                raise ConfigError("ingress api_keys: empty key or tenant")
            hashed = _HASHED.match(key)
            digest = (
                bytes.fromhex(hashed.group(1)) if hashed else hashlib.sha256(key.encode()).digest()
            )
            digests.append((digest, tenant))
        if not digests:
            log.warning(
                "ingress: no API keys configured, running OPEN: every caller is tenant %r "
                "(set AGENTSTREAM_INGRESS__API_KEYS outside the embedded default)",
                OPEN_TENANT,
            )
        return cls(digests)

    @property
    def open(self) -> bool:
        return not self._digests

    def authenticate(self, token: str | None) -> Principal | None:
        """The caller presenting bearer ``token``; None when it is missing or unknown."""
        if self.open:
            return Principal(OPEN_TENANT, "open")
        if not token:
            return None
        presented = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for digest, tenant in self._digests:
            # No early exit: every digest is compared, whichever matches.
            if hmac.compare_digest(presented, digest) and found is None:
                found = tenant
        if found is None:
            return None
        return Principal(found, presented.hex()[:16])


class Admission:
    """Authentication, then the rate limit: :meth:`admit` returns the caller or raises the
    :class:`~agentstream.ingress.errors.ApiError` to answer with."""

    def __init__(self, keys: ApiKeys, limiter: RateLimiter) -> None:
        self.keys = keys
        self.limiter = limiter

    def admit(self, authorization: str | None, client: str | None) -> Principal:
        """The caller presenting the ``Authorization`` header value, or 401; then one token
        of its bucket (per key; per client address in open mode), or 429."""
        token = None
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() == "bearer":
                token = credentials.strip()
        who = self.keys.authenticate(token)
        if who is None:
            raise ApiError(
                401, "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"}
            )
        bucket = f"open:{client}" if self.keys.open and client else who.key_id
        wait = self.limiter.take(bucket)
        if wait > 0:
            raise ApiError(
                429,
                "rate limit exceeded for this API key",
                headers={"Retry-After": str(self.limiter.retry_after(wait))},
            )
        return who
