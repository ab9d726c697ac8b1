"""Real Kafka and Redis for the test suite: server controllers and session fixtures.

The pytest plugin is :mod:`tests.services.plugin` (``pytest_plugins`` in ``tests/conftest.py``).
Servers start lazily, only when a test asks for a fixture, and are stopped at the end of the
session, by fixture finalizers and, as a backstop, by an ``atexit`` hook
(:mod:`tests.services.processes`). A broker started by ``infra/kafka/start.sh`` also carries a
watchdog on this process's pid, and ``redis-server`` is started with a parent-death signal, so
even a killed test run leaves no server behind.

Fixtures:

- ``kafka_bootstrap`` (session): ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local Apache Kafka
  broker (``infra/kafka/start.sh``), else testcontainers' Kafka when a Docker engine answers.
- ``kafka_broker`` (session): the local :class:`KafkaBroker` behind ``kafka_bootstrap``, or
  ``None`` when the broker is external.
- ``private_kafka`` (function): a factory for fresh private brokers that a test may kill,
  pause and restart; stopped and deleted after the test.
- ``redis_url`` (session): ``REDIS_URL`` if set, else a local ``redis-server``.
- ``private_redis`` (function): a factory for fresh private Redis servers.

When a server cannot be had, the test fails on CI (``CI=true``) and is skipped elsewhere
(:func:`unavailable`). The servers themselves (:class:`KafkaBroker`, :class:`RedisServer`)
work without pytest too: the benchmarks in ``bench/`` start them.
"""

from __future__ import annotations

from tests.services.environment import unavailable
from tests.services.kafka import KAFKA_DIR, KafkaBroker, KafkaFactory, kafka_version
from tests.services.processes import ServiceError
from tests.services.redis import RedisFactory, RedisServer

__all__ = [
    "KAFKA_DIR",
    "KafkaBroker",
    "KafkaFactory",
    "RedisFactory",
    "RedisServer",
    "ServiceError",
    "kafka_version",
    "unavailable",
]
