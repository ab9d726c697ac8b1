"""infra/k8s: every worker joins its consumer groups as a static member named after its pod.

ADR 19: the pod's name (the downward API's ``metadata.name``) survives restarts of the
container, so a worker that crashed and came back within the session timeout takes its
partitions back without a rebalance. The ingress stays a dynamic member: its replicas come
and go with the HTTP load.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifests import K8S_WORKERS, k8s_container_env, named, settings_from

VARIABLE = "AGENTSTREAM_KAFKA__GROUP_INSTANCE_ID"


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]


@pytest.mark.parametrize("name", K8S_WORKERS)
def test_workers_are_static_members_named_after_their_pod(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _container(named("Deployment", name))
    [item] = [i for i in container["env"] if i["name"] == VARIABLE]
    assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    settings = settings_from(k8s_container_env(container), monkeypatch)
    assert settings.kafka.group_instance_id == "agent-worker-7d9f8b6c4-x2q5z"
    # A restarted container must be back before the session ends, or the group rebalances
    # anyway; Python's start and the join take a few seconds.
    assert settings.kafka.session_timeout_ms >= 10_000


def test_the_ingress_stays_a_dynamic_member(monkeypatch: pytest.MonkeyPatch) -> None:
    container = _container(named("Deployment", "ingress"))
    assert VARIABLE not in {i["name"] for i in container.get("env", [])}
    settings = settings_from(k8s_container_env(container), monkeypatch)
    assert settings.kafka.group_instance_id is None
