"""infra/k8s: schema-valid, complete, consistent with the settings, the CLI and itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.manifests import (
    K8S,
    K8S_SERVICES,
    K8S_WORKERS,
    SCHEMAS,
    configmap_data,
    example_secrets,
    k8s_container_env,
    k8s_resources,
    k8s_settings,
    kustomization,
    load_documents,
    named,
    objects,
    parse_cli,
    settings_from,
    unknown_variables,
)

#: A Kubernetes version whose schemas kubernetes-validate bundles; the manifests use only
#: APIs that are GA there (apps/v1, policy/v1, autoscaling/v2).
K8S_VERSION = "1.30.0"

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.v1alpha1.json",
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "strimzi-kafkatopic.v1beta2.json",
}

#: Every manifest of the folder, the example secret included (kustomization.yaml is not one).
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _where(error: Any) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


@pytest.mark.parametrize("filename", MANIFESTS)
def test_every_manifest_validates(filename: str) -> None:
    docs = load_documents(K8S / filename)
    assert docs, f"{filename} holds no object"
    problems: list[str] = []
    for doc in docs:
        what = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRD_SCHEMAS:
            validator = _crd_validator(*key)
            problems += [f"{what}: {_where(e)}: {e.message}" for e in validator.iter_errors(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{what}: {'/'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{what}: no schema for {key} in Kubernetes {K8S_VERSION}")
    assert not problems, "\n".join(problems)


def test_crd_schemas_reject_what_they_should() -> None:
    """The hand-written CRD schemas are strict enough to catch the mistakes that matter."""
    scaled = named("ScaledObject", "agent-assistant-worker")
    validator = _crd_validator("keda.sh/v1alpha1", "ScaledObject")
    assert not list(validator.iter_errors(scaled))
    typo = json.loads(json.dumps(scaled))
    typo["spec"]["maxReplicas"] = typo["spec"].pop("maxReplicaCount")
    assert list(validator.iter_errors(typo)), "a misspelled maxReplicaCount must fail"
    number = json.loads(json.dumps(scaled))
    number["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100
    assert list(validator.iter_errors(number)), "trigger metadata values are strings"
    (topic, *_) = objects("KafkaTopic")
    no_cluster = json.loads(json.dumps(topic))
    del no_cluster["metadata"]["labels"]["strimzi.io/cluster"]
    assert list(_crd_validator("kafka.strimzi.io/v1beta2", "KafkaTopic").iter_errors(no_cluster))


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    missing = [name for name in listed if not (K8S / name).is_file()]
    assert not missing, f"kustomization.yaml lists files that do not exist: {missing}"
    expected = set(MANIFESTS) - {"secret.example.yaml"}
    assert set(listed) == expected, (
        f"not listed: {sorted(expected - set(listed))}; "
        f"listed but not manifests: {sorted(set(listed) - expected)}"
    )
    assert "secret.example.yaml" not in listed, "secrets are never applied from the repository"


def test_kustomization_namespace_and_image() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert k["kind"] == "Kustomization"
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    assert set(k) <= known, f"unexpected kustomization fields: {set(k) - known}"
    (namespace,) = objects("Namespace")
    assert k["namespace"] == namespace["metadata"]["name"]
    for doc in load_documents(K8S / "secret.example.yaml"):
        assert doc["metadata"].get("namespace", k["namespace"]) == k["namespace"]
    images = {i["name"] for i in k.get("images", [])}
    for deployment in objects("Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert c["image"].split(":")[0] in images, f"{c['image']} is not set by images:"


def test_object_names_are_unique_per_kind() -> None:
    seen: set[tuple[str, str]] = set()
    for filename, doc in k8s_resources():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{key} defined twice ({filename})"
        seen.add(key)


def test_no_secret_is_inlined() -> None:
    assert not objects("Secret"), "Secrets are created out of band, see secret.example.yaml"
    secret_keys = {k for keys in example_secrets().values() for k in keys}
    for key in configmap_data():
        assert key not in secret_keys, f"{key} is a secret and must not be in the ConfigMap"
    for deployment in objects("Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            for item in c.get("env", []):
                assert item["name"] not in secret_keys or "valueFrom" in item, (
                    f"{deployment['metadata']['name']}: {item['name']} has an inline value"
                )


def test_references_resolve() -> None:
    """Every name one object uses for another exists: Secrets in the example, ConfigMaps,
    Deployments behind HPAs and ScaledObjects, TriggerAuthentications, pods behind selectors."""
    secrets = example_secrets()
    deployments = {d["metadata"]["name"]: d for d in objects("Deployment")}
    for name, d in deployments.items():
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        for c in pod["spec"]["containers"]:
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    named("ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), (
                        f"{name}: secret {ref['name']}/{ref['key']} missing in the example"
                    )
        for volume in pod["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
    for auth in objects("TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["key"] in secrets.get(ref["name"], {}), f"{ref} missing in the example"
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for obj in objects(kind):
            target = obj["spec"]["scaleTargetRef"]
            assert target.get("kind", "Deployment") == "Deployment"
            assert target["name"] in deployments, f"{kind} {obj['metadata']['name']}: no target"
    for so in objects("ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            named("TriggerAuthentication", trigger["authenticationRef"]["name"])
    for kind in ("PodDisruptionBudget", "Service"):
        for obj in objects(kind):
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            matches = [
                n
                for n, d in deployments.items()
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert len(matches) == 1, f"{kind} {obj['metadata']['name']} selects {matches}"


def test_every_deployment_has_a_pdb_and_an_autoscaler() -> None:
    deployments = {d["metadata"]["name"]: d for d in objects("Deployment")}
    assert set(deployments) == set(K8S_SERVICES)
    scaled = {o["spec"]["scaleTargetRef"]["name"] for o in objects("ScaledObject")}
    hpa = {o["spec"]["scaleTargetRef"]["name"] for o in objects("HorizontalPodAutoscaler")}
    assert scaled == set(K8S_WORKERS), "one ScaledObject per worker group"
    assert hpa == {"ingress"}
    assert not scaled & hpa, "KEDA makes its own HPA: never both on one Deployment"
    for name, d in deployments.items():
        assert "replicas" not in d["spec"], f"{name}: the autoscaler owns replicas"
        labels = d["spec"]["template"]["metadata"]["labels"]
        pdbs = [
            p
            for p in objects("PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(pdbs) == 1, f"{name}: expected one PodDisruptionBudget"
        spec = pdbs[0]["spec"]
        assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable") is not None


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", K8S_SERVICES)
def test_deployment_runs_a_real_command_with_real_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = named("Deployment", name)
    container = _container(deployment)
    args = parse_cli(container["args"])
    if name == "ingress":
        assert args.command == "ingress"
    else:
        assert args.command == "worker"
        assert args.kinds == [K8S_WORKERS[name].kind]
        agent = K8S_WORKERS[name].agent
        assert args.agents == (None if agent is None else [agent])
    env = k8s_container_env(container)
    assert not unknown_variables(set(env)), f"{name}: variables that configure nothing"
    settings = settings_from(env, monkeypatch)
    assert settings.bus == "kafka"
    assert settings.redis_url is not None
    assert settings.kafka.sasl_password is not None
    assert settings.topics.create_on_start is False, "Strimzi owns the topics on Kubernetes"


@pytest.mark.parametrize("name", K8S_SERVICES)
def test_probes_grace_and_security(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = named("Deployment", name)
    pod = deployment["spec"]["template"]
    container = _container(deployment)
    settings = settings_from(k8s_container_env(container), monkeypatch)
    port = settings.ingress.port if name == "ingress" else settings.metrics_port
    assert port, f"{name}: no port for /healthz, /readyz and /metrics"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def probe_port(probe: dict[str, Any]) -> int:
        value = probe["httpGet"]["port"]
        return int(ports[value] if isinstance(value, str) else value)

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert probe_port(container[probe]) == port, f"{name}: {probe} on the wrong port"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"

    # SIGTERM comes after preStop; the drain must end before the kubelet's SIGKILL.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert 1 <= pre_stop <= 15
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + settings.runtime.drain_timeout_s + 10, (
        f"{name}: grace {grace}s < preStop {pre_stop}s + drain "
        f"{settings.runtime.drain_timeout_s}s + 10s to commit and leave the group"
    )

    resources = container["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part]), f"{name}: {part} incomplete"

    pod_security = pod["spec"]["securityContext"]
    security = container["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security.get("runAsUser", 1) != 0
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts, "a read-only root needs a writable /tmp"
    if settings.kafka.ssl_cafile:
        assert str(Path(settings.kafka.ssl_cafile).parent) in mounts, "the CA file is mounted"


def test_rolling_updates_never_drop_capacity() -> None:
    for deployment in objects("Deployment"):
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_configmap_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    data = configmap_data()
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values are strings"
    assert not unknown_variables(set(data)), "ConfigMap variables that configure nothing"
    settings = k8s_settings(monkeypatch)
    assert settings.kafka.bootstrap_servers == data["KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.kafka.security_protocol.startswith("SASL")
    assert settings.ingress.host == "0.0.0.0"


def test_hpa_for_the_ingress_is_on_cpu() -> None:
    hpa = named("HorizontalPodAutoscaler", "ingress")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] >= 2, "one ingress pod is a single point of failure"


def test_ingress_service_targets_the_ingress_port(monkeypatch: pytest.MonkeyPatch) -> None:
    service = named("Service", "agentstream-ingress")
    container = _container(named("Deployment", "ingress"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = k8s_settings(monkeypatch)
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert (ports[target] if isinstance(target, str) else target) == settings.ingress.port
