"""``agentstream deploy render``: the manifests of an app, checked like infra/k8s (schemas,
groups, topics, commands, settings), and infra/k8s is the rendering of the built-in app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from agentstream.k8s import INGRESS_PATCH, STATIC_FILES, render, worker_deployments
from agentstream.settings import Settings

from tests.cli_runner import run_cli
from tests.deploy.manifests import K8S, consumed_topics, group_id, parse_cli, settings_from
from tests.deploy.test_deploy_k8s import K8S_VERSION, _crd_validator

APPS = [None, "examples.support"]


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _rendered(app: str | None) -> tuple[Settings, dict[str, str]]:
    settings = Settings(app=app)
    return settings, render(settings)


def test_infra_k8s_is_the_rendering_of_the_builtin_app() -> None:
    _, files = _rendered(None)
    stale = [name for name, text in files.items() if (K8S / name).read_text() != text]
    assert not stale, f"stale: {stale}: run `agentstream deploy render --out infra/k8s`"
    listed = yaml.safe_load(files["kustomization.yaml"])["resources"]
    assert {p.name for p in K8S.glob("*-worker.yaml")} == {n for n in listed if "-worker" in n}
    code, _, err = run_cli(["deploy", "render", "--out", str(K8S), "--check"])
    assert (code, err) == (0, "")


@pytest.mark.parametrize("app", APPS)
def test_every_rendered_object_validates(app: str | None) -> None:
    _, files = _rendered(app)
    problems: list[str] = []
    for name, text in files.items():
        if name in ("kustomization.yaml", INGRESS_PATCH):
            continue
        for doc in _docs(text):
            what = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            if doc["apiVersion"].startswith(("keda.sh/", "kafka.strimzi.io/")):
                validator = _crd_validator(doc["apiVersion"], doc["kind"])
                problems += [f"{what}: {e.message}" for e in validator.iter_errors(doc)]
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{what}: {'/'.join(map(str, exc.path))}: {exc.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("app", APPS)
def test_one_scaled_deployment_per_group_on_exactly_its_topics(
    app: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, files = _rendered(app)
    catalog = settings.catalog()
    deployments = worker_deployments(settings)
    agents = [d.agent for d in deployments if d.kind == "agent"]
    assert agents == list(catalog.agents), "one agent Deployment per declared agent"
    listed = yaml.safe_load(files["kustomization.yaml"])["resources"]
    assert listed[: len(STATIC_FILES)] == list(STATIC_FILES)
    assert set(files) - {"kustomization.yaml", INGRESS_PATCH} <= set(listed)
    for d in deployments:
        deployment, pdb, so = _docs(files[f"{d.name}.yaml"])
        assert (deployment["kind"], pdb["kind"], so["kind"]) == (
            "Deployment",
            "PodDisruptionBudget",
            "ScaledObject",
        )
        assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"] == d.name
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = parse_cli(container["args"])
        assert (args.command, args.kinds) == ("worker", [d.kind])
        if d.agent is not None:
            assert args.agents == [d.agent]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env.get("AGENTSTREAM_APP") == app
        spec = so["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= catalog.partitions
        triggers = spec["triggers"]
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {
            group_id(settings, d.kind, d.agent)
        }
        topics = [t["metadata"]["topic"] for t in triggers]
        assert len(topics) == len(set(topics))
        assert set(topics) == consumed_topics(settings, d.kind, d.agent)
        assert all(int(t["metadata"]["lagThreshold"]) >= 1 for t in triggers)
        if d.kind == "agent":
            assert topics == [catalog.inbox(d.agent or "")]
        if d.kind == "stats":
            assert {catalog.inbox(a) for a in catalog.agents} <= set(topics)
    kafka_topics = {t["spec"]["topicName"] for t in _docs(files["topics.yaml"])}
    assert kafka_topics == {s.name for s in catalog.specs()}
    assert {catalog.inbox(a) for a in catalog.agents} <= kafka_topics
    # The settings each pod loads name the same app (the ConfigMap's values plus its env).
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "x:9092")
    pod = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert settings_from(pod, monkeypatch).app == app


def test_an_app_is_named_to_the_ingress_too() -> None:
    _, files = _rendered("examples.support")
    assert yaml.safe_load(files["kustomization.yaml"])["patches"] == [{"path": INGRESS_PATCH}]
    (patch,) = _docs(files[INGRESS_PATCH])
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", "ingress")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    ingress = next(
        d for d in _docs((K8S / "ingress.yaml").read_text()) if d["kind"] == "Deployment"
    )
    assert container["name"] == ingress["spec"]["template"]["spec"]["containers"][0]["name"]
    assert container["env"] == [{"name": "AGENTSTREAM_APP", "value": "examples.support"}]
    assert INGRESS_PATCH not in _rendered(None)[1]


def test_the_command_writes_and_prints(tmp_path: Path) -> None:
    code, out, _ = run_cli(
        ["deploy", "render", "--app", "examples.support", "--out", str(tmp_path)]
    )
    assert code == 0
    assert "wrote" in out
    assert (tmp_path / "agent-billing-worker.yaml").is_file()
    assert (tmp_path / INGRESS_PATCH).is_file()
    code, _, err = run_cli(
        ["deploy", "render", "--app", "examples.support", "--out", str(tmp_path), "--check"]
    )
    assert (code, err) == (0, "")
    (tmp_path / "router-worker.yaml").write_text("stale\n")
    code, _, err = run_cli(
        ["deploy", "render", "--app", "examples.support", "--out", str(tmp_path), "--check"]
    )
    assert code == 1
    assert "router-worker.yaml is stale" in err
    code, out, _ = run_cli(["deploy", "render", "--app", "examples.support"])
    assert code == 0
    assert "# --- agent-triage-worker.yaml" in out
    assert 'args: ["worker", "agent", "--agent", "triage"]' in out
