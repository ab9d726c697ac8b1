"""Wiring: models and tools chosen by settings, and readable errors for bad settings."""

from __future__ import annotations

import pytest
from agentstream.process import build_model, tool_registry
from agentstream.schemas.errors import ConfigError
from agentstream.settings import ModelSettings, Settings
from agentstream.wiring import build_store


def test_a_tools_module_adds_its_tools_beside_the_built_ins() -> None:
    registry = tool_registry(Settings(tools_module="examples.my_tools"))
    names = {spec.name for spec in registry.specs()}
    assert {"order_status", "calculator", "current_time"} <= names
    spec = next(s for s in registry.specs() if s.name == "order_status")
    assert "order_id" in spec.parameters["properties"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("module", "message"),
    [("no.such.module", "cannot import"), ("agentstream.settings", "no register")],
)
def test_a_bad_tools_module_is_a_clear_config_error(module: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tool_registry(Settings(tools_module=module))


def test_the_openai_provider_needs_an_endpoint_or_a_key() -> None:
    with pytest.raises(ConfigError, match="BASE_URL"):
        build_model(Settings(model=ModelSettings(provider="openai")))
    router = build_model(
        Settings(
            model=ModelSettings(
                provider="openai", base_url="http://127.0.0.1:1/v1", model="m", large_model="big"
            )
        )
    )
    assert set(router.models) == {"m", "big"}


def test_kafka_without_redis_is_refused() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        build_store(Settings(bus="kafka"))


def test_the_ingress_refuses_to_run_open_on_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentstream.cli import main

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["ingress"]) == 2
    assert "no API keys" in capsys.readouterr().err


def test_the_runtime_settings_reach_the_worker_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentstream.settings import load_settings
    from agentstream.wiring import runtime_config

    monkeypatch.setenv("AGENTSTREAM_RUNTIME__MAX_IN_FLIGHT", "1000")
    monkeypatch.setenv("AGENTSTREAM_RUNTIME__MAX_WAITING", "300")
    config = runtime_config(load_settings(), "agentstream-agent.billing", "agent-worker")
    assert (config.max_in_flight, config.max_waiting) == (1000, 300)
    assert config.group_id == "agentstream-agent.billing"
