"""The OpenAI client path against a real OpenAI-compatible server: llama.cpp's, run locally.

The model (Gemma 3 270M, a base model, greedy sampling) answers poorly; these tests check what
the client sends and how it reads the server: a completion with the server's usage, a
streamed completion reassembled from deltas with the usage of the final chunk, the requests
llama.cpp rejects mapped to :class:`~agentstream.agents.models.ModelRejected`, and the failures
worth a retry (unreachable server, timeout) mapped to
:class:`~agentstream.agents.models.ModelUnavailable`. Replies are kept to a few tokens: generation
runs at a few tokens a second on a shared 2-core machine.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from agentstream.agents.messages import Message, ModelReply, ToolInvocation
from agentstream.agents.models.base import ModelRejected, ModelTimeout, ModelUnavailable, ToolSpec
from agentstream.agents.models.openai_model import OpenAIModel
from agentstream.schemas import PermanentError, RetryableError

from tests.llm_server import LlamaServer

pytestmark = pytest.mark.slow

MAX_TOKENS = 8
GREETING = [Message.system("Answer in one short sentence."), Message.user("Say hello.")]
CALCULATOR = ToolSpec(
    name="calculator",
    description="Evaluate an arithmetic expression.",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
)

Connect = Callable[..., OpenAIModel]


@pytest.fixture
async def connect(llama_server: LlamaServer) -> AsyncIterator[Connect]:
    """Build clients of the local server (``OpenAIModel`` options as keywords), closed after."""
    models: list[OpenAIModel] = []

    def build(**options: Any) -> OpenAIModel:
        options.setdefault("timeout_s", 60.0)
        model = OpenAIModel(
            model=llama_server.model, base_url=llama_server.base_url, api_key="unused", **options
        )
        models.append(model)
        return model

    yield build
    for model in models:
        await model.aclose()


def assert_served(reply: ModelReply, llama_server: LlamaServer) -> None:
    """A reply the server produced, with the usage it counted (a few tokens, at most MAX)."""
    assert reply.model == llama_server.model
    assert reply.finish_reason in {"stop", "length"}
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= MAX_TOKENS
    if reply.finish_reason == "length":
        assert reply.usage.completion_tokens == MAX_TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.model_calls == 1


async def test_completion(connect: Connect, llama_server: LlamaServer) -> None:
    reply = await connect().complete(GREETING, [], max_tokens=MAX_TOKENS)
    assert reply.text
    assert reply.text.strip()
    assert reply.tool_calls == []
    assert_served(reply, llama_server)


async def test_streamed_completion(connect: Connect, llama_server: LlamaServer) -> None:
    reply = await connect(stream=True).complete(GREETING, [], max_tokens=MAX_TOKENS)
    assert reply.text
    assert reply.text.strip()
    assert_served(reply, llama_server)
    # llama.cpp honours stream_options.include_usage: the prompt tokens are the server's count
    # (the chat template's tokens included), the same as without streaming, not an estimate.
    plain = await connect().complete(GREETING, [], max_tokens=1)
    assert reply.usage.prompt_tokens == plain.usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("history", "max_tokens", "server_says"),
    [
        (GREETING, -5, "'max_tokens': Value must be between -1"),
        ([Message.user("word " * 3000)], 1, "exceeds the available context size"),
    ],
    ids=["negative-max-tokens", "context-overflow"],
)
async def test_rejected_request_is_permanent(
    connect: Connect,
    llama_server: LlamaServer,
    stream: bool,
    history: list[Message],
    max_tokens: int,
    server_says: str,
) -> None:
    with pytest.raises(ModelRejected) as caught:
        await connect(stream=stream).complete(history, [], max_tokens=max_tokens)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.status == 400
    message = str(caught.value)
    assert message.startswith(f"model {llama_server.model!r} answered HTTP 400: ")
    assert server_says in message


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused, and no other
    process can take it during the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_unreachable_server_is_retryable(closed_port: int, stream: bool) -> None:
    model = OpenAIModel(
        model="local",
        base_url=f"http://127.0.0.1:{closed_port}/v1",
        api_key="unused",
        timeout_s=5.0,
        stream=stream,
    )
    try:
        with pytest.raises(ModelUnavailable, match="cannot reach model 'local'") as caught:
            await model.complete(GREETING, [], max_tokens=MAX_TOKENS)
    finally:
        await model.aclose()
    assert isinstance(caught.value, RetryableError)
    assert not isinstance(caught.value, ModelTimeout)


async def test_slow_stream_times_out_retryably(connect: Connect) -> None:
    # llama.cpp sends the streamed response's headers at once, then nothing while it reads
    # the prompt (~1000 tokens): the read timeout fires inside the stream. The server drops the
    # abandoned request within one prompt batch (tests/llm_server.py), so the next test waits
    # little for the slot.
    model = connect(stream=True, timeout_s=0.1)
    with pytest.raises(ModelTimeout, match="did not answer in time") as caught:
        await model.complete([Message.user("count " * 1000)], [], max_tokens=MAX_TOKENS)
    assert isinstance(caught.value, RetryableError)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_tools_and_tool_results_are_accepted(
    connect: Connect, llama_server: LlamaServer, stream: bool
) -> None:
    # The request shape is what is tested: tool definitions, an assistant tool call with null
    # content, a tool result. This model's chat template has no tool support (/props:
    # supports_tools false): llama.cpp accepts the request but leaves the tools out of the
    # prompt, so the model never calls one here.
    history = [
        Message.system("Use the calculator for arithmetic."),
        Message.user("What is 1200 * 3?"),
        Message.assistant(
            None,
            [ToolInvocation(id="call_1", name="calculator", arguments={"expression": "1200*3"})],
        ),
        Message.tool("call_1", "calculator", '{"result": 3600}'),
    ]
    reply = await connect(stream=stream).complete(history, [CALCULATOR], max_tokens=MAX_TOKENS)
    assert not reply.is_empty
    assert_served(reply, llama_server)
