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
from agentstream.topics.catalog import Catalog, Inbox, Kind, LogicalTopic, Topic, TopicSpec
from agentstream.topics.config import KafkaConfig

__all__ = [
    "Bus",
    "Catalog",
    "Consumer",
    "Headers",
    "Inbox",
    "KafkaConfig",
    "Kind",
    "LogicalTopic",
    "OutgoingRecord",
    "Record",
    "RecordMetadata",
    "RevokeCallback",
    "Topic",
    "TopicDescription",
    "TopicPartition",
    "TopicSpec",
]
