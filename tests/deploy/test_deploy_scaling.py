"""KEDA scales the real consumer groups on the real topics, never past the partition count;
the Strimzi topics are the catalog's, generated, never edited by hand."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from tests.deploy.manifests import (
    K8S,
    K8S_WORKERS,
    configmap_data,
    consumed_topics,
    group_id,
    k8s_catalog,
    k8s_settings,
    load_documents,
    named,
    objects,
    parse_cli,
)

#: KEDA's names for the SASL mechanisms of KafkaConfig.
_KEDA_SASL = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_topics", K8S / "generate_topics.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kafka_cluster() -> str:
    labels = {t["metadata"]["labels"]["strimzi.io/cluster"] for t in objects("KafkaTopic")}
    assert len(labels) == 1, f"topics of several Kafka clusters: {labels}"
    return labels.pop()


@pytest.mark.parametrize("name", K8S_WORKERS)
def test_scaled_object_scales_the_real_group_on_its_topics(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = k8s_settings(monkeypatch)
    catalog = settings.catalog()
    kind, agent = K8S_WORKERS[name].kind, K8S_WORKERS[name].agent
    so = named("ScaledObject", name)
    deployment = named("Deployment", so["spec"]["scaleTargetRef"]["name"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parse_cli(container["args"])
    assert args.command == "worker"
    assert args.kinds == [kind], "one kind per Deployment: a ScaledObject scales one group"
    if agent is not None:
        assert args.agents == [agent], "one agent per Deployment: each agent is its own group"

    triggers = so["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    groups = {t["metadata"]["consumerGroup"] for t in triggers}
    assert groups == {group_id(settings, kind, agent)}, "consumerGroup: the worker's group id"
    trigger_topics = [t["metadata"]["topic"] for t in triggers]
    assert len(trigger_topics) == len(set(trigger_topics))
    for name in trigger_topics:
        assert catalog.resolve(name) is not None, f"{name} is not a topic of the catalog"
    assert set(trigger_topics) == consumed_topics(settings, kind, agent), (
        "the triggers must watch exactly the main topics the worker consumes"
    )


@pytest.mark.parametrize("kind", K8S_WORKERS)
def test_replicas_never_exceed_partitions(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = k8s_catalog(monkeypatch)
    spec = named("ScaledObject", kind)["spec"]
    assert spec["minReplicaCount"] >= 1, "a group with no member has no lag to read from"
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    topics = {t["spec"]["topicName"]: t["spec"] for t in objects("KafkaTopic")}
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        partitions = min(catalog.partitions, topics[meta["topic"]]["partitions"])
        assert spec["maxReplicaCount"] <= partitions, (
            f"{kind}: maxReplicaCount {spec['maxReplicaCount']} > {partitions} partitions "
            f"of {meta['topic']}: the extra members would sit idle"
        )
        assert meta["allowIdleConsumers"] == "false"
        assert int(meta["lagThreshold"]) >= 1


def test_triggers_reach_the_same_kafka_as_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = k8s_settings(monkeypatch)
    kafka = settings.kafka
    for so in objects("ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert meta["bootstrapServers"] == configmap_data()["KAFKA_BOOTSTRAP_SERVERS"]
            # The consumer starts a new group at the earliest offset (topics/kafka_consumer.py);
            # KEDA must count lag the same way, or a new group looks idle.
            assert meta["offsetResetPolicy"] == "earliest"
            tls = kafka.security_protocol in ("SSL", "SASL_SSL")
            assert meta.get("tls", "disable") == ("enable" if tls else "disable")
            if kafka.security_protocol.startswith("SASL"):
                assert meta["sasl"] == _KEDA_SASL[kafka.sasl_mechanism or "PLAIN"]
                auth = named("TriggerAuthentication", trigger["authenticationRef"]["name"])
                params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
                assert {"username", "password"} <= params
                if tls and kafka.ssl_cafile:
                    assert "ca" in params


def test_topics_file_is_the_generated_one(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = _generator()
    expected = generator.render(k8s_catalog(monkeypatch), _kafka_cluster())
    actual = (K8S / "topics.yaml").read_text()
    assert actual == expected, (
        "infra/k8s/topics.yaml is stale: run `python infra/k8s/generate_topics.py` "
        "with the AGENTSTREAM_TOPICS__* values of configmap.yaml as flags"
    )


def test_topics_cover_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = k8s_catalog(monkeypatch)
    specs = {s.name: s for s in catalog.specs()}
    topics = {t["spec"]["topicName"]: t for t in load_documents(K8S / "topics.yaml")}
    assert set(topics) == set(specs), "one KafkaTopic for every topic, .retry and .dlq"
    for name, spec in specs.items():
        manifest = topics[name]["spec"]
        assert manifest["partitions"] == spec.partitions
        assert manifest["replicas"] == spec.replication_factor
        assert manifest["config"] == spec.description().configs


def test_topic_settings_are_the_catalog_defaults_unless_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ConfigMap may change partitions or replicas only together with topics.yaml; the
    test above ties them. Without such a change, the catalog's defaults apply."""
    from agentstream.topics import Catalog

    data = configmap_data()
    if not any(
        k.startswith("AGENTSTREAM_TOPICS__") and k != "AGENTSTREAM_TOPICS__CREATE_ON_START"
        for k in data
    ):
        assert list(k8s_catalog(monkeypatch).specs()) == list(Catalog().specs())


def test_kafka_cluster_matches_the_bootstrap_service() -> None:
    host = configmap_data()["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].split(":")[0]
    # Strimzi names the bootstrap Service "<cluster>-kafka-bootstrap".
    assert host.split(".")[0] == f"{_kafka_cluster()}-kafka-bootstrap"


def test_generator_names_are_valid_and_distinct() -> None:
    from agentstream.topics import Catalog, Kind, Topic

    class Clash(Catalog):
        def name(self, topic: Topic, kind: Kind = Kind.MAIN) -> str:
            return "same"

    generator = _generator()
    assert generator.resource_name("prod.user_request.retry") == "prod-user-request-retry"
    with pytest.raises(ValueError, match="share the name"):
        generator.render(Clash())
