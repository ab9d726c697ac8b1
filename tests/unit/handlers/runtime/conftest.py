"""Fixtures of the runtime's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from agentstream.topics import Catalog
from agentstream.topics.memory import InProcessBus


@pytest.fixture
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[InProcessBus]:
    """A started in-process bus with the topics of the test module's ``CATALOG``."""
    catalog: Catalog = request.module.CATALOG
    bus = InProcessBus()
    await bus.start()
    await bus.create_topics([spec.description() for spec in catalog.specs()])
    yield bus
    await bus.stop()
