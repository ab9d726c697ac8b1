"""The topic catalog: the only place a topic name is spelled.

Every logical topic has a payload type, the partition key (always ``conversation_id``), and
two siblings: ``T.retry`` (delayed retries) and ``T.dlq`` (dead letters). Names get the
deployment's optional prefix (``AGENTSTREAM_TOPIC_PREFIX``, e.g. ``prod.``) so one cluster
can hold several deployments.

Besides the fixed :class:`Topic` s, each declared agent has its input topic
``agent.<name>`` (an :class:`Inbox`): the router forwards the conversation's turns there,
other agents hand off and call it as a tool there, and the tool and memory workers answer
its calls there (ADR 23). A catalog knows its deployment's agents.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentstream.schemas import (
    DEFAULT_AGENT,
    AgentResponse,
    AgentStats,
    AgentTask,
    Envelope,
    MemoryCall,
    ToolCall,
    ToolResult,
    UserRequest,
)
from agentstream.topics.bus import TopicDescription

__all__ = ["Catalog", "Inbox", "Kind", "LogicalTopic", "Topic", "TopicSpec"]


class Topic(StrEnum):
    """The logical topics of the pipeline."""

    USER_REQUEST = "user_request"
    TOOL_CALL = "tool_call"
    MEMORY_CALL = "memory_call"
    TOOL_RESULT = "tool_result"
    AGENT_RESPONSE = "agent_response"
    #: Live stats for dashboards (the stats worker's partials, keyed by their stats row).
    AGENT_STATS = "agent_stats"


@dataclass(frozen=True, slots=True)
class Inbox:
    """The input topic of one declared agent: ``agent.<name>``."""

    agent: str

    @property
    def value(self) -> str:
        return f"agent.{self.agent}"

    def __str__(self) -> str:
        return self.value


#: A topic as routes and the catalog name it: a fixed one, or an agent's input topic.
LogicalTopic = Topic | Inbox


class Kind(StrEnum):
    MAIN = ""
    RETRY = ".retry"
    DLQ = ".dlq"


_PAYLOADS: dict[Topic, type[Envelope[Any]]] = {
    Topic.USER_REQUEST: UserRequest,
    Topic.TOOL_CALL: ToolCall,
    Topic.MEMORY_CALL: MemoryCall,
    Topic.TOOL_RESULT: ToolResult,
    Topic.AGENT_RESPONSE: AgentResponse,
    Topic.AGENT_STATS: AgentStats,
}

_BY_TYPE: dict[str, Topic] = {cls.TYPE: topic for topic, cls in _PAYLOADS.items()}

_WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One physical topic: its full name and how it is created."""

    topic: LogicalTopic
    kind: Kind
    name: str
    event_type: type[Envelope[Any]]
    partitions: int
    replication_factor: int
    retention_ms: int
    key: str = "conversation_id"

    def description(self) -> TopicDescription:
        """How the topic is created, and what ``topics describe`` compares it with.

        ``min.insync.replicas`` is always set (2, or 1 with a single replica) rather than
        left to the broker's default, so a cluster default above the replication factor
        cannot make every acks=all write fail."""
        configs = {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "delete",
            "min.insync.replicas": str(min(2, self.replication_factor)),
        }
        if self.topic is Topic.USER_REQUEST and self.kind is Kind.MAIN:
            # The broker stamps the append time, which decides whether a request the
            # ingress stopped waiting for was accepted (topics/deadline.py, ADR 6).
            configs["message.timestamp.type"] = "LogAppendTime"
        if self.replication_factor > 1:
            # Only an in-sync replica may become leader (Kafka's default, spelled out: a
            # cluster may change it), so an acknowledged write is never lost to a failover.
            configs["unclean.leader.election.enable"] = "false"
        return TopicDescription(self.name, self.partitions, self.replication_factor, configs)


@dataclass(frozen=True, slots=True)
class Catalog:
    """The topics of one deployment.

    ``dlq_retention_ms`` is longer than the main retention by default: dead letters wait
    for an operator, who may come back after a long weekend.
    """

    prefix: str = ""
    partitions: int = 12
    replication_factor: int = 1
    retention_ms: int = _WEEK_MS
    dlq_retention_ms: int = 4 * _WEEK_MS
    #: The declared agents, each with its input topic (default: the built-in app's one).
    agents: tuple[str, ...] = (DEFAULT_AGENT,)

    def name(self, topic: LogicalTopic, kind: Kind = Kind.MAIN) -> str:
        return f"{self.prefix}{topic.value}{kind.value}"

    def inbox(self, agent: str, kind: Kind = Kind.MAIN) -> str:
        """The name of ``agent``'s input topic."""
        return self.name(Inbox(agent), kind)

    def topics(self) -> tuple[LogicalTopic, ...]:
        """Every logical topic: the fixed ones, then each agent's input topic."""
        return (*Topic, *(Inbox(agent) for agent in self.agents))

    def spec(self, topic: LogicalTopic, kind: Kind = Kind.MAIN) -> TopicSpec:
        return TopicSpec(
            topic=topic,
            kind=kind,
            name=self.name(topic, kind),
            event_type=AgentTask if isinstance(topic, Inbox) else _PAYLOADS[topic],
            partitions=self.partitions,
            replication_factor=self.replication_factor,
            retention_ms=self.dlq_retention_ms if kind is Kind.DLQ else self.retention_ms,
        )

    def specs(self) -> Iterator[TopicSpec]:
        """Every physical topic: each logical topic with its retry and dead-letter sibling."""
        for topic in self.topics():
            for kind in Kind:
                yield self.spec(topic, kind)

    def topic_of(self, event: Envelope[Any]) -> str:
        """The main topic an event is published to: by its type, except that a task goes to
        its agent's input topic and a tool result to the agent that asked, if one did."""
        if isinstance(event, AgentTask):
            return self.inbox(event.data.agent)
        if isinstance(event, ToolResult) and event.data.reply_to is not None:
            return self.inbox(event.data.reply_to)
        return self.name(_BY_TYPE[event.type])

    def resolve(self, name: str) -> TopicSpec | None:
        """The spec of a physical topic name of this deployment, None when it is not ours."""
        for spec in self.specs():
            if spec.name == name:
                return spec
        return None
