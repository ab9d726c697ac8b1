"""The loop owns the terminal transitions the handlers used to make by hand: a run failed by
a dead-lettered event (:func:`fail`), a request that never ran (:func:`refuse`), what is
kept of a finished run (:func:`compact`), and the answer built from the state alone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from agentstream.agents.loop import (
    InvalidTransition,
    apply_reply,
    compact,
    expire,
    fail,
    history_after,
    refuse,
    response_data,
)

from tests.support.runs import T0, answer, begin, calls


def test_fail_ends_a_running_run_once() -> None:
    state, _ = apply_reply(begin(), calls("calculator"), T0)
    failed, decision = fail(state, "ToolTimeout: gave up")
    assert decision is not None
    assert (failed.status, failed.error, failed.pending, failed.awaiting) == (
        "failed",
        "ToolTimeout: gave up",
        {},
        None,
    )
    data = response_data(failed)
    assert (data.status, data.error, data.steps, data.tool_calls) == (
        "failed",
        "ToolTimeout: gave up",
        1,
        ["calculator"],
    )
    again, none = fail(failed, "another reason")
    assert none is None
    assert again is failed


def test_a_finished_run_does_not_fail_or_expire() -> None:
    done, _ = apply_reply(begin(), answer("4"), T0)
    assert fail(done, "late")[1] is None
    assert expire(done, T0 + timedelta(days=1))[1] is None


def test_expire_answers_timed_out_with_the_steps_made() -> None:
    state, _ = apply_reply(begin(), calls("calculator"), T0)
    assert state.deadline is not None
    assert expire(state, state.deadline - timedelta(seconds=1))[1] is None
    expired, decision = expire(state, state.deadline)
    assert decision is not None
    assert decision.status == "timed_out"
    data = response_data(expired)
    assert (data.status, data.steps, data.text) == ("timed_out", 1, None)


@pytest.mark.parametrize(("rejected", "status"), [(True, "rejected"), (False, "failed")])
def test_refuse_is_the_terminal_state_of_a_request_that_never_ran(
    rejected: bool, status: str
) -> None:
    state = refuse(
        request_id="r",
        conversation_id="c",
        tenant="t",
        reason="SchemaError: bad",
        rejected=rejected,
        traceparent="00-x",
    )
    assert state.terminal
    data = response_data(state)
    assert (data.status, data.error, data.steps, data.text) == (status, "SchemaError: bad", 0, None)


def test_compact_keeps_the_answer_and_drops_the_conversation() -> None:
    done, _ = apply_reply(begin(), answer("4"), T0)
    history = history_after(done)
    kept = compact(done)
    assert (kept.messages, kept.pending, kept.results) == ([], {}, {})
    assert response_data(kept) == response_data(done)
    assert [m.content for m in history][-1] == "4"
    with pytest.raises(InvalidTransition):
        compact(begin())
