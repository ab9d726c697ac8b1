"""How to reach Kafka: the client settings the Kafka bus passes through to aiokafka.

Nested inside the application ``Settings`` as ``AGENTSTREAM_KAFKA__…``; TLS and SASL
(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) are plain settings here, so every entry point (workers,
ingress, CLI) connects the same way. Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import ssl
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["KafkaConfig"]


class KafkaConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = Field(default="localhost:9092", description="host:port[,host:port]")
    client_id: str = "agentstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    request_timeout_ms: int = Field(default=15_000, ge=1_000)
    #: How long ``publish`` may wait for the acknowledgement before failing (retriable).
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000)
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    linger_ms: int = Field(default=2, ge=0)
    #: Bytes the producer gathers per partition before a batch is full (aiokafka's
    #: ``max_batch_size``). A send to a partition whose batch is full waits until that
    #: batch is on its way, and with 16 KiB (the client's default) a busy worker spent a
    #: tenth of its CPU in those waits (ADR 15).
    batch_bytes: int = Field(default=256 * 1024, ge=1024, le=1024 * 1024)
    metadata_max_age_ms: int = Field(default=30_000, ge=1_000)
    #: Static group membership (KIP-345): this process's stable name in every consumer group
    #: it joins, e.g. the pod's name. A member restarted with the same id within the session
    #: timeout gets its partitions back without a rebalance of the group; in exchange a
    #: member that stops (even by SIGTERM) does not leave the group, and its partitions wait
    #: for ``session_timeout_ms`` before they move (ADR 19). Unique per running process:
    #: a second process with the same id fences the first. ``None``: dynamic membership.
    group_instance_id: str | None = Field(default=None, min_length=1, max_length=249)

    def client_options(self) -> dict[str, object]:
        """Connection options common to aiokafka's producer, consumer and admin client."""
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "metadata_max_age_ms": self.metadata_max_age_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return options

    def producer_options(self) -> dict[str, object]:
        """aiokafka producer options of the bus (and of its transactional producers):
        acks=all with the idempotent producer, the linger and batch size, 1 MiB requests."""
        return {
            **self.client_options(),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": self.linger_ms,
            "max_batch_size": self.batch_bytes,
            "max_request_size": 1024 * 1024,
        }

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context
