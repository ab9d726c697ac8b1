"""Prometheus and Grafana: every metric they read exists, every service that serves
/metrics is scraped, the provisioning points at what Compose mounts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.manifests import (
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    SERVICES,
    compose,
    compose_value,
    exposed_metric_names,
    family_of,
    load_yaml,
    metric_families,
    promql_metric_names,
)

DASHBOARD = GRAFANA_DIR / "dashboards" / "agentstream.json"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(_dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def _rules() -> list[dict[str, Any]]:
    data = load_yaml(PROMETHEUS_DIR / "rules.yml")
    return [rule for group in data["groups"] for rule in group["rules"]]


def _check_exprs(exprs: list[tuple[str, str]]) -> None:
    known = exposed_metric_names()
    problems = []
    for where, expr in exprs:
        names = promql_metric_names(expr)
        if not names and "up{" not in expr and "up " not in expr:
            problems.append(f"{where}: reads no agentstream metric: {expr}")
        problems += [f"{where}: unknown metric {n}" for n in sorted(names - known)]
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            problems.append(f"{where}: unbalanced brackets: {expr}")
    assert not problems, "\n".join(problems)


def test_metric_names_are_known() -> None:
    """The registry is the source: e.g. counter agentstream_events_consumed is scraped as
    agentstream_events_consumed_total, histograms as _bucket, _sum and _count."""
    assert "agentstream_events_consumed_total" in exposed_metric_names()
    assert "agentstream_handler_seconds_bucket" in exposed_metric_names()
    assert "agentstream_events_consumed" not in exposed_metric_names()


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']}: no query"
        uid = panel["datasource"]["uid"]
        assert (uid.startswith("${") and uid[2:-1] in variables) or uid == "prometheus"
        for target in panel["targets"]:
            assert target["refId"]
            assert target["expr"].strip()


def test_dashboard_reads_only_real_metrics() -> None:
    _check_exprs(_dashboard_exprs())


def test_dashboard_shows_every_metric() -> None:
    used = {family_of(n) for _, e in _dashboard_exprs() for n in promql_metric_names(e)}
    missing = set(metric_families()) - used
    assert not missing, f"metrics with no panel: {sorted(missing)}"


def test_dashboard_has_the_panels_operators_need() -> None:
    exprs = " ".join(e for _, e in _dashboard_exprs())
    for needle in (
        "histogram_quantile(0.5, sum by (le, handler) (rate(agentstream_handler_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, handler) (rate(agentstream_handler_seconds_bucket",
        "by (group, topic, partition) (agentstream_consumer_lag)",
        "by (topic",
    ):
        assert needle in exprs, needle


def test_grafana_provisioning_matches_compose() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    provider = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "agentstream.yml")
    (dashboards,) = provider["providers"]
    assert mounts["./infra/grafana/dashboards"] == dashboards["options"]["path"]
    assert mounts["./infra/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    default = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert default["current"]["value"] == ds["uid"]


def test_alert_rules() -> None:
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {
        "AgentstreamConsumerLagHigh",
        "AgentstreamDeadLetters",
        "AgentstreamCircuitOpen",
        "AgentstreamNoResponses",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]
    _check_exprs([(r["alert"], r["expr"]) for r in rules])


def _metrics_ports() -> dict[str, tuple[int, int]]:
    """Compose services that serve /metrics: name to (port, replicas)."""
    out: dict[str, tuple[int, int]] = {}
    for name, service in compose()["services"].items():
        if str(service.get("image", "")).split(":")[0] != "agentstream":
            continue
        env = {k: compose_value(v) for k, v in service.get("environment", {}).items()}
        replicas = int(service.get("deploy", {}).get("replicas", 1))
        if service["command"][0] == "ingress":
            out[name] = (int(env.get("AGENTSTREAM_INGRESS__PORT") or 8080), replicas)
        elif env.get("AGENTSTREAM_METRICS_PORT"):
            out[name] = (int(env["AGENTSTREAM_METRICS_PORT"]), replicas)
    return out


def test_prometheus_scrapes_every_service() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    static: set[str] = set()
    dns: set[str] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sc in job.get("static_configs", []):
            static.update(sc["targets"])
        for sd in job.get("dns_sd_configs", []):
            assert sd.get("type", "SRV") == "A"
            dns.update(f"{n}:{sd['port']}" for n in sd["names"])
    services = _metrics_ports()
    assert set(SERVICES) <= set(services)
    for name, (port, replicas) in services.items():
        target = f"{name}:{port}"
        if replicas > 1:
            assert target in dns, f"{name} has {replicas} replicas: scrape each by DNS (type A)"
        else:
            assert target in static | dns, f"{name} is not scraped at {target}"


def test_prometheus_loads_the_rules_compose_mounts() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    volumes = compose()["services"]["prometheus"]["volumes"]
    mounted = {v.split(":")[1] for v in volumes if v.startswith(".")}
    assert "/etc/prometheus/prometheus.yml" in mounted
    for path in config["rule_files"]:
        assert path in mounted, f"{path} is not mounted into the prometheus container"


@pytest.mark.parametrize("path", ["prometheus.yml", "rules.yml"])
def test_prometheus_files_parse(path: str) -> None:
    assert load_yaml(PROMETHEUS_DIR / path)


def test_dashboard_selects_agents() -> None:
    """An ``agent`` variable lists the declared agents from the metrics, and every panel
    that reads a per-agent metric filters on it and groups by it."""
    dashboard = _dashboard()
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "agent"]
    assert variable["type"] == "query"
    assert "label_values(agentstream_responses_total, agent)" in variable["definition"]
    assert variable["includeAll"]
    assert variable["multi"]
    per_agent = [
        (title, expr)
        for title, expr in _dashboard_exprs()
        if "by (agent" in expr or "by (le, agent" in expr
    ]
    read = {family_of(n) for _, e in per_agent for n in promql_metric_names(e)}
    assert {
        "agentstream_responses",
        "agentstream_llm_tokens",
        "agentstream_llm_cost_usd",
        "agentstream_agent_answer_seconds",
        "agentstream_agent_handoffs",
        "agentstream_agent_subruns",
        "agentstream_agent_guardrail_rejections",
    } <= read
    for title, expr in per_agent:
        assert 'agent=~"$agent"' in expr, f"{title}: does not filter on the agent variable"
