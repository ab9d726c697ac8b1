"""A pipeline deployment for one chaos scenario: worker processes, topics and a test client.

:class:`Cluster` starts ``agentstream worker KIND...`` processes against a broker and a
Redis, with one topic prefix per test, and lets the scenario hurt them: SIGKILL, SIGTERM,
SIGSTOP/SIGCONT, restart. Each incarnation of a process logs to its own file under the
test's ``tmp_path``; :meth:`Cluster.tails` shows them when an assertion fails. Processes are
started under ``setpriv --pdeathsig KILL`` where available, so even a test run that is
killed leaves no worker behind; :meth:`Cluster.close` kills them all (after SIGCONT).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from agentstream.agents import DEFAULT_AGENT
from agentstream.schemas import Envelope, RetryableError, encode
from agentstream.settings import Settings, TopicSettings
from agentstream.topics import Catalog, KafkaConfig, OutgoingRecord, Record, Topic
from agentstream.wiring import build_bus, ensure_topics
from agentstream.workers import WORKERS
from pydantic import SecretStr

from tests.procs import ROOT, worker_env
from tests.workload import Turn

__all__ = ["Cluster"]

PARTITIONS = 4

#: What every chaos worker gets on top of :func:`tests.procs.worker_env`: deadlines far
#: beyond any scenario (a slow machine must not turn into ``timed_out`` answers), quick
#: delayed retries.
BASE_ENV = {
    "AGENTSTREAM_AGENT__DEADLINE_S": "300",
    "AGENTSTREAM_RUNTIME__RETRY_TOPIC_DELAY_S": "0.5",
    "AGENTSTREAM_LOG_LEVEL": "INFO",
}


class Cluster:
    def __init__(
        self,
        *,
        bootstrap: str,
        redis_url: str,
        prefix: str,
        logs: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.prefix = prefix
        self.logs = logs
        self.env = worker_env(bootstrap, redis_url, prefix)
        self.env.update(BASE_ENV)
        self.env.update(env or {})
        self.settings = Settings(
            bus="kafka",
            kafka=KafkaConfig(bootstrap_servers=bootstrap),
            redis_url=SecretStr(redis_url),
            topics=TopicSettings(
                prefix=prefix,
                partitions=PARTITIONS,
                replication_factor=int(self.env.get("AGENTSTREAM_TOPICS__REPLICATION_FACTOR", 1)),
            ),
        )
        self.catalog: Catalog = self.settings.catalog()
        self.bus = build_bus(self.settings)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kinds: dict[str, tuple[str, ...]] = {}
        self.log_files: dict[str, list[Path]] = {}
        self._open: list[IO[bytes]] = []
        self._setpriv = shutil.which("setpriv")

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.start()
        await ensure_topics(self.bus, self.catalog, create=True)

    async def close(self) -> None:
        for name in list(self.procs):
            self._reap(name)
        for f in self._open:
            f.close()
        with contextlib.suppress(Exception):
            await self.bus.stop()

    def group(self, kind: str) -> str:
        """The consumer group of ``kind``: ``agent.<name>`` names one agent's, ``agent`` the
        default app's agent's."""
        name, _, agent = kind.partition(".")
        worker = WORKERS.get(name)
        if not worker.per_agent:
            return worker.group_id(self.prefix)
        return worker.group_id(self.prefix, agent or DEFAULT_AGENT)

    # -- processes -----------------------------------------------------------------------

    def spawn(self, name: str, *kinds: str, env: dict[str, str] | None = None) -> None:
        """Start (or restart, with a fresh log file) ``agentstream worker KINDS`` as ``name``."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is running already")
        kinds = kinds or self.kinds[name]
        self._start(name, ["worker", *kinds], env)
        self.kinds[name] = tuple(kinds)

    def spawn_ingress(self, name: str, *, env: dict[str, str] | None = None) -> None:
        """Start ``agentstream ingress`` as ``name`` (its port, keys and timeouts in ``env``).

        It is a process like the workers (:meth:`kill`, :meth:`tail`, :meth:`close` apply);
        it belongs to no worker group, so :meth:`ready` does not wait for it: poll its
        ``/readyz`` instead."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is running already")
        self._start(name, ["ingress"], env)
        self.kinds[name] = ()

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None) -> None:
        """``agentstream ARGV`` as ``name``, its output in a fresh log file."""
        files = self.log_files.setdefault(name, [])
        path = self.logs / f"{name}.{len(files) + 1}.log"
        files.append(path)
        out = path.open("wb")
        self._open.append(out)
        command = [sys.executable, "-m", "agentstream.cli", *argv]
        if self._setpriv:
            command = [self._setpriv, "--pdeathsig", "KILL", *command]
        self.procs[name] = subprocess.Popen(
            command,
            env={**self.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def kill(self, name: str) -> None:
        """SIGKILL, and wait until it is gone."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def terminate(self, name: str) -> None:
        """SIGTERM: the worker drains, commits and leaves its groups (not waited for)."""
        with contextlib.suppress(ProcessLookupError):
            self.procs[name].send_signal(signal.SIGTERM)

    async def wait_exit(self, name: str, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while self.procs[name].poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not exit within {timeout_s}s")
            await asyncio.sleep(0.1)
        return int(self.procs[name].returncode)

    def pause(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def _reap(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    # -- what the processes say ----------------------------------------------------------

    def log_entries(self, name: str, incarnation: int = -1) -> list[dict[str, Any]]:
        path = self.log_files[name][incarnation]
        entries = []
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def assignments(self, name: str, incarnation: int = -1) -> list[tuple[str, str, int]]:
        """``(time, group, partitions)`` of every assignment the process received."""
        found = []
        for entry in self.log_entries(name, incarnation):
            message = str(entry.get("message", ""))
            group, sep, rest = message.partition(": assigned ")
            if sep and rest.endswith("partition(s)"):
                found.append((str(entry.get("time")), group, int(rest.split()[0])))
        return found

    def assignment_count(self, names: Iterable[str]) -> int:
        """Assignments received by ``names`` over all their incarnations."""
        return sum(
            len(self.assignments(n, i)) for n in names for i in range(len(self.log_files[n]))
        )

    async def ready(self, names: Sequence[str] | None = None, timeout_s: float = 60.0) -> None:
        """Until every process in ``names`` (default: all running) has joined all its groups
        and no assignment happened for a moment (the groups are stable)."""
        names = [n for n in (names or self.procs) if self.alive(n)]
        deadline = time.monotonic() + timeout_s
        last = -1
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            for name in names:
                if not self.alive(name):
                    raise AssertionError(f"{name} exited:\n{self.tail(name)}")
            joined = all(
                {self.group(k) for k in self.kinds[n]} <= {g for _, g, _ in self.assignments(n)}
                for n in names
            )
            count = self.assignment_count(names)
            if count != last:
                last, stable_since = count, time.monotonic()
            if joined and time.monotonic() - stable_since >= 1.5:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"workers not ready within {timeout_s}s\n{self.tails()}")

    def tail(self, name: str, lines: int = 25, width: int = 400) -> str:
        """The last lines of the process's current log, each cut to ``width``."""
        path = self.log_files[name][-1]
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(line[:width] for line in text[-lines:])

    def tails(self, lines: int = 15) -> str:
        """Each process's last lines, after the errors any of them logged (a failed run's
        cause is often an error minutes before the end)."""
        errors = self.errors()
        head = f"\n--- errors logged ---\n{errors}" if errors else ""
        return head + "".join(f"\n--- {n} ---\n{self.tail(n, lines)}" for n in self.procs)

    def errors(self, most: int = 12) -> str:
        """The distinct ERROR entries of every process and incarnation, with the last line
        of their exception and how often each came."""
        seen: Counter[tuple[str, str, str]] = Counter()
        first: dict[tuple[str, str, str], str] = {}
        for name, files in self.log_files.items():
            for incarnation in range(len(files)):
                for entry in self.log_entries(name, incarnation):
                    if entry.get("level") not in ("ERROR", "CRITICAL"):
                        continue
                    exc = str(entry.get("exc", "")).strip().splitlines()
                    what = (name, str(entry.get("message", ""))[:160], exc[-1][:300] if exc else "")
                    seen[what] += 1
                    first.setdefault(what, str(entry.get("time", "")))
        return "\n".join(
            f"{first[w]} {w[0]} x{n}: {w[1]}" + (f" | {w[2]}" if w[2] else "")
            for w, n in seen.most_common(most)
        )

    # -- traffic -------------------------------------------------------------------------

    async def publish(self, turns: Sequence[Turn], *, chunk: int = 50) -> None:
        """Publish the turns' requests in order (so each conversation's turns stay in order),
        in batches acknowledged by the broker."""
        await self.publish_events([t.event() for t in turns], chunk=chunk)

    async def publish_events(self, events: Sequence[Envelope[Any]], *, chunk: int = 50) -> None:
        records = []
        for event in events:
            key, value, headers = encode(event)
            records.append(OutgoingRecord(self.catalog.topic_of(event), value, key, tuple(headers)))
        for i in range(0, len(records), chunk):
            await self.bus.publish_many(records[i : i + chunk])

    async def paced(self, turns: Sequence[Turn], *, over_s: float, batches: int = 8) -> None:
        """Publish the turns spread over ``over_s`` seconds, in order."""
        size = max(1, -(-len(turns) // batches))
        for i in range(0, len(turns), size):
            await self.publish(turns[i : i + size])
            if i + size < len(turns):
                await asyncio.sleep(over_s / batches)

    async def read(self, topic: str, *, read_committed: bool = True) -> list[Record]:
        """Every record of ``topic``, waiting out a broker that just came back: for a moment
        its partitions have no leader (a ``RetryableError``)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return await self.bus.read(topic, read_committed=read_committed)
            except RetryableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def responses(self) -> list[Record]:
        return await self.read(self.catalog.name(Topic.AGENT_RESPONSE))

    async def answered(self, turns: Sequence[Turn]) -> int:
        wanted = {t.request_id for t in turns}
        got = {_request_id(r) for r in await self.responses()}
        return len(wanted & got)

    async def wait_answered(
        self, turns: Sequence[Turn], fraction: float, timeout_s: float = 60.0
    ) -> int:
        """Until at least ``fraction`` of the turns have a response; the count answered."""
        deadline = time.monotonic() + timeout_s
        while True:
            count = await self.answered(turns)
            if count >= fraction * len(turns):
                return count
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {count}/{len(turns)} answered after {timeout_s}s{self.tails()}"
                )
            await asyncio.sleep(0.3)

    async def collect(
        self, turns: list[Turn], *, timeout_s: float = 90.0, settle_s: float = 2.0
    ) -> list[Record]:
        """The response records once every turn has an answer (or at the timeout), read
        again ``settle_s`` later so that late duplicates are counted."""
        wanted = {t.request_id for t in turns}
        deadline = time.monotonic() + timeout_s
        records: list[Record] = []
        while time.monotonic() < deadline:
            records = await self.responses()
            if wanted <= {_request_id(r) for r in records}:
                await asyncio.sleep(settle_s)
                return await self.responses()
            await asyncio.sleep(0.5)
        return records


def _request_id(record: Record) -> str | None:
    for k, v in record.headers:
        if k == "ce_requestid":
            return v.decode()
    return None
