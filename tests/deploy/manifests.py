"""Loading the deployment files and relating them to the code: settings, CLI, catalog, metrics.

The deployment tests are static (no Docker, no cluster): they read the Compose file, the
Kubernetes manifests, the Prometheus and Grafana files, and check them against the real
``Settings`` model, the real CLI parser, the topic catalog and the metrics registry, so a
renamed setting, command, topic or metric breaks a test instead of a deployment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentstream.k8s import worker_deployments
from agentstream.settings import Settings
from agentstream.topics import Catalog, Kind
from agentstream.workers import WORKERS
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
COMPOSE_FILE = REPO / "docker-compose.kafka.yml"
DOCKERFILE = REPO / "Dockerfile"
PROMETHEUS_DIR = REPO / "infra" / "prometheus"
GRAFANA_DIR = REPO / "infra" / "grafana"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

#: Variables the project reads besides the ``AGENTSTREAM_`` fields of ``Settings``.
PLAIN_VARIABLES = {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}
#: ``AGENTSTREAM_*`` variables that are not fields: read by ``load_settings`` itself.
NON_FIELD_VARIABLES = {"AGENTSTREAM_CONFIG"}
#: The kinds with a process of their own: one Deployment, Compose service and ScaledObject each.
WORKER_KINDS = WORKERS.names()
#: The Compose services running our code, besides the topic creation job: one per kind (the
#: agent worker's runs every declared agent, each in its own group).
SERVICES = (*(f"{kind}-worker" for kind in WORKER_KINDS), "ingress")
#: The worker Deployments of infra/k8s (the built-in app's): one per consumer group, one
#: per declared agent among them (agentstream.k8s).
K8S_WORKERS = {d.name: d for d in worker_deployments(Settings(app=None))}
#: The Deployments of infra/k8s.
K8S_SERVICES = (*K8S_WORKERS, "ingress")


# -- YAML ---------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


@cache
def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(K8S / "kustomization.yaml")
    return data


@cache
def k8s_resources() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every object of the files kustomization.yaml lists, with its file name."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name in kustomization()["resources"]:
        out.extend((name, doc) for doc in load_documents(K8S / name))
    return tuple(out)


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_resources() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in infra/k8s, found {len(found)}"
    return found[0]


@cache
def example_secrets() -> dict[str, dict[str, str]]:
    """Secret name to its keys, from secret.example.yaml (stringData or data)."""
    out: dict[str, dict[str, str]] = {}
    for doc in load_documents(K8S / "secret.example.yaml"):
        assert doc["kind"] == "Secret"
        out[doc["metadata"]["name"]] = {**doc.get("data", {}), **doc.get("stringData", {})}
    return out


def configmap_data() -> dict[str, str]:
    (cm,) = objects("ConfigMap")
    data: dict[str, str] = cm["data"]
    return data


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


# -- settings -----------------------------------------------------------------------------


def settings_field_path(variable: str) -> tuple[str, ...] | None:
    """The field path of ``Settings`` an ``AGENTSTREAM_A__B`` variable sets, None if none.

    Walks the nested pydantic models the way pydantic-settings reads the environment
    (prefix ``AGENTSTREAM_``, ``__`` between levels, case-insensitive). A variable that
    maps to nothing is silently ignored by ``Settings`` (``extra="ignore"``), hence this."""
    prefix = "AGENTSTREAM_"
    if not variable.upper().startswith(prefix):
        return None
    parts = variable[len(prefix) :].lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if i < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return None
            model = annotation
    return tuple(parts)


def unknown_variables(names: Iterator[str] | list[str] | set[str]) -> list[str]:
    """The names among ``names`` that configure nothing (AGENTSTREAM_* and the plain ones)."""
    bad = []
    for name in names:
        if name in PLAIN_VARIABLES or name in NON_FIELD_VARIABLES:
            continue
        ours = name.upper().startswith("AGENTSTREAM_")
        if (ours and settings_field_path(name) is None) or name.startswith(("KAFKA_", "REDIS_")):
            bad.append(name)
    return bad


def settings_from(env: Mapping[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``Settings`` as a process with exactly ``env`` would load it (None: unset)."""
    import os

    for name in list(os.environ):
        if name.startswith("AGENTSTREAM_") or name in PLAIN_VARIABLES:
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    return Settings()


def compose_value(value: Any) -> str | None:
    """A Compose environment value with ``${VAR:-default}`` resolved to its default."""
    if value is None:
        return None
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", text)


#: Values of the downward API fields the manifests use, as Kubernetes would fill them in.
_DOWNWARD_EXAMPLES = {"metadata.name": "agent-worker-7d9f8b6c4-x2q5z"}


def k8s_container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment of a container: ConfigMaps of envFrom, then env, with secret values
    taken from secret.example.yaml (a missing name or key fails the calling test)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = named("ConfigMap", source["configMapRef"]["name"])
            env.update(cm["data"])
        elif "secretRef" in source:
            env.update(example_secrets()[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        field = item["valueFrom"].get("fieldRef")
        if field is not None:  # the downward API: a value Kubernetes fills in per pod
            env[item["name"]] = _DOWNWARD_EXAMPLES[field["fieldPath"]]
            continue
        ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"].get("configMapKeyRef")
        assert ref is not None, f"{item['name']}: only secretKeyRef/configMapKeyRef are used"
        if "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = example_secrets()[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = named("ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def k8s_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings every pod shares: the ConfigMap alone."""
    return settings_from(configmap_data(), monkeypatch)


def k8s_catalog(monkeypatch: pytest.MonkeyPatch) -> Catalog:
    return k8s_settings(monkeypatch).catalog()


# -- CLI and workers ----------------------------------------------------------------------


def parse_cli(argv: list[str]) -> Any:
    """``argv`` through the real CLI parser; a rejected command fails the calling test."""
    from agentstream.cli import _parser

    try:
        return _parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`agentstream {' '.join(argv)}` is rejected by the CLI (exit {exc.code})")


def group_id(settings: Settings, kind: str, agent: str | None = None) -> str:
    """The consumer group of a worker kind (of ``agent``'s, for the agent worker), as the
    process builds it (agentstream.process)."""
    from agentstream.wiring import runtime_config

    worker = WORKERS.get(kind)
    group = worker.group if agent is None else f"{worker.group}.{agent}"
    return runtime_config(settings, group, worker.source).group_id


def consumed_topics(settings: Settings, kind: str, agent: str | None = None) -> set[str]:
    """The main topics a worker kind (``agent``'s, for the agent worker) consumes: its
    routes, as the registry declares them."""
    catalog = settings.catalog()
    declared = WORKERS.get(kind).declared(settings, agent).consumes()
    return {catalog.name(topic, Kind.MAIN) for topic in declared}


# -- metrics ------------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


@cache
def metric_families() -> dict[str, str]:
    """Family name (as registered) to type, from one registry with every part's metrics:
    the runtime's, the agent and tool workers' and the ingress'."""
    from agentstream.handlers.agent.metrics import AgentMetrics
    from agentstream.handlers.runtime.metrics import RuntimeMetrics
    from agentstream.handlers.tool import ToolMetrics
    from agentstream.ingress.observe import IngressMetrics

    registry = CollectorRegistry()
    for part in (RuntimeMetrics, AgentMetrics, ToolMetrics, IngressMetrics):
        part(registry)
    return {m.name: m.type for m in registry.collect()}


@cache
def exposed_metric_names() -> frozenset[str]:
    """Every series name Prometheus can see: prometheus_client adds ``_total`` to counters
    and ``_bucket``, ``_sum``, ``_count`` to histograms."""
    names: set[str] = set()
    for name, kind in metric_families().items():
        names.update(name + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return frozenset(names)


def promql_metric_names(expr: str) -> set[str]:
    """The agentstream metric names a PromQL expression reads."""
    return set(re.findall(r"\bagentstream_[a-zA-Z0-9_]+", expr))


def family_of(series: str) -> str | None:
    for name, kind in metric_families().items():
        for suffix in _SUFFIXES.get(kind, ("",)):
            if series == name + suffix:
                return name
    return None
