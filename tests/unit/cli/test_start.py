"""What a worker process does at its start, and what it leaves out (issue 17: start to first
answer). The commands of the CLI's extension modules are parsed only when one of them is
asked for; the event models build their validators on first use, and behave the same."""

from __future__ import annotations

import subprocess
import sys

import pytest
from agentstream.cli import _command_of, _parser


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["worker", "agent"], "worker"),
        (["--config", "worker", "up"], "up"),
        (["--json", "status"], "status"),
        (["--debug", "--config=x.toml", "tail", "t"], "tail"),
        (["--help", "worker"], None),
        ([], None),
    ],
)
def test_the_command_is_the_first_word_that_is_no_option(
    argv: list[str], command: str | None
) -> None:
    assert _command_of(argv) == command


def test_a_built_in_command_parses_without_the_extension_commands() -> None:
    assert _parser(["worker", "agent"]).parse_args(["worker", "agent"]).kinds == ["agent"]
    assert _parser(["status"]).parse_args(["status"]).command == "status"
    assert _parser().parse_args(["dlq", "list"]).command == "dlq"


def test_starting_a_worker_imports_no_extension_module() -> None:
    code = (
        "import sys\n"
        "from agentstream.cli import _parser\n"
        "_parser(['worker', 'agent']).parse_args(['worker', 'agent'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('agentstream.status', "
        "'agentstream.tail', 'agentstream.dlq', 'agentstream.topics_command', "
        "'agentstream.deploy'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_event_model_is_built_on_first_use_and_then_round_trips() -> None:
    code = (
        "from agentstream.schemas import UserRequest, UserRequestData, decode, encode\n"
        "before = UserRequest.__pydantic_complete__\n"
        "event = UserRequest(source='t', request_id='r', conversation_id='c',\n"
        "                    data=UserRequestData(text='hi'))\n"
        "assert decode(encode(event)[1]) == event\n"
        "print(before, UserRequest.__pydantic_complete__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
