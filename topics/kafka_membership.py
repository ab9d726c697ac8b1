"""Leaving a consumer group as a static member (KIP-345), which aiokafka does not do.

A member with a ``group.instance.id`` stays in its group after its consumer stops: aiokafka
0.14 skips the LeaveGroup request then (``GroupCoordinator._maybe_leave_group``), as Kafka's
Java client does, so that a restart within the session timeout takes the same partitions back
without a rebalance. That is what a crash wants, not a planned stop: a worker stopped by
SIGTERM (a rolling update, a scale-down) would leave its partitions unserved until the
session ends. So the runtime, once it has drained and committed, removes its member by
instance id itself with LeaveGroup v3, the request Kafka's admin client sends for
``removeMembersFromConsumerGroup`` (ADR 19). aiokafka's protocol stops at LeaveGroup v1,
hence the request below.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

__all__ = ["leave_as_static_member"]

log = logging.getLogger(__name__)


class _LeaveGroupResponseV3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequestV3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponseV3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _LeaveGroup(Request[_LeaveGroupRequestV3]):  # type: ignore[misc]
    API_KEY = 13

    def __init__(self, group_id: str, member_id: str, instance_id: str) -> None:
        self._group_id = group_id
        self._member = (member_id, instance_id)

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class(self._group_id, [self._member])


async def leave_as_static_member(
    admin: AIOKafkaAdminClient, group_id: str, member_id: str, instance_id: str
) -> bool:
    """Remove the static member ``instance_id`` (whose current member id is ``member_id``,
    so a successor that already took the instance id over is left alone) from ``group_id``.

    Best effort, like a dynamic member's leave: ``False`` (and a warning) when the broker
    refuses or cannot be reached; the session timeout then removes the member.
    """
    try:
        coordinator = await admin.find_coordinator(group_id)
        # admin._send_request is aiokafka's own way to send one request to one node.
        response = await admin._send_request(
            _LeaveGroup(group_id, member_id, instance_id), coordinator
        )
    except KafkaError as exc:
        log.warning("%s: could not leave as static member %s: %r", group_id, instance_id, exc)
        return False
    codes = [response.error_code] + [m[2] for m in response.members]
    failed = [c for c in codes if c != 0]
    if failed:
        error = for_code(failed[0])
        log.warning("%s: leaving as static member %s refused: %s", group_id, instance_id, error)
        return False
    log.info("%s: left the group as static member %s", group_id, instance_id)
    return True
