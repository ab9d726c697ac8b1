"""Kafka, Redis and the processes of ``bench/pipeline.py``: the workers and relays it
starts, their environment and settings.

Kafka and Redis are the ones named by ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL``, or
local ones started for the run (``tests/services/``). Worker and relay processes log to
files, so a failed run can show their last lines.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def kafka_service() -> Iterator[tuple[str, str]]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"], "external"
        return
    from tests.services import KafkaBroker

    broker = KafkaBroker()
    broker.start()
    try:
        yield broker.bootstrap, f"Apache Kafka {broker.version}, started locally"
    finally:
        broker.close()


@contextlib.contextmanager
def redis_service() -> Iterator[tuple[str, str]]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"], "external"
        return
    from tests.services import RedisServer

    server = RedisServer()
    server.start()
    try:
        yield server.url, f"redis-server {server.version()}, started locally"
    finally:
        server.close()


# A worker under cProfile timed by CPU time (not wall time: the machine is shared, and a
# process waiting for a core is not the code's fault). Stats are written when it stops.
_PROFILED = """
import cProfile, runpy, sys, time
out, kind = sys.argv[1], sys.argv[2]
sys.argv = ["agentstream", "worker", kind]
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    runpy.run_module("agentstream.cli", run_name="__main__")
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(out)
"""


class Procs:
    """Subprocesses of this run (workers, relays): logs in files, all stopped at the end."""

    def __init__(self, logs: Path, profile: Path | None) -> None:
        self.logs = logs
        self.profile = profile
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []
        compile_package()

    def worker(self, name: str, kind: str, env: dict[str, str]) -> int:
        argv = ["-m", "agentstream.cli", "worker", kind]
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)
            argv = ["-c", _PROFILED, str(self.profile / f"{name}.prof"), kind]
        return self._start(name, [sys.executable, *argv], env)

    def relay(
        self, name: str, bootstrap: str, routes: dict[str, str], redis_url: str | None = None
    ) -> int:
        """A relay process (``bench/relay.py``); the guarded relay with ``redis_url``."""
        argv = [sys.executable, str(REPO / "bench/relay.py"), "--bootstrap", bootstrap]
        argv += ["--group", f"bench-{name}-{uuid.uuid4().hex[:6]}"]
        for source, sink in routes.items():
            argv += ["--route", f"{source}:{sink}"]
        if redis_url is not None:
            argv += ["--guarded", "--redis", redis_url]
        return self._start(name, argv, {**os.environ, "PYTHONPATH": str(REPO)})

    def script(self, name: str, path: Path, env: dict[str, str]) -> int:
        """A Python script of this repository (``bench/echo_worker.py``) as a process."""
        return self._start(name, [sys.executable, str(path)], env)

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        log = (self.logs / f"{name}.log").open("wb")
        self._files.append(log)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs[name] = proc
        return proc.pid

    def stop(self, *names: str) -> None:
        for name in names or list(self.procs):
            proc = self.procs.pop(name)
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        for f in self._files:
            f.close()

    def tail(self, name: str, lines: int = 20) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def compile_package() -> None:
    """Write the bytecode of the ``agentstream`` package the workers import, as installing
    it does (pip compiles at install; ``make setup``'s editable link tree has none). Under
    ``PYTHONDONTWRITEBYTECODE`` every worker would otherwise compile the package again at
    its start, about 0.1 s of CPU that a deployed worker never spends."""
    import compileall

    import agentstream

    compileall.compile_dir(Path(agentstream.__file__).parent, quiet=1)


def worker_env(
    bootstrap: str,
    redis_url: str,
    prefix: str,
    partitions: int,
    latency: float,
    in_flight: int,
    app: str | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        REDIS_URL=redis_url,
        AGENTSTREAM_TOPICS__PREFIX=prefix,
        AGENTSTREAM_TOPICS__PARTITIONS=str(partitions),
        AGENTSTREAM_MODEL__OFFLINE_LATENCY_S=str(latency),
        AGENTSTREAM_RUNTIME__MAX_IN_FLIGHT=str(in_flight),
        AGENTSTREAM_LOG_JSON="true",
        # A PYTHONPATH of the environment stays first: an A/B run puts another checkout's
        # package there (see bench/first_answer.py).
        PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p),
    )
    if app is not None:
        env["AGENTSTREAM_APP"] = app
    return env


def bench_settings(bus: str, partitions: int, bootstrap: str = "", redis_url: str = "") -> Any:
    from agentstream.settings import Settings, TopicSettings
    from agentstream.topics import KafkaConfig
    from pydantic import SecretStr

    topics = TopicSettings(prefix=f"bench{uuid.uuid4().hex[:8]}.", partitions=partitions)
    if bus == "memory":
        return Settings(bus="memory", topics=topics)
    return Settings(
        bus="kafka",
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        redis_url=SecretStr(redis_url),
        topics=topics,
    )
