"""What the ingress reads of the application settings, as protocols.

The ingress sits below the wiring layer (``agentstream``), so it does not import
``agentstream.settings``; it states the shape it needs instead. ``agentstream.settings.
Settings`` satisfies :class:`AppSettings` as it is, and tests may pass any object that does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from agentstream.topics import Catalog

__all__ = ["AppSettings", "IngressOptions"]


class IngressOptions(Protocol):
    """The fields of ``agentstream.settings.IngressSettings``."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def api_keys(self) -> Mapping[str, str]: ...

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def rate_per_second(self) -> float: ...

    @property
    def rate_burst(self) -> int: ...

    @property
    def max_wait_s(self) -> float: ...

    @property
    def idempotency_ttl_s(self) -> int: ...

    @property
    def record_ttl_s(self) -> int: ...

    @property
    def publish_timeout_s(self) -> float: ...

    @property
    def retry_after_s(self) -> int: ...

    @property
    def poll_interval_s(self) -> float: ...

    @property
    def heartbeat_s(self) -> float: ...


class AppSettings(Protocol):
    """The part of ``agentstream.settings.Settings`` the ingress uses."""

    @property
    def ingress(self) -> IngressOptions: ...

    @property
    def namespace(self) -> str:
        """Prefix of every state-store key of this deployment."""

    def catalog(self) -> Catalog: ...
