"""The worker kinds, each declared once: its routes, consumer group, periodic jobs and how
it is built from the settings.

A worker kind is one :class:`WorkerKind` in :data:`WORKERS`. Its routes say what it consumes
and, on each :class:`~agentstream.handlers.runtime.route.Route`, what it publishes, as
FastStream declares a subscriber with its publishers; the rest is derived: the choices of
``agentstream worker``, what ``agentstream up`` runs, the kinds the Lambda handler accepts
(:mod:`agentstream.lambda_handler`), the roles and operations of the AsyncAPI document
(:mod:`agentstream.asyncapi`), the consumer groups ``agentstream status`` reports, and the
deployment checks of ``tests/deploy/``. Adding a worker is its handlers module plus one
entry here (an embedding application calls ``WORKERS.register``).

Building a kind imports its handlers, so the handler modules are imported inside the
``build`` functions: reading the registry (the CLI's parser does) stays cheap.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from agentstream.schemas.errors import ConfigError
from agentstream.settings import Settings
from agentstream.topics import LogicalTopic, Topic
from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from agentstream.agents import App, ToolRegistry
    from agentstream.agents.models import ModelRouter
    from agentstream.handlers.runtime.route import Route
    from agentstream.handlers.runtime.worker import Worker

__all__ = [
    "WORKERS",
    "Needs",
    "Parts",
    "Periodic",
    "Sweeper",
    "WorkerKind",
    "WorkerRegistry",
]


class Needs:
    """What building a worker kind may use: the settings, the metrics, the app (its declared
    agents and tools), the model router and tool registry, built from the settings on first
    use unless given (embedding applications and tests inject their own). One ``Needs``
    serves every kind of a process, so they share one app, router and tool registry.
    ``agent`` is the declared agent a per-agent kind is being built for
    (:meth:`for_agent`)."""

    def __init__(
        self,
        settings: Settings,
        metrics: CollectorRegistry,
        *,
        router: ModelRouter | None = None,
        tools: ToolRegistry | None = None,
        app: App | None = None,
        agent: str | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._router = router
        self._tools = tools
        self._app = app
        self.agent = agent

    def for_agent(self, agent: str) -> Needs:
        """The same needs (one app, router and registry) for building ``agent``'s worker."""
        return Needs(
            self.settings,
            self.metrics,
            router=self.router,
            tools=self.tools,
            app=self.app,
            agent=agent,
        )

    @classmethod
    def declaration(cls, settings: Settings | None = None) -> Needs:
        """Enough to build a kind's routes for reading them, never for running them: the
        offline model, the built-in tools, metrics of their own (the AsyncAPI document)."""
        from agentstream.agents import OfflineModel, builtin_registry
        from agentstream.agents.models import ModelRouter

        settings = settings or Settings()
        return cls(
            settings,
            CollectorRegistry(),
            router=ModelRouter(OfflineModel()),
            tools=builtin_registry() if settings.app is None else None,
        )

    @cached_property
    def router(self) -> ModelRouter:
        from agentstream.wiring import build_model

        return self._router or build_model(self.settings)

    @cached_property
    def app(self) -> App:
        from agentstream.wiring import build_app

        return self._app or build_app(self.settings, tools=self._tools)

    @cached_property
    def tools(self) -> ToolRegistry:
        return self._tools or self.app.tools


class Sweeper(Protocol):
    """A periodic job once started: it runs on its timer until ``stop``, and ``sweep`` runs
    one round on demand (the Lambda handler's scheduled entry point does)."""

    async def run(self, stop: asyncio.Event) -> None: ...

    async def sweep(
        self, partitions: Iterable[int] | None = None, *, wait: bool = False
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class Periodic:
    """Work a kind runs beside its routes on a timer, as jobs in the worker's lanes (the
    deadline sweeper, the stats window closer). ``start`` makes it once the worker exists;
    ``publishes`` is what its jobs emit, as on a route."""

    name: str
    publishes: tuple[LogicalTopic, ...]
    start: Callable[[Worker], Sweeper]


@dataclass(frozen=True, slots=True)
class Parts:
    """What a kind is built into: the routes its worker runs and its periodic jobs."""

    routes: Sequence[Route]
    periodic: Sequence[Periodic] = ()

    def consumes(self) -> tuple[LogicalTopic, ...]:
        """The logical topics the routes consume, in route order."""
        return tuple(dict.fromkeys(route.topic for route in self.routes))

    def publishes(self) -> tuple[LogicalTopic, ...]:
        """The logical topics the routes and periodic jobs publish, in declaration order."""
        topics = [t for route in self.routes for t in route.publishes]
        topics += [t for job in self.periodic for t in job.publishes]
        return tuple(dict.fromkeys(topics))


@dataclass(frozen=True, slots=True)
class WorkerKind:
    """One worker kind: ``name`` (``agentstream worker NAME``, the operation ids of the
    AsyncAPI document), ``title`` (who, in that document), ``build``, the consumer
    group (``{prefix}{group}``, default ``agentstream-NAME``) and the ``source`` of the
    events it emits (default ``NAME-worker``). ``standalone`` kinds run in a process of
    their own (a Deployment, a Lambda function); the ingress's projection runs inside the
    ingress instead."""

    name: str
    title: str
    build: Callable[[Needs], Parts]
    group: str = ""
    source: str = ""
    standalone: bool = True
    #: One consumer group per declared agent, ``{group}.{agent}`` (the agent worker),
    #: each built with :meth:`Needs.for_agent`.
    per_agent: bool = False

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", f"agentstream-{self.name}")
        if not self.source:
            object.__setattr__(self, "source", f"{self.name}-worker")

    def group_id(self, prefix: str, agent: str | None = None) -> str:
        """The consumer group of this kind (of ``agent``'s, for a per-agent kind) in the
        deployment with topic prefix ``prefix``."""
        if self.per_agent:
            if agent is None:
                raise ValueError(f"the {self.name} kind has one group per agent: name one")
            return f"{prefix}{self.group}.{agent}"
        return f"{prefix}{self.group}"

    def declared(self, settings: Settings | None = None, agent: str | None = None) -> Parts:
        """The kind built with :meth:`Needs.declaration`: its routes to read, not to run
        (those of ``agent``, default the app's default agent, for a per-agent kind)."""
        needs = Needs.declaration(settings)
        if self.per_agent:
            needs = needs.for_agent(agent or needs.app.default.name)
        return self.build(needs)


class WorkerRegistry:
    """The worker kinds by name, in registration order."""

    def __init__(self, kinds: Iterable[WorkerKind] = ()) -> None:
        self._kinds: dict[str, WorkerKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: WorkerKind) -> WorkerKind:
        if kind.name in self._kinds:
            raise ValueError(f"worker kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind
        return kind

    def unregister(self, name: str) -> None:
        del self._kinds[name]

    def get(self, name: str) -> WorkerKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise ConfigError(
                f"unknown worker kind {name!r}: one of {', '.join(self._kinds)}"
            ) from None

    def names(self, *, standalone: bool = True) -> tuple[str, ...]:
        """The kinds' names; with ``standalone`` (the default) only those that run in a
        process of their own."""
        return tuple(k.name for k in self._kinds.values() if k.standalone or not standalone)

    def __iter__(self) -> Iterator[WorkerKind]:
        return iter(list(self._kinds.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


# -- the kinds ------------------------------------------------------------------------------


def _agent(needs: Needs) -> Parts:
    from agentstream.handlers.agent.deadlines import DeadlineSweeper
    from agentstream.handlers.agent.metrics import AgentMetrics
    from agentstream.handlers.agent.routes import AgentConfig, AgentHandlers

    s = needs.settings
    agent = needs.agent or needs.app.default.name
    handlers = AgentHandlers(
        needs.app,
        agent,
        needs.router,
        AgentConfig(
            max_steps=s.agent.max_steps,
            deadline_s=s.agent.deadline_s,
            history_budget_tokens=s.agent.history_budget_tokens,
            # The offline model answers faster than a cache lookup would.
            cache=s.model.cache and s.model.provider != "offline",
            cache_ttl_s=s.model.cache_ttl_s,
            max_depth=s.agent.max_depth,
        ),
        AgentMetrics(needs.metrics),
    )
    topic = s.catalog().inbox(agent)
    deadlines = Periodic(
        f"agent.{agent}.deadlines",
        handlers.publishes(),
        lambda worker: DeadlineSweeper(
            worker,
            handlers,
            s.namespace,
            topic,
            index=f"deadlines:{agent}",
            name=f"agent.{agent}.deadline",
        ),
    )
    return Parts(handlers.routes(), [deadlines])


def _router(needs: Needs) -> Parts:
    from agentstream.handlers.router import RouterHandlers

    app = needs.app
    return Parts(
        RouterHandlers(
            app.names(), app.default.name, ttl_s=needs.settings.runtime.dedup_ttl_s
        ).routes()
    )


def _tool(needs: Needs) -> Parts:
    from agentstream.handlers.tool import ToolHandlers, ToolMetrics

    handlers = ToolHandlers(needs.tools, ToolMetrics(needs.metrics), needs.app.names())
    return Parts(handlers.routes())


def _memory(needs: Needs) -> Parts:
    from agentstream.handlers.memory import MemoryHandlers

    return Parts(MemoryHandlers(needs.app.names()).routes())


def _stats(needs: Needs) -> Parts:
    from agentstream.handlers.stats.closer import WindowCloser
    from agentstream.handlers.stats.routes import StatsConfig, StatsHandlers

    s = needs.settings
    stats = StatsHandlers(
        StatsConfig(
            window_s=s.stats.window_s,
            grace_s=s.stats.grace_s,
            instance=f"{socket.gethostname()}/{os.getpid()}",
        ),
        needs.app.names(),
    )
    topic = s.catalog().name(Topic.AGENT_RESPONSE)
    closer = Periodic(
        "stats.windows",
        (Topic.AGENT_STATS,),
        lambda worker: WindowCloser(
            worker, stats, s.namespace, topic, interval_s=min(1.0, s.stats.window_s / 4)
        ),
    )
    return Parts(stats.routes(), [closer])


def _projection(needs: Needs) -> Parts:
    # The ingress runs this worker itself (agentstream.ingress.server, with the state its
    # app shares); the entry says what it consumes and its group.
    from agentstream.ingress.projection import Projection

    s = needs.settings
    return Parts(
        Projection(s.namespace, ttl_s=s.ingress.record_ttl_s, agents=needs.app.names()).routes()
    )


#: Every worker kind of agentstream.
WORKERS = WorkerRegistry(
    [
        WorkerKind("router", "the router", _router),
        WorkerKind("agent", "the agent worker", _agent, per_agent=True),
        WorkerKind("tool", "the tool worker", _tool),
        WorkerKind("memory", "the memory worker", _memory),
        WorkerKind("stats", "the stats worker", _stats),
        WorkerKind(
            "projection",
            "the ingress's request projection",
            _projection,
            # agentstream.ingress.projection.PROJECTION_GROUP (a test pins the two together).
            group="ingress-projection",
            source="ingress",
            standalone=False,
        ),
    ]
)
