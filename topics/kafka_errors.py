"""How aiokafka's failures become ours: retryable, topic missing, or a configuration error.

Every Kafka module (the bus, its consumers, its transactions) maps broker errors the same way,
so the mapping lives here once. Broker errors that may pass (unreachable, timeouts) are
:data:`TRANSIENT` and become ``RetryableError``; a topic that does not exist becomes
``TopicMissing`` at once instead of a long metadata wait. Wrong SASL credentials and missing
ACLs become a ``ConfigError`` that names the user and what it may not do: retrying cannot fix
them, and "cannot reach Kafka" would send operators the wrong way.
"""

from __future__ import annotations

import asyncio
import socket

from agentstream.schemas.errors import ConfigError, RetryableError, TopicMissing
from agentstream.topics.config import KafkaConfig
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

__all__ = [
    "NOT_AUTHORIZED",
    "TRANSIENT",
    "authentication_failure",
    "missing",
    "not_authorized",
    "unreachable",
]

TRANSIENT = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
NOT_AUTHORIZED = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


def missing(topic: str) -> TopicMissing:
    return TopicMissing(
        f"topic {topic!r} does not exist; create it with `agentstream topics create` "
        "(workers never rely on broker auto-creation)"
    )


def not_authorized(config: KafkaConfig, action: str, exc: object = None) -> ConfigError:
    user = config.sasl_username or "ANONYMOUS"
    detail = f" ({type(exc).__name__})" if isinstance(exc, Exception) else ""
    return ConfigError(
        f"Kafka user {user!r} is not authorized to {action}{detail}: grant it the ACLs "
        "(kafka-acls --add --allow-principal User:...) or connect as another user"
    )


async def authentication_failure(config: KafkaConfig) -> ConfigError | None:
    """After a failed bootstrap: a ``ConfigError`` when the SASL credentials were refused.

    aiokafka logs the broker's SASL refusal and raises only "unable to bootstrap"; one direct
    connection brings the real cause back, and costs nothing on the success path.
    """
    if not config.security_protocol.startswith("SASL"):
        return None
    options = config.client_options()
    for address in config.bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            conn = await create_conn(
                host.strip("[]"),
                int(port),
                client_id=options["client_id"],
                request_timeout_ms=options["request_timeout_ms"],
                ssl_context=options.get("ssl_context"),
                security_protocol=options["security_protocol"],
                sasl_mechanism=options["sasl_mechanism"],
                sasl_plain_username=options["sasl_plain_username"],
                sasl_plain_password=options["sasl_plain_password"],
            )
        except (SaslAuthenticationFailed, AuthenticationFailedError):
            return ConfigError(
                f"Kafka authentication failed for user {config.sasl_username!r} "
                f"({config.sasl_mechanism or 'PLAIN'}): check "
                "AGENTSTREAM_KAFKA__SASL_USERNAME/PASSWORD"
            )
        except (OSError, ValueError, KafkaError, TimeoutError):
            continue
        conn.close()
    return None


async def unreachable(config: KafkaConfig, exc: BaseException) -> RetryableError:
    """After a failed bootstrap: "cannot reach Kafka", saying which host names do not
    resolve (a typo in KAFKA_BOOTSTRAP_SERVERS, most likely) instead of aiokafka's list of
    address tuples."""
    loop = asyncio.get_running_loop()
    unknown = []
    for address in config.bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            await loop.getaddrinfo(host.strip("[]"), port or None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            unknown.append(host)
    if unknown:
        why = f"cannot resolve host name {', '.join(unknown)}"
    elif "bootstrap" in str(exc):
        why = "no bootstrap server answered"
    else:
        why = str(exc) or type(exc).__name__
    return RetryableError(f"cannot reach Kafka at {config.bootstrap_servers}: {why}")
