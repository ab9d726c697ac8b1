"""The README's quick start, from the outside: ``agentstream up`` as a process, talked to over
HTTP, with the built-in assistant and with the support team of ``examples/support.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import ROOT
from tests.services.processes import free_port

pytestmark = pytest.mark.timeout(120)


class Up:
    def __init__(self, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def ask(self, text: str, **body: Any) -> dict[str, Any]:
        reply = httpx.post(
            f"{self.url}/v1/requests",
            json={"text": text, **body},
            headers={"Prefer": "wait=20"},
            timeout=30,
        )
        assert reply.status_code in (200, 201, 202), (reply.status_code, reply.text)
        data: dict[str, Any] = reply.json()
        assert data["status"] in ("completed", "failed", "timed_out", "rejected"), data
        return data


def _up(tmp_path: Path, *args: str) -> Iterator[Up]:
    port = free_port()
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTREAM_", "KAFKA_"))}
    env.pop("REDIS_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", "up", "--port", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        up = Up(port, log)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{up.url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "not ready in 60 s\n" + log.read_text()
                time.sleep(0.2)
            yield up
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    assert code == 0, log.read_text()


@pytest.fixture
def assistant(tmp_path: Path) -> Iterator[Up]:
    yield from _up(tmp_path)


@pytest.fixture
def support(tmp_path: Path) -> Iterator[Up]:
    yield from _up(tmp_path, "--app", "examples.support")


def test_the_quick_start_answers_the_readmes_turns(assistant: Up) -> None:
    first = assistant.ask("Remember that my budget is 1200.", conversation_id="demo")
    assert first["response"]["text"] == "I will remember that your budget is 1200."
    second = assistant.ask(
        "What is my budget times 3, and what time is it in UTC?", conversation_id="demo"
    )
    text = second["response"]["text"]
    assert text.startswith("Your budget is 1200, so 1200 * 3 = 3600. It is ")
    assert second["response"]["agent"] == "assistant"
    assert second["response"]["tool_calls"] == ["recall", "calculator", "current_time"]
    empty = httpx.post(f"{assistant.url}/v1/requests", json={"text": ""}, timeout=10)
    assert empty.status_code == 422


def test_the_support_team_hands_off_and_calls_an_agent_as_a_tool(support: Up) -> None:
    refund = support.ask(
        "I was charged twice for invoice INV-1042, I want a refund", conversation_id="t1"
    )
    answer = refund["response"]
    assert (answer["status"], answer["agent"], answer["handoffs"]) == (
        "completed",
        "billing",
        ["triage"],
    )
    assert "INV-1042" in answer["text"]
    assert "paid twice" in answer["text"]
    # The conversation stays with the agent it was handed to.
    follow = support.ask("And what about INV-2001?", conversation_id="t1")["response"]
    assert (follow["agent"], follow["handoffs"]) == ("billing", [])
    assert "INV-2001" in follow["text"]

    math = support.ask("What is 12 * 7 + 3?", conversation_id="t2")["response"]
    assert (math["agent"], math["tool_calls"]) == ("triage", ["ask_math"])
    assert math["text"] == "The math agent says: 12 * 7 + 3 = 87."
    assert math["usage"]["model_calls"] == 4  # triage's two and math's two, rolled up

    quote = support.ask("I need a quote for 5 seats on the pro plan")["response"]
    assert (quote["agent"], quote["output"]["plan"], quote["output"]["seats"]) == (
        "quote",
        "pro",
        5,
    )

    card = support.ask("my card is 4111 1111 1111 1111", conversation_id="t3")["response"]
    assert card["status"] == "rejected"
    assert "input guardrail no_card_numbers" in card["error"]

    unknown = httpx.post(
        f"{support.url}/v1/requests", json={"text": "hi", "agent": "nobody"}, timeout=10
    )
    assert unknown.status_code == 422
    assert "Unknown agent 'nobody'" in unknown.text
