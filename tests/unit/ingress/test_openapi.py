"""Schemathesis against the ingress's own OpenAPI document, in process (ASGI).

Generated requests, valid and invalid, must never get a 5xx, and every response must match
what the document says (status codes, content types, bodies, headers). Examples are bounded
so that the whole run stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import schemathesis
from agentstream.handlers.stores.base import InProcessStore
from agentstream.ingress import create_app
from agentstream.ingress.observe import IngressMetrics
from agentstream.settings import IngressSettings, Settings, TopicSettings
from agentstream.topics import OutgoingRecord, RecordMetadata, TopicDescription
from hypothesis import HealthCheck, settings

KEY = "schemathesis-key"


class AckingBus:
    """Acknowledges every publish at once (no event loop state: schemathesis' ASGI client
    runs each call on a loop of its own)."""

    def __init__(self) -> None:
        self.count = 0

    async def publish(self, record: OutgoingRecord) -> RecordMetadata:
        self.count += 1
        return RecordMetadata(record.topic, 0, self.count)

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        return {n: TopicDescription(n, 1, 1) for n in names}


bus = AckingBus()
app = create_app(
    Settings(
        ingress=IngressSettings(
            api_keys={KEY: "acme"},
            rate_per_second=1e6,
            rate_burst=1_000_000,
            max_wait_s=0.05,
            poll_interval_s=0.01,
        ),
        topics=TopicSettings(prefix="openapi."),
    ),
    bus,  # type: ignore[arg-type]
    InProcessStore(),
    IngressMetrics(),
)
# The key goes through schemathesis' own auth config, so that the cases it generates without
# auth (to check that they are refused) stay without it.
# A body over the size limit is refused with 413, which schemathesis' default list of
# rejections lacks.
config = schemathesis.Config.from_dict(
    {
        "auth": {"openapi": {"HTTPBearer": {"bearer": KEY}}},
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
            }
        },
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


def test_openapi_document_lists_errors_and_examples() -> None:
    document = app.openapi()
    post = document["paths"]["/v1/requests"]["post"]
    assert {"200", "202", "401", "409", "413", "422", "429", "503"} <= set(post["responses"])
    assert post["responses"]["503"]["headers"]["Retry-After"]
    body = document["components"]["schemas"]["CreateRequest"]
    assert body["examples"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.filterwarnings("ignore")
@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_generated_requests_reached_the_broker() -> None:
    """The run above authenticated: valid posts were published, not all refused."""
    assert bus.count > 0
