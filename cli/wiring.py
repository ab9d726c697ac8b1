"""Builds the running parts from ``Settings``: bus, store, model, topics, workers.

The only place that knows which implementation backs what: the in-process bus and store
for the embedded default, Kafka and Redis otherwise.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agentstream.handlers.runtime.retries import RetryPolicy
from agentstream.handlers.runtime.worker import RuntimeConfig
from agentstream.handlers.stores.base import InProcessStore, StateStore
from agentstream.handlers.stores.redis_store import RedisStore
from agentstream.schemas.errors import ConfigError
from agentstream.settings import Settings
from agentstream.topics import Bus
from agentstream.topics.drift import compare, partition_mismatch

if TYPE_CHECKING:
    from agentstream.topics import Catalog

__all__ = ["build_bus", "build_store", "ensure_topics", "runtime_config"]

log = logging.getLogger(__name__)


def build_bus(settings: Settings) -> Bus:
    if settings.bus == "kafka":
        from agentstream.topics.kafka import KafkaBus

        return KafkaBus(settings.kafka)
    from agentstream.topics.memory import InProcessBus

    return InProcessBus(default_partitions=settings.topics.partitions)


def build_store(settings: Settings) -> StateStore:
    if settings.redis_url is not None:
        return RedisStore(
            settings.redis_url.get_secret_value(),
            max_connections=min(1024, settings.runtime.max_in_flight + 64),
        )
    if settings.bus == "kafka":
        raise ConfigError(
            "the Kafka bus needs a shared state store: set REDIS_URL "
            "(an in-process store would lose run state between worker processes)"
        )
    return InProcessStore()


async def ensure_topics(bus: Bus, catalog: Catalog, *, create: bool) -> None:
    """Create the catalog's missing topics, or fail naming them when creation is off; then
    fail (``ConfigError``) when a topic's partition count is not the catalog's, since one
    member must own a conversation in every topic (ADR 20)."""
    specs = list(catalog.specs())
    if create:
        created = await bus.create_topics([s.description() for s in specs])
        if created:
            log.info("created topics: %s", ", ".join(created))
    existing = await bus.describe_topics([s.name for s in specs])
    missing = [s.name for s in specs if s.name not in existing]
    if missing:
        raise ConfigError(
            f"missing topics: {', '.join(missing)}; run `agentstream topics create` first"
        )
    mismatch = partition_mismatch(compare(s.description(), existing[s.name]) for s in specs)
    if mismatch is not None:
        raise mismatch


def runtime_config(settings: Settings, group_id: str, source: str) -> RuntimeConfig:
    r = settings.runtime
    return RuntimeConfig(
        group_id=f"{settings.topics.prefix}{group_id}",
        source=source,
        namespace=settings.namespace,
        max_in_flight=r.max_in_flight,
        drain_timeout_s=r.drain_timeout_s,
        commit_interval_s=r.commit_interval_s,
        dedup_ttl_s=r.dedup_ttl_s,
        retry=RetryPolicy(
            in_place_attempts=r.in_place_attempts,
            max_attempts=r.max_attempts,
            base_delay_s=r.retry_base_delay_s,
            retry_topic_delay_s=r.retry_topic_delay_s,
        ),
        read_committed=r.delivery == "exactly_once",
        exactly_once=r.delivery == "exactly_once",
        claim_check_bytes=r.claim_check_bytes,
        claim_ttl_s=max(settings.topics.retention_ms, settings.topics.dlq_retention_ms) // 1000
        + 24 * 3600,
    )
