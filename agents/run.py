"""The data of one agent run: its state, and the decisions the loop hands the handler.

:class:`RunState` is everything a worker needs to continue a request after a crash or a
rebalance; the agent handler stores it as JSON under the request id. The decisions
(:class:`CallTools`, :class:`Finish`, :class:`Fail`) are what :mod:`agentstream.agents.loop` returns
after each model reply. Both are plain data; the transitions live in :mod:`agentstream.agents.loop`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from agentstream.agents.messages import Message, ToolInvocation, ToolOutcome
from agentstream.schemas import PermanentError, SubRunParent, Usage
from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "AskAgain",
    "Awaiting",
    "CallTools",
    "Decision",
    "Fail",
    "Finish",
    "HandOff",
    "InvalidTransition",
    "RunState",
    "RunStatus",
]

RunStatus = Literal["running", "completed", "failed", "timed_out", "rejected"]
Awaiting = Literal["model", "tools", "handoff"]


class InvalidTransition(PermanentError):
    """The state cannot take this input (a model reply while tools are pending, say)."""


class CallTools(BaseModel):
    """Run these tool calls of ``step``, all in parallel, then feed back each result."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["call_tools"] = "call_tools"
    step: int
    invocations: list[ToolInvocation]


class Finish(BaseModel):
    """The run completed with this answer."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["finish"] = "finish"
    text: str
    output: JsonValue = None


class HandOff(BaseModel):
    """The model handed the conversation to ``target``: the run continues there."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["hand_off"] = "hand_off"
    target: str
    reason: str | None = None


class AskAgain(BaseModel):
    """The answer did not validate against the output type: the model is asked again, told
    why (``reason``), within the agent's ``output_retries``."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["ask_again"] = "ask_again"
    reason: str


class Fail(BaseModel):
    """The run ended without an answer: ``failed`` (step limit, empty reply, a failure outside
    the loop), ``timed_out``, or ``rejected`` (the request itself was invalid)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["fail"] = "fail"
    status: Literal["failed", "timed_out", "rejected"]
    reason: str


Decision = Annotated[CallTools | Finish | Fail | HandOff | AskAgain, Field(discriminator="kind")]


class RunState(BaseModel):
    """Everything needed to continue a request on any worker, stored as JSON."""

    request_id: str
    conversation_id: str
    tenant: str
    user: str | None = None
    traceparent: str | None = None
    partition: int | None = Field(None, description="Opaque to the loop; the handler's to set.")
    requested_model: str | None = None
    messages: list[Message]
    history_len: int = Field(0, description="Messages of prior history in `messages`.")
    step: int = Field(0, description="Model replies applied so far.")
    max_steps: int
    deadline: datetime | None = None
    pending: dict[str, ToolInvocation] = Field(default_factory=dict)
    results: dict[str, ToolOutcome] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    tool_calls_made: list[str] = Field(default_factory=list)
    status: RunStatus = "running"
    awaiting: Awaiting | None = Field("model", description="What a running state waits for.")
    model: str | None = None
    answer: str | None = None
    error: str | None = None
    agent: str | None = Field(None, description="The declared agent running it now.")
    run_id: str | None = Field(None, description="A sub-run's id; None: the request's run.")
    parent: SubRunParent | None = Field(None, description="Where a sub-run's answer goes.")
    chain: list[str] = Field(
        default_factory=list, description="A sub-run's callers, from the request's run down."
    )
    handoffs: list[str] = Field(
        default_factory=list, description="The agents that handed the request on, in order."
    )
    output: JsonValue = Field(None, description="The validated structured answer.")
    output_tries: int = Field(0, description="Answers sent back for not validating.")
    requested_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status != "running"

    @property
    def id(self) -> str:
        """The key of this run: the sub-run's id, else the request's."""
        return self.run_id or self.request_id

    @property
    def user_message(self) -> Message:
        return self.messages[self.history_start + self.history_len]

    @property
    def history_start(self) -> int:
        return 1 if self.messages and self.messages[0].role == "system" else 0
