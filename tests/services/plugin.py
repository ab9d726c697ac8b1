"""The pytest plugin of the test servers: the session and private fixtures, and reporting.

Registered by ``tests/conftest.py`` (``pytest_plugins = ["tests.services.plugin"]``). The
session fixtures take the external server when ``KAFKA_BOOTSTRAP_SERVERS`` or ``REDIS_URL``
is set, else start a local one (for Kafka, testcontainers as a last resort); the private
fixtures start fresh servers that a test may kill, pause and restart. The run's header says
which servers will be used and a "services used" summary what was started, in how long.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.services.environment import env, read_environment, unavailable
from tests.services.kafka import KafkaBroker, KafkaFactory, kafka_version
from tests.services.processes import ServiceError
from tests.services.redis import RedisFactory, RedisServer

__all__ = [
    "kafka_bootstrap",
    "kafka_broker",
    "private_kafka",
    "private_redis",
    "pytest_configure",
    "pytest_report_header",
    "pytest_terminal_summary",
    "redis_url",
]

_service_lines: list[str] = []


def _announce(config: pytest.Config, line: str) -> None:
    _service_lines.append(line)
    reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 1:
        return  # shown in the "services used" summary; a line mid-run would break the dots
    capture: Any = config.pluginmanager.get_plugin("capturemanager")
    # Fixtures run with output captured; the line is for the terminal, now.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    read_environment()


def pytest_report_header(config: pytest.Config) -> list[str]:
    kafka = env.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = env.get("REDIS_URL")
    return [
        f"kafka: external at {kafka} (KAFKA_BOOTSTRAP_SERVERS)"
        if kafka
        else f"kafka: Apache Kafka {kafka_version()} (KRaft), started locally on first use",
        f"redis: external at {redis_url} (REDIS_URL)"
        if redis_url
        else "redis: redis-server, started locally on first use",
    ]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _service_lines:
        terminalreporter.write_sep("=", "services used")
        for line in _service_lines:
            terminalreporter.line(line)


@dataclass(frozen=True)
class _KafkaService:
    bootstrap: str
    broker: KafkaBroker | None


def _docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return (
            subprocess.run(
                [docker, "info"], capture_output=True, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _testcontainers_kafka() -> tuple[str, Any] | None:
    """``(bootstrap, container)`` from testcontainers' Kafka module, or ``None``."""
    if not _docker_answers():
        return None
    try:
        module = importlib.import_module("testcontainers.kafka")
    except ImportError:
        return None
    container = module.KafkaContainer(f"apache/kafka:{kafka_version()}")
    with contextlib.suppress(AttributeError):
        container = container.with_kraft()
    container.start()
    bootstrap: str = container.get_bootstrap_server()
    return bootstrap, container


def _start_local_broker() -> tuple[KafkaBroker | None, str]:
    """A started session broker, or ``None`` and why not."""
    broker = KafkaBroker()
    try:
        broker.start()
    except ServiceError as exc:
        broker.close()
        return None, str(exc)
    return broker, ""


@pytest.fixture(scope="session")
def _kafka_service(request: pytest.FixtureRequest) -> Iterator[_KafkaService]:
    external = env.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        _announce(request.config, f"kafka: external at {external}")
        yield _KafkaService(external, None)
        return

    broker, error = _start_local_broker()
    if broker is not None:
        _announce(
            request.config,
            f"kafka: Apache Kafka {broker.version} (KRaft) started locally at "
            f"{broker.bootstrap} in {broker.start_seconds or 0:.1f}s (pid {broker.pid})",
        )
        try:
            yield _KafkaService(broker.bootstrap, broker)
        finally:
            broker.close()
        return

    try:
        found = _testcontainers_kafka()
    except Exception as exc:  # anything testcontainers or Docker raises
        found = None
        error += f"\ntestcontainers: {exc!r}"
    if found is None:
        unavailable(
            "no Kafka broker: KAFKA_BOOTSTRAP_SERVERS is not set, infra/kafka/start.sh failed "
            f"(it needs java 17+ and mvn), and no Docker engine with testcontainers.\n{error}"
        )
    bootstrap, container = found
    _announce(request.config, f"kafka: testcontainers at {bootstrap}")
    try:
        yield _KafkaService(bootstrap, None)
    finally:
        container.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_service: _KafkaService) -> str:
    """Bootstrap servers of the session's Kafka broker (``host:port``)."""
    return _kafka_service.bootstrap


@pytest.fixture(scope="session")
def kafka_broker(_kafka_service: _KafkaService) -> KafkaBroker | None:
    """The local broker behind ``kafka_bootstrap``; ``None`` when the broker is external.

    Tests that kill or pause a broker use ``private_kafka`` instead, which always works.
    """
    return _kafka_service.broker


@pytest.fixture
def private_kafka(request: pytest.FixtureRequest) -> Iterator[KafkaFactory]:
    """A factory for private brokers that the test may kill, pause and restart.

    Every broker it started is stopped and its data dir deleted after the test.
    """
    brokers: list[KafkaBroker] = []

    def start(*, scram: bool = False, heap: str = "512m") -> KafkaBroker:
        broker = KafkaBroker(scram=scram, heap=heap)
        brokers.append(broker)
        try:
            broker.start()
        except ServiceError as exc:
            unavailable(f"cannot start a private Kafka broker with infra/kafka/start.sh: {exc}")
        return broker

    try:
        yield start
    finally:
        for broker in brokers:
            broker.close()


def _start_redis(appendonly: bool = False) -> RedisServer:
    try:
        server = RedisServer(appendonly=appendonly)
    except ServiceError as exc:
        unavailable(f"no Redis: REDIS_URL is not set and {exc}")
    try:
        server.start()
    except ServiceError as exc:
        server.close()
        unavailable(f"no Redis: REDIS_URL is not set and redis-server did not start: {exc}")
    return server


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of the session's Redis: ``REDIS_URL``, or a local ``redis-server``."""
    external = env.get("REDIS_URL")
    if external:
        _announce(request.config, f"redis: external at {external}")
        yield external
        return
    server = _start_redis()
    _announce(
        request.config,
        f"redis: redis-server {server.version()} started locally at {server.url} "
        f"in {server.start_seconds or 0:.2f}s",
    )
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[RedisFactory]:
    """A factory for private Redis servers that the test may kill and restart."""
    servers: list[RedisServer] = []

    def start(*, appendonly: bool = False) -> RedisServer:
        server = _start_redis(appendonly)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()
