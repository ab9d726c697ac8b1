"""Metadata requests that never make a broker create a topic.

A Kafka broker with ``auto.create.topics.enable=true`` (Kafka's default) creates every
missing topic that a Metadata request (v4 and later) names with ``allow_auto_topic_creation``
set, with the broker's ``num.partitions`` and ``default.replication.factor`` and none of the
catalog's configs. aiokafka sets that flag on every Metadata request it sends: its admin
client's ``describe_topics``, a producer's first ``send`` to a topic, a consumer's
``subscribe`` and ``assign``, and each client's periodic refresh of the topics it tracks (so a
topic deleted under a running worker would come back, with one partition, within
``metadata_max_age_ms``). A topic of agentstream is created by the admin API alone, with the
catalog's partitions, replication and configs (ADR 20).

aiokafka has no option for the flag, so :func:`forbid_auto_topic_creation` replaces the
``MetadataRequest`` its client and admin modules build with one whose flag defaults to
False. :mod:`agentstream.topics.kafka` calls it on import, so every aiokafka client of an
agentstream process is covered, raw ones (``tail``, ``dlq``) included. A test pins the
aiokafka code paths this relies on (``tests/unit/test_kafka_metadata.py``).
"""

from __future__ import annotations

import aiokafka.admin.client
import aiokafka.client
from aiokafka.protocol.metadata import MetadataRequest as _AiokafkaMetadataRequest

__all__ = ["NoAutoCreateMetadataRequest", "forbid_auto_topic_creation"]


class NoAutoCreateMetadataRequest(_AiokafkaMetadataRequest):  # type: ignore[misc]
    """aiokafka's ``MetadataRequest`` with ``allow_auto_topic_creation`` False by default."""

    def __init__(
        self,
        topics: list[str] | None = None,
        allow_auto_topic_creation: bool | None = False,
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation)


#: The aiokafka modules that build Metadata requests by the name ``MetadataRequest``.
_MODULES = (aiokafka.client, aiokafka.admin.client)


def forbid_auto_topic_creation() -> None:
    """Make every Metadata request aiokafka builds in this process ask for no auto-creation.
    Idempotent."""
    for module in _MODULES:
        module.MetadataRequest = NoAutoCreateMetadataRequest
