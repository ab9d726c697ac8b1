"""The tool registry: tools declared once, validated before they run, bounded when they do.

A tool is one decorated function whose single parameter is a pydantic model of its
arguments::

    registry = ToolRegistry()

    class AddArgs(BaseModel):
        a: float
        b: float

    @registry.tool(description="Add two numbers.", timeout_s=2)
    async def add(args: AddArgs) -> float:
        return args.a + args.b

The argument model's JSON Schema is what the model sees (:meth:`ToolRegistry.specs`).
:meth:`ToolRegistry.call` validates the arguments first, then runs the tool under its
timeout and its own :class:`~.circuit.CircuitBreaker`. What it raises tells the
runtime what to do: :class:`~schemas.ToolRejected` (unknown tool, invalid arguments, input
the tool refuses) can never succeed and is reported to the model as an error result;
:class:`ToolTimeout` and :class:`~.circuit.CircuitOpen` are retriable. A sync
function runs in a worker thread so a slow one cannot block the event loop; a timed-out thread is
abandoned, not killed, which is why built-in tools also bound their own work.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast, get_type_hints

from agentstream.agents.models.base import ToolSpec
from agentstream.agents.tools.circuit import CircuitBreaker, CircuitState
from agentstream.schemas import RetryableError, ToolRejected
from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

__all__ = [
    "InvalidArguments",
    "Tool",
    "ToolRegistry",
    "ToolTimeout",
    "UnknownTool",
    "validation_problems",
]

F = TypeVar("F", bound=Callable[..., Any])
_JSON: TypeAdapter[JsonValue] = TypeAdapter(JsonValue)


class ToolTimeout(RetryableError):
    """The tool did not finish within its timeout."""


class UnknownTool(ToolRejected):
    """The model asked for a tool this registry does not have."""


class InvalidArguments(ToolRejected):
    """The arguments do not match the tool's argument model. ``fields`` names the bad ones."""

    def __init__(self, message: str, *, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields


def validation_problems(exc: ValidationError) -> tuple[list[str], str]:
    """The dotted names of the invalid fields and a one-line description of each problem."""
    fields: list[str] = []
    problems: list[str] = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "<arguments>"
        fields.append(name)
        problems.append(f"{name}: {error['msg']}")
    return fields, "; ".join(problems)


@dataclass(frozen=True)
class Tool:
    """One registered tool."""

    name: str
    description: str
    arguments: type[BaseModel]
    fn: Callable[[Any], Any]
    timeout_s: float
    breaker: CircuitBreaker
    #: Runs on the event loop, not in a worker thread: for quick, bounded, non-blocking
    #: functions (no I/O). Its timeout cannot interrupt it.
    inline: bool = False

    @property
    def spec(self) -> ToolSpec:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return ToolSpec(name=self.name, description=self.description, parameters=schema)


class ToolRegistry:
    """Named tools with their argument models, timeouts and circuit breakers."""

    def __init__(
        self,
        *,
        default_timeout_s: float = 10.0,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_timeout_s = default_timeout_s
        self._failure_threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._tools: dict[str, Tool] = {}

    def tool(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
        inline: bool = False,
    ) -> Callable[[F], F]:
        """Register the decorated function as a tool; returns the function unchanged.

        ``name`` defaults to the function's name, ``description`` to its docstring. A plain
        (not ``async``) function runs in a worker thread, so a slow or blocking one never
        stalls the worker and its timeout holds; ``inline=True`` runs it on the event loop
        instead, for quick functions with bounded work and no I/O (the built-in
        calculator, unit and time conversions): a thread hand-off costs more than they do.
        """

        def register(fn: F) -> F:
            tool_name = name or fn.__name__
            if tool_name in self._tools:
                raise ValueError(f"tool {tool_name!r} is already registered")
            text = description or inspect.getdoc(fn)
            if not text:
                raise ValueError(f"tool {tool_name!r} needs a description or a docstring")
            self._tools[tool_name] = Tool(
                name=tool_name,
                description=text,
                arguments=_argument_model(fn),
                fn=fn,
                timeout_s=timeout_s if timeout_s is not None else self.default_timeout_s,
                inline=inline and not inspect.iscoroutinefunction(fn),
                breaker=CircuitBreaker(
                    tool_name,
                    failure_threshold=self._failure_threshold,
                    reset_timeout_s=self._reset_timeout_s,
                    clock=self._clock,
                ),
            )
            return fn

        return register

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> Tool:
        """The tool called ``name``; :class:`UnknownTool` otherwise."""
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            raise UnknownTool(f"unknown tool {name!r} (available: {known})")
        return tool

    def specs(self) -> list[ToolSpec]:
        """What the model is offered, sorted by name so prompts (and cache keys) are stable."""
        return [self._tools[name].spec for name in sorted(self._tools)]

    def timeout_of(self, name: str) -> float:
        return self.get(name).timeout_s

    def breaker_states(self) -> dict[str, CircuitState]:
        """Each tool's breaker state by name."""
        return {name: tool.breaker.state for name, tool in sorted(self._tools.items())}

    def circuit_states(self) -> dict[str, int]:
        """Each tool's breaker state as a gauge value: 0 closed, 1 half-open, 2 open."""
        return {name: tool.breaker.state_value for name, tool in sorted(self._tools.items())}

    def validate(self, name: str, arguments: Mapping[str, Any]) -> BaseModel:
        """The parsed arguments of a call; :class:`ToolRejected` naming what is wrong."""
        tool = self.get(name)
        try:
            return tool.arguments.model_validate(dict(arguments))
        except ValidationError as exc:
            fields, problems = validation_problems(exc)
            raise InvalidArguments(
                f"invalid arguments for tool {name!r}: {problems}", fields=fields
            ) from None

    async def call(
        self, name: str, arguments: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> JsonValue:
        """Validate, then run tool ``name`` under its timeout and breaker; its JSON output."""
        tool = self.get(name)
        parsed = self.validate(name, arguments)
        limit = timeout_s if timeout_s is not None else tool.timeout_s

        async def run() -> Any:
            if tool.inline:
                return tool.fn(parsed)
            try:
                return await asyncio.wait_for(_invoke(tool.fn, parsed), timeout=limit)
            except TimeoutError:
                raise ToolTimeout(f"tool {name!r} did not finish within {limit:g}s") from None

        result = await tool.breaker.call(run)
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        try:
            return _JSON.validate_python(result)
        except ValidationError:
            raise ToolRejected(
                f"tool {name!r} returned a {type(result).__name__}, which is not JSON"
            ) from None


def _invoke(fn: Callable[[Any], Any], args: BaseModel) -> Awaitable[Any]:
    if inspect.iscoroutinefunction(fn):
        return cast(Awaitable[Any], fn(args))
    return asyncio.to_thread(fn, args)


def _argument_model(fn: Callable[..., Any]) -> type[BaseModel]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 1:
        raise TypeError(
            f"tool {fn.__name__!r} must take exactly one parameter, a pydantic model of its "
            f"arguments (it takes {len(params)})"
        )
    hint = get_type_hints(fn).get(params[0].name)
    if not (isinstance(hint, type) and issubclass(hint, BaseModel)):
        raise TypeError(
            f"the parameter of tool {fn.__name__!r} must be annotated with a pydantic model"
        )
    return hint
