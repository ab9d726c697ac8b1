"""The Lambda deployment file against the worker registry: each function runs a real kind and
its event sources feed exactly the topics that kind consumes (and their retry topics)."""

from __future__ import annotations

from typing import Any

import yaml
from agentstream.lambda_handler import KIND_ENV
from agentstream.topics import Catalog, Kind
from agentstream.workers import WORKERS

from tests.deploy.manifests import REPO

TEMPLATE = REPO / "infra" / "lambda" / "template.yaml"
PREFIX = "${TopicPrefix}"


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads the short-form intrinsic functions (``!Sub "x"``, ``!Ref Y``) as their argument."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


SWEEP_HANDLER = "agentstream.lambda_handler.sweep_handler"


def _functions(*, sweeps: bool = False) -> dict[str, dict[str, Any]]:
    """The functions that run a worker kind: those fed by MSK or, with ``sweeps``, the
    scheduled ones that run a kind's periodic jobs."""
    with TEMPLATE.open() as f:
        template = yaml.load(f, Loader=_CloudFormationLoader)  # a SafeLoader
    return {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        and KIND_ENV in resource["Properties"].get("Environment", {}).get("Variables", {})
        and (resource["Properties"].get("Handler") == SWEEP_HANDLER) == sweeps
    }


def test_every_function_runs_a_kind_on_exactly_its_topics() -> None:
    functions = _functions()
    assert functions, f"no function sets {KIND_ENV} in {TEMPLATE}"
    catalog = Catalog()
    for name, props in functions.items():
        kind = WORKERS.get(props["Environment"]["Variables"][KIND_ENV])
        assert kind.name in WORKERS.names(), f"{name}: {kind.name} does not run on its own"
        wanted = {
            catalog.name(topic, k)
            for topic in kind.declared().consumes()
            for k in (Kind.MAIN, Kind.RETRY)
        }
        fed: set[str] = set()
        for source in props["Events"].values():
            assert source["Type"] == "MSK", name
            (topic,) = source["Properties"]["Topics"]
            topic = topic.removeprefix(PREFIX)
            fed.add(topic)
            group = source["Properties"]["ConsumerGroupId"].removeprefix(PREFIX)
            assert group == f"{kind.group}.{topic}", f"{name}: group of {topic}"
        assert fed == wanted, f"{name} ({kind.name}): event sources vs. the routes"


def test_kinds_with_periodic_jobs_have_a_scheduled_sweep() -> None:
    """A function owns no partitions, so a kind's periodic jobs (the agent's deadline sweep)
    run from a schedule over every partition; without it a run whose tool results are lost
    would never get its ``timed_out`` answer on Lambda."""
    deployed = {p["Environment"]["Variables"][KIND_ENV] for p in _functions().values()}
    swept = {p["Environment"]["Variables"][KIND_ENV]: p for p in _functions(sweeps=True).values()}
    for name in deployed:
        if WORKERS.get(name).declared().periodic:
            assert name in swept, f"{name} has periodic jobs but no scheduled sweep function"
    for name, props in swept.items():
        assert name in deployed, f"a sweep for {name}, which is not deployed"
        assert WORKERS.get(name).declared().periodic, f"{name} has no periodic jobs"
        schedules = [e for e in props["Events"].values() if e["Type"] == "Schedule"]
        assert schedules, f"the sweep of {name} has no schedule"
