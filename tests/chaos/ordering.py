"""Order per conversation and "a 503 means no": the checks that read more than the responses.

Both add their findings to a :class:`~tests.chaos.invariants.ChaosReport` that
:func:`~tests.chaos.invariants.verify` made, so that ``report.ok`` and ``report.describe()``
cover them:

- :func:`check_turn_order` (DESIGN.md §3.7) compares each conversation's answers with the
  order of its requests on the ``user_request`` partition, and with what the answers show
  of the turns before them;
- :func:`check_refused` (DESIGN.md §3.1) looks for any trace of processing of the requests
  the ingress answered 503.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from itertools import pairwise
from typing import Any

from agentstream.schemas import AgentResponse, SchemaError, UserRequest, decode
from agentstream.topics import Catalog, Record, Topic

from tests.chaos.invariants import ChaosReport, Reader
from tests.workload import Turn

__all__ = ["ORDER_KINDS", "check_refused", "check_turn_order"]


#: What :func:`check_turn_order` tells apart, in :attr:`ChaosReport.order_counts`.
ORDER_KINDS = (
    "accepted_out_of_order",
    "answered_out_of_order",
    "answer_saw_other_state",
    "history_not_grown",
)
_DIGITS = re.compile(r"\d+")


async def check_turn_order(
    reader: Reader,
    catalog: Catalog,
    turns: Sequence[Turn],
    report: ChaosReport,
    *,
    responses: list[Record],
    foreign: Mapping[str, Collection[str]] | None = None,
) -> None:
    """Order per conversation (DESIGN.md §3.7), added to ``report``.

    The reference is the order of the requests on the ``user_request`` partition (their
    first copies), not the order the test meant: in it, for each conversation,

    - *accepted_out_of_order*: a turn whose request is on the topic before its predecessor's
      (the client sent each turn only after the one before it was accepted);
    - *answered_out_of_order*: a turn whose first response is on ``agent_response`` before
      the first response of the turn before it (or on another partition);
    - *answer_saw_other_state*: an answer containing one of ``foreign[request_id]``, texts
      that only an answer computed on another turn's state contains (a remembered value that
      was replaced before this turn, or not yet stated), up to the first turn that was not
      completed;
    - *history_not_grown*: a completed turn whose prompt was not longer than that of the
      last earlier completed turn of the same shape (text with digits masked, steps, model
      calls): the history it was given lacks a turn that came before it. This holds while the
      conversation's history fits the agent's history budget (2000 tokens by default).
    """
    wanted = {t.request_id: t for t in turns}
    placed: dict[str, tuple[int, int]] = {}
    for record in await reader.read(catalog.name(Topic.USER_REQUEST), read_committed=True):
        request = decode_or_none(record)
        if isinstance(request, UserRequest) and request.request_id in wanted:
            placed.setdefault(request.request_id, (record.partition, record.offset))
    answers: dict[str, tuple[Record, AgentResponse]] = {}
    for record in responses:
        event = decode_or_none(record)
        if isinstance(event, AgentResponse) and event.request_id in wanted:
            answers.setdefault(event.request_id, (record, event))
    counts = dict.fromkeys(ORDER_KINDS, 0)
    broken: set[str] = set()

    def note(kind: str, conversation: str, what: str) -> None:
        counts[kind] += 1
        broken.add(conversation)
        report.order_violations.append(f"{kind} {conversation}: {what}")

    by_conv: dict[str, list[Turn]] = defaultdict(list)
    for turn in turns:
        if turn.request_id in placed:
            by_conv[turn.conversation_id].append(turn)
    for conv, conv_turns in by_conv.items():
        ordered = sorted(conv_turns, key=lambda t: placed[t.request_id])
        for before, after in pairwise(ordered):
            if after.index < before.index:
                note(
                    "accepted_out_of_order",
                    conv,
                    f"turn {before.index} [{before.request_id}] at {placed[before.request_id]} "
                    f"after turn {after.index} [{after.request_id}] at "
                    f"{placed[after.request_id]}",
                )
        answered = [t for t in ordered if t.request_id in answers]
        for before, after in pairwise(answered):
            first, then = answers[before.request_id][0], answers[after.request_id][0]
            if then.partition != first.partition or then.offset <= first.offset:
                note(
                    "answered_out_of_order",
                    conv,
                    f"turn {after.index} [{after.request_id}] answered at "
                    f"p{then.partition}@{then.offset} {then.timestamp_ms}, turn {before.index} "
                    f"[{before.request_id}] at p{first.partition}@{first.offset} "
                    f"{first.timestamp_ms}",
                )
        last: dict[tuple[str, int, int], tuple[Turn, int]] = {}
        # After a turn that was not completed (or not answered), a later answer may rightly
        # show an older state: the state checks stop there.
        intact = True
        for turn in ordered:
            if turn.request_id not in answers:
                intact = False
                continue
            response = answers[turn.request_id][1].data
            text = response.text or ""
            seen = [m for m in (foreign or {}).get(turn.request_id, ()) if m in text]
            if seen and intact:
                note(
                    "answer_saw_other_state",
                    conv,
                    f"turn {turn.index} [{turn.request_id}] {turn.text!r} -> {text!r} "
                    f"(want {turn.expect!r})",
                )
            if response.status != "completed":
                intact = False
                continue
            usage = response.usage
            shape = (
                _DIGITS.sub("#", turn.text),
                response.steps,
                usage.model_calls + usage.cached_calls,
            )
            earlier = last.get(shape)
            if earlier is not None and usage.prompt_tokens <= earlier[1]:
                note(
                    "history_not_grown",
                    conv,
                    f"turn {turn.index} [{turn.request_id}] prompt {usage.prompt_tokens} "
                    f"tokens, earlier turn {earlier[0].index} {earlier[1]}",
                )
            last[shape] = (turn, usage.prompt_tokens)
    report.order_counts = counts
    report.out_of_order += sorted(broken - set(report.out_of_order))


async def check_refused(
    reader: Reader, catalog: Catalog, request_ids: Collection[str], report: ChaosReport
) -> None:
    """A 503 means no (DESIGN.md §3.1), added to ``report``: none of ``request_ids`` (requests
    the ingress answered 503, whether or not their record reached ``user_request`` later)
    may have a tool or memory call, or an answer other than ``rejected``. A ``rejected``
    answer is counted apart: the request was refused, not run."""
    refused = set(request_ids)
    acted: set[str] = set()
    rejected: set[str] = set()
    for record in await reader.read(catalog.name(Topic.AGENT_RESPONSE), read_committed=True):
        response = decode_or_none(record)
        if isinstance(response, AgentResponse) and response.request_id in refused:
            (rejected if response.data.status == "rejected" else acted).add(response.request_id)
    for topic in (Topic.TOOL_CALL, Topic.MEMORY_CALL):
        for record in await reader.read(catalog.name(topic), read_committed=True):
            event = decode_or_none(record)
            if event is not None and event.request_id in refused:
                acted.add(event.request_id)
    report.refused = len(refused)
    report.refused_processed = sorted(acted)
    report.refused_rejected = len(rejected - acted)


def decode_or_none(record: Record) -> Any:
    try:
        return decode(record.value)
    except SchemaError:
        return None
