"""The OpenAI-compatible client against a mock HTTP transport: wire format and error mapping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from agentstream.agents.messages import UNPARSED_ARGUMENTS, Message, ToolInvocation
from agentstream.agents.models.base import (
    ModelPrice,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
    ToolSpec,
)
from agentstream.agents.models.openai_model import OpenAIModel, parse_retry_after
from agentstream.schemas import PermanentError, RetryableError
from pydantic import SecretStr

Handler = Callable[[httpx.Request], httpx.Response]
TOOLS = [
    ToolSpec(
        name="calculator",
        description="Evaluate arithmetic.",
        parameters={"type": "object", "properties": {"expression": {"type": "string"}}},
    )
]


class Server:
    """Records requests and answers each with the handler's response."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def body(self, index: int = -1) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.requests[index].content)
        return parsed


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., tuple[OpenAIModel, Server]]]:
    models: list[OpenAIModel] = []

    def build(handler: Handler, **options: Any) -> tuple[OpenAIModel, Server]:
        server = Server(handler)
        options.setdefault("api_key", "sk-test")
        model = OpenAIModel(
            model="small-1",
            base_url="http://llm.test/v1",
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(server)),
            **options,
        )
        models.append(model)
        return model, server

    yield build
    for model in models:
        await model.aclose()


def completion(message: dict[str, Any], usage: dict[str, int] | None = None) -> httpx.Response:
    body: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "small-1-2024",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    if usage is not None:
        body["usage"] = {**usage, "total_tokens": sum(usage.values())}
    return httpx.Response(200, json=body)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Handler:
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return lambda request: httpx.Response(status, json=body, headers=headers)


def sse(*chunks: dict[str, Any]) -> httpx.Response:
    events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    return httpx.Response(
        200, content=events.encode(), headers={"content-type": "text/event-stream"}
    )


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "small-1-2024",
        "choices": choices,
        **extra,
    }


async def test_text_reply_with_usage_and_cost(connect: Any) -> None:
    model, server = connect(
        lambda r: completion(
            {"role": "assistant", "content": "Hi!"},
            {"prompt_tokens": 1000, "completion_tokens": 500},
        ),
        price=ModelPrice(prompt_per_1k=0.01, completion_per_1k=0.03),
        api_key=SecretStr("sk-secret"),
    )
    reply = await model.complete([Message.system("Be brief."), Message.user("hello")], [])
    assert reply.text == "Hi!"
    assert reply.tool_calls == []
    assert reply.model == "small-1-2024"
    assert reply.finish_reason == "stop"
    assert reply.usage.prompt_tokens == 1000
    assert reply.usage.completion_tokens == 500
    assert reply.usage.total_tokens == 1500
    assert reply.usage.cost_usd == pytest.approx(0.025)
    assert reply.usage.model_calls == 1
    request = server.requests[0]
    assert request.url == "http://llm.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-secret"
    assert server.body() == {
        "model": "small-1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
    }


async def test_tool_calls_round_trip(connect: Any) -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "calculator", "arguments": "not json"},
            },
        ],
    }
    model, server = connect(lambda r: completion(message))
    history = [
        Message.user("what is 2+2?"),
        Message.assistant(None, [ToolInvocation(id="x1", name="calculator", arguments={"e": 1})]),
        Message.tool("x1", "calculator", '{"result": 4}'),
    ]
    reply = await model.complete(history, TOOLS, max_tokens=50)
    assert reply.tool_calls == [
        ToolInvocation(id="call_a", name="calculator", arguments={"expression": "2+2"}),
        ToolInvocation(id="call_b", name="calculator", arguments={UNPARSED_ARGUMENTS: "not json"}),
    ]
    assert reply.usage.prompt_tokens > 0  # no usage from the server: estimated
    body = server.body()
    assert body["max_tokens"] == 50
    assert body["tools"] == [t.openai_format() for t in TOOLS]
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "x1",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"e": 1}'},
            }
        ],
    }
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "x1", "content": '{"result": 4}'}


async def test_429_is_retryable_with_retry_after(connect: Any) -> None:
    model, server = connect(error(429, "Rate limit reached", {"retry-after": "7"}))
    with pytest.raises(ModelUnavailable) as caught:
        await model.complete([Message.user("hi")], [])
    assert isinstance(caught.value, RetryableError)
    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0
    assert "HTTP 429: Rate limit reached" in str(caught.value)
    assert len(server.requests) == 1  # the SDK does not retry: our runtime does


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_server_errors_are_retryable(connect: Any, status: int) -> None:
    model, server = connect(error(status, "upstream sad", {"retry-after-ms": "1500"}))
    with pytest.raises(ModelUnavailable) as caught:
        await model.complete([Message.user("hi")], [])
    assert caught.value.status == status
    assert caught.value.retry_after == 1.5
    assert len(server.requests) == 1


async def test_server_error_without_retry_after(connect: Any) -> None:
    model, _ = connect(lambda r: httpx.Response(500, text="<html>oops</html>"))
    with pytest.raises(ModelUnavailable) as caught:
        await model.complete([Message.user("hi")], [])
    assert caught.value.retry_after is None
    assert "oops" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "This model's maximum context length is 8192 tokens"),
        (401, "Incorrect API key provided"),
        (403, "Project does not have access"),
        (404, "The model `small-1` does not exist"),
        (422, "tools[0].function.name is invalid"),
    ],
)
async def test_client_errors_are_permanent(connect: Any, status: int, message: str) -> None:
    model, server = connect(error(status, message))
    with pytest.raises(ModelRejected) as caught:
        await model.complete([Message.user("hi")], [])
    assert isinstance(caught.value, PermanentError)
    assert caught.value.status == status
    assert str(caught.value) == f"model 'small-1' answered HTTP {status}: {message}"
    assert len(server.requests) == 1


async def test_timeouts_and_connection_errors_are_retryable(connect: Any) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    model, _ = connect(slow)
    with pytest.raises(ModelTimeout, match="did not answer in time") as timed_out:
        await model.complete([Message.user("hi")], [])
    assert isinstance(timed_out.value, RetryableError)
    model, _ = connect(down)
    with pytest.raises(ModelUnavailable, match="cannot reach model") as unreachable:
        await model.complete([Message.user("hi")], [])
    assert not isinstance(unreachable.value, ModelTimeout)


async def test_a_few_sdk_retries_can_be_allowed(connect: Any) -> None:
    busy = httpx.Response(503, json={"error": {"message": "busy"}}, headers={"retry-after-ms": "1"})
    answers = iter([busy, None])

    def flaky(request: httpx.Request) -> httpx.Response:
        return next(answers) or completion({"role": "assistant", "content": "ok"})

    model, server = connect(flaky, max_retries=1)
    reply = await model.complete([Message.user("hi")], [])
    assert reply.text == "ok"
    assert len(server.requests) == 2


async def test_streaming_text_and_usage(connect: Any) -> None:
    model, server = connect(
        lambda r: sse(
            chunk({"role": "assistant", "content": "Hel"}),
            chunk({"content": "lo!"}, "stop"),
            chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}),
        ),
        stream=True,
    )
    reply = await model.complete([Message.user("hi")], [])
    assert reply.text == "Hello!"
    assert reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (9, 2)
    assert server.body()["stream"] is True
    assert server.body()["stream_options"] == {"include_usage": True}


async def test_streaming_tool_call_deltas(connect: Any) -> None:
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "calculator", "arguments": ""},
    }
    second = {
        "index": 1,
        "id": "call_2",
        "type": "function",
        "function": {"name": "current_time", "arguments": '{"zone": "UTC"}'},
    }
    model, _ = connect(
        lambda r: sse(
            chunk({"role": "assistant", "tool_calls": [first]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"expression": '}}]}),
            chunk({"tool_calls": [second]}),
            chunk(
                {"tool_calls": [{"index": 0, "function": {"arguments": '"1200 * 3"}'}}]},
                "tool_calls",
            ),
        ),
        stream=True,
    )
    reply = await model.complete([Message.user("hi")], TOOLS)
    assert reply.text is None
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls == [
        ToolInvocation(id="call_1", name="calculator", arguments={"expression": "1200 * 3"}),
        ToolInvocation(id="call_2", name="current_time", arguments={"zone": "UTC"}),
    ]
    assert reply.usage.prompt_tokens > 0  # no usage chunk: estimated
    assert reply.usage.completion_tokens > 0


async def test_streaming_falls_back_when_stream_options_are_refused(connect: Any) -> None:
    def picky(request: httpx.Request) -> httpx.Response:
        if "stream_options" in json.loads(request.content):
            return httpx.Response(400, json={"error": {"message": "unknown field stream_options"}})
        return sse(chunk({"content": "fine"}, "stop"))

    model, server = connect(picky, stream=True)
    assert (await model.complete([Message.user("hi")], [])).text == "fine"
    assert (await model.complete([Message.user("hi")], [])).text == "fine"
    assert len(server.requests) == 3  # the option is dropped once and for all


async def test_streaming_errors_are_mapped(connect: Any) -> None:
    model, _ = connect(error(429, "slow down", {"retry-after": "3"}), stream=True)
    with pytest.raises(ModelUnavailable) as caught:
        await model.complete([Message.user("hi")], [])
    assert caught.value.retry_after == 3.0


def test_parse_retry_after() -> None:
    now = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": "12"}) == 12.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Mon, 06 May 2024 12:00:30 GMT"}, now) == 30.0
    assert parse_retry_after({"retry-after": "Mon, 06 May 2024 11:00:00 GMT"}, now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


async def test_local_servers_need_no_key(connect: Any) -> None:
    model, server = connect(
        lambda r: completion({"role": "assistant", "content": "ok"}), api_key=None, name="local"
    )
    assert model.name == "local"
    await model.complete([Message.user("hi")], [])
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"
