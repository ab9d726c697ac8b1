"""CPU an agent worker spends on its own start, without Kafka or Redis (issue 17).

Each round is a fresh interpreter that does what ``agentstream worker agent`` does before
it touches the network: import the CLI, parse the command line, load the settings, import
the process wiring and the Kafka bus, build the agent kind's routes, and build the event
models an agent decodes and emits. It prints the median CPU (user + system) over
``--rounds``. With ``--against PATH`` the rounds alternate with the ``agentstream``
package at PATH (a link tree like ``build/__editable__.*``) first on ``PYTHONPATH``, for a
same-minute A/B. Both packages' bytecode is written first, as an install has it.

    python bench/start_cpu.py [--rounds 12] [--against /path/to/base/pkg]
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys

_ROUND = """
import inspect, time
t0 = time.process_time()
import agentstream.cli as cli
argv = ["worker", "agent"]
parser = cli._parser(argv) if inspect.signature(cli._parser).parameters else cli._parser()
parser.parse_args(argv)
from agentstream.settings import load_settings
settings = load_settings(None)
import agentstream.process, agentstream.wiring, agentstream.topics.kafka, agentstream.logs
from prometheus_client import CollectorRegistry
from agentstream.workers import WORKERS, Needs
needs = Needs(settings, CollectorRegistry())
WORKERS.get("agent").build(needs.for_agent(needs.app.default.name))
from agentstream.schemas import AgentResponse, AgentTask
AgentTask.model_rebuild(); AgentResponse.model_rebuild()
print(round(1000 * (time.process_time() - t0)))
"""


def one(pythonpath: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", _ROUND], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--against", help="another agentstream package dir, for an A/B")
    args = parser.parse_args()
    import agentstream

    compileall.compile_dir(os.path.dirname(agentstream.__file__), quiet=1)
    if args.against:
        compileall.compile_dir(os.path.join(args.against, "agentstream"), quiet=1)
    here: list[int] = []
    there: list[int] = []
    for _ in range(args.rounds):
        here.append(one(None))
        if args.against:
            there.append(one(args.against))
    line = f"start CPU, median of {args.rounds}: this checkout {statistics.median(here):.0f} ms"
    if there:
        ratio = statistics.median(here) / statistics.median(there)
        line += f", against {statistics.median(there):.0f} ms (ratio {ratio:.3f})"
    print(line, flush=True)


if __name__ == "__main__":
    main()
