"""Real Kafka and Redis for the test suite: server controllers and session fixtures.

Registered as a pytest plugin (``pytest_plugins = ["tests.services"]``). Servers start lazily,
only when a test asks for a fixture, and are stopped at the end of the session, by fixture
finalizers and, as a backstop, by an ``atexit`` hook. A broker started by
``infra/kafka/start.sh`` also carries a watchdog on this process's pid, and ``redis-server``
is started with a parent-death signal, so even a killed test run leaves no server behind.

Fixtures:

- ``kafka_bootstrap`` (session): ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local Apache Kafka
  broker (``infra/kafka/start.sh``), else testcontainers' Kafka when a Docker engine answers.
- ``kafka_broker`` (session): the local :class:`KafkaBroker` behind ``kafka_bootstrap``, or
  ``None`` when the broker is external.
- ``private_kafka`` (function): a factory for fresh private brokers that a test may kill,
  pause and restart; stopped and deleted after the test.
- ``redis_url`` (session): ``REDIS_URL`` if set, else a local ``redis-server``.
- ``private_redis`` (function): a factory for fresh private Redis servers.

When a server cannot be had, the test fails on CI (``CI=true``) and is skipped elsewhere.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest

__all__ = [
    "KAFKA_DIR",
    "KafkaBroker",
    "KafkaFactory",
    "RedisFactory",
    "RedisServer",
    "ServiceError",
    "kafka_version",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_DIR = REPO_ROOT / "infra" / "kafka"

# Environment read once at configure time: tests may clear os.environ with an autouse fixture
# before a session fixture first runs.
_ENV_KEYS = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CI")
_env: dict[str, str] = {}


class ServiceError(RuntimeError):
    """A server could not be started or controlled."""


def kafka_version() -> str:
    """The Kafka version pinned in ``infra/kafka/pom.xml``."""
    text = (KAFKA_DIR / "pom.xml").read_text(encoding="utf-8")
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", text)
    return match.group(1).strip() if match else "unknown"


def _on_ci() -> bool:
    return _env.get("CI", os.environ.get("CI", "")).lower() == "true"


def unavailable(message: str) -> NoReturn:
    """Fail on CI, skip elsewhere: a test needing a server never silently skips on CI."""
    if _on_ci():
        pytest.fail(f"{message} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited but unreaped (zombie) process counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # gone, or no /proc on this system
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        content = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(content[-lines:])


# ---------------------------------------------------------------------------------------------
# Process registry: everything started here is stopped at exit, whatever happened.

_live: set[KafkaBroker | RedisServer] = set()
_live_lock = threading.Lock()


def _register(server: KafkaBroker | RedisServer) -> None:
    with _live_lock:
        _live.add(server)


def _unregister(server: KafkaBroker | RedisServer) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _close_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


# ---------------------------------------------------------------------------------------------
# Kafka


class KafkaBroker:
    """One single-node Apache Kafka broker (KRaft) run by ``infra/kafka/start.sh``.

    The broker owns its data dir (a temp dir unless given) and keeps its ports across
    restarts, so ``kill()`` then ``restart()`` brings back the same broker with its data.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        scram: bool = False,
        heap: str = "512m",
        start_timeout: float = 90.0,
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir: Path = (
            Path(tempfile.mkdtemp(prefix="agentstream-kafka-")) if data_dir is None else data_dir
        )
        self.scram: bool = scram
        self.heap: str = heap
        self.start_timeout: float = start_timeout
        self.version: str = kafka_version()
        self.port: int | None = port
        self.sasl_port: int | None = None
        self.pid: int | None = None
        self.start_seconds: float | None = None
        """How long the last ``start()`` took, in seconds."""
        self._closed = False

    def __repr__(self) -> str:
        return f"KafkaBroker(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the PLAINTEXT listener."""
        if self.port is None:
            raise ServiceError("the broker has not been started yet")
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the SASL_PLAINTEXT (SCRAM-SHA-512) listener, with ``scram``."""
        if not self.scram:
            raise ServiceError("the broker was not started with scram=True")
        if self.sasl_port is None:
            raise ServiceError("the broker has not been started yet")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_file, lines)

    def start(self) -> None:
        """Start (or, on an already formatted data dir, restart) and wait until ready."""
        if self._closed:
            raise ServiceError("the broker was closed")
        if self.running:
            raise ServiceError(f"the broker is already running (pid {self.pid})")
        command = [
            "bash",
            str(KAFKA_DIR / "start.sh"),
            "--data-dir",
            str(self.data_dir),
            "--heap",
            self.heap,
            "--timeout",
            str(int(self.start_timeout)),
            "--owner-pid",
            str(os.getpid()),
        ]
        if self.port is not None:
            command += ["--port", str(self.port)]
        if self.scram:
            command.append("--scram")
        _register(self)
        began = time.monotonic()
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.start_timeout + 600,  # fetch.sh may download the jars first
                check=False,
            )
        except BaseException as exc:  # a timeout, or Ctrl-C while waiting: no orphan broker
            self._read_pid()
            self._force_stop()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ServiceError(f"infra/kafka/start.sh timed out: {exc}") from exc
            raise
        self.start_seconds = time.monotonic() - began
        if result.returncode != 0:
            self._read_pid()
            self._force_stop()
            raise ServiceError(
                f"infra/kafka/start.sh exited with {result.returncode}:\n"
                f"{result.stderr.strip()[-4000:]}"
            )
        self._parse_output(result.stdout)
        self._read_pid()

    def _parse_output(self, stdout: str) -> None:
        for line in stdout.splitlines():
            key, _, value = line.strip().partition("=")
            if key == "KAFKA_BOOTSTRAP_SERVERS":
                self.port = int(value.rsplit(":", 1)[1])
            elif key == "KAFKA_SASL_BOOTSTRAP_SERVERS":
                self.sasl_port = int(value.rsplit(":", 1)[1])
        if self.port is None:
            raise ServiceError(f"start.sh printed no KAFKA_BOOTSTRAP_SERVERS line:\n{stdout}")

    def _read_pid(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pid = int((self.data_dir / "kafka.pid").read_text(encoding="ascii").strip())

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a controlled shutdown); SIGKILL if still running after ``timeout``."""
        if self.pid is None:
            return
        pid = self.pid
        _signal(pid, signal.SIGCONT)  # a paused broker cannot shut down
        _signal(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            _signal(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
        self._forget_pid()

    def kill(self) -> None:
        """SIGKILL: a crash, with no controlled shutdown."""
        self._force_stop()

    def _force_stop(self) -> None:
        if self.pid is None:
            return
        _signal(self.pid, signal.SIGKILL)
        _wait_gone(self.pid, 10.0)
        self._forget_pid()

    def _forget_pid(self) -> None:
        self.pid = None
        with contextlib.suppress(OSError):
            (self.data_dir / "kafka.pid").unlink()

    def restart(self) -> None:
        """Stop if running, then start again on the same ports and data dir."""
        if self.running:
            self.stop()
        self._forget_pid()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the broker hangs, its connections stay open."""
        if self.pid is None:
            raise ServiceError("the broker is not running")
        _signal(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.pid is None:
            raise ServiceError("the broker is not running")
        _signal(self.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the broker and delete the data dir if this object created it."""
        self._closed = True
        try:
            self.stop()
        finally:
            _unregister(self)
            if self._owns_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Redis


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, with its own dir; keeps its port across restarts."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        executable: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            raise ServiceError("redis-server not found on PATH (apt-get install -y redis-server)")
        self.executable: str = found
        self._owns_dir = data_dir is None
        self.data_dir: Path = (
            Path(tempfile.mkdtemp(prefix="agentstream-redis-")) if data_dir is None else data_dir
        )
        self.port: int = port if port is not None else _free_port()
        self.appendonly: bool = appendonly
        self.start_timeout: float = start_timeout
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def version(self) -> str:
        out = subprocess.run(
            [self.executable, "--version"], capture_output=True, text=True, check=False
        ).stdout
        match = re.search(r"v=(\S+)", out)
        return match.group(1) if match else "unknown"

    def start(self) -> None:
        """Start and wait until it answers PING (after loading its append-only file)."""
        if self._closed:
            raise ServiceError("the server was closed")
        if self.running:
            raise ServiceError(f"redis-server is already running (pid {self.pid})")
        command = [
            self.executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
        ]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # The server dies with this process (thread), even on SIGKILL of the test run.
            command = [setpriv, "--pdeathsig", "TERM", *command]
        _register(self)
        began = time.monotonic()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = began + self.start_timeout
        while not self._ping():
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise ServiceError(
                    f"redis-server exited with {code} during startup:\n{_tail(self.log_file)}"
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise ServiceError(
                    f"redis-server not ready within {self.start_timeout}s:\n{_tail(self.log_file)}"
                )
            time.sleep(0.02)
        self.start_seconds = time.monotonic() - began

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (redis writes its append-only file and exits); SIGKILL after ``timeout``."""
        if self._process is None:
            return
        process = self._process
        if process.poll() is None:
            _signal(process.pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10.0)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(10.0)
        self._process = None

    def restart(self) -> None:
        """Stop if running, then start again on the same port and dir."""
        self.stop()
        self.start()

    def pause(self) -> None:
        if self._process is None:
            raise ServiceError("redis-server is not running")
        _signal(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is None:
            raise ServiceError("redis-server is not running")
        _signal(self._process.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and delete the dir if this object created it."""
        self._closed = True
        try:
            self.stop()
        finally:
            _unregister(self)
            if self._owns_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reporting: which servers the run used.

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
    _env.clear()
    _env.update({key: os.environ[key] for key in _ENV_KEYS if key in os.environ})


def pytest_report_header(config: pytest.Config) -> list[str]:
    kafka = _env.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = _env.get("REDIS_URL")
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


# ---------------------------------------------------------------------------------------------
# Fixtures


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
    external = _env.get("KAFKA_BOOTSTRAP_SERVERS")
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


class KafkaFactory(Protocol):
    """``private_kafka(scram=False, heap="512m")`` starts a fresh private broker."""

    def __call__(self, *, scram: bool = False, heap: str = "512m") -> KafkaBroker: ...


class RedisFactory(Protocol):
    """``private_redis(appendonly=False)`` starts a fresh private Redis server."""

    def __call__(self, *, appendonly: bool = False) -> RedisServer: ...


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
    external = _env.get("REDIS_URL")
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
