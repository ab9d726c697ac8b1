"""Long-term memory (facts, remember/recall tools) and the rolling conversation summary."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from agentstream.agents.memory.book import (
    MAX_FACTS,
    MEMORY_TOOLS,
    MemoryBook,
    apply_memory_call,
    memory_scope,
    memory_tool_specs,
    parse_fact,
)
from agentstream.agents.memory.summary import ConversationSummary
from agentstream.agents.tools.registry import InvalidArguments, UnknownTool

NOW = datetime(2024, 5, 6, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("my budget is 1200", "budget", "1200"),
        ("Remember that my budget is 1200.", "budget", "1200"),
        ("remember: my name is Ada", "name", "Ada"),
        (
            "please remember my favorite colors are green and blue",
            "favorite color",
            "green and blue",
        ),
        ("that the wifi password is 'hunter2'", "wifi password", "hunter2"),
        ("the user's budget is $1,500", "budget", "$1,500"),
        ("my name's Ada", "name", "Ada"),
        ("call me Ada", "name", "Ada"),
        ("I live in Lisbon", "location", "Lisbon"),
        ("I work at ACME Corp.", "employer", "ACME Corp"),
        ("I like green tea", "like green tea", "I like green tea"),
        ("Note that I prefer window seats", "prefer window seat", "I prefer window seats"),
    ],
)
def test_parse_fact(text: str, key: str, value: str) -> None:
    assert parse_fact(text) == (key, value)


def test_remember_and_recall() -> None:
    book = MemoryBook(tenant="acme", user="ada")
    fact = book.remember("my budget is 1200", request_id="r1", now=NOW)
    assert (fact.key, fact.value, fact.source_request_id, fact.time) == (
        "budget",
        "1200",
        "r1",
        NOW,
    )
    book.remember("My name is Ada", now=NOW)
    book.remember("I like green tea", now=NOW)
    assert [f.value for f in book.recall("what is my budget?")] == ["1200"]
    assert [f.value for f in book.recall("budgets")] == ["1200"]
    assert [f.value for f in book.recall("monthly budget")] == ["1200"]
    assert [f.key for f in book.recall("name")] == ["name"]
    assert [f.key for f in book.recall("tea")] == ["like green tea"]
    assert book.recall("car") == []
    everything = ["budget", "like green tea", "name"]
    assert [f.key for f in book.recall("")] == everything
    assert [f.key for f in book.recall("everything")] == everything
    assert [f.key for f in book.recall("what do you remember about me?")] == everything


def test_newest_value_wins_and_redelivery_changes_nothing() -> None:
    book = MemoryBook(tenant="acme")
    book.remember("my budget is 1200", request_id="r1", now=NOW)
    book.remember("my budget is 1500", request_id="r2", now=NOW)
    assert [f.value for f in book.recall("budget")] == ["1500"]
    before = book.model_dump_json()
    book.remember("my budget is 1500", request_id="r2", now=NOW)
    assert book.model_dump_json() == before


def test_explicit_key() -> None:
    book = MemoryBook()
    assert book.remember("1200", key="Budget", now=NOW).key == "budget"
    assert book.remember("my budget is 1300", key="budget", now=NOW).value == "1300"
    assert book.remember("green", key="favourite colour", now=NOW).value == "green"


def test_book_is_bounded() -> None:
    book = MemoryBook()
    for i in range(MAX_FACTS + 5):
        book.remember(f"my item{i} is {i}", now=NOW)
    assert len(book.facts) == MAX_FACTS
    assert "item0" not in book.facts
    assert f"item{MAX_FACTS + 4}" in book.facts


def test_book_round_trips_as_json() -> None:
    book = MemoryBook(tenant="acme", user="ada")
    book.remember("my budget is 1200", request_id="r1", now=NOW)
    assert MemoryBook.model_validate_json(book.model_dump_json()) == book


def test_scope() -> None:
    assert memory_scope("acme", None) == "acme"
    assert memory_scope("acme", "ada") == "acme/ada"
    assert memory_scope("a/b", None) != memory_scope("a", "b")
    assert MemoryBook(tenant="acme", user="ada").scope == "acme/ada"


def test_memory_tool_specs() -> None:
    specs = {s.name: s for s in memory_tool_specs()}
    assert set(specs) == MEMORY_TOOLS == {"remember", "recall"}
    remember = specs["remember"].parameters
    assert remember["required"] == ["fact"]
    assert set(remember["properties"]) == {"fact", "key"}  # type: ignore[arg-type]
    assert remember["additionalProperties"] is False
    recall = specs["recall"].parameters
    assert "required" not in recall
    assert set(recall["properties"]) == {"query"}  # type: ignore[arg-type]


def test_apply_memory_call() -> None:
    book = MemoryBook(tenant="acme")
    out = apply_memory_call(book, "remember", {"fact": "my budget is 1200"}, now=NOW)
    assert out == {"remembered": {"key": "budget", "value": "1200"}, "scope": "acme"}
    out = apply_memory_call(book, "recall", {"query": "budget"}, now=NOW)
    assert out == {"query": "budget", "facts": [{"key": "budget", "value": "1200"}], "count": 1}
    assert apply_memory_call(book, "recall", {}, now=NOW) == {
        "query": "",
        "facts": [{"key": "budget", "value": "1200"}],
        "count": 1,
    }
    with pytest.raises(InvalidArguments) as caught:
        apply_memory_call(book, "remember", {"fact": "", "extra": 1}, now=NOW)
    assert sorted(caught.value.fields) == ["extra", "fact"]
    with pytest.raises(UnknownTool):
        apply_memory_call(book, "forget", {}, now=NOW)


def test_conversation_summary() -> None:
    summary = ConversationSummary(conversation_id="c1")
    assert summary.summary == ""
    summary.update("Remember that my budget is 1200.", "I will remember that.", request_id="r1")
    summary.update(
        "What is my budget times 3, and what time is it in Tokyo?",
        "3600. It is 21:30 in Tokyo.",
        request_id="r2",
        now=NOW,
    )
    assert summary.turns == 2
    assert summary.topics[:3] == ["budget", "time", "tokyo"]
    assert summary.updated == NOW
    assert summary.summary.startswith("2 turns so far; recent topics: budget, time, tokyo")
    assert "2. user: What is my budget times 3" in summary.summary
    again = summary.model_dump_json()
    summary.update("What is my budget times 3...", "dup", request_id="r2")
    assert summary.model_dump_json() == again  # same request: nothing changes
    for i in range(10):
        summary.update(f"question number {i} " + "x" * 200, None, request_id=f"q{i}")
    assert len(summary.lines) == 5
    assert all(len(line) < 120 for line in summary.lines)
    assert len(summary.topics) <= 8
    assert ConversationSummary.model_validate_json(summary.model_dump_json()) == summary
