"""The ``bus`` fixture: every contract test runs twice, on the in-process bus and on Kafka.

The Kafka half needs the session broker of ``tests.services`` (``kafka_bootstrap``); it is
resolved only for the ``kafka`` parameter, and ``agentstream.topics.kafka`` is imported only there,
so ``-k memory`` runs with neither. Topic names come from the per-test ``prefix`` fixture of
``tests/conftest.py``, so runs never see each other's records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from agentstream.topics.bus import Bus, TopicDescription
from agentstream.topics.config import KafkaConfig
from agentstream.topics.memory import InProcessBus

from tests.pipeline_harness import Stack, make_stack

BusFactory = Callable[[], Bus]
TopicMaker = Callable[[str, int], Awaitable[str]]


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("kafka", id="kafka", marks=pytest.mark.kafka),
    ]
)
def bus_factory(request: pytest.FixtureRequest) -> BusFactory:
    """Builds the bus under test. Sync on purpose: the session broker starts outside a loop."""
    if request.param == "memory":
        return InProcessBus
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    # Short heartbeats: a group notices joins and leaves in well under a second, so
    # rebalancing tests stay fast.
    config = KafkaConfig(
        bootstrap_servers=bootstrap, session_timeout_ms=6_000, heartbeat_interval_ms=300
    )

    def build() -> Bus:
        from agentstream.topics.kafka import KafkaBus

        return KafkaBus(config)

    return build


@pytest.fixture
async def bus(bus_factory: BusFactory) -> AsyncIterator[Bus]:
    """A started bus, stopped after the test."""
    bus = bus_factory()
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


@pytest.fixture
def make_topic(bus: Bus, prefix: str) -> TopicMaker:
    """``await make_topic("orders", 3)``: creates ``<prefix>orders`` with 3 partitions."""

    async def make(name: str, partitions: int) -> str:
        full = f"{prefix}{name}"
        await bus.create_topics([TopicDescription(full, partitions, 1)])
        return full

    return make


StackMaker = Callable[..., Awaitable[Stack]]


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("kafka", id="kafka", marks=[pytest.mark.kafka, pytest.mark.redis]),
    ]
)
async def make_stack_for(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[StackMaker]:
    """Builds the pipeline stack of this test on the bus under test (in-process, or Kafka
    with Redis); keyword arguments are ``Settings`` fields. Everything is closed after."""
    kafka = redis = None
    if request.param == "kafka":
        kafka = request.getfixturevalue("kafka_bootstrap")
        redis = request.getfixturevalue("redis_url")
    made: list[Stack] = []

    async def make(**settings: Any) -> Stack:
        stack = await make_stack(request.param, prefix, kafka=kafka, redis=redis, **settings)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        await stack.bus.stop()
        await stack.store.close()


@pytest.fixture
async def stack(make_stack_for: StackMaker) -> Stack:
    """The pipeline stack with default settings, on each bus."""
    return await make_stack_for()
