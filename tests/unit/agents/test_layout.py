"""The public face of ``agentstream.agents``: light to import, the same names as before.

A tool worker imports the tool registry and never calls a model, so importing it must not
import the ``openai`` package (a second of start-up and a dependency it does not use). Each
check runs in a fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import agentstream.agents",
        "from agentstream.agents import ToolRegistry",
        "from agentstream.agents.tools import builtin_registry",
        "from agentstream.agents.memory import MemoryBook",
        "from agentstream.agents.models import ModelRouter, ToolSpec",
        "from agentstream.handlers.tool import ToolHandlers",
        "from agentstream.handlers.memory import MemoryHandlers",
    ],
)
def test_importing_the_agents_api_leaves_openai_out(statement: str) -> None:
    loaded = _modules_after(statement)
    assert "openai" not in loaded
    assert "agentstream.agents.models.openai_model" not in loaded
    assert "agentstream.agents.offline" not in loaded


def test_the_model_clients_load_on_first_use() -> None:
    loaded = _modules_after("from agentstream.agents import OpenAIModel, OfflineModel")
    assert {"openai", "agentstream.agents.offline.model"} <= loaded


def test_the_public_names_resolve() -> None:
    import agentstream.agents as agents

    for name in agents.__all__:
        assert getattr(agents, name) is not None, name
    from agentstream.agents.models.openai_model import OpenAIModel
    from agentstream.agents.offline.model import OfflineModel

    assert agents.OpenAIModel is OpenAIModel
    assert agents.OfflineModel is OfflineModel
    with pytest.raises(AttributeError):
        _ = agents.NoSuchName
