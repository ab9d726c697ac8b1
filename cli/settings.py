"""All configuration: one pydantic-settings ``Settings``, loaded once at the entry point.

Environment variables carry the prefix ``AGENTSTREAM_`` with ``__`` between nested levels
(``AGENTSTREAM_KAFKA__BOOTSTRAP_SERVERS``, ``AGENTSTREAM_MODEL__API_KEY``); the common
names ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` work too. An optional file
(``AGENTSTREAM_CONFIG=path.toml`` or ``--config``) fills what the environment does not set.
Credentials are ``SecretStr``: they never appear in ``repr``, logs or ``config show``.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from agentstream.topics import Catalog, KafkaConfig
from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "AgentSettings",
    "IngressSettings",
    "ModelSettings",
    "RuntimeSettings",
    "Settings",
    "StatsSettings",
    "TopicSettings",
    "agent_names",
    "load_settings",
]


class TopicSettings(BaseModel):
    prefix: str = Field(default="", max_length=100, pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int = Field(default=12, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=16)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=60_000)
    dlq_retention_ms: int = Field(default=28 * 24 * 3600 * 1000, ge=60_000)
    create_on_start: bool = Field(
        default=True, description="Create missing topics when a worker starts."
    )


class RuntimeSettings(BaseModel):
    max_in_flight: int = Field(
        default=256, ge=1, le=100_000, description="Handlers running at once per process."
    )
    max_waiting: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Events waiting behind a running event of their conversation, at most "
        "(they hold no running slot; fetching pauses when this many wait). "
        "None: twice max_in_flight.",
    )
    drain_timeout_s: float = Field(default=20.0, ge=0)
    commit_interval_s: float = Field(default=0.2, gt=0)
    in_place_attempts: int = Field(default=3, ge=1)
    max_attempts: int = Field(default=6, ge=1)
    retry_base_delay_s: float = Field(default=0.1, ge=0)
    retry_topic_delay_s: float = Field(default=2.0, ge=0)
    dedup_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    claim_check_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        description="Events larger than this keep their payload in the state store and "
        "carry a reference (claim check); keep it below the broker's message.max.bytes.",
    )


class ModelSettings(BaseModel):
    provider: Literal["offline", "openai"] = "offline"
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint.")
    api_key: SecretStr | None = None
    model: str = "offline"
    large_model: str | None = Field(
        default=None, description="The larger model of the routing rule; None: no routing."
    )
    route_above_tokens: int = Field(
        default=6000, ge=1, description="Prompts above this size go to the larger model."
    )
    timeout_s: float = Field(default=60.0, gt=0)
    stream: bool = False
    prompt_price_per_1k: float = Field(default=0.0, ge=0)
    completion_price_per_1k: float = Field(default=0.0, ge=0)
    cache: bool = Field(default=True, description="Exact-match response cache.")
    cache_ttl_s: int = Field(default=24 * 3600, ge=1)
    offline_latency_s: float = Field(default=0.0, ge=0)


class AgentSettings(BaseModel):
    max_steps: int = Field(default=8, ge=1, le=64)
    deadline_s: float = Field(default=120.0, gt=0)
    history_budget_tokens: int = Field(default=2000, ge=0)
    max_depth: int = Field(
        default=3, ge=1, le=10, description="How deep agents may call agents as tools."
    )
    system_prompt: str = (
        "You are a helpful assistant. Use the tools when they help; answer concisely."
    )


class StatsSettings(BaseModel):
    """The stats worker's tumbling windows (docs/adr/0011-live-stats.md)."""

    window_s: int = Field(default=60, ge=1, le=3600, description="Window length.")
    grace_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="How long after its end a window waits for stragglers before it is "
        "emitted; later events count as late in the window open then.",
    )


class IngressSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API key (or its sha256 as 'sha256:<hex>') to tenant. Empty: no auth, "
        "every caller is tenant 'default' (the embedded default only).",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Let `agentstream ingress` run without API keys (every caller is tenant "
        "'default'). `agentstream up` always may.",
    )
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    rate_per_second: float = Field(default=50.0, gt=0)
    rate_burst: int = Field(default=100, ge=1)
    max_wait_s: float = Field(default=60.0, ge=0)
    idempotency_ttl_s: int = Field(
        default=24 * 3600, ge=60, description="How long an Idempotency-Key is remembered."
    )
    record_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long request status and events are kept."
    )
    publish_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for the broker's ack before a 503."
    )
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After of a 503.")
    poll_interval_s: float = Field(
        default=0.1, gt=0, description="How often waiters and streams read the store."
    )
    heartbeat_s: float = Field(default=15.0, gt=0, description="SSE comment line interval.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGENTSTREAM_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    bus: Literal["memory", "kafka"] = "memory"
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    redis_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENTSTREAM_REDIS_URL", "REDIS_URL", "redis_url"),
        description="None: the in-process store (embedded default only).",
    )
    topics: TopicSettings = Field(default_factory=TopicSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    app: str | None = Field(
        default=None,
        description="The app declaring the agents (`package.module` or `package.module:attr`"
        "); None: the built-in assistant. Every process of a deployment loads the same app.",
    )
    tools_module: str | None = Field(
        default=None,
        description="A module with `register(registry)` adding your tools (agent and tool "
        "workers must both load it).",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0: no metrics server.")
    log_level: str = "INFO"
    log_json: bool | None = Field(default=None, description="None: JSON when not a terminal.")

    @model_validator(mode="before")
    @classmethod
    def _plain_kafka_env(cls, data: Any) -> Any:
        # KAFKA_BOOTSTRAP_SERVERS, the name every Kafka tool knows, selects Kafka too.
        plain = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if plain and isinstance(data, dict):
            kafka = data.setdefault("kafka", {})
            if isinstance(kafka, dict):
                kafka.setdefault("bootstrap_servers", plain)
            data.setdefault("bus", "kafka")
        return data

    @property
    def namespace(self) -> str:
        """Prefix of every state-store key: deployments sharing a Redis stay apart."""
        return f"agentstream:{self.topics.prefix}"

    def catalog(self) -> Catalog:
        t = self.topics
        return Catalog(
            prefix=t.prefix,
            partitions=t.partitions,
            replication_factor=t.replication_factor,
            retention_ms=t.retention_ms,
            dlq_retention_ms=t.dlq_retention_ms,
            agents=agent_names(self.app),
        )


@functools.lru_cache(maxsize=8)
def agent_names(app: str | None) -> tuple[str, ...]:
    """The agents the app ``app`` declares (the built-in app's one assistant for None)."""
    from agentstream.agents.app import DEFAULT_AGENT, load_app

    return (DEFAULT_AGENT,) if app is None else load_app(app).names()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then ``config_file`` (TOML) for what is unset."""
    path = config_file or os.environ.get("AGENTSTREAM_CONFIG")
    file_values: dict[str, Any] = {}
    if path:
        file_values = tomllib.loads(Path(path).read_text())
    env = Settings()
    merged = _merge(file_values, env.model_dump(exclude_unset=True))
    merged = _merge(merged, overrides)
    return Settings.model_validate(merged)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
