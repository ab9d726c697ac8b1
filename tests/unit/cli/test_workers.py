"""The registry of worker kinds: one entry is all a worker needs, and the entries tell the truth.

A test-only worker registered here shows up in the CLI's choices, in ``agentstream up``, in
the Lambda handler's kinds, in ``agentstream status``'s groups and in the AsyncAPI document
with its channels, roles and group, with nothing else changed. The real kinds' declarations
(what their routes consume and publish) are checked against what the workers subscribe to
and what a pipeline run really publishes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentstream.asyncapi import build_asyncapi
from agentstream.cli import _parser
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.stores.base import InProcessStore
from agentstream.ingress.projection import PROJECTION_GROUP
from agentstream.lambda_handler import KIND_ENV, _kind_from_env
from agentstream.process import build_workers
from agentstream.schemas import (
    Envelope,
    SchemaError,
    ToolCall,
    ToolResult,
    ToolResultData,
    UserRequest,
    UserRequestData,
    decode,
)
from agentstream.schemas.errors import ConfigError
from agentstream.settings import Settings, StatsSettings
from agentstream.status import deployment_groups
from agentstream.topics import Catalog, Inbox, Kind, Topic
from agentstream.topics.memory import InProcessBus
from agentstream.workers import WORKERS, Needs, Parts, WorkerKind, WorkerRegistry
from jsonschema import Draft7Validator
from prometheus_client import CollectorRegistry

from tests.pipeline_harness import make_stack, publish_event, running, wait_for

ASYNCAPI_SCHEMA = Path(__file__).resolve().parents[2] / "contract" / "asyncapi-3.0.0.schema.json"


# -- a worker that exists only in this test -------------------------------------------------


class EchoHandlers:
    """Answers every tool call with its arguments: a second tool runner, for the test."""

    def routes(self) -> list[Route]:
        return [
            Route(
                Topic.TOOL_CALL, self.on_tool_call, "echo.tool_call", publishes=(Topic.TOOL_RESULT,)
            )
        ]

    async def on_tool_call(self, event: ToolCall, ctx: Context) -> list[Envelope[Any]]:
        d = event.data
        result = ToolResultData(
            call_id=d.call_id, step=d.step, tool=d.tool, ok=True, output=d.arguments
        )
        return [event.derive(ToolResult, result, step="echo", source="echo-worker")]


ECHO = WorkerKind("echo", "the echo worker", lambda needs: Parts(EchoHandlers().routes()))


@pytest.fixture
def echo() -> Iterator[WorkerKind]:
    WORKERS.register(ECHO)
    try:
        yield ECHO
    finally:
        WORKERS.unregister(ECHO.name)


def test_a_registered_worker_is_a_cli_choice_and_runs_in_up(echo: WorkerKind) -> None:
    assert _parser().parse_args(["worker", "echo"]).kinds == ["echo"]
    assert _parser().parse_args(["worker", "agent", "echo"]).kinds == ["agent", "echo"]
    assert "echo" in WORKERS.names(), "`agentstream up` runs WORKERS.names()"


def test_an_unregistered_worker_is_not_a_choice() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["worker", "echo"])
    with pytest.raises(ConfigError, match="unknown worker kind 'echo': one of router, agent, tool"):
        WORKERS.get("echo")


def test_a_registered_worker_runs_on_lambda_and_shows_in_status(
    echo: WorkerKind, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KIND_ENV, "echo")
    assert _kind_from_env() == "echo"
    monkeypatch.setenv(KIND_ENV, "projection")  # runs inside the ingress, not on its own
    with pytest.raises(ConfigError, match="AGENTSTREAM_LAMBDA_WORKER must be one of"):
        _kind_from_env()
    assert "p.agentstream-echo" in deployment_groups("p.")
    assert deployment_groups("p.")[-1] == "p.ingress-projection"


def test_a_registered_worker_is_in_the_asyncapi_document(echo: WorkerKind) -> None:
    document = build_asyncapi(Catalog(prefix="t."))
    ops = {k: v for k, v in document["operations"].items() if k.startswith("echo.")}
    assert sorted(ops) == [
        "echo.receive.tool_call",
        "echo.receive.tool_call.retry",
        "echo.send.tool_call.dlq",
        "echo.send.tool_call.retry",
        "echo.send.tool_result",
    ]
    for op_id, op in ops.items():
        channel = op["channel"]["$ref"].removeprefix("#/channels/")
        assert channel in document["channels"], op_id
        assert op["title"].startswith("the echo worker ")
        if op["action"] == "receive":
            assert op["bindings"]["kafka"]["groupId"]["enum"] == ["t.agentstream-echo"]
    assert document["channels"]["tool_call"]["address"] == "t.tool_call"
    validator = Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))
    assert next(validator.iter_errors(document), None) is None


async def test_a_registered_worker_is_built_like_any_other(echo: WorkerKind) -> None:
    settings = Settings()
    built = build_workers(
        ["echo"], settings, InProcessBus(), InProcessStore(), CollectorRegistry(), asyncio.Event()
    )
    (worker,) = built.workers
    assert worker.config.group_id == "agentstream-echo"
    assert worker.config.source == "echo-worker"
    assert built.extras == []


# -- the registry itself ----------------------------------------------------------------------


def test_names_are_unique_and_unknown_names_say_the_choices() -> None:
    registry = WorkerRegistry([ECHO])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ECHO)
    with pytest.raises(ConfigError, match="one of echo"):
        registry.get("nope")


def test_the_kinds_and_their_groups() -> None:
    assert WORKERS.names() == ("router", "agent", "tool", "memory", "stats")
    assert WORKERS.names(standalone=False) == (
        "router",
        "agent",
        "tool",
        "memory",
        "stats",
        "projection",
    )
    assert WORKERS.get("projection").group == PROJECTION_GROUP
    assert WORKERS.get("tool").group_id("p.") == "p.agentstream-tool"
    # The agent worker: one group per declared agent.
    assert WORKERS.get("agent").group_id("p.", "billing") == "p.agentstream-agent.billing"
    with pytest.raises(ValueError, match="one group per agent"):
        WORKERS.get("agent").group_id("p.")


def test_what_each_kind_declares() -> None:
    declared = {kind.name: kind.declared() for kind in WORKERS}
    consumes = {name: set(parts.consumes()) for name, parts in declared.items()}
    publishes = {name: set(parts.publishes()) for name, parts in declared.items()}
    t = Topic
    inbox = Inbox("assistant")
    assert consumes == {
        "router": {t.USER_REQUEST, t.AGENT_RESPONSE},
        "agent": {inbox},
        "tool": {t.TOOL_CALL},
        "memory": {t.MEMORY_CALL, t.USER_REQUEST, t.AGENT_RESPONSE},
        "stats": {t.USER_REQUEST, t.TOOL_RESULT, t.AGENT_RESPONSE, inbox},
        "projection": {
            t.USER_REQUEST,
            t.TOOL_CALL,
            t.MEMORY_CALL,
            t.TOOL_RESULT,
            t.AGENT_RESPONSE,
            inbox,
        },
    }
    assert publishes == {
        "router": {inbox, t.AGENT_RESPONSE},
        "agent": {t.TOOL_CALL, t.MEMORY_CALL, t.AGENT_RESPONSE},
        "tool": {t.TOOL_RESULT, inbox},
        "memory": {t.TOOL_RESULT, inbox},
        "stats": {t.AGENT_STATS},
        "projection": set(),
    }


@pytest.mark.parametrize("name", WORKERS.names())
def test_a_built_worker_subscribes_to_what_its_kind_declares(name: str) -> None:
    settings = Settings()
    built = build_workers(
        [name], settings, InProcessBus(), InProcessStore(), CollectorRegistry(), asyncio.Event()
    )
    for extra in built.extras:
        extra.close()  # the periodic jobs' loops, never started here
    (worker,) = built.workers
    kind = WORKERS.get(name)
    catalog = settings.catalog()
    # The route table is private to the runtime; it is the truth about subscriptions.
    subscribed = {route.topic for route in worker._routes.values()}
    assert subscribed == set(kind.declared().consumes())
    agent = "assistant" if kind.per_agent else None
    assert worker.config.group_id == kind.group_id(catalog.prefix, agent)
    assert len(built.periodic) == len(kind.declared().periodic)


async def test_a_pipeline_run_publishes_only_what_the_kinds_declare(prefix: str) -> None:
    """Every event the workers emit (by its ``source``) goes to a topic its kind declares."""
    stack = await make_stack("memory", prefix, stats=StatsSettings(window_s=1, grace_s=0.1))
    requests = {
        "r1": "What is 6 * 7?",
        "r2": "Remember that my budget is 40",
        "r3": "What is my budget times 3?",
    }
    async with running(stack, WORKERS.names()):
        for rid, text in requests.items():
            await publish_event(
                stack,
                UserRequest(
                    source="test",
                    request_id=rid,
                    conversation_id=f"c-{rid}",
                    data=UserRequestData(text=text, user="ann"),
                ),
            )
        await wait_for(lambda: _answered(stack, set(requests)))
        stats = stack.catalog.name(Topic.AGENT_STATS)
        await wait_for(lambda: stack.read(stats), timeout_s=10)
    by_source = {kind.source: kind for kind in WORKERS}
    seen: dict[str, set[Topic]] = {}
    for spec in stack.catalog.specs():
        if spec.kind is not Kind.MAIN:
            continue
        for record in await stack.read(spec.name):
            try:
                event = decode(record.value)
            except SchemaError:
                continue
            if event.source in by_source:
                seen.setdefault(by_source[event.source].name, set()).add(spec.topic)
    assert set(seen) >= {"agent", "tool", "memory", "stats"}
    for name, topics in seen.items():
        assert topics <= set(WORKERS.get(name).declared().publishes()), name
    assert seen["agent"] == {Topic.TOOL_CALL, Topic.MEMORY_CALL, Topic.AGENT_RESPONSE}


async def _answered(stack: Any, request_ids: set[str]) -> bool:
    return request_ids <= set(await stack.responses())


def test_declaration_needs_no_model_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTREAM_MODEL__PROVIDER", "openai")  # no key, no URL
    needs = Needs.declaration()
    assert needs.router.small.name == "offline"
    assert WORKERS.get("agent").declared().routes
