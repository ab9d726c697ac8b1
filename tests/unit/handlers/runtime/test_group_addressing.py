"""Records meant for one consumer group, and dead-letter hooks that fail (ADR 17).

A retry copy (``x-retry-group``) or a replay (``x-replayed-group``) is acted on by the group it
names only; a retry copy from before the header is the group's own when its key is parked. A
dead-letter hook failing for good is not retried: the dead letter goes out alone, at once.
Run through :meth:`Worker.process_record`, the path of every consumed record (and of the
Lambda handler), on the in-process bus and store.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from agentstream.handlers.runtime.addressing import REPLAY_GROUP, RETRY_GROUP
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.retries import RetryPolicy
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.runtime.worker import RuntimeConfig, Worker
from agentstream.handlers.stores.base import InProcessStore
from agentstream.schemas import (
    DeadLetter,
    Envelope,
    PermanentError,
    RetryableError,
    UserRequest,
    UserRequestData,
    encode,
)
from agentstream.topics import Catalog, Headers, Kind, Record, Topic
from agentstream.topics.memory import InProcessBus
from pydantic import BaseModel

CATALOG = Catalog(prefix="u.", partitions=1)


class Recorder:
    def __init__(self, error: BaseException | None = None) -> None:
        self.handled: list[str] = []
        self.error = error

    async def handle(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        self.handled.append(ctx.origin.topic)
        if self.error is not None:
            raise self.error
        return []


def _worker(bus: InProcessBus, route: Route, **retry: Any) -> Worker:
    policy = RetryPolicy(base_delay_s=0.001, max_in_place_delay_s=0.01, **retry)
    config = RuntimeConfig(group_id="u.mine", source="test", retry=policy)
    return Worker(bus, InProcessStore(), CATALOG, [route], config)


def _record(kind: Kind, extra: Headers = (), offset: int = 0) -> Record:
    event = UserRequest(
        source="test", request_id="r1", conversation_id="c1", data=UserRequestData(text="hi")
    )
    key, value, headers = encode(event)
    return Record(
        CATALOG.name(Topic.USER_REQUEST, kind),
        0,
        offset,
        key,
        value,
        (*headers, *extra),
        int(time.time() * 1000),
    )


def _due_now(group: str | None) -> Headers:
    headers: Headers = (("x-retry-attempt", b"3"), ("x-retry-due", b"0"))
    return headers if group is None else (*headers, (RETRY_GROUP, group.encode()))


async def test_a_retry_copy_is_acted_on_by_its_group_only(bus: InProcessBus) -> None:
    recorder = Recorder()
    worker = _worker(bus, Route(Topic.USER_REQUEST, recorder.handle, "t.user_request"))
    await worker.process_record(_record(Kind.RETRY, _due_now("u.theirs")))
    assert recorder.handled == []
    await worker.process_record(_record(Kind.RETRY, _due_now("u.mine"), offset=1))
    assert recorder.handled == [CATALOG.name(Topic.USER_REQUEST, Kind.RETRY)]


async def test_a_retry_copy_naming_no_group_is_ours_when_our_key_is_parked(
    bus: InProcessBus,
) -> None:
    recorder = Recorder()
    worker = _worker(bus, Route(Topic.USER_REQUEST, recorder.handle, "t.user_request"))
    await worker.process_record(_record(Kind.RETRY, _due_now(None)))
    assert recorder.handled == []  # nothing of c1 parked here: another group's
    # This group fails a turn of c1 for a while: it parks c1 and writes a copy naming it.
    flaky = Recorder(RetryableError("blip"))
    failing = _worker(
        bus,
        Route(Topic.USER_REQUEST, flaky.handle, "t.user_request"),
        in_place_attempts=1,
        retry_topic_delay_s=0.01,
    )
    await failing.process_record(_record(Kind.MAIN))
    [copy] = await bus.read(CATALOG.name(Topic.USER_REQUEST, Kind.RETRY))
    assert dict(copy.headers)[RETRY_GROUP] == b"u.mine"
    # The same group, now with c1 parked, takes a copy without the header as its own.
    legacy = tuple((k, v) for k, v in copy.headers if k != RETRY_GROUP)
    flaky.error = None
    await failing.process_record(_record(Kind.RETRY, legacy, offset=5))
    assert flaky.handled[-1] == CATALOG.name(Topic.USER_REQUEST, Kind.RETRY)


async def test_a_replay_is_handled_by_the_group_it_names(bus: InProcessBus) -> None:
    recorder = Recorder()
    worker = _worker(bus, Route(Topic.USER_REQUEST, recorder.handle, "t.user_request"))
    main = CATALOG.name(Topic.USER_REQUEST)
    await worker.process_record(_record(Kind.MAIN, ((REPLAY_GROUP, b"u.theirs"),)))
    assert recorder.handled == []
    await worker.process_record(_record(Kind.MAIN, ((REPLAY_GROUP, b"u.mine"),), offset=1))
    assert recorder.handled == [main]
    # A replay naming no group (an older command) goes to every group, deduplicated by id.
    other = Recorder()
    await _worker(bus, Route(Topic.USER_REQUEST, other.handle, "t.user_request")).process_record(
        _record(Kind.MAIN, offset=2)
    )
    assert other.handled == [main]


class _Limited(BaseModel):
    name: str


class Hook:
    """A dead-letter hook that fails with ``errors`` in turn, then answers nothing."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(
        self, event: Envelope[Any] | None, raw: bytes | None, error: BaseException, ctx: Context
    ) -> list[Envelope[Any]]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return []


def _validation_error() -> BaseException:
    try:
        _Limited.model_validate({"name": 42})
    except Exception as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("errors", "calls"),
    [
        pytest.param([_validation_error()], 1, id="validation-error-once"),
        pytest.param([PermanentError("no answer")], 1, id="permanent-once"),
        pytest.param([RetryableError("store down")] * 2, 3, id="retryable-until-it-works"),
        pytest.param([ValueError("bug")] * 10, 4, id="unknown-for-the-budget"),
    ],
)
async def test_a_failing_dead_letter_hook(
    bus: InProcessBus, errors: list[BaseException], calls: int
) -> None:
    hook = Hook(*errors)
    recorder = Recorder(PermanentError("handler refuses"))
    route = Route(Topic.USER_REQUEST, recorder.handle, "t.user_request", on_dead_letter=hook)
    worker = _worker(bus, route, max_attempts=4)
    started = time.monotonic()
    await worker.process_record(_record(Kind.MAIN))
    assert time.monotonic() - started < 2
    assert recorder.handled == [CATALOG.name(Topic.USER_REQUEST)]  # once: permanent
    assert hook.calls == calls
    # The dead letter goes out whatever became of the hook.
    [dead] = await bus.read(CATALOG.name(Topic.USER_REQUEST, Kind.DLQ))
    info = DeadLetter.from_headers(dead.headers)
    assert (info.group, info.error_class, info.attempts) == ("u.mine", "PermanentError", 1)
