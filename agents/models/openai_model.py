"""The OpenAI-compatible model client: OpenAI, Azure, vLLM, Ollama, LM Studio, llama.cpp.

It speaks chat completions with function calling through the ``openai`` package's
``AsyncOpenAI``. Retry policy belongs to the worker runtime, not to the client: the SDK's own
retries are off by default (``max_retries=0``) and every failure is mapped to the error
taxonomy instead (:func:`model_error`): 429, 408, 5xx, timeouts and lost connections become
:class:`~agentstream.agents.models.base.ModelUnavailable` (retriable, ``retry_after`` from the
``Retry-After`` header), any other 4xx becomes :class:`~.base.ModelRejected`
with the status and the server's own message.

With ``stream=True`` the reply is read as server-sent chunks and reassembled, tool-call
fragments included; usage comes from the final chunk when the server honours
``stream_options.include_usage``, and is estimated
(:func:`~agentstream.agents.messages.count_tokens`) when it does not report any.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from agentstream.agents.messages import (
    UNPARSED_ARGUMENTS,
    Message,
    ModelReply,
    ToolInvocation,
    count_tokens,
    message_tokens,
)
from agentstream.agents.models.base import (
    ModelPrice,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
    ToolSpec,
    priced,
)
from agentstream.schemas import AgentstreamError, Usage
from openai.types.chat import ChatCompletionStreamOptionsParam
from pydantic import JsonValue, SecretStr

__all__ = ["OpenAIModel", "model_error", "parse_retry_after"]

_RETRIABLE_STATUS = frozenset({408, 429})


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``Retry-After-Ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if (ms := lowered.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    if isinstance(body, str) and body:
        return body
    try:
        return exc.response.text[:500] or exc.message
    except Exception:  # a streamed response whose body was not read
        return exc.message


def model_error(exc: openai.OpenAIError, *, model: str) -> AgentstreamError:
    """The agentstream error for an ``openai`` failure, carrying its retry policy."""
    if isinstance(exc, openai.APITimeoutError):
        return ModelTimeout(f"model {model!r} did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailable(f"cannot reach model {model!r}: {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        text = f"model {model!r} answered HTTP {status}: {_server_message(exc)}"
        if status in _RETRIABLE_STATUS or status >= 500:
            retry_after = parse_retry_after(dict(exc.response.headers.items()))
            return ModelUnavailable(text, status=status, retry_after=retry_after)
        return ModelRejected(text, status=status)
    if isinstance(exc, openai.APIResponseValidationError):
        return ModelUnavailable(f"model {model!r} sent a malformed response: {exc.message}")
    return ModelRejected(f"model {model!r} call failed: {exc}")


def _arguments(raw: str | None) -> dict[str, JsonValue]:
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {UNPARSED_ARGUMENTS: raw}
    return value if isinstance(value, dict) else {UNPARSED_ARGUMENTS: raw}


def _wire(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": json.dumps(call.arguments, ensure_ascii=False),
                },
            }
            for call in message.tool_calls
        ]
    return wire


class OpenAIModel:
    """A :class:`~agentstream.agents.models.base.Model` over any OpenAI-compatible chat-completions
    endpoint.

    ``http_client`` is handed to ``AsyncOpenAI`` unchanged (an ``httpx.AsyncClient``, for a
    proxy, custom TLS, or a mock transport in tests). ``name`` is how routing and metrics
    refer to this model; it defaults to ``model``.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 0,
        price: ModelPrice | None = None,
        stream: bool = False,
        name: str | None = None,
        http_client: Any = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.name = name or model
        self.model = model
        self.price = price or ModelPrice()
        self.stream = stream
        self._stream_usage = True
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=key or "not-needed",  # local servers take any key; the SDK wants one
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire(m) for m in messages],
        }
        if tools:
            request["tools"] = [t.openai_format() for t in tools]
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        prompt_estimate = sum(message_tokens(m) for m in messages)
        try:
            if self.stream:
                return await self._streamed(request, prompt_estimate)
            return self._reply(
                await self._client.chat.completions.create(**request), prompt_estimate
            )
        except openai.OpenAIError as exc:
            raise model_error(exc, model=self.name) from exc

    def _usage(self, usage: Any, prompt_estimate: int, completion_estimate: int) -> Usage:
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        return priced(
            prompt if isinstance(prompt, int) else prompt_estimate,
            completion if isinstance(completion, int) else completion_estimate,
            self.price,
        )

    def _reply(self, completion: Any, prompt_estimate: int) -> ModelReply:
        choice = completion.choices[0] if completion.choices else None
        message = choice.message if choice is not None else None
        text = message.content if message is not None else None
        calls = [
            ToolInvocation(
                id=call.id or "",
                name=call.function.name,
                arguments=_arguments(call.function.arguments),
            )
            for call in (message.tool_calls or [] if message is not None else [])
            if getattr(call, "function", None) is not None
        ]
        estimate = count_tokens(text) + sum(count_tokens(json.dumps(c.arguments)) for c in calls)
        return ModelReply(
            text=text,
            tool_calls=calls,
            usage=self._usage(completion.usage, prompt_estimate, estimate),
            model=getattr(completion, "model", None) or self.model,
            finish_reason=(choice.finish_reason if choice is not None else None) or "stop",
        )

    async def _streamed(self, request: dict[str, Any], prompt_estimate: int) -> ModelReply:
        create = self._client.chat.completions.create
        try:
            if self._stream_usage:
                options: ChatCompletionStreamOptionsParam = {"include_usage": True}
                stream = await create(**request, stream=True, stream_options=options)
            else:
                stream = await create(**request, stream=True)
        except openai.BadRequestError as exc:
            if not self._stream_usage or "stream_options" not in str(exc):
                raise
            self._stream_usage = False  # this server rejects the option: estimate instead
            stream = await create(**request, stream=True)
        texts: list[str] = []
        slots: dict[int, dict[str, str]] = {}
        usage: Any = None
        finish: str | None = None
        served_by = self.model
        try:
            async for chunk in stream:
                served_by = chunk.model or served_by
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    texts.append(delta.content or "")
                    for part in delta.tool_calls or []:
                        slot = slots.setdefault(part.index, {"id": "", "name": "", "args": ""})
                        slot["id"] = part.id or slot["id"]
                        if part.function is not None:
                            if part.function.name and part.function.name != slot["name"]:
                                slot["name"] += part.function.name
                            slot["args"] += part.function.arguments or ""
                    finish = choice.finish_reason or finish
        finally:
            await stream.close()
        text = "".join(texts) or None
        calls = [
            ToolInvocation(id=s["id"], name=s["name"], arguments=_arguments(s["args"]))
            for _, s in sorted(slots.items())
        ]
        estimate = count_tokens(text) + sum(count_tokens(s["args"]) for s in slots.values())
        return ModelReply(
            text=text,
            tool_calls=calls,
            usage=self._usage(usage, prompt_estimate, estimate),
            model=served_by,
            finish_reason=finish or "stop",
        )
