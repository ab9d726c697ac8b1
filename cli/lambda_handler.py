"""The AWS Lambda entry point: the workers' handlers on batches from an MSK event source.

One function is deployed per worker kind (``AGENTSTREAM_LAMBDA_WORKER``, a standalone kind of
:data:`agentstream.workers.WORKERS`; the topic alone cannot tell, ``user_request`` feeds both
the agent and the memory worker).
Its event source mappings deliver batches in the documented Kafka event format (Amazon MSK
or self-managed Kafka), and every record goes through :meth:`Worker.process_record`: the
very path a record consumed by a container worker takes (decode, dedup mark and outbox,
handler, retries in place, ``T.retry`` or ``T.dlq``, outputs published with acks=all). A
batch delivered again after a timeout, a crash or a partial failure is therefore harmless:
events already handled republish their recorded outputs, with the same ids. That path also
passes by the retry copies and replays meant for another consumer group (ADR 17): the
function of one kind acts only on what its group (``agentstream-<kind>``) failed.

Records of one partition run in order, partitions concurrently, and two events of one
conversation never at once. A partition stops at the first record that could not be
settled (the store or the broker out of reach, the invocation's time running out): that
record and the later ones of its partition are reported in ``batchItemFailures``, so the
event source resumes the partition from there and nothing is skipped. With
``AGENTSTREAM_LAMBDA_REPORT_FAILURES=false`` (event source mappings without
``ReportBatchItemFailures``) the invocation raises instead and the whole batch comes again.

The bus, the store and the worker are built on the first invocation and kept, with their
event loop, for the warm invocations that follow. See ``infra/lambda/`` and ADR 0009.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentstream.agents import DEFAULT_AGENT
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.runtime.worker import Worker
from agentstream.handlers.stores.base import StateStore
from agentstream.logs import configure_logging
from agentstream.process import build_workers
from agentstream.schemas import ConfigError
from agentstream.settings import Settings, load_settings
from agentstream.topics import Bus, Catalog, Headers, Record
from agentstream.wiring import build_bus, build_store, ensure_topics, runtime_config
from agentstream.workers import WORKERS, Sweeper

__all__ = [
    "AGENT_ENV",
    "KIND_ENV",
    "REPORT_FAILURES_ENV",
    "BatchFailed",
    "Failure",
    "LambdaRuntime",
    "batch_response",
    "configure",
    "handler",
    "parse_event",
    "shutdown",
    "sweep_handler",
]

log = logging.getLogger(__name__)

KIND_ENV = "AGENTSTREAM_LAMBDA_WORKER"
#: The declared agent an agent function runs (one function per agent, ADR 23).
AGENT_ENV = "AGENTSTREAM_LAMBDA_AGENT"
REPORT_FAILURES_ENV = "AGENTSTREAM_LAMBDA_REPORT_FAILURES"
_EVENT_SOURCES = ("aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka")

#: A failed record as the event source knows it: the ``records`` key and the offset.
Failure = tuple[str, int]


class BatchFailed(RuntimeError):
    """Some records could not be settled and partial batch responses are off: failing the
    invocation makes the event source deliver the whole batch again."""


# -- the event ----------------------------------------------------------------------------


def parse_event(event: Mapping[str, Any]) -> dict[str, list[Record]]:
    """The records of a Kafka event-source event, per ``records`` key (``<topic>-<partition>``,
    the name partial batch responses use), each list in offset order."""
    source = event.get("eventSource")
    if source not in _EVENT_SOURCES:
        raise ConfigError(f"not a Kafka event source event (eventSource={source!r})")
    batches: dict[str, list[Record]] = {}
    for name, items in (event.get("records") or {}).items():
        batches[name] = sorted((_record(item) for item in items), key=lambda r: r.offset)
    return batches


def _record(item: Mapping[str, Any]) -> Record:
    return Record(
        topic=item["topic"],
        partition=int(item["partition"]),
        offset=int(item["offset"]),
        key=_bytes(item.get("key")),
        value=_bytes(item.get("value")),
        headers=_headers(item.get("headers")),
        timestamp_ms=int(item.get("timestamp") or 0),
    )


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _headers(raw: Iterable[Mapping[str, Sequence[int] | None]] | None) -> Headers:
    # Each header is a one-key object whose value lists the bytes, as Java's signed bytes.
    return tuple(
        (name, bytes(b & 0xFF for b in values or ()))
        for entry in raw or ()
        for name, values in entry.items()
    )


def batch_response(failures: Iterable[Failure]) -> dict[str, Any]:
    """The partial batch response of a Kafka event source: each failed record named by its
    ``records`` key and offset. An empty list means the whole batch succeeded."""
    return {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": name, "offset": offset}} for name, offset in failures
        ]
    }


# -- one function instance ----------------------------------------------------------------


@dataclass
class _Partition:
    name: str
    records: list[Record]
    done: int = 0


class LambdaRuntime:
    """What a warm function instance keeps: its settings, bus, store and worker.

    ``routes`` replaces the kind's handlers and ``store`` the store built from the settings
    (tests, custom deployments); both default to what a container worker of ``kind`` runs.
    """

    def __init__(
        self,
        settings: Settings,
        kind: str,
        *,
        routes: Sequence[Route] | None = None,
        store: StateStore | None = None,
        report_failures: bool = True,
        agent: str | None = None,
    ) -> None:
        self.settings = settings
        self.kind = kind
        #: The declared agent an agent function runs (default: the app's default agent).
        self.agent = agent
        self.report_failures = report_failures
        self.metrics = RuntimeMetrics()
        self._routes = routes
        self._given_store = store
        self._bus: Bus | None = None
        self._store: StateStore | None = None
        self._worker: Worker | None = None
        self._sweepers: list[Sweeper] = []

    async def start(self) -> Worker:
        """Connect and build the worker, once; a failure leaves nothing half-built, so the
        next invocation tries again."""
        if self._worker is not None:
            return self._worker
        bus = build_bus(self.settings)
        store = self._given_store or build_store(self.settings)
        await bus.start()
        try:
            await store.ping()
            topics = self.settings.topics
            await ensure_topics(bus, self.settings.catalog(), create=topics.create_on_start)
            worker = self._build(bus, store)
        except BaseException:
            await bus.stop()
            if self._given_store is None:
                await store.close()
            raise
        self._bus, self._store, self._worker = bus, store, worker
        return worker

    def _build(self, bus: Bus, store: StateStore) -> Worker:
        if self._routes is not None:
            kind = WORKERS.get(self.kind)
            group = kind.group_id("", self.agent or DEFAULT_AGENT) if kind.per_agent else kind.group
            config = runtime_config(self.settings, group, kind.source)
            catalog = self.settings.catalog()
            return Worker(bus, store, catalog, self._routes, config, metrics=self.metrics)
        built = build_workers(
            [self.kind],
            self.settings,
            bus,
            store,
            self.metrics.registry,
            asyncio.Event(),
            agents=[self.agent] if self.agent else None,
        )
        if len(built.workers) != 1:
            raise ConfigError(
                f"a function runs one agent: set {AGENT_ENV} to one of the app's agents"
            )
        for extra in built.extras:
            # A periodic job's loop sweeps the partitions a consumer owns; a function owns
            # none. `sweep_handler`, run on a schedule, sweeps every partition instead.
            extra.close()
        self._sweepers = built.periodic
        return built.workers[0]

    async def sweep(self) -> int:
        """One round of the kind's periodic jobs on every partition: the agent's ends the
        runs whose deadline passed, the stats worker's emits the windows that are due."""
        await self.start()
        if not self._sweepers:
            raise ConfigError(f"the {self.kind} worker has no periodic jobs to sweep")
        partitions = range(self.settings.topics.partitions)
        return sum([await s.sweep(partitions, wait=True) for s in self._sweepers])

    async def stop(self) -> None:
        bus, store = self._bus, self._store
        self._bus = self._store = self._worker = None
        if bus is not None:
            await bus.stop()
        if store is not None:
            await store.close()

    async def handle(
        self, event: Mapping[str, Any], remaining_s: float | None = None
    ) -> list[Failure]:
        """Run a batch; return the records to report as failed. ``remaining_s`` is the time
        the invocation has left: work still running near its end is stopped and reported."""
        loop = asyncio.get_running_loop()
        deadline = None if remaining_s is None else loop.time() + remaining_s - _margin(remaining_s)
        batches = parse_event(event)
        catalog = self.settings.catalog()
        foreign = sorted({r.topic for rs in batches.values() for r in rs} - _names(catalog))
        if foreign:
            raise ConfigError(
                f"topics {foreign} are not of this deployment (prefix "
                f"{self.settings.topics.prefix!r}); check the event source mapping"
            )
        worker = await self.start()
        partitions = [_Partition(name, records) for name, records in batches.items() if records]
        if not partitions:
            return []
        locks: dict[bytes, asyncio.Lock] = {}
        tasks = [asyncio.create_task(self._drain(worker, p, locks)) for p in partitions]
        budget = None if deadline is None else max(0.0, deadline - loop.time())
        _, pending = await asyncio.wait(tasks, timeout=budget)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning(
                "invocation time running out: %d partition(s) stopped, their remaining "
                "records are reported failed",
                len(pending),
            )
        return [(p.name, r.offset) for p in partitions for r in p.records[p.done :]]

    async def _drain(
        self, worker: Worker, partition: _Partition, locks: dict[bytes, asyncio.Lock]
    ) -> None:
        for record in partition.records:
            key = record.key or f"{record.topic}/{record.partition}/{record.offset}".encode()
            lock = locks.setdefault(key, asyncio.Lock())
            try:
                async with lock:
                    await worker.process_record(record)
            except Exception:
                log.exception(
                    "%s[%d]@%d could not be settled; it and %d later record(s) of its "
                    "partition are reported failed",
                    record.topic,
                    record.partition,
                    record.offset,
                    len(partition.records) - partition.done - 1,
                    extra={
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                    },
                )
                return
            partition.done += 1


def _names(catalog: Catalog) -> set[str]:
    return {spec.name for spec in catalog.specs()}


def _margin(remaining_s: float) -> float:
    """Time kept back to stop, log and answer before Lambda ends the invocation."""
    return min(10.0, max(1.0, remaining_s * 0.1))


# -- the module's warm state and the entry point ------------------------------------------


@dataclass
class _Warm:
    runtime: LambdaRuntime | None = None
    runner: asyncio.Runner | None = None


_warm = _Warm()


def configure(
    settings: Settings | None = None,
    *,
    kind: str | None = None,
    routes: Sequence[Route] | None = None,
    store: StateStore | None = None,
    report_failures: bool | None = None,
    agent: str | None = None,
) -> LambdaRuntime:
    """Set up (or replace) the function's runtime. Unset arguments come from the
    environment: ``Settings`` as everywhere, the kind from ``AGENTSTREAM_LAMBDA_WORKER``,
    partial batch responses from ``AGENTSTREAM_LAMBDA_REPORT_FAILURES`` (default true).
    Called by the first invocation; tests call it with explicit settings."""
    shutdown()
    if settings is None:
        settings = load_settings()
        if "AWS_LAMBDA_FUNCTION_NAME" in os.environ:
            configure_logging(settings.log_level, settings.log_json)
    if report_failures is None:
        report_failures = os.environ.get(REPORT_FAILURES_ENV, "true").lower() != "false"
    runtime = LambdaRuntime(
        settings,
        kind or _kind_from_env(),
        routes=routes,
        store=store,
        report_failures=report_failures,
        agent=agent or os.environ.get(AGENT_ENV) or None,
    )
    _warm.runtime = runtime
    return runtime


def _kind_from_env() -> str:
    kind = os.environ.get(KIND_ENV, "")
    names = WORKERS.names()
    if kind not in names:
        raise ConfigError(f"{KIND_ENV} must be one of {', '.join(names)}, not {kind!r}")
    return kind


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """The Lambda handler (``agentstream.lambda_handler.handler``) of a Kafka event source."""
    runtime = _warm.runtime or configure()
    if _warm.runner is None:
        _warm.runner = asyncio.Runner()
    failures = _warm.runner.run(runtime.handle(event, _remaining_s(context)))
    if failures and not runtime.report_failures:
        raise BatchFailed(
            f"{len(failures)} record(s) could not be settled, first {failures[0]}; "
            "the batch will be delivered again"
        )
    return batch_response(failures)


def sweep_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """Scheduled entry point (``agentstream.lambda_handler.sweep_handler``, e.g. every
    minute from EventBridge): one round of the kind's periodic jobs. In the agent function
    it ends the runs whose deadline passed while they waited for tools, so every request
    still gets its ``timed_out`` answer on Lambda."""
    runtime = _warm.runtime or configure()
    if _warm.runner is None:
        _warm.runner = asyncio.Runner()
    return {"expired": _warm.runner.run(runtime.sweep())}


def _remaining_s(context: object) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else float(remaining()) / 1000


def shutdown() -> None:
    """Close the bus, the store and the event loop of this instance (tests; reconfiguring)."""
    runtime, runner = _warm.runtime, _warm.runner
    _warm.runtime = _warm.runner = None
    if runner is None:
        return
    try:
        if runtime is not None:
            runner.run(runtime.stop())
    finally:
        runner.close()
