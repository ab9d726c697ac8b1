"""The pin on aiokafka that keeps every Metadata request from auto-creating topics (ADR 20).

:mod:`agentstream.topics.kafka_metadata` replaces the ``MetadataRequest`` name in the aiokafka
modules that build Metadata requests. These tests fail when an aiokafka upgrade builds them
anywhere else, or by another name, so the patch cannot silently stop covering a path. The
behaviour on a real broker is tested in ``tests/integration/test_topics.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import agentstream.topics.kafka  # noqa: F401  (installs the patch)
import aiokafka
import aiokafka.admin.client
import aiokafka.client
from agentstream.topics.kafka_metadata import NoAutoCreateMetadataRequest
from aiokafka.protocol.metadata import MetadataRequest_v4, MetadataRequest_v5


def test_every_metadata_request_aiokafka_builds_asks_for_no_auto_creation() -> None:
    for module in (aiokafka.client, aiokafka.admin.client):
        assert module.MetadataRequest is NoAutoCreateMetadataRequest
        for struct in (MetadataRequest_v4, MetadataRequest_v5):
            built = module.MetadataRequest(["t"]).build(struct)
            assert built.allow_auto_topic_creation is False
            assert built.topics == ["t"]
    # Explicitly asking still works (the integration tests use it to show the hazard).
    built = NoAutoCreateMetadataRequest(["t"], True).build(MetadataRequest_v5)
    assert built.allow_auto_topic_creation is True


def test_aiokafka_builds_metadata_requests_only_where_the_patch_reaches() -> None:
    root = Path(aiokafka.__file__).parent
    builders = {
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if re.search(r"\bMetadataRequest(_v\d+)?\(", path.read_text(encoding="utf-8"))
        and path.name != "metadata.py"
    }
    assert builders == {"client.py", "admin/client.py"}, (
        "aiokafka builds Metadata requests in new places: extend "
        "agentstream.topics.kafka_metadata._MODULES"
    )
    for path in ("client.py", "admin/client.py"):
        source = (root / path).read_text(encoding="utf-8")
        assert "from aiokafka.protocol.metadata import MetadataRequest\n" in source
