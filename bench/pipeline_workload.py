"""The workload of ``bench/pipeline.py``: the user requests it publishes, encoded once.

The workers run the app ``examples.support`` (agents triage (default), billing, math,
quote) with the offline model. Since issue 16 every request goes user_request -> router ->
``agent.<name>``, so the scenarios and their worker hops (records produced by workers on
the way from the request to its answer; the router's read of the answer, which frees the
conversation's next turn, produces nothing for the last turn and is not counted):

- ``chat``: triage answers directly: router, triage -> agent_response: **2 hops**.
- ``tool``: math (named in the request) calls the calculator: router, math -> tool_call,
  tool worker -> tool_result (to ``agent.math``), math -> agent_response: **4 hops**.
- ``handoff``: triage hands a billing question to billing, which looks the invoice up with
  the app's tool: router, triage -> handoff task (``agent.billing``), billing -> tool_call,
  tool worker -> tool_result, billing -> agent_response: **5 hops**.
- ``agent_tool``: triage asks math (an agent as a tool), math calls the calculator and
  answers triage: router, triage -> subrun task (``agent.math``), math -> tool_call, tool
  worker -> tool_result, math -> tool_result (to ``agent.triage``), triage ->
  agent_response: **6 hops**.

:data:`LAYOUT` says which worker process makes each hop (the relays copy it). The hops are
counted on the topics in every run's warm-up, not only declared here
(``bench.pipeline_batch.records_per_request``).

Every call numbers its conversations anew, so no text repeats and the model's response
cache never answers; the relay gets the same records with values padded to the pipeline's
mean record size (:func:`padded`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

#: The app the workers run.
APP = "examples.support"
#: Per scenario, the worker kind (process) that makes each hop, in order.
LAYOUT: dict[str, tuple[str, ...]] = {
    "chat": ("router", "agent"),
    "tool": ("router", "agent", "tool", "agent"),
    "handoff": ("router", "agent", "agent", "tool", "agent"),
    "agent_tool": ("router", "agent", "agent", "tool", "agent", "agent"),
}
HOPS = {scenario: len(layout) for scenario, layout in LAYOUT.items()}
#: Per scenario, the answer's tools called, agent and handoffs (with ``examples.support``).
EXPECT: dict[str, tuple[list[str], str, list[str]]] = {
    "chat": ([], "triage", []),
    "tool": (["calculator"], "math", []),
    "handoff": (["lookup_invoice"], "billing", ["triage"]),
    "agent_tool": (["ask_math"], "triage", []),
}
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    key: bytes
    value: bytes
    headers: Headers
    expect: str  # in the answer text ("" for chat)
    scenario: str = "chat"

    @property
    def size(self) -> int:
        return record_size(self.key, self.value, self.headers)


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


_numbers = itertools.count()


def make_requests(n: int, conversations: int, scenario: str, tag: str) -> list[Request]:
    """``n`` requests over ``conversations``, interleaved: turn 0 of every conversation,
    then turn 1, ... Conversations are numbered anew on every call, so texts never repeat
    and the model's response cache never answers (each request costs its model calls)."""
    from agentstream.schemas import UserRequest, UserRequestData, encode

    first = next(_numbers) * 1_000_000
    requests = []
    for i in range(n):
        conv, turn = first + i % conversations, i // conversations
        a, b = 17 + conv, 3 + turn
        agent: str | None = "triage"  # named: after a handoff billing would keep the chat
        if scenario == "chat":
            text, expect = f"Hello there, how are you? This is guest {conv} turn {turn}.", ""
            agent = None  # the default agent, as most requests come
        elif scenario == "tool":
            text, expect, agent = f"What is {a} * {b}?", f"= {a * b}", "math"
        elif scenario == "handoff":
            text = (
                f"I was charged twice for invoice INV-1042, I want a refund "
                f"(customer {conv}, message {turn})"
            )
            expect = "INV-1042"
        elif scenario == "agent_tool":
            text, expect = f"What is {a} * {b}?", f"= {a * b}"
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
        event = UserRequest(
            source="bench",
            request_id=f"{tag}-{scenario}-{i}",
            conversation_id=f"{tag}-{scenario}-c{conv}",
            data=UserRequestData(text=text, user=f"guest-{conv}", agent=agent),
        )
        key, value, headers = encode(event)
        requests.append(Request(event.request_id, key, value, tuple(headers), expect, scenario))
    return requests


def padded(requests: Sequence[Request], size: int) -> list[Request]:
    """The relay's records: same ids, keys and headers, values padded to ``size`` bytes."""
    return [
        replace(r, value=b"x" * max(1, size - r.size + len(r.value)), expect="") for r in requests
    ]


def request_id_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    for k, v in headers or ():
        if k == "ce_requestid":
            return v.decode()
    return None
