"""Model routing (cheap first, large when asked or needed) and response-cache keys."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from agentstream.agents.loop import start_run
from agentstream.agents.messages import UNPARSED_ARGUMENTS, Message, ModelReply, ToolInvocation
from agentstream.agents.models.base import ToolSpec
from agentstream.agents.models.cache import cache_key, cached_reply, decode_reply, encode_reply
from agentstream.agents.models.routing import ModelRouter, UnknownModel
from agentstream.schemas import PermanentError, Usage, UserRequest, UserRequestData

TOOLS = [ToolSpec(name="calculator", description="math", parameters={"type": "object"})]


class Scripted:
    """A model that returns the given replies in turn and counts its calls."""

    def __init__(self, name: str, *replies: ModelReply) -> None:
        self.name = name
        self.replies = list(replies)
        self.calls = 0

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply:
        self.calls += 1
        return self.replies.pop(0)


def reply(
    model: str, text: str | None = "ok", *calls: ToolInvocation, tokens: int = 10
) -> ModelReply:
    usage = Usage(prompt_tokens=tokens, total_tokens=tokens, cost_usd=tokens / 1000, model_calls=1)
    return ModelReply(text=text, tool_calls=list(calls), usage=usage, model=model)


def router(**options: object) -> tuple[ModelRouter, Scripted, Scripted, Scripted]:
    small, large, other = Scripted("small-1"), Scripted("large-1"), Scripted("special")
    return ModelRouter(small, large, others=[other], **options), small, large, other  # type: ignore[arg-type]


def test_routes_by_request() -> None:
    r, small, large, other = router()
    prompt = [Message.user("hi")]
    assert r.route(None, prompt) is small
    assert r.route("small", prompt) is small
    assert r.route("cheap", prompt) is small
    assert r.route("large", prompt) is large
    assert r.route("LARGE", prompt) is large
    assert r.route("special", prompt) is other
    assert r.route("large-1", prompt) is large
    assert r.default_name == "small-1"
    assert set(r.models) == {"small-1", "large-1", "special"}
    with pytest.raises(UnknownModel, match=r"unknown model 'gpt-9'.*known: large, large-1"):
        r.route("gpt-9", prompt)
    assert issubclass(UnknownModel, PermanentError)


def test_long_prompts_go_to_the_large_model() -> None:
    r, small, large, _ = router(large_prompt_tokens=100)
    assert r.route(None, [Message.user("x" * 300)]) is small
    assert r.route(None, [Message.user("x" * 500)]) is large
    assert r.route("small", [Message.user("x" * 500)]) is small  # asked for: obeyed
    unbounded, small2, _, _ = router(large_prompt_tokens=None)
    assert unbounded.route(None, [Message.user("x" * 10**6)]) is small2


def test_choose_reads_the_run_state() -> None:
    r, small, large, _ = router()
    event = UserRequest(
        source="t",
        request_id="r",
        conversation_id="c",
        data=UserRequestData(text="hi", model="large"),
    )
    state = start_run(
        event,
        [],
        system_prompt=None,
        max_steps=4,
        default_deadline_s=None,
        history_budget_tokens=100,
    )
    assert r.choose(state) is large
    assert r.choose(state.model_copy(update={"requested_model": None})) is small


@pytest.mark.parametrize(
    ("bad", "escalate"),
    [
        (reply("small-1", None), True),
        (reply("small-1", "   "), True),
        (reply("small-1", None, ToolInvocation(id="1", name="shell")), True),
        (
            reply(
                "small-1",
                None,
                ToolInvocation(id="1", name="calculator", arguments={UNPARSED_ARGUMENTS: "{"}),
            ),
            True,
        ),
        (reply("small-1", None, ToolInvocation(id="1", name="calculator")), False),
        (reply("small-1", "fine"), False),
    ],
)
def test_needs_escalation(bad: ModelReply, escalate: bool) -> None:
    r, small, large, _ = router()
    assert r.needs_escalation(small, bad, TOOLS) is escalate
    assert r.needs_escalation(large, bad, TOOLS) is False
    assert router(escalate_on_bad_reply=False)[0].needs_escalation(small, bad, TOOLS) is False


async def test_complete_escalates_once_and_sums_usage() -> None:
    r, small, large, _ = router()
    small.replies = [reply("small-1", None, tokens=10)]
    large.replies = [reply("large-1", "the answer", tokens=30)]
    answer = await r.complete(None, [Message.user("hi")], TOOLS)
    assert answer.text == "the answer"
    assert answer.model == "large-1"
    assert answer.usage.prompt_tokens == 40
    assert answer.usage.model_calls == 2
    assert answer.usage.cost_usd == pytest.approx(0.04)
    assert (small.calls, large.calls) == (1, 1)


async def test_complete_keeps_a_good_cheap_reply() -> None:
    r, small, large, _ = router()
    small.replies = [reply("small-1", "cheap and fine")]
    assert (await r.complete(None, [Message.user("hi")], TOOLS)).text == "cheap and fine"
    assert large.calls == 0
    small.replies = [reply("small-1", None)]
    asked = await r.complete("small", [Message.user("hi")], TOOLS)
    assert asked.text is None  # the request asked for the small model: not overridden
    assert large.calls == 0


async def test_single_model_router_never_escalates() -> None:
    only = Scripted("offline", reply("offline", None))
    r = ModelRouter(only)
    assert r.large is only
    assert r.route("large", []) is only
    await r.complete(None, [Message.user("hi")], TOOLS)
    assert only.calls == 1


def test_cache_key_is_stable_and_sensitive() -> None:
    messages = [
        Message.system("s"),
        Message.user("what is 2+2?"),
        Message.assistant(
            None, [ToolInvocation(id="1", name="calculator", arguments={"b": 1, "a": 2})]
        ),
    ]
    key = cache_key("m", messages, TOOLS)
    assert len(key) == 64
    assert key == cache_key("m", [m.model_copy() for m in messages], list(TOOLS))
    reordered_args = [
        *messages[:2],
        Message.assistant(
            None, [ToolInvocation(id="1", name="calculator", arguments={"a": 2, "b": 1})]
        ),
    ]
    assert cache_key("m", reordered_args, TOOLS) == key
    two_tools = [*TOOLS, ToolSpec(name="clock", description="time")]
    assert cache_key("m", messages, two_tools) == cache_key("m", messages, two_tools[::-1])
    assert cache_key("other", messages, TOOLS) != key
    assert cache_key("m", messages[:2], TOOLS) != key
    assert cache_key("m", messages, two_tools) != key
    assert cache_key("m", [*messages[:1], Message.user("what is 2+3?"), messages[2]], TOOLS) != key
    # pinned: a change of the key's recipe must be deliberate (bump CACHE_KEY_VERSION)
    pinned = "a0cc8312e2b213dd1613aaa8f84e05d9f7ec34936976c380c6cdc91abe924ade"
    assert cache_key("offline", [Message.user("hi")], []) == pinned


def test_reply_round_trips_and_cache_hits_cost_nothing() -> None:
    original = reply("m", "hello", ToolInvocation(id="1", name="calculator", arguments={"e": "1"}))
    stored = encode_reply(original)
    assert decode_reply(stored) == original
    assert decode_reply(stored.encode()) == original
    hit = cached_reply(stored)
    assert hit.text == "hello"
    assert hit.tool_calls == original.tool_calls
    assert hit.usage == Usage(cached_calls=1)
