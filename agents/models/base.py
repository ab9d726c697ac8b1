"""The model interface: what every model client takes, returns, raises and costs.

A model is anything with a ``name`` and an async :meth:`Model.complete`; agentstream ships
two, the offline deterministic one (:mod:`agentstream.agents.offline`) and the OpenAI-compatible
client (:mod:`agentstream.agents.models.openai_model`). Clients raise :class:`ModelUnavailable`
(retriable: timeouts, 5xx, 429 with ``retry_after``) or :class:`ModelRejected` (permanent: the
endpoint refused the request), so the handler runtime applies its retry policy without inspecting
messages.

Prices are per 1000 tokens, as providers publish them; :func:`priced` fills
``Usage.cost_usd``. The :data:`DEFAULT_PRICES` are illustrative list prices, meant to be
overridden from configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from agentstream.agents.messages import Message, ModelReply
from agentstream.schemas import PermanentError, RetryableError, Usage
from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "DEFAULT_PRICES",
    "Model",
    "ModelPrice",
    "ModelRejected",
    "ModelTimeout",
    "ModelUnavailable",
    "ToolSpec",
    "price_for",
    "priced",
]


class ToolSpec(BaseModel):
    """A tool as the model sees it: its name, what it does, and the JSON Schema of its arguments."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    parameters: dict[str, JsonValue] = Field(default_factory=dict)

    def __hash__(self) -> int:
        # Equal specs have equal names and descriptions, so this agrees with ``==`` (which
        # compares the parameters too) while staying cheap: a tuple of specs can key a cache
        # of their JSON. The parameters must not be changed in place (the spec is frozen).
        return hash((self.name, self.description))

    def openai_format(self) -> dict[str, JsonValue]:
        """The ``tools`` entry of an OpenAI chat-completions request."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@runtime_checkable
class Model(Protocol):
    """A chat model that can call tools.

    ``complete`` is one model call; it never runs tools itself. It raises
    :class:`ModelUnavailable` when retrying later may help and :class:`ModelRejected` when it
    cannot.
    """

    name: str

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply: ...


class ModelUnavailable(RetryableError):
    """The model endpoint could not answer now: 429, 5xx, connection lost."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class ModelTimeout(ModelUnavailable):
    """The model endpoint did not answer within the client's timeout."""


class ModelRejected(PermanentError):
    """The model endpoint refused the request (4xx other than 429): retrying cannot help."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ModelPrice(BaseModel):
    """US dollars per 1000 prompt and completion tokens."""

    model_config = ConfigDict(frozen=True)

    prompt_per_1k: float = Field(default=0.0, ge=0)
    completion_per_1k: float = Field(default=0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round(
            prompt_tokens / 1000 * self.prompt_per_1k
            + completion_tokens / 1000 * self.completion_per_1k,
            10,
        )


#: Illustrative prices; configuration overrides them. Unknown models cost 0.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "offline": ModelPrice(),
    "gpt-4o-mini": ModelPrice(prompt_per_1k=0.00015, completion_per_1k=0.0006),
    "gpt-4o": ModelPrice(prompt_per_1k=0.0025, completion_per_1k=0.01),
}


def price_for(model: str, table: Mapping[str, ModelPrice] = DEFAULT_PRICES) -> ModelPrice:
    """The price of ``model`` in ``table``; free when the table does not list it."""
    return table.get(model, ModelPrice())


def priced(prompt_tokens: int, completion_tokens: int, price: ModelPrice) -> Usage:
    """The usage of one model call, its cost computed from ``price``."""
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        cost_usd=price.cost(prompt_tokens, completion_tokens),
        model_calls=1,
    )
