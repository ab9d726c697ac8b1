"""The workload of ``bench/pipeline.py``: the user requests it publishes, encoded once.

Every call numbers its conversations anew, so no text repeats and the model's response
cache never answers; the relay gets the same records with values padded to the pipeline's
mean record size (:func:`padded`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

HOPS = {"chat": 1, "tool": 3}
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    key: bytes
    value: bytes
    headers: Headers
    expect: str  # in the answer text ("" for chat)

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
        if scenario == "chat":
            text, expect = f"Hello there, how are you? This is guest {conv} turn {turn}.", ""
        else:
            a, b = 17 + conv, 3 + turn
            text, expect = f"What is {a} * {b}?", f"= {a * b}"
        event = UserRequest(
            source="bench",
            request_id=f"{tag}-{scenario}-{i}",
            conversation_id=f"{tag}-{scenario}-c{conv}",
            data=UserRequestData(text=text, user=f"guest-{conv}"),
        )
        key, value, headers = encode(event)
        requests.append(Request(event.request_id, key, value, tuple(headers), expect))
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
