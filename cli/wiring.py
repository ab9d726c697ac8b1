"""Builds the running parts from ``Settings``: bus, store, model, tools, topics, workers.

The only place that knows which implementation backs what: the in-process bus and store
for the embedded default, Kafka and Redis otherwise.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from agentstream.handlers.runtime.retries import RetryPolicy
from agentstream.handlers.runtime.worker import RuntimeConfig
from agentstream.handlers.stores.base import InProcessStore, StateStore
from agentstream.handlers.stores.redis_store import RedisStore
from agentstream.schemas.errors import ConfigError
from agentstream.settings import Settings
from agentstream.topics import Bus
from agentstream.topics.drift import compare, partition_mismatch

if TYPE_CHECKING:
    from agentstream.agents import App, ToolRegistry
    from agentstream.agents.models import ModelRouter
    from agentstream.topics import Catalog

__all__ = [
    "build_app",
    "build_bus",
    "build_model",
    "build_store",
    "ensure_topics",
    "runtime_config",
    "tool_registry",
]

log = logging.getLogger(__name__)


def build_bus(settings: Settings) -> Bus:
    if settings.bus == "kafka":
        from agentstream.topics.kafka import KafkaBus

        return KafkaBus(settings.kafka)
    from agentstream.topics.memory import InProcessBus

    return InProcessBus(default_partitions=settings.topics.partitions)


def build_store(settings: Settings) -> StateStore:
    if settings.redis_url is not None:
        return RedisStore(
            settings.redis_url.get_secret_value(),
            max_connections=min(1024, settings.runtime.max_in_flight + 64),
        )
    if settings.bus == "kafka":
        raise ConfigError(
            "the Kafka bus needs a shared state store: set REDIS_URL "
            "(an in-process store would lose run state between worker processes)"
        )
    return InProcessStore()


async def ensure_topics(bus: Bus, catalog: Catalog, *, create: bool) -> None:
    """Create the catalog's missing topics, or fail naming them when creation is off; then
    fail (``ConfigError``) when a topic's partition count is not the catalog's, since one
    member must own a conversation in every topic (ADR 20)."""
    specs = list(catalog.specs())
    # One describe when every topic is there (a worker's every start but the first).
    existing = await bus.describe_topics([s.name for s in specs])
    absent = [s for s in specs if s.name not in existing]
    if create and absent:
        created = await bus.create_topics([s.description() for s in absent])
        if created:
            log.info("created topics: %s", ", ".join(created))
        existing.update(await bus.describe_topics([s.name for s in absent]))
    missing = [s.name for s in specs if s.name not in existing]
    if missing:
        raise ConfigError(
            f"missing topics: {', '.join(missing)}; run `agentstream topics create` first"
        )
    mismatch = partition_mismatch(compare(s.description(), existing[s.name]) for s in specs)
    if mismatch is not None:
        raise mismatch


def runtime_config(settings: Settings, group_id: str, source: str) -> RuntimeConfig:
    r = settings.runtime
    return RuntimeConfig(
        group_id=f"{settings.topics.prefix}{group_id}",
        source=source,
        namespace=settings.namespace,
        max_in_flight=r.max_in_flight,
        max_waiting=r.max_waiting,
        drain_timeout_s=r.drain_timeout_s,
        commit_interval_s=r.commit_interval_s,
        dedup_ttl_s=r.dedup_ttl_s,
        retry=RetryPolicy(
            in_place_attempts=r.in_place_attempts,
            max_attempts=r.max_attempts,
            base_delay_s=r.retry_base_delay_s,
            retry_topic_delay_s=r.retry_topic_delay_s,
        ),
        read_committed=r.delivery == "exactly_once",
        exactly_once=r.delivery == "exactly_once",
        claim_check_bytes=r.claim_check_bytes,
        claim_ttl_s=max(settings.topics.retention_ms, settings.topics.dlq_retention_ms) // 1000
        + 24 * 3600,
    )


def build_model(settings: Settings) -> ModelRouter:
    """The model router of the settings: the offline model, or an OpenAI-compatible one."""
    from agentstream.agents.models import Model, ModelPrice, ModelRouter

    m = settings.model
    price = ModelPrice(
        prompt_per_1k=m.prompt_price_per_1k, completion_per_1k=m.completion_price_per_1k
    )
    small: Model
    large: Model | None = None
    if m.provider == "openai":
        if not m.base_url and m.api_key is None:
            raise ConfigError(
                "AGENTSTREAM_MODEL__PROVIDER=openai needs AGENTSTREAM_MODEL__BASE_URL "
                "or AGENTSTREAM_MODEL__API_KEY"
            )
        from agentstream.agents import OpenAIModel  # only here: other workers need no openai

        key = m.api_key.get_secret_value() if m.api_key else "unused"
        small = OpenAIModel(
            model=m.model,
            base_url=m.base_url,
            api_key=key,
            timeout_s=m.timeout_s,
            price=price,
            stream=m.stream,
        )
        if m.large_model:
            large = OpenAIModel(
                model=m.large_model,
                base_url=m.base_url,
                api_key=key,
                timeout_s=m.timeout_s,
                price=price,
                stream=m.stream,
            )
    else:
        from agentstream.agents import OfflineModel

        small = OfflineModel(latency_s=m.offline_latency_s)
    return ModelRouter(small, large, large_prompt_tokens=m.route_above_tokens)


def tool_registry(settings: Settings) -> ToolRegistry:
    """The built-in tools, plus those of ``AGENTSTREAM_TOOLS_MODULE`` when set."""
    from agentstream.agents import builtin_registry

    registry = builtin_registry()
    if settings.tools_module:
        _register_tools_module(settings.tools_module, registry)
    return registry


def _register_tools_module(name: str, registry: ToolRegistry) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"cannot import tools module {name!r}: {exc}") from exc
    register = getattr(module, "register", None)
    if not callable(register):
        raise ConfigError(f"tools module {name!r} has no register(registry) function")
    register(registry)


def build_app(settings: Settings, *, tools: ToolRegistry | None = None) -> App:
    """The app of the settings: ``AGENTSTREAM_APP``'s, or the built-in assistant with the
    built-in tools (and ``AGENTSTREAM_TOOLS_MODULE``'s), or ``tools`` when given."""
    from agentstream.agents import default_app, load_app

    if settings.app is None:
        return default_app(settings.agent.system_prompt, tools=tools or tool_registry(settings))
    app = load_app(settings.app)
    module = settings.tools_module
    if module and module not in app.tool_modules:  # the app is its module's one object
        _register_tools_module(module, app.tools)
        app.tool_modules.add(module)
    return app
