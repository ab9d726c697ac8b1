"""The tool registry (declaration, validation, timeouts) and the circuit breaker."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from agentstream.agents.tools.circuit import CircuitBreaker, CircuitOpen
from agentstream.agents.tools.registry import (
    InvalidArguments,
    ToolRegistry,
    ToolTimeout,
    UnknownTool,
)
from agentstream.schemas import RetryableError, ToolRejected
from pydantic import BaseModel, ConfigDict, Field


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AddArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: float = Field(description="first")
    b: float = Field(ge=0, description="second, not negative")


class SleepArgs(BaseModel):
    seconds: float


def make_registry(clock: FakeClock | None = None) -> ToolRegistry:
    registry = ToolRegistry(
        default_timeout_s=1.0,
        failure_threshold=2,
        reset_timeout_s=30.0,
        clock=clock or time.monotonic,
    )

    @registry.tool(description="Add two numbers.")
    async def add(args: AddArgs) -> float:
        return args.a + args.b

    @registry.tool(name="sync_add", timeout_s=2.0)
    def add_in_a_thread(args: AddArgs) -> dict[str, float]:
        """Add, synchronously."""
        return {"sum": args.a + args.b}

    @registry.tool(description="Sleep.", timeout_s=0.05)
    async def sleep(args: SleepArgs) -> str:
        await asyncio.sleep(args.seconds)
        return "awake"

    @registry.tool(description="Always fails.")
    async def broken(args: SleepArgs) -> str:
        raise ConnectionError("backend down")

    return registry


async def test_a_tool_is_one_decorated_function() -> None:
    registry = make_registry()
    assert await registry.call("add", {"a": 2, "b": 3}) == 5
    assert await registry.call("sync_add", {"a": 2, "b": 3}) == {"sum": 5}
    assert registry.timeout_of("sync_add") == 2.0
    assert registry.timeout_of("add") == 1.0
    assert "add" in registry
    assert "nope" not in registry


def test_specs_carry_the_json_schema_of_the_arguments() -> None:
    specs = {spec.name: spec for spec in make_registry().specs()}
    assert specs["add"].description == "Add two numbers."
    assert specs["sync_add"].description == "Add, synchronously."
    assert specs["add"].parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "number", "title": "A", "description": "first"},
            "b": {
                "type": "number",
                "title": "B",
                "minimum": 0,
                "description": "second, not negative",
            },
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    assert specs["add"].openai_format()["type"] == "function"
    assert list(specs) == sorted(specs)


async def test_invalid_arguments_name_the_fields() -> None:
    registry = make_registry()
    with pytest.raises(InvalidArguments) as caught:
        await registry.call("add", {"a": "many", "b": -1, "c": 0})
    assert sorted(caught.value.fields) == ["a", "b", "c"]
    message = str(caught.value)
    assert "invalid arguments for tool 'add'" in message
    assert "a: Input should be a valid number" in message
    assert "b: Input should be greater than or equal to 0" in message
    assert "c: Extra inputs are not permitted" in message
    assert isinstance(caught.value, ToolRejected)

    with pytest.raises(InvalidArguments, match="b: Field required") as missing:
        await registry.call("add", {"a": 1})
    assert missing.value.fields == ["b"]


async def test_unknown_tool_is_rejected() -> None:
    with pytest.raises(UnknownTool, match=r"unknown tool 'shell' \(available: add, broken"):
        await make_registry().call("shell", {})
    assert issubclass(UnknownTool, ToolRejected)


async def test_timeout_is_retryable() -> None:
    registry = make_registry()
    with pytest.raises(ToolTimeout, match=r"did not finish within 0\.05s") as caught:
        await registry.call("sleep", {"seconds": 5})
    assert isinstance(caught.value, RetryableError)
    assert await registry.call("sleep", {"seconds": 0}) == "awake"
    with pytest.raises(ToolTimeout):
        await registry.call("sleep", {"seconds": 0.2}, timeout_s=0.01)


def test_declaration_errors() -> None:
    registry = make_registry()
    with pytest.raises(ValueError, match="already registered"):

        @registry.tool(description="again")
        async def add(args: AddArgs) -> float:
            return 0

    with pytest.raises(TypeError, match="exactly one parameter"):

        @registry.tool(description="two")
        async def two(a: AddArgs, b: AddArgs) -> float:
            return 0

    with pytest.raises(TypeError, match="pydantic model"):

        @registry.tool(description="untyped")
        async def untyped(a: int) -> float:
            return 0

    with pytest.raises(ValueError, match="description or a docstring"):

        @registry.tool()
        async def silent(args: AddArgs) -> float:
            return 0


async def test_non_json_output_is_rejected() -> None:
    registry = ToolRegistry()

    @registry.tool(description="returns an object")
    async def weird(args: SleepArgs) -> object:
        return object()

    with pytest.raises(ToolRejected, match="not JSON"):
        await registry.call("weird", {"seconds": 0})


async def test_failing_tool_opens_its_circuit_then_half_opens() -> None:
    clock = FakeClock()
    registry = make_registry(clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await registry.call("broken", {"seconds": 0})
    assert registry.breaker_states()["broken"] == "open"
    assert registry.circuit_states()["broken"] == 2
    assert registry.breaker_states()["add"] == "closed"
    with pytest.raises(CircuitOpen) as caught:
        await registry.call("broken", {"seconds": 0})
    assert isinstance(caught.value, RetryableError)
    assert caught.value.retry_after == pytest.approx(30.0)
    clock.now += 31
    assert registry.breaker_states()["broken"] == "half_open"
    assert registry.circuit_states()["broken"] == 1
    with pytest.raises(ConnectionError):  # the probe goes through, and fails
        await registry.call("broken", {"seconds": 0})
    assert registry.breaker_states()["broken"] == "open"


async def test_rejected_input_does_not_trip_the_breaker() -> None:
    registry = make_registry(FakeClock())
    for _ in range(5):
        with pytest.raises(InvalidArguments):
            await registry.call("broken", {"seconds": "x"})
    assert registry.breaker_states()["broken"] == "closed"


async def test_breaker_closes_after_a_successful_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("dep", failure_threshold=3, reset_timeout_s=10, clock=clock)
    outcomes = iter([False, False, False, True])

    async def call() -> str:
        if next(outcomes):
            return "ok"
        raise TimeoutError("slow")

    for _ in range(3):
        assert breaker.state == "closed"
        with pytest.raises(TimeoutError):
            await breaker.call(call)
    assert breaker.state == "open"
    assert breaker.failures == 3
    clock.now += 4
    with pytest.raises(CircuitOpen, match=r"retry in 6\.0s") as caught:
        await breaker.call(call)
    assert caught.value.retry_after == pytest.approx(6.0)
    clock.now += 6
    assert breaker.state_value == 1  # half-open
    assert await breaker.call(call) == "ok"
    assert breaker.state_value == 0  # closed
    assert breaker.failures == 0


async def test_half_open_lets_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("dep", failure_threshold=1, reset_timeout_s=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    breaker.before_call()  # the probe
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # a second caller while the probe is out
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.before_call()


async def test_cancelled_probe_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("dep", failure_threshold=1, reset_timeout_s=5, clock=clock)
    breaker.record_failure()
    clock.now += 5

    async def hang() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(breaker.call(hang))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "half_open"
    breaker.before_call()  # a new probe may go


def test_breaker_rejects_a_zero_threshold() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker("x", failure_threshold=0)


async def test_plain_tools_run_in_a_thread_and_inline_ones_on_the_loop() -> None:
    registry = ToolRegistry(default_timeout_s=1.0, failure_threshold=2)
    seen: dict[str, int] = {}

    @registry.tool(description="Where it runs.")
    def threaded(args: AddArgs) -> float:
        seen["threaded"] = threading.get_ident()
        return args.a + args.b

    @registry.tool(description="Where it runs, inline.", inline=True)
    def on_the_loop(args: AddArgs) -> float:
        seen["inline"] = threading.get_ident()
        if args.a < 0:
            raise ValueError("negative")
        return args.a + args.b

    assert await registry.call("threaded", {"a": 1, "b": 2}) == 3
    assert await registry.call("on_the_loop", {"a": 1, "b": 2}) == 3
    assert seen["inline"] == threading.get_ident()
    assert seen["threaded"] != threading.get_ident()
    # An inline tool's failure takes the same path as any other's: the breaker counts it.
    for _ in range(2):
        with pytest.raises(ValueError, match="negative"):
            await registry.call("on_the_loop", {"a": -1, "b": 2})
    assert registry.breaker_states()["on_the_loop"] == "open"


async def test_a_blocking_plain_tool_still_times_out_without_stalling_the_loop() -> None:
    registry = ToolRegistry(default_timeout_s=0.05)

    @registry.tool(description="Blocks its thread.")
    def blocking(args: SleepArgs) -> str:
        time.sleep(args.seconds)
        return "done"

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        with pytest.raises(ToolTimeout):
            await registry.call("blocking", {"seconds": 0.3})
    finally:
        task.cancel()
    assert ticks >= 5  # the loop kept running while the tool blocked its thread


def test_the_quick_built_ins_run_inline_the_text_tools_in_a_thread() -> None:
    from agentstream.agents.tools.builtin import builtin_registry

    registry = builtin_registry()
    inline = {name for name in registry.names() if registry.get(name).inline}
    assert inline == {"calculator", "convert_units", "current_time", "convert_time"}
