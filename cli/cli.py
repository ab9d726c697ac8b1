"""The ``agentstream`` command line: run, inspect and repair the pipeline.

Every command that prints data takes ``--json``. Failures print one readable line and a
hint, never a traceback (``--debug`` shows it), and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from agentstream.schemas.errors import AgentstreamError
from agentstream.settings import Settings, agent_names, load_settings
from agentstream.workers import WORKERS

__all__ = ["main"]

log = logging.getLogger("agentstream")

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]

#: Modules that add commands: each has ``register(subparsers) -> dict[str, Command]``.
_EXTENSIONS = (
    "agentstream.status_command",
    "agentstream.tail",
    "agentstream.dlq_command",
    "agentstream.topics_command",
    "agentstream.deploy_command",
)

#: Commands that run until stopped; the others are one-shot and print failures as one line.
_SERVICES = frozenset({"up", "worker", "ingress"})


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser; the commands of :data:`_EXTENSIONS` are left out when
    ``argv`` names a built-in command (their imports are a tenth of a worker's start)."""
    p = argparse.ArgumentParser(
        prog="agentstream",
        description="A Kafka event-driven pipeline for LLM agents.",
    )
    p.add_argument("--config", help="TOML settings file (environment variables win)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="everything in one process on the embedded default")
    up.add_argument("--host", default=None)
    up.add_argument("--port", type=int, default=None)

    worker = sub.add_parser("worker", help="run worker(s) against Kafka and Redis")
    worker.add_argument("kinds", nargs="+", choices=WORKERS.names())
    worker.add_argument(
        "--agent",
        action="append",
        dest="agents",
        metavar="NAME",
        help="the declared agent(s) an agent worker runs (repeat it; default: every agent, "
        "each its own consumer group)",
    )

    sub.add_parser("ingress", help="run the HTTP ingress against Kafka and Redis")

    schema = sub.add_parser("schema", help="the published event contract")
    schema.add_argument("action", choices=["export"])
    schema.add_argument("directory", type=Path)

    send = sub.add_parser("send", help="send a request to the ingress and print the answer")
    send.add_argument("text")
    send.add_argument("--conversation", "-c", default=None, help="conversation id")
    send.add_argument("--user", default=None)
    send.add_argument("--agent", default=None, help="the declared agent to answer")
    send.add_argument("--url", default=None, help="ingress URL (default from settings)")
    send.add_argument("--api-key", default=None)
    send.add_argument("--timeout", type=float, default=60.0)

    memory = sub.add_parser("memory", help="long-term memory")
    memory.add_argument("action", choices=["rebuild"])

    for name in _EXTENSIONS if _command_of(argv) not in _BUILTIN else ():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        _COMMANDS.update(module.register(sub))
    app_help = (
        "the app declaring the agents, package.module[:attr] (default: AGENTSTREAM_APP, "
        "else the built-in assistant)"
    )
    p.add_argument("--app", default=None, help=app_help)
    for command in sub.choices.values():  # `agentstream up --app x` reads as well
        command.add_argument("--app", default=argparse.SUPPRESS, help=app_help)
    return p


def _command_of(argv: Sequence[str] | None) -> str | None:
    """The command ``argv`` names (its first word that is not an option or the value of
    ``--config``), None when there is none or help comes first (it lists every command)."""
    words = iter(argv or ())
    for word in words:
        if word in ("-h", "--help"):
            return None
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(argv).parse_args(argv)
    from agentstream.logs import configure_logging

    try:
        settings = load_settings(args.config)
        if args.app:
            settings = settings.model_copy(update={"app": args.app})
        if settings.app:
            from agentstream.agents import load_app

            load_app(settings.app)  # a readable error now rather than in a worker
    except Exception as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        "DEBUG" if args.debug else settings.log_level,
        settings.log_json,
        client_logs=args.debug or args.command in _SERVICES,
    )
    command = _COMMANDS[args.command]
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(command(args, settings))
    except KeyboardInterrupt:
        return 130
    except (AgentstreamError, OSError, ValueError) as exc:
        if args.debug:
            raise
        hint = _hint(exc, settings)
        print(f"error: {exc}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 1


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (a quarter less CPU per Redis and Kafka round trip)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _hint(exc: BaseException, settings: Settings) -> str:
    """A next step for the user, when the error message alone does not say it."""
    from agentstream.schemas.errors import ConfigError, RetryableError, TopicMissing

    if isinstance(exc, TopicMissing):
        return "create the topics with `agentstream topics create`"
    if isinstance(exc, ConfigError):
        return ""  # configuration errors already say what to change
    text = str(exc).lower()
    if isinstance(exc, RetryableError) and ("kafka" in text or "broker" in text):
        return (
            f"is Kafka reachable at {settings.kafka.bootstrap_servers}? "
            "set KAFKA_BOOTSTRAP_SERVERS, or start one with infra/kafka/start.sh"
        )
    if "redis" in text:
        return "is Redis reachable? set REDIS_URL (e.g. redis://127.0.0.1:6379/0)"
    if "connect" in text:
        return "is `agentstream up` (or the ingress) running? see --url"
    return ""


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(human)


async def _cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.schemas.export import export_json_schemas

    paths = export_json_schemas(args.directory)
    extra: list[Path] = []
    try:
        asyncapi = importlib.import_module("agentstream.asyncapi")
    except ModuleNotFoundError:
        pass
    else:
        extra.append(asyncapi.write_asyncapi(args.directory, settings.catalog(), settings))
    written = [str(p) for p in [*paths, *extra]]
    _emit(args, {"written": written}, "\n".join(f"wrote {p}" for p in written))
    return 0


async def _run_services(
    settings: Settings,
    kinds: Sequence[str],
    with_ingress: bool,
    agents: Sequence[str] | None = None,
) -> int:
    from agentstream.process import build_workers, install_signals, until
    from agentstream.wiring import build_bus, build_store, ensure_topics
    from prometheus_client import CollectorRegistry

    stop = asyncio.Event()
    install_signals(stop)
    bus = build_bus(settings)
    store = build_store(settings)
    await bus.start()
    try:
        await store.ping()
        await ensure_topics(bus, settings.catalog(), create=settings.topics.create_on_start)
        metrics = CollectorRegistry()  # one registry, every part's metrics
        workers = build_workers(kinds, settings, bus, store, metrics, stop, agents=agents)
        if with_ingress:
            from agentstream.ingress.server import serve
            from agentstream.wiring import runtime_config

            kind = WORKERS.get("projection")
            projection = runtime_config(settings, kind.group, kind.source)
            workers.extras.append(
                until(stop, serve(settings, bus, store, metrics=metrics, projection=projection))
            )
        elif settings.metrics_port:
            from agentstream.health import serve_health

            workers.extras.append(serve_health(settings, bus, store, metrics, workers, stop))
        await workers.run(stop)
    finally:
        await bus.stop()
        await store.close()
    return 0


async def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    if settings.bus != "memory":
        log.info("`up` runs on the embedded default; ignoring bus=%s", settings.bus)
    updates: dict[str, Any] = {"bus": "memory", "redis_url": None}
    ingress = settings.ingress.model_copy(
        update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    )
    settings = settings.model_copy(update={**updates, "ingress": ingress})
    kinds = WORKERS.names()
    named = " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
    agents = ", ".join(agent_names(settings.app))
    print(
        f"agentstream up: {named} workers (agents: {agents}) on the in-process bus; "
        f"ingress on http://{ingress.host}:{ingress.port}  (Ctrl-C to stop)",
        flush=True,
    )
    return await _run_services(settings, kinds, with_ingress=True)


async def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if settings.bus != "kafka":
        print(
            "error: `agentstream worker` needs Kafka: set KAFKA_BOOTSTRAP_SERVERS "
            "(or AGENTSTREAM_BUS=kafka); use `agentstream up` for the embedded default",
            file=sys.stderr,
        )
        return 2
    return await _run_services(settings, args.kinds, with_ingress=False, agents=args.agents)


async def _cmd_ingress(args: argparse.Namespace, settings: Settings) -> int:
    if settings.bus != "kafka":
        print(
            "error: `agentstream ingress` needs Kafka: set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr
        )
        return 2
    if not settings.ingress.api_keys and not settings.ingress.allow_anonymous:
        print(
            "error: the ingress has no API keys: set AGENTSTREAM_INGRESS__API_KEYS (a JSON map "
            'of key or "sha256:<hex>" to tenant), or AGENTSTREAM_INGRESS__ALLOW_ANONYMOUS=true '
            "to run it open",
            file=sys.stderr,
        )
        return 2
    return await _run_services(settings, [], with_ingress=True)


async def _cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    url = args.url or f"http://{settings.ingress.host}:{settings.ingress.port}"
    headers = {"Prefer": f"wait={int(args.timeout)}"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    body: dict[str, Any] = {"text": args.text}
    if args.conversation:
        body["conversation_id"] = args.conversation
    if args.user:
        body["user"] = args.user
    if args.agent:
        body["agent"] = args.agent
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout + 10) as client:
        try:
            response = await client.post("/v1/requests", json=body, headers=headers)
        except httpx.ConnectError as exc:
            raise ConnectionError(f"cannot connect to the ingress at {url}: {exc}") from exc
        if response.status_code >= 400:
            print(f"error: {response.status_code} {response.text}", file=sys.stderr)
            return 1
        data = response.json()
        if data.get("status") not in ("completed", "failed", "timed_out", "rejected"):
            data = (await client.get(f"/v1/requests/{data['request_id']}")).json()
    answer = (data.get("response") or {}).get("text") or (data.get("response") or {}).get("error")
    agent = (data.get("response") or {}).get("agent")
    by = f" by {agent}" if agent else ""
    _emit(
        args,
        data,
        f"{answer}\n[{data.get('status')}{by}] request {data.get('request_id')} "
        f"conversation {data.get('conversation_id')}",
    )
    return 0 if data.get("status") == "completed" else 1


async def _cmd_memory(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.handlers.memory import rebuild
    from agentstream.wiring import build_bus, build_store

    bus = build_bus(settings)
    store = build_store(settings)
    await bus.start()
    try:
        counts = await rebuild(bus, store, settings.catalog(), settings.namespace)
    finally:
        await bus.stop()
        await store.close()
    _emit(
        args,
        counts,
        f"rebuilt memory of {counts['scopes']} scope(s) and {counts['conversations']} "
        f"conversation(s) from {counts['memory_call']} remembered fact(s) and "
        f"{counts['agent_response']} response(s)",
    )
    return 0


_COMMANDS: dict[str, Command] = {
    "up": _cmd_up,
    "worker": _cmd_worker,
    "ingress": _cmd_ingress,
    "schema": _cmd_schema,
    "send": _cmd_send,
    "memory": _cmd_memory,
}
#: The commands of this module, which need none of :data:`_EXTENSIONS` to parse.
_BUILTIN = frozenset(_COMMANDS)

if __name__ == "__main__":
    raise SystemExit(main())
