"""Static group membership and the replicated topics' settings (ADR 19), without a broker.

The broker side (a restarted static member takes its partitions back without a rebalance;
a stopped one hands them over at once) is in ``tests/chaos/test_member_recovery.py``.
"""

from __future__ import annotations

import pytest
from agentstream.topics import Catalog, KafkaConfig, Topic
from agentstream.topics.kafka_membership import _LeaveGroup, _LeaveGroupResponseV3
from pydantic import ValidationError


def test_group_instance_id_is_off_by_default_and_never_empty() -> None:
    assert KafkaConfig().group_instance_id is None
    assert KafkaConfig(group_instance_id="agent-worker-0").group_instance_id == "agent-worker-0"
    with pytest.raises(ValidationError):
        KafkaConfig(group_instance_id="")


def test_replicated_topics_need_two_in_sync_replicas_and_no_unclean_election() -> None:
    configs = Catalog(replication_factor=3).spec(Topic.USER_REQUEST).description().configs
    assert configs["min.insync.replicas"] == "2"
    assert configs["unclean.leader.election.enable"] == "false"
    single = Catalog(replication_factor=1).spec(Topic.USER_REQUEST).description().configs
    assert single["min.insync.replicas"] == "1"  # set always, never left to the broker
    assert "unclean.leader.election.enable" not in single


def test_leave_group_names_the_member_by_id_and_instance_id_in_v3() -> None:
    struct = _LeaveGroup("g", "member-1", "pod-0").prepare({13: (0, 5)})
    assert struct.API_VERSION == 3
    # group_id, then an array of one (member_id, group_instance_id): Kafka's v3 layout.
    assert struct.encode() == (
        b"\x00\x01g" + b"\x00\x00\x00\x01" + b"\x00\x08member-1" + b"\x00\x05pod-0"
    )
    response = _LeaveGroupResponseV3.decode(
        b"\x00\x00\x00\x00" + b"\x00\x00" + b"\x00\x00\x00\x01"
        b"\x00\x08member-1" + b"\x00\x05pod-0" + b"\x00\x00"
    )
    assert response.error_code == 0
    assert [tuple(m) for m in response.members] == [("member-1", "pod-0", 0)]
