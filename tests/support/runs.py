"""Building blocks for tests of the agent loop: a request, a started run, scripted replies."""

from __future__ import annotations

from datetime import UTC, datetime

from agentstream.agents.loop import RunState, start_run
from agentstream.agents.messages import ModelReply, ToolInvocation
from agentstream.schemas import Usage, UserRequest, UserRequestData

__all__ = ["T0", "answer", "begin", "calls", "request"]

T0 = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)


def request(text: str = "What is 2+2 and the time?", **data: object) -> UserRequest:
    return UserRequest(
        id="evt-1",
        source="test",
        time=T0,
        request_id="req-1",
        conversation_id="conv-1",
        tenant="acme",
        traceparent="00-abc-def-01",
        data=UserRequestData(text=text, **data),  # type: ignore[arg-type]
    )


def begin(**kwargs: object) -> RunState:
    options: dict[str, object] = {
        "system_prompt": "Be brief.",
        "max_steps": 4,
        "default_deadline_s": 60.0,
        "history_budget_tokens": 1000,
    }
    options.update(kwargs)
    return start_run(request(), [], **options)  # type: ignore[arg-type]


def calls(*names: str, ids: tuple[str, ...] | None = None) -> ModelReply:
    ids = ids or tuple(f"c{i}" for i in range(len(names)))
    return ModelReply(
        tool_calls=[
            ToolInvocation(id=i, name=n, arguments={"x": 1})
            for i, n in zip(ids, names, strict=True)
        ],
        usage=Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12, model_calls=1),
        model="m",
        finish_reason="tool_calls",
    )


def answer(text: str) -> ModelReply:
    return ModelReply(
        text=text,
        usage=Usage(prompt_tokens=20, completion_tokens=5, total_tokens=25, model_calls=1),
        model="m",
    )
