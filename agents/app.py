"""Declared agents: an :class:`App` holds the agents of a deployment and the tools they use.

An agent is declared the way agent authors already write one (the OpenAI Agents SDK,
pydantic-ai): a name, instructions, a model, its tools, the agents it may hand off to, the
agents it may call as tools, guardrails, an optional output type and its own limits::

    app = App("support", default="triage")

    @app.tool(description="Look up an invoice by its number.")
    async def lookup_invoice(args: InvoiceArgs) -> dict[str, str]: ...

    math = app.agent("math", "Solve arithmetic.", description="Does arithmetic.",
                     tools=["calculator"])
    billing = app.agent("billing", "Answer billing questions.", tools=[lookup_invoice],
                        description="Invoices, refunds, charges and payments.")
    app.agent("triage", "Route the customer.", handoffs=[billing], agent_tools=[math])

``agentstream up --app my_pkg.support`` runs it (``AGENTSTREAM_APP`` for workers). Each agent
is its own consumer group on its own input topic (ADR 23). The model sees a handoff as the
tool ``transfer_to_<agent>`` and an agent used as a tool as ``ask_<agent>`` (or the name
given to :meth:`Agent.as_tool`), each described by the target's ``description``.

Guardrails are functions of the :class:`RunContext` and a text (the user's message for an
input guardrail, the final answer for an output guardrail), sync or async, returning None
(or True) to let it pass, or a reason (a string, or False) to reject it. An input guardrail
that rejects ends the request ``rejected``; an output guardrail ``failed``; each with the
guardrail's name and reason.

This module is pure: it imports :mod:`agentstream.schemas`, the tool registry and pydantic.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agentstream.agents.memory import MEMORY_TOOLS, memory_tool_specs
from agentstream.agents.models.base import ToolSpec
from agentstream.agents.tools import ToolRegistry, builtin_registry
from agentstream.schemas import AGENT_NAME_PATTERN, DEFAULT_AGENT, ConfigError
from pydantic import BaseModel, JsonValue, ValidationError

__all__ = [
    "DEFAULT_AGENT",
    "OUTPUT_SCHEMA_MARK",
    "Agent",
    "AgentTool",
    "App",
    "Guardrail",
    "GuardrailVerdict",
    "RunContext",
    "default_app",
    "handoff_tool_name",
    "load_app",
    "run_guardrails",
]

F = TypeVar("F", bound=Callable[..., Any])


#: What an agent's system prompt says before the JSON Schema of its output type.
OUTPUT_SCHEMA_MARK = "Answer with only a JSON object matching this JSON Schema:"

_NAME = re.compile(AGENT_NAME_PATTERN)
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI accepts as a function name


@dataclass(frozen=True, slots=True)
class RunContext:
    """What instructions functions and guardrails see of the request being answered."""

    agent: str
    request_id: str
    conversation_id: str
    tenant: str
    user: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: True in a sub-run (the agent was called as a tool by another agent).
    subrun: bool = False


#: A guardrail's answer: None or True passes; a reason (str) or False rejects.
GuardrailVerdict = str | bool | None
Guardrail = Callable[[RunContext, str], GuardrailVerdict | Awaitable[GuardrailVerdict]]
Instructions = str | Callable[[RunContext], str]


def handoff_tool_name(agent: str) -> str:
    """The tool the model calls to hand the conversation to ``agent``."""
    return f"transfer_to_{agent}"


class _AgentToolArgs(BaseModel):
    input: str


_AGENT_TOOL_PARAMETERS: dict[str, JsonValue] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "What to ask the agent."}},
    "required": ["input"],
}


@dataclass(frozen=True, slots=True)
class AgentTool:
    """An agent offered to another agent as a tool (:meth:`Agent.as_tool`)."""

    agent: str
    name: str
    description: str

    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name, description=self.description, parameters=_AGENT_TOOL_PARAMETERS
        )

    @staticmethod
    def input_of(arguments: Mapping[str, JsonValue]) -> str:
        """The question of a call, or ValueError naming what is wrong."""
        try:
            return _AgentToolArgs.model_validate(dict(arguments)).input
        except ValidationError as exc:
            raise ValueError(f"an agent tool takes {{'input': string}}: {exc}") from None


class Agent:
    """One declared agent (see the module docstring).

    ``tools`` are tool names or the decorated functions of :meth:`App.tool`; None offers
    every tool of the app (the default assistant does), ``[]`` none. ``model`` is a model
    name or a route (``small``, ``large``); None: the deployment's routing rule. Limits left
    None take the deployment's (``AGENTSTREAM_AGENT__*``). ``output_retries`` is how often
    an answer that does not validate against ``output_type`` is sent back to the model.
    """

    def __init__(
        self,
        name: str,
        instructions: Instructions = "You are a helpful assistant.",
        *,
        description: str = "",
        model: str | None = None,
        tools: Sequence[str | Callable[..., Any]] | None = None,
        handoffs: Sequence[Agent | str] = (),
        agent_tools: Sequence[Agent | AgentTool | str] = (),
        input_guardrails: Sequence[Guardrail] = (),
        output_guardrails: Sequence[Guardrail] = (),
        output_type: type[BaseModel] | None = None,
        output_retries: int = 2,
        max_steps: int | None = None,
        deadline_s: float | None = None,
        history_budget_tokens: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"agent name {name!r} is not valid: lower case letters, digits, '_' and '-', "
                "starting with a letter, at most 32 (it is part of topic and group names)"
            )
        if output_type is not None and not (
            isinstance(output_type, type) and issubclass(output_type, BaseModel)
        ):
            raise ConfigError(f"agent {name!r}: output_type must be a pydantic model class")
        if output_retries < 0:
            raise ConfigError(f"agent {name!r}: output_retries must be 0 or more")
        if max_steps is not None and not 1 <= max_steps <= 64:
            raise ConfigError(f"agent {name!r}: max_steps must be between 1 and 64")
        self.name = name
        self.instructions = instructions
        self.description = description or f"The {name} agent."
        self.model = model
        self.tools: tuple[str, ...] | None = (
            None if tools is None else tuple(_tool_name(t) for t in tools)
        )
        self.handoffs = tuple(a.name if isinstance(a, Agent) else a for a in handoffs)
        self.agent_tools = tuple(_agent_tool(a) for a in agent_tools)
        self.input_guardrails = tuple(input_guardrails)
        self.output_guardrails = tuple(output_guardrails)
        self.output_type = output_type
        self.output_retries = output_retries
        self.max_steps = max_steps
        self.deadline_s = deadline_s
        self.history_budget_tokens = history_budget_tokens

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    def as_tool(self, name: str | None = None, description: str | None = None) -> AgentTool:
        """This agent offered as a tool: its answer is the tool's result."""
        tool = AgentTool(self.name, name or f"ask_{self.name}", description or self.description)
        if not _TOOL_NAME.match(tool.name):
            raise ConfigError(f"agent tool name {tool.name!r} is not a valid tool name")
        return tool

    def prompt(self, context: RunContext) -> str:
        """The system prompt for ``context``: the instructions, or what their function says."""
        text = self.instructions(context) if callable(self.instructions) else self.instructions
        if not isinstance(text, str):
            raise TypeError(f"agent {self.name!r}: instructions must give a string")
        if self.output_type is not None:
            schema = json.dumps(self.output_type.model_json_schema(), sort_keys=True)
            text = f"{text}\n\n{OUTPUT_SCHEMA_MARK}\n{schema}"
        return text

    def validate_output(self, text: str) -> JsonValue:
        """The answer ``text`` parsed and validated against the output type, as JSON; raises
        ValueError saying what is wrong. Without an output type: the text itself."""
        if self.output_type is None:
            return text
        body = _json_body(text)
        try:
            value = self.output_type.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<answer>'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(problems) from None
        dumped: JsonValue = value.model_dump(mode="json")
        return dumped

    def output_schema(self) -> dict[str, JsonValue] | None:
        return None if self.output_type is None else self.output_type.model_json_schema()


def _json_body(text: str) -> str:
    """The JSON of an answer, without the code fence a model likes to put around it."""
    stripped = text.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", stripped, re.S)
    return fenced.group(1) if fenced else stripped


def _tool_name(tool: str | Callable[..., Any]) -> str:
    if isinstance(tool, str):
        return tool
    name = getattr(tool, "__agentstream_tool__", None)
    if not isinstance(name, str):
        raise ConfigError(
            f"{tool!r} is not a tool: declare it with @app.tool or name a tool by its name"
        )
    return name


def _agent_tool(target: Agent | AgentTool | str) -> AgentTool:
    if isinstance(target, AgentTool):
        return target
    if isinstance(target, Agent):
        return target.as_tool()
    return AgentTool(target, f"ask_{target}", "")  # described once the app knows the target


async def run_guardrails(
    guardrails: Sequence[Guardrail], context: RunContext, text: str
) -> str | None:
    """The first rejection of ``guardrails`` on ``text``, as ``"<name>: <reason>"``; None
    when every guardrail lets it pass."""
    for guardrail in guardrails:
        verdict = guardrail(context, text)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is None or verdict is True:
            continue
        reason = verdict if isinstance(verdict, str) and verdict else "rejected"
        return f"{getattr(guardrail, '__name__', 'guardrail')}: {reason}"
    return None


class App:
    """The agents of one deployment and the tools they use (see the module docstring).

    ``tools``: the registry the agents' tools come from (default: the built-in tools);
    :meth:`tool` adds to it. ``default``: the agent answering requests that name none
    (default: the first declared)."""

    def __init__(
        self,
        name: str = "app",
        *,
        default: str | Agent | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.name = name
        self.tools = tools if tools is not None else builtin_registry()
        #: The ``AGENTSTREAM_TOOLS_MODULE`` s whose tools were added to :attr:`tools`.
        self.tool_modules: set[str] = set()
        self._agents: dict[str, Agent] = {}
        self._default = default.name if isinstance(default, Agent) else default

    # -- declaring ------------------------------------------------------------------------

    def add(self, agent: Agent) -> Agent:
        if agent.name in self._agents:
            raise ConfigError(f"agent {agent.name!r} is declared twice")
        self._agents[agent.name] = agent
        return agent

    def agent(self, name: str, instructions: Instructions = "", **options: Any) -> Agent:
        """Declare an agent of this app (the arguments of :class:`Agent`)."""
        return self.add(Agent(name, instructions or f"You are the {name} agent.", **options))

    def tool(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as a tool of this app (see
        :meth:`ToolRegistry.tool`); the function can then be named in an agent's ``tools``."""
        register = self.tools.tool(name=name, description=description, timeout_s=timeout_s)

        def decorate(fn: F) -> F:
            register(fn)
            fn.__agentstream_tool__ = name or fn.__name__  # type: ignore[attr-defined]
            return fn

        return decorate

    # -- reading --------------------------------------------------------------------------

    @property
    def agents(self) -> Mapping[str, Agent]:
        return dict(self._agents)

    def names(self) -> tuple[str, ...]:
        return tuple(self._agents)

    def __iter__(self) -> Iterator[Agent]:
        return iter(list(self._agents.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def get(self, name: str) -> Agent:
        try:
            return self._agents[name]
        except KeyError:
            raise ConfigError(f"unknown agent {name!r}: one of {', '.join(self._agents)}") from None

    @property
    def default(self) -> Agent:
        if not self._agents:
            raise ConfigError(f"app {self.name!r} declares no agent")
        return self._agents[self._default] if self._default else next(iter(self._agents.values()))

    def tool_specs(self, agent: Agent) -> list[ToolSpec]:
        """Every tool ``agent`` is offered: its tools, its handoffs, the agents it calls."""
        tools = self.tools.specs() + memory_tool_specs()
        if agent.tools is not None:
            wanted = set(agent.tools)
            tools = [t for t in tools if t.name in wanted]
        tools += [
            ToolSpec(
                name=handoff_tool_name(target),
                description=f"Hand the conversation to the {target} agent: "
                f"{self._agents[target].description}",
                parameters={
                    "type": "object",
                    "properties": {"reason": {"type": "string"}},
                },
            )
            for target in agent.handoffs
        ]
        tools += [self.agent_tool(t).spec() for t in agent.agent_tools]
        return tools

    def agent_tool(self, tool: AgentTool) -> AgentTool:
        """``tool`` described by its agent's description when it was declared by name."""
        if tool.description:
            return tool
        return AgentTool(tool.agent, tool.name, self._agents[tool.agent].description)

    def validate(self) -> App:
        """Check the declarations hang together; ConfigError naming every problem."""
        problems: list[str] = []
        if not self._agents:
            problems.append("no agent is declared")
        if self._default and self._default not in self._agents:
            problems.append(f"the default agent {self._default!r} is not declared")
        known_tools = set(self.tools.names()) | set(MEMORY_TOOLS)
        for agent in self._agents.values():
            for tool in agent.tools or ():
                if tool not in known_tools:
                    problems.append(f"agent {agent.name!r}: unknown tool {tool!r}")
            for target in agent.handoffs:
                if target not in self._agents:
                    problems.append(f"agent {agent.name!r}: hands off to undeclared {target!r}")
                elif target == agent.name:
                    problems.append(f"agent {agent.name!r}: hands off to itself")
            names: set[str] = set(agent.tools or known_tools)
            for called in agent.agent_tools:
                if called.agent not in self._agents:
                    problems.append(f"agent {agent.name!r}: calls undeclared {called.agent!r}")
                if called.name in names:
                    problems.append(f"agent {agent.name!r}: tool name {called.name!r} twice")
                names.add(called.name)
        if problems:
            raise ConfigError(f"app {self.name!r}: " + "; ".join(problems))
        return self


def default_app(instructions: str, *, tools: ToolRegistry | None = None) -> App:
    """The built-in app: one assistant with every tool (today's agent, unchanged)."""
    app = App("default", default=DEFAULT_AGENT, tools=tools)
    app.add(
        Agent(
            DEFAULT_AGENT,
            instructions,
            description="A helpful assistant: calculations, time, units and memory.",
        )
    )
    return app


def _missing_top(exc: ModuleNotFoundError, module_name: str) -> bool:
    return exc.name is not None and module_name.split(".")[0] == exc.name.split(".")[0]


def load_app(spec: str) -> App:
    """The app named by ``spec``: ``package.module`` (its ``app``) or ``package.module:attr``;
    the attribute may also be a function returning the app. ConfigError when it cannot."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A console script does not put the working directory on the path, as `python -m`
        # does; an app next to the user is found anyway.
        if os.getcwd() in sys.path or not _missing_top(exc, module_name):
            raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from exc
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as again:
            raise ConfigError(f"cannot import app module {module_name!r}: {again}") from again
    except ImportError as exc:
        raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from exc
    value = getattr(module, attribute or "app", None)
    if callable(value) and not isinstance(value, App):
        value = value()
    if not isinstance(value, App):
        raise ConfigError(
            f"{spec!r} is not an agentstream App: declare `app = App(...)` in {module_name}"
        )
    return value.validate()
