"""Topics and the buses that move events: the catalog, the Bus protocol, Kafka and in-process."""

from agentstream.topics.bus import (
    Bus,
    Consumer,
    Headers,
    OutgoingRecord,
    Record,
    RecordMetadata,
    RevokeCallback,
    TopicDescription,
    TopicPartition,
)
from agentstream.topics.catalog import Catalog, Kind, Topic, TopicSpec
from agentstream.topics.config import KafkaConfig

__all__ = [
    "Bus",
    "Catalog",
    "Consumer",
    "Headers",
    "KafkaConfig",
    "Kind",
    "OutgoingRecord",
    "Record",
    "RecordMetadata",
    "RevokeCallback",
    "Topic",
    "TopicDescription",
    "TopicPartition",
    "TopicSpec",
]
