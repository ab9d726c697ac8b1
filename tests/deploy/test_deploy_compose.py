"""docker-compose.kafka.yml and the Dockerfile: real commands, real settings, Kafka in KRaft."""

from __future__ import annotations

import base64
import json
import re
import shlex
from typing import Any

import pytest

from tests.deploy.manifests import (
    COMPOSE_FILE,
    DOCKERFILE,
    REPO,
    SERVICES,
    WORKER_KINDS,
    compose,
    compose_value,
    parse_cli,
    settings_from,
    unknown_variables,
)


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def _ours() -> dict[str, dict[str, Any]]:
    """The services that run the agentstream image."""
    return {
        name: s
        for name, s in _services().items()
        if str(s.get("image", "")).split(":")[0] == "agentstream"
    }


def _env(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: compose_value(v) for k, v in env.items()}


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    return total


def test_compose_parses_and_has_every_part() -> None:
    services = _services()
    assert {"kafka", "redis", "topics", *SERVICES, "prometheus", "grafana"} <= set(services)
    assert "version" not in compose(), "the Compose Specification has no version key"


def test_kafka_is_apache_kafka_4_in_kraft_mode() -> None:
    kafka = _services()["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"]), kafka["image"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert not [k for k in env if "ZOOKEEPER" in k], "KRaft: no ZooKeeper settings"
    assert not [s for s in _services() if "zookeeper" in s.lower()]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert any(v.startswith(f"{node_id}@") for v in voters), "the node votes in its quorum"

    listeners = dict(
        re.fullmatch(r"(\w+)://(.*)", item).groups()  # type: ignore[union-attr]
        for item in env["KAFKA_LISTENERS"].split(",")
    )
    advertised = dict(
        re.fullmatch(r"(\w+)://(.*)", item).groups()  # type: ignore[union-attr]
        for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners
    assert controller not in advertised, "the controller listener is never advertised"
    assert set(listeners) <= set(protocols)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    voter_port = voters[0].rsplit(":", 1)[1]
    assert listeners[controller].endswith(f":{voter_port}")

    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", f"{key}: a single broker"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics come from the catalog"
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID: base64 UUID"

    # What the services use must be advertised to them.
    for name, service in _ours().items():
        bootstrap = _env(service)["KAFKA_BOOTSTRAP_SERVERS"]
        assert bootstrap in advertised.values(), f"{name}: {bootstrap} is not advertised"
    assert "test" in kafka["healthcheck"]


def test_redis_is_healthchecked() -> None:
    redis = _services()["redis"]
    assert redis["image"].startswith("redis:7")
    assert "redis-cli" in json.dumps(redis["healthcheck"]["test"])


@pytest.mark.parametrize("name", ["topics", *SERVICES])
def test_service_runs_a_real_command_with_real_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _ours()[name]
    args = parse_cli([str(a) for a in service["command"]])
    env = _env(service)
    assert not unknown_variables(set(env)), f"{name}: variables that configure nothing"
    settings = settings_from(env, monkeypatch)
    assert settings.bus == "kafka"
    assert settings.kafka.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
    if name == "topics":
        assert (args.command, args.action) == ("topics", "create")
        assert service.get("restart") == "no"
        return
    assert settings.redis_url is not None
    deps = service["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["topics"]["condition"] == "service_completed_successfully"
    grace = _seconds(service["stop_grace_period"])
    assert grace >= settings.runtime.drain_timeout_s + 10, f"{name}: SIGKILL would cut the drain"
    if name == "ingress":
        assert args.command == "ingress"
        assert settings.ingress.host == "0.0.0.0", "reachable from outside the container"
        assert f"{settings.ingress.port}:{settings.ingress.port}" in service["ports"]
    else:
        assert args.command == "worker"
        assert args.kinds == [name.removesuffix("-worker")]
        assert settings.metrics_port == 9100
        assert "ports" not in service, "replicas would clash on a published port"
        replicas = service["deploy"]["replicas"]
        assert 1 <= replicas <= settings.topics.partitions


def test_every_worker_kind_runs() -> None:
    kinds = {
        kind for s in _ours().values() if s["command"][0] == "worker" for kind in s["command"][1:]
    }
    assert kinds == set(WORKER_KINDS)


def test_mounted_files_exist() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"


def test_dockerfile() -> None:
    lines = [
        line.strip()
        for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert froms[-1] == "python:3.11-slim", "the runtime stage"
    final = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM ")) :]

    def instruction(name: str) -> list[str]:
        return [
            line[len(name) + 1 :].strip() for line in final if line.upper().startswith(name + " ")
        ]

    (user,) = instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric uid: runAsNonRoot can only verify a number"
    assert int(uid) != 0, "not root"
    (entrypoint,) = instruction("ENTRYPOINT")
    assert json.loads(entrypoint) == ["agentstream"]
    (cmd,) = instruction("CMD")
    assert parse_cli(json.loads(cmd)).command == "up"
    env_names: set[str] = set()
    for line in instruction("ENV"):
        env_names.update(part.split("=", 1)[0] for part in shlex.split(line))
    assert not unknown_variables(env_names)

    ignored = (REPO / ".dockerignore").read_text().split()
    for heavy in (".git", ".venv", "infra"):
        assert heavy in ignored, f".dockerignore must exclude {heavy}"
    for copied in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.M):
        assert copied.rstrip("*") not in ignored, f"{copied} is copied but dockerignored"


def test_compose_file_names_the_image_the_dockerfile_builds() -> None:
    for name, service in _ours().items():
        build = service.get("build")
        assert build in (".", {"context": "."}), f"{name}: built from the repository root"
    assert COMPOSE_FILE.name == "docker-compose.kafka.yml"
