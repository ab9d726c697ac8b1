"""A conversation's rolling summary, maintained by the memory worker from finished requests.

The short-term history the agent reads is trimmed to a token budget, so older turns fall
out of it; the summary keeps a bounded, human-readable trace of them (how many turns, the
latest topics, one line per recent turn). It is built without a model, from the user's text
and the final answer only, so replaying the response topic rebuilds exactly the same
summary.
"""

from __future__ import annotations

from datetime import datetime

from agentstream.agents.memory.keywords import keywords
from pydantic import BaseModel, Field

__all__ = ["ConversationSummary"]

_MAX_TOPICS = 8
_MAX_LINES = 5
_CLIP = 80


def _clip(text: str, limit: int = _CLIP) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


class ConversationSummary(BaseModel):
    """Turn count, latest topics and a short rolling summary of one conversation."""

    conversation_id: str
    turns: int = 0
    topics: list[str] = Field(default_factory=list, description="Newest first.")
    lines: list[str] = Field(default_factory=list, description="One per recent turn, oldest first.")
    last_request_id: str | None = None
    updated: datetime | None = None

    @property
    def summary(self) -> str:
        """The rolling summary as one text, ready for a system prompt."""
        if not self.turns:
            return ""
        head = f"{self.turns} turn{'s' if self.turns != 1 else ''} so far"
        if self.topics:
            head += f"; recent topics: {', '.join(self.topics)}"
        return head + ".\n" + "\n".join(self.lines)

    def update(
        self,
        user_text: str,
        answer_text: str | None,
        *,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> ConversationSummary:
        """Add one finished turn. Recording the same ``request_id`` twice changes nothing."""
        if request_id is not None and request_id == self.last_request_id:
            return self
        turn = self.turns + 1
        line = f"{turn}. user: {_clip(user_text)}"
        if answer_text:
            line += f" | answer: {_clip(answer_text)}"
        fresh = [t for t in keywords(user_text) if not t.isdigit()][:_MAX_TOPICS]
        topics = fresh + [t for t in self.topics if t not in fresh]
        self.turns = turn
        self.topics = topics[:_MAX_TOPICS]
        self.lines = [*self.lines, line][-_MAX_LINES:]
        self.last_request_id = request_id
        self.updated = now
        return self
