"""Tools that fail on purpose, loaded by chaos worker processes (``AGENTSTREAM_TOOLS_MODULE``).

- ``always_fails`` raises a plain ``RuntimeError`` every time: the runtime retries it until
  the budget is spent, then dead-letters the call (and answers it with a failed result).
- ``flaky`` fails ``failures`` times per ``key`` (a retriable error), then succeeds.

Both count their invocations in files under ``CHAOS_TOOLS_DIR`` (one line per attempt,
appended with ``O_APPEND``), so the count survives a worker process being killed and is
shared by every tool worker process of a test; the test reads the files to check how often
each tool really ran. The offline model never calls these tools: tests produce the
``tool_call`` events for them directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentstream.agents import ToolRegistry
from agentstream.schemas import RetryableError
from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = ["AlwaysFailsArgs", "FlakyArgs", "attempts", "register", "successes"]

STATE_DIR_ENV = "CHAOS_TOOLS_DIR"


class AlwaysFailsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")


class FlakyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    failures: int = Field(ge=0, le=100)


def _state_dir() -> Path:
    raw = os.environ.get(STATE_DIR_ENV)
    if not raw:
        raise RuntimeError(f"{STATE_DIR_ENV} is not set: the chaos tools keep their counts there")
    return Path(raw)


def _append(path: Path, line: str) -> int:
    """Append ``line`` and return how many lines the file has now."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
    return len(path.read_text().splitlines())


def attempts(state_dir: Path, key: str) -> int:
    """How many times a chaos tool ran for ``key`` (read by tests)."""
    path = state_dir / f"{key}.attempts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def successes(state_dir: Path, key: str) -> int:
    """How many times ``flaky`` succeeded for ``key`` (read by tests)."""
    path = state_dir / f"{key}.ok"
    return len(path.read_text().splitlines()) if path.exists() else 0


def register(registry: ToolRegistry) -> None:
    @registry.tool(timeout_s=5.0)
    def always_fails(args: AlwaysFailsArgs) -> JsonValue:
        """A tool that fails every time (chaos tests only)."""
        n = _append(_state_dir() / f"{args.key}.attempts", str(os.getpid()))
        raise RuntimeError(f"always_fails: attempt {n} for {args.key} failed, as always")

    @registry.tool(timeout_s=5.0)
    def flaky(args: FlakyArgs) -> JsonValue:
        """A tool that fails a few times per key before it works (chaos tests only)."""
        n = _append(_state_dir() / f"{args.key}.attempts", str(os.getpid()))
        if n <= args.failures:
            raise RetryableError(f"flaky: failure {n} of {args.failures} for {args.key}")
        _append(_state_dir() / f"{args.key}.ok", str(os.getpid()))
        return {"key": args.key, "attempts": n}
