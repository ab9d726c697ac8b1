"""The offline model, end to end: loop + tool registry + a memory book, all in-process.

``Pipeline`` plays the handlers' part: it drives the loop, runs built-in tools through the
registry and memory tools against a :class:`MemoryBook` (the memory worker), and keeps the
conversation history between requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from agentstream.agents.loop import (
    CallTools,
    RunState,
    apply_reply,
    apply_tool_result,
    history_after,
    start_run,
)
from agentstream.agents.memory.book import (
    MEMORY_TOOLS,
    MemoryBook,
    apply_memory_call,
    memory_tool_specs,
)
from agentstream.agents.messages import Message, ToolInvocation, ToolOutcome
from agentstream.agents.models.base import Model, ToolSpec
from agentstream.agents.offline.intents import parse_asks
from agentstream.agents.offline.model import OfflineModel
from agentstream.agents.tools.builtin import builtin_registry
from agentstream.schemas import ToolRejected, UserRequest, UserRequestData

NOW = datetime(2024, 5, 6, 12, 30, tzinfo=UTC)


@dataclass
class Pipeline:
    model: Model = field(default_factory=OfflineModel)
    book: MemoryBook = field(default_factory=lambda: MemoryBook(tenant="acme"))
    history: list[Message] = field(default_factory=list)
    offered: list[str] | None = None
    steps: list[list[ToolInvocation]] = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        self.registry = builtin_registry(clock=lambda: NOW)

    @property
    def tools(self) -> list[ToolSpec]:
        specs = self.registry.specs() + memory_tool_specs()
        return [s for s in specs if self.offered is None or s.name in self.offered]

    async def ask(self, text: str) -> RunState:
        self.count += 1
        self.steps = []
        event = UserRequest(
            source="test",
            request_id=f"req-{self.count}",
            conversation_id="conv-1",
            tenant="acme",
            data=UserRequestData(text=text),
        )
        state = start_run(
            event,
            self.history,
            system_prompt="You are a helpful assistant.",
            max_steps=6,
            default_deadline_s=None,
            history_budget_tokens=2000,
        )
        while True:
            reply = await self.model.complete(state.messages, self.tools)
            state, decision = apply_reply(state, reply, NOW)
            if not isinstance(decision, CallTools):
                break
            self.steps.append(decision.invocations)
            ready = False
            for call in reversed(decision.invocations):  # results come back in any order
                outcome = await self.run_tool(call, state.request_id)
                state, ready = apply_tool_result(
                    state, call.id, outcome.ok, outcome.output, outcome.error
                )
            assert ready
        self.history = history_after(state)
        return state

    async def run_tool(self, call: ToolInvocation, request_id: str) -> ToolOutcome:
        try:
            if call.name in MEMORY_TOOLS:  # the memory worker
                output = apply_memory_call(
                    self.book, call.name, call.arguments, now=NOW, request_id=request_id
                )
            else:  # the tool worker
                output = await self.registry.call(call.name, call.arguments)
        except ToolRejected as exc:
            return ToolOutcome(ok=False, error=str(exc), error_class=type(exc).__name__)
        return ToolOutcome(ok=True, output=output)

    def step_tools(self) -> list[list[str]]:
        return [[call.name for call in step] for step in self.steps]


async def test_quick_start_demo() -> None:
    pipeline = Pipeline()
    first = await pipeline.ask("Remember that my budget is 1200.")
    assert first.status == "completed"
    assert pipeline.step_tools() == [["remember"]]
    assert first.answer == "I will remember that your budget is 1200."
    assert pipeline.book.facts["budget"].value == "1200"
    assert pipeline.book.facts["budget"].source_request_id == "req-1"

    second = await pipeline.ask("What is my budget times 3, and what time is it in UTC?")
    assert second.status == "completed"
    # step 1: recall alone; step 2: calculator and current_time in one reply; step 3: answer
    assert pipeline.step_tools() == [["recall"], ["calculator", "current_time"]]
    assert pipeline.steps[0][0].arguments == {"query": "budget"}
    assert pipeline.steps[1][0].arguments == {"expression": "1200 * 3"}
    assert pipeline.steps[1][1].arguments == {"zone": "UTC"}
    assert second.step == 3
    assert second.tool_calls_made == ["recall", "calculator", "current_time"]
    assert second.answer == (
        "Your budget is 1200, so 1200 * 3 = 3600. It is 12:30 in UTC on Monday, 2024-05-06."
    )
    assert second.usage.model_calls == 3
    assert second.usage.prompt_tokens > 0
    assert second.usage.completion_tokens > 0
    assert second.model == "offline"
    assert [m.role for m in pipeline.history] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    ("remember", "question"),
    [
        ("remember my budget is 1200", "what's my budget x 3 and the time in UTC?"),
        ("Please remember that my budget is $1,200!", "My budget times 3? Also the time in GMT."),
        ("Note: my budget is 1200 dollars", "tell me my budget multiplied by 3 and the UTC time"),
        ("My budget is 1200.", "Could you compute my budget * 3 and what time is it in UTC"),
        ("don't forget my budget = 1200", "triple my budget, and what's the time in UTC?"),
    ],
)
async def test_demo_phrasings(remember: str, question: str) -> None:
    pipeline = Pipeline()
    await pipeline.ask(remember)
    state = await pipeline.ask(question)
    assert pipeline.step_tools() == [["recall"], ["calculator", "current_time"]]
    assert state.answer is not None
    assert "3600" in state.answer
    assert "12:30 in UTC" in state.answer


@pytest.mark.parametrize(
    ("text", "tools", "expected"),
    [
        ("what is 12 * 7 + 3?", ["calculator"], "12 * 7 + 3 = 87."),
        ("compute (2+3)^2", ["calculator"], "(2 + 3) ^ 2 = 25."),
        ("What's 15% of 200?", ["calculator"], "(15 / 100) * 200 = 30."),
        ("square root of 144", ["calculator"], "sqrt(144) = 12."),
        ("what time is it in Tokyo", ["current_time"], "It is 21:30 in Asia/Tokyo (UTC+09:00)"),
        ("time in UTC", ["current_time"], "It is 12:30 in UTC on Monday, 2024-05-06."),
        ("convert 10 km to miles", ["convert_units"], "10 km = 6.213712 mi."),
        ("convert 100 F to C", ["convert_units"], "100 °F = 37.777778 °C."),
        ("how many pounds is 2 kg?", ["convert_units"], "2 kg = 4.409245 lb."),
        ("convert 9am from New York to Tokyo", ["convert_time"], "is 22:00 in Asia/Tokyo"),
        ('how many words in "the quick brown fox"', ["word_count"], "The text has 4 words."),
    ],
)
async def test_single_tool_asks(text: str, tools: list[str], expected: str) -> None:
    pipeline = Pipeline()
    state = await pipeline.ask(text)
    assert pipeline.step_tools() == [tools]
    assert state.answer is not None
    assert expected in state.answer


async def test_independent_asks_run_in_parallel() -> None:
    pipeline = Pipeline()
    state = await pipeline.ask(
        "What is 12 x 7, convert 5 kg to pounds and what time is it in New York?"
    )
    assert pipeline.step_tools() == [["calculator", "convert_units", "current_time"]]
    assert state.answer == (
        "12 * 7 = 84. 5 kg = 11.023113 lb. "
        "It is 08:30 in America/New_York (UTC-04:00) on Monday, 2024-05-06."
    )


async def test_names_and_what_is_remembered() -> None:
    pipeline = Pipeline()
    unknown = await pipeline.ask("What is my name?")
    assert unknown.answer == "I do not have your name remembered."
    await pipeline.ask("My name is Ada.")
    await pipeline.ask("remember that I like salt and pepper")
    named = await pipeline.ask("what is my name?")
    assert pipeline.step_tools() == [["recall"]]
    assert named.answer == "Your name is Ada."
    everything = await pipeline.ask("What do you remember?")
    assert everything.answer == (
        "Here is what I remember: like salt pepper: I like salt and pepper; name: Ada."
    )


async def test_recall_and_remembered_math_together() -> None:
    pipeline = Pipeline()
    await pipeline.ask("remember my budget is 1200 and my name is Ada")
    assert set(pipeline.book.facts) == {"budget", "name"}
    state = await pipeline.ask("double my budget and what is my name")
    assert pipeline.step_tools() == [["recall"], ["calculator", "recall"]]
    assert state.answer == "Your budget is 1200, so 2 * 1200 = 2400. Your name is Ada."


async def test_a_failed_tool_is_reported_clearly() -> None:
    pipeline = Pipeline()
    state = await pipeline.ask("what is 1/0")
    assert state.status == "completed"
    assert state.answer == "I could not compute 1 / 0: division by zero."
    state = await pipeline.ask("convert 10 km to kg")
    assert (
        state.answer == "I could not convert 10 km to kg: cannot convert km (length) to kg (mass)."
    )
    state = await pipeline.ask("what time is it in Europe/Atlantis")
    assert state.answer is not None
    assert state.answer.startswith("It is 12:30 in UTC")  # no known zone named: UTC


async def test_a_missing_fact_is_explained() -> None:
    pipeline = Pipeline()
    state = await pipeline.ask("What is my budget times 3, and what time is it in UTC?")
    assert pipeline.step_tools() == [["recall"], ["current_time"]]
    assert state.answer == (
        'I do not know your budget yet; tell me "remember that my budget is …". '
        "It is 12:30 in UTC on Monday, 2024-05-06."
    )
    await pipeline.ask("my budget is unlimited")
    state = await pipeline.ask("what is my budget times 3")
    assert state.answer == 'Your budget is "unlimited", which is not a number I can compute with.'


async def test_only_offered_tools_are_called() -> None:
    pipeline = Pipeline(offered=[])
    state = await pipeline.ask("what is 2 + 2 and remember my name is Ada")
    assert pipeline.steps == []
    assert state.answer == (
        "I cannot compute 2 + 2 here: the calculator tool is not available. "
        "I cannot save that here: the remember tool is not available."
    )
    pipeline = Pipeline(offered=["calculator"])
    state = await pipeline.ask("what is my budget times 3")
    assert state.answer == "I cannot look up your budget here: the recall tool is not available."


async def test_chat_without_tools() -> None:
    pipeline = Pipeline()
    hello = await pipeline.ask("Hello!")
    assert hello.step == 1
    assert hello.answer is not None
    assert hello.answer.startswith("Hello! I am the offline model")
    other = await pipeline.ask("Tell me a story about dragons")
    assert other.answer is not None
    assert other.answer.startswith('You said: "Tell me a story about dragons".')


async def test_same_conversation_same_reply() -> None:
    model = OfflineModel()
    messages = [Message.system("s"), Message.user("what is 2+2 and the time in Tokyo?")]
    tools = Pipeline().tools
    first = await model.complete(messages, tools)
    second = await OfflineModel().complete(list(messages), tools)
    assert first == second
    assert [c.id for c in first.tool_calls] == [c.id for c in second.tool_calls]
    assert len({c.id for c in first.tool_calls}) == 2
    other = await model.complete([*messages[:1], Message.user("what is 3+3?")], tools)
    assert other.tool_calls[0].id != first.tool_calls[0].id
    assert first.finish_reason == "tool_calls"


async def test_reads_the_memory_worker_output_in_other_shapes() -> None:
    """A memory worker that answers with bare facts still works."""
    calls = [ToolInvocation(id="r", name="recall", arguments={"query": "budget"})]
    facts = '[{"key": "budget", "value": "1200", "text": "my budget is 1200"}]'
    messages = [
        Message.user("what is my budget times 3"),
        Message.assistant(None, calls),
        Message.tool("r", "recall", facts),
    ]
    reply = await OfflineModel().complete(messages, Pipeline().tools)
    assert reply.tool_calls[0].arguments == {"expression": "1200 * 3"}
    remembered = [
        Message.user("remember my name is Ada"),
        Message.assistant(
            None, [ToolInvocation(id="m", name="remember", arguments={"fact": "my name is Ada"})]
        ),
        Message.tool("m", "remember", '{"key": "name", "value": "Ada"}'),
    ]
    reply = await OfflineModel().complete(remembered, Pipeline().tools)
    assert reply.text == "I will remember that your name is Ada."


async def test_latency_and_max_tokens() -> None:
    model = OfflineModel(latency_s=0.05)
    started = time.perf_counter()
    reply = await model.complete([Message.user("hello")], [], max_tokens=3)
    assert time.perf_counter() - started >= 0.05
    assert reply.finish_reason == "length"
    assert reply.text is not None
    assert len(reply.text) == 12


def test_parse_asks_splits_and_glues_clauses() -> None:
    kinds = [a.kind for a in parse_asks("Remember that I like salt and pepper. What is 2+2?")]
    assert kinds == ["remember", "calculate"]
    asks = parse_asks("what is 1,200 * 3 and 10 // 3")
    assert [a.arguments["expression"] for a in asks] == ["1200 * 3", "10 // 3"]
