"""Tests for the SQLite outbox, its dispatcher and the `outbox.py` operator command.

Receivers are real aiohttp apps on 127.0.0.1 that fail on purpose. The outbox, the
dispatcher, the row sender and the webhook signer share one fake clock, which only
the test moves, so no test waits for a retry delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

import outbox as outbox_command
import webhooks
from crm_client import CrmClient
from delivery import OutboxDispatcher, OutboxQueue, RetrySchedule, RowSender
from outbox import CRM_ACTIVITY, CRM_NOTE, DEAD, DELIVERED, PENDING, WEBHOOK, Outbox, OutboxRow
from tests.conftest import CRM_API_KEY, Server
from tests.servers import serve

SECRET_TEXT = "outbox-test-secret"
SECRET = SECRET_TEXT.encode("utf-8")
START_TIME = 1_700_000_000.0
DAY = 86400.0

# Upper bound for waits on loopback servers and background tasks, so that a bug
# fails the test instead of hanging it. No test asserts how long anything took.
GUARD_TIMEOUT = 5.0
MAX_ROUNDS = 200


class FakeClock:
    """Unix time in seconds that changes only when a test sets `now`."""

    def __init__(self, now: float = START_TIME) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Accept the request and respond only when the receiver is released at teardown.
    hang: bool = False


@dataclass(frozen=True)
class ReceivedAttempt:
    event_id: str
    call_id: str
    sequence: int
    headers: CIMultiDict[str]
    body: bytes
    clock_time: float
    status: int | None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status <= 299


# A function of the event payload and the attempt number of its id, counted from 1, that returns the reply.
ReplyScript = Callable[[dict, int], Reply]


class ScriptedReceiver:
    """A webhook endpoint that records each request and responds with the reply its script returns."""

    def __init__(self, *, clock: FakeClock, script: ReplyScript) -> None:
        self.url = ""
        self.attempts: list[ReceivedAttempt] = []
        self.release = asyncio.Event()
        self.first_success = asyncio.Event()
        self._clock = clock
        self._script = script
        self._attempt_counts: dict[str, int] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        return app

    def attempts_of(self, event_id: str) -> list[ReceivedAttempt]:
        return [attempt for attempt in self.attempts if attempt.event_id == event_id]

    def successes(self) -> list[ReceivedAttempt]:
        return [attempt for attempt in self.attempts if attempt.succeeded]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = json.loads(body)
        number = self._attempt_counts.get(payload["id"], 0) + 1
        self._attempt_counts[payload["id"]] = number
        reply = self._script(payload, number)

        attempt = ReceivedAttempt(
            event_id=payload["id"],
            call_id=payload["call_id"],
            sequence=payload["sequence"],
            headers=request.headers.copy(),
            body=body,
            clock_time=self._clock(),
            status=None if reply.hang else reply.status,
        )
        self.attempts.append(attempt)
        if reply.hang:
            await self.release.wait()
        elif attempt.succeeded:
            self.first_success.set()
        return web.Response(status=reply.status, headers=reply.headers, text="ok")


def always(status: int, headers: dict[str, str] | None = None) -> ReplyScript:
    return lambda payload, number: Reply(status=status, headers=headers or {})


class FlakyCrmProxy:
    """A CRM proxy that returns 503 for the first `failures` requests and forwards later ones to the dev CRM."""

    def __init__(self, *, upstream: str, session: aiohttp.ClientSession, failures: int) -> None:
        self.log: list[tuple[str, int]] = []
        self._upstream = upstream
        self._session = session
        self._failures_left = failures

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self._failures_left > 0:
            self._failures_left -= 1
            self.log.append((request.path, 503))
            return web.json_response({"error": "CRM unavailable"}, status=503)

        headers = {name: request.headers[name] for name in ("Authorization", "Content-Type") if name in request.headers}
        async with self._session.request(
            request.method,
            self._upstream + request.path_qs,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=GUARD_TIMEOUT),
            allow_redirects=False,
        ) as upstream:
            answer = await upstream.read()
            self.log.append((request.path, upstream.status))
            return web.Response(status=upstream.status, body=answer, content_type=upstream.content_type)


StartReceiver = Callable[[ReplyScript], Awaitable[ScriptedReceiver]]
MakeDispatcher = Callable[..., OutboxDispatcher]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def start_receiver(clock: FakeClock) -> AsyncIterator[StartReceiver]:
    """Start scripted receivers on 127.0.0.1. Teardown releases hanging handlers, then stops the servers."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(script: ReplyScript) -> ScriptedReceiver:
            receiver = ScriptedReceiver(clock=clock, script=script)
            base_url = await stack.enter_async_context(serve(receiver.app()))
            stack.callback(receiver.release.set)  # runs before this server stops
            receiver.url = f"{base_url}/hooks"
            return receiver

        yield start


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite3"


@pytest.fixture
async def store(outbox_path: Path, clock: FakeClock) -> AsyncIterator[Outbox]:
    box = await Outbox(outbox_path, clock=clock).open()
    yield box
    await box.aclose()


@pytest.fixture
async def make_dispatcher(
    store: Outbox, http: aiohttp.ClientSession, clock: FakeClock
) -> AsyncIterator[MakeDispatcher]:
    """Build dispatchers on the fake clock with a seeded jitter. Teardown stops them."""
    dispatchers: list[OutboxDispatcher] = []

    def make(
        url: str | None,
        *,
        schedule: RetrySchedule = RetrySchedule(),
        policy: webhooks.RetryPolicy = webhooks.RetryPolicy(),
        crm: CrmClient | None = None,
        poll_interval: float = 2.0,
    ) -> OutboxDispatcher:
        sender = None
        if url is not None:
            sender = webhooks.WebhookSender(url=url, secret=SECRET, session=http, policy=policy, clock=clock)
        row_sender = RowSender(webhook_sender=sender, crm=crm, crm_timeout=GUARD_TIMEOUT, clock=clock)
        dispatcher = OutboxDispatcher(
            store, row_sender, schedule=schedule, poll_interval=poll_interval, clock=clock, rng=random.Random(7)
        )
        dispatchers.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in dispatchers:
        await dispatcher.aclose()


@pytest.fixture
async def flaky_crm(crm: Server, http: aiohttp.ClientSession) -> AsyncIterator[tuple[FlakyCrmProxy, str]]:
    proxy = FlakyCrmProxy(upstream=crm.url, session=http, failures=2)
    async with serve(proxy.app()) as url:
        yield proxy, url


def webhook_row(*, stream: str, sequence: int, created_at: float) -> OutboxRow:
    return OutboxRow(
        id=f"evt_{stream}_{sequence}",
        kind=WEBHOOK,
        call_id=stream,
        stream=stream,
        sequence=sequence,
        name="call.note",
        body=json.dumps({"id": f"evt_{stream}_{sequence}", "text": "Zoë ✓"}, ensure_ascii=False).encode("utf-8"),
        created_at=created_at,
    )


async def emit_events(queue: OutboxQueue, clock: FakeClock, call_id: str, names: list[str]) -> list[webhooks.WebhookEvent]:
    emitter = webhooks.CallEmitter(call_id=call_id, sender=None, queue=queue, clock=clock)
    return [await emitter.emit(name, {"note": f"{name} of {call_id}"}) for name in names]


async def row_of(store: Outbox, row_id: str) -> OutboxRow:
    (row,) = [row for row in await store.rows() if row.id == row_id]
    return row


async def deliver_all(dispatcher: OutboxDispatcher, store: Outbox, clock: FakeClock) -> None:
    """Run rounds, moving the fake clock to the next due time whenever nothing is due."""
    for _ in range(MAX_ROUNDS):
        if await store.pending_count() == 0:
            return
        if await dispatcher.run_once() == 0:
            due = await store.next_due_at()
            assert due is not None
            assert due > clock.now, "a row is due but no round claimed it"
            clock.now = due
    pytest.fail(f"rows still pending after {MAX_ROUNDS} rounds")


async def run_command(argv: list[str]) -> int:
    # outbox.main calls asyncio.run, which cannot run inside the test's event loop.
    return await asyncio.to_thread(outbox_command.main, argv)


# Store


async def test_outbox_put_keeps_row_across_reopen(outbox_path: Path, clock: FakeClock) -> None:
    row = webhook_row(stream="call_a", sequence=1, created_at=clock.now)

    first = await Outbox(outbox_path, clock=clock).open()
    try:
        await first.put(row)
    finally:
        await first.aclose()
    second = await Outbox(outbox_path, clock=clock).open()
    try:
        (stored,) = await second.rows()
    finally:
        await second.aclose()

    assert stored.body == row.body
    assert stored.status == PENDING
    assert stored.attempts == 0
    assert stored.next_attempt_at == row.created_at
    assert stored.lease_owner is None


async def test_outbox_claim_takes_stream_heads_only(store: Outbox, clock: FakeClock) -> None:
    for stream, count in (("call_a", 3), ("call_b", 2)):
        for sequence in range(1, count + 1):
            await store.put(webhook_row(stream=stream, sequence=sequence, created_at=clock.now))

    claimed = await store.claim("owner-1", lease_seconds=30, limit=10)

    assert sorted((row.stream, row.sequence) for row in claimed) == [("call_a", 1), ("call_b", 1)]
    assert {row.lease_owner for row in claimed} == {"owner-1"}
    assert await store.claim("owner-2", lease_seconds=30, limit=10) == []


async def test_outbox_claim_waits_for_lease_end(store: Outbox, clock: FakeClock) -> None:
    await store.put(webhook_row(stream="call_a", sequence=1, created_at=clock.now))
    (first,) = await store.claim("owner-1", lease_seconds=30, limit=10)

    clock.now = first.lease_until - 0.001
    before_expiry = await store.claim("owner-2", lease_seconds=30, limit=10)
    clock.now = first.lease_until
    after_expiry = await store.claim("owner-2", lease_seconds=30, limit=10)

    assert before_expiry == []
    assert [row.id for row in after_expiry] == [first.id]
    assert after_expiry[0].lease_owner == "owner-2"


async def test_outbox_claim_filters_by_call_id(store: Outbox, clock: FakeClock) -> None:
    await store.put(webhook_row(stream="call_a", sequence=1, created_at=clock.now))
    await store.put(webhook_row(stream="call_b", sequence=1, created_at=clock.now))

    claimed = await store.claim("owner-1", lease_seconds=30, limit=10, call_id="call_b")

    assert [row.call_id for row in claimed] == ["call_b"]


async def test_outbox_finish_ignores_lost_lease(store: Outbox, clock: FakeClock) -> None:
    await store.put(webhook_row(stream="call_a", sequence=1, created_at=clock.now))
    (stale,) = await store.claim("owner-1", lease_seconds=30, limit=10)
    clock.now = stale.lease_until
    (current,) = await store.claim("owner-2", lease_seconds=30, limit=10)

    await store.mark_delivered(stale, status=200)
    after_stale = await row_of(store, stale.id)
    await store.mark_delivered(current, status=200)
    after_current = await row_of(store, stale.id)

    assert after_stale.status == PENDING
    assert after_stale.lease_owner == "owner-2"
    assert after_current.status == DELIVERED
    assert after_current.attempts == 1


async def test_outbox_next_due_ignores_blocked_rows(store: Outbox, clock: FakeClock) -> None:
    await store.put(webhook_row(stream="call_a", sequence=1, created_at=clock.now))
    await store.put(webhook_row(stream="call_a", sequence=2, created_at=clock.now))
    (head,) = await store.claim("owner-1", lease_seconds=30, limit=10)

    await store.reschedule(head, next_attempt_at=clock.now + 100, status=503, error="HTTP 503")

    assert await store.next_due_at() == clock.now + 100


async def test_outbox_redeliver_requires_one_target(store: Outbox) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await store.redeliver(event_id="evt_1", all_dead=True)


def test_outbox_command_rejects_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = outbox_command.main(["--path", str(tmp_path / "missing.sqlite3"), "list"])

    assert status == 2
    assert "does not exist" in capsys.readouterr().err


async def test_outbox_command_redeliver_unknown_event_fails(store: Outbox, capsys: pytest.CaptureFixture[str]) -> None:
    status = await run_command(["--path", str(store.path), "redeliver", "--event", "evt_" + "0" * 32])

    assert status == 1
    assert "no dead row matched" in capsys.readouterr().err


# Dispatcher: webhooks


async def test_dispatcher_waits_for_retry_after(
    store: Outbox, clock: FakeClock, start_receiver: StartReceiver, make_dispatcher: MakeDispatcher
) -> None:
    receiver = await start_receiver(
        lambda payload, number: Reply(503, {"Retry-After": "2"}) if number <= 3 else Reply(200)
    )
    dispatcher = make_dispatcher(receiver.url)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    (event,) = await emit_events(queue, clock, "call_retry_after", ["call.started"])

    assert await dispatcher.run_once() == 1
    for attempt_number in (2, 3, 4):
        previous = clock.now
        clock.now = previous + 1.999
        assert await dispatcher.run_once() == 0, f"attempt {attempt_number} was made before Retry-After passed"
        clock.now = previous + 2.0
        assert await dispatcher.run_once() == 1, f"attempt {attempt_number} was not made once Retry-After passed"

    row = await row_of(store, event.id)
    assert row.status == DELIVERED
    assert row.attempts == 4
    assert [attempt.status for attempt in receiver.attempts] == [503, 503, 503, 200]
    assert len(receiver.successes()) == 1
    assert [attempt.clock_time - START_TIME for attempt in receiver.attempts] == [0.0, 2.0, 4.0, 6.0]
    for attempt in receiver.attempts:
        assert attempt.headers[webhooks.ID_HEADER] == event.id
        assert attempt.body == event.body
        webhooks.verify(SECRET_TEXT, attempt.headers, attempt.body, now=attempt.clock_time)


async def test_dispatcher_reschedules_timed_out_attempt(
    store: Outbox, clock: FakeClock, start_receiver: StartReceiver, make_dispatcher: MakeDispatcher
) -> None:
    receiver = await start_receiver(lambda payload, number: Reply(hang=True) if number == 1 else Reply(200))
    dispatcher = make_dispatcher(
        receiver.url, policy=webhooks.RetryPolicy(request_timeout=0.2, connect_timeout=0.2)
    )
    queue = OutboxQueue(store, dispatcher, clock=clock)
    (event,) = await emit_events(queue, clock, "call_timeout", ["call.started"])

    assert await dispatcher.run_once() == 1
    timed_out = await row_of(store, event.id)
    clock.now = timed_out.next_attempt_at
    assert await dispatcher.run_once() == 1
    delivered = await row_of(store, event.id)

    assert timed_out.status == PENDING
    assert timed_out.attempts == 1
    assert timed_out.last_status is None
    assert timed_out.last_error is not None
    assert "Timeout" in timed_out.last_error
    assert timed_out.lease_owner is None
    assert delivered.status == DELIVERED
    assert delivered.attempts == 2
    assert [attempt.status for attempt in receiver.attempts] == [None, 200]
    assert {attempt.event_id for attempt in receiver.attempts} == {event.id}


async def test_dispatcher_signs_each_retry_afresh(
    store: Outbox, clock: FakeClock, start_receiver: StartReceiver, make_dispatcher: MakeDispatcher
) -> None:
    outage_end = START_TIME + 360
    receiver = await start_receiver(lambda payload, number: Reply(500) if clock.now < outage_end else Reply(200))
    dispatcher = make_dispatcher(receiver.url)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    (event,) = await emit_events(queue, clock, "call_outage", ["call.started"])

    for _ in range(MAX_ROUNDS):
        assert await dispatcher.run_once() == 1
        row = await row_of(store, event.id)
        if row.status != PENDING:
            break
        clock.now = row.next_attempt_at

    assert row.status == DELIVERED
    assert row.attempts == len(receiver.attempts)
    assert len(receiver.attempts) > 2
    assert all(attempt.status == 500 for attempt in receiver.attempts[:-1])
    assert receiver.attempts[-1].status == 200
    assert receiver.attempts[-1].clock_time >= outage_end
    for attempt in receiver.attempts:
        assert attempt.headers[webhooks.TIMESTAMP_HEADER] == str(int(attempt.clock_time))
        assert attempt.body == event.body
        webhooks.verify(SECRET_TEXT, attempt.headers, attempt.body, now=attempt.clock_time)
    # The first signature is stale by the time the outage ends, so resending it would fail.
    with pytest.raises(webhooks.WebhookVerificationError, match="old"):
        webhooks.verify(SECRET_TEXT, receiver.attempts[0].headers, event.body, now=receiver.attempts[-1].clock_time)


@pytest.mark.parametrize("status", [410, 400])
async def test_outbox_command_redelivers_dead_row(
    status: int,
    store: Outbox,
    outbox_path: Path,
    clock: FakeClock,
    start_receiver: StartReceiver,
    make_dispatcher: MakeDispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The command stamps a redelivered row with the wall clock, so the fake clock
    # runs a day ahead of it for that row to be due at once.
    clock.now = time.time() + DAY
    receiver = await start_receiver(
        lambda payload, number: Reply(status) if payload["call_id"] == "call_gone" and number == 1 else Reply(200)
    )
    dispatcher = make_dispatcher(receiver.url)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    (gone,) = await emit_events(queue, clock, "call_gone", ["call.started"])
    (fine,) = await emit_events(queue, clock, "call_fine", ["call.started"])

    assert await dispatcher.run_once() == 2
    dead = await row_of(store, gone.id)
    clock.now += 3600
    assert await dispatcher.run_once() == 0

    assert dead.status == DEAD
    assert dead.attempts == 1
    assert dead.last_status == status
    assert dead.last_error == f"HTTP {status}"
    assert len(receiver.attempts_of(gone.id)) == 1

    assert await run_command(["--path", str(outbox_path), "list"]) == 0
    listing = capsys.readouterr().out
    (line,) = [line for line in listing.splitlines() if gone.id in line]
    assert " dead " in line
    assert f"last_status={status}" in line
    assert fine.id not in listing  # delivered rows are listed only with --all

    assert await run_command(["--path", str(outbox_path), "redeliver", "--event", gone.id]) == 0
    assert "1 dead row(s) queued" in capsys.readouterr().out
    requeued = await row_of(store, gone.id)
    assert requeued.status == PENDING

    assert await dispatcher.run_once() == 1
    redelivered = await row_of(store, gone.id)
    assert redelivered.status == DELIVERED
    assert [attempt.status for attempt in receiver.attempts_of(gone.id)] == [status, 200]


async def test_dispatcher_keeps_order_per_call(
    store: Outbox, clock: FakeClock, start_receiver: StartReceiver, make_dispatcher: MakeDispatcher
) -> None:
    def script(payload: dict, number: int) -> Reply:
        if payload["call_id"] == "call_slow" and payload["sequence"] == 1 and number <= 2:
            return Reply(500)
        return Reply(200)

    receiver = await start_receiver(script)
    dispatcher = make_dispatcher(receiver.url)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    names = ["call.started", "call.intent", "call.ended"]
    slow = await emit_events(queue, clock, "call_slow", names)
    quick = await emit_events(queue, clock, "call_quick", names)

    await deliver_all(dispatcher, store, clock)

    def successful_sequences(call_id: str) -> list[int]:
        return [attempt.sequence for attempt in receiver.successes() if attempt.call_id == call_id]

    assert successful_sequences("call_slow") == [1, 2, 3]
    assert successful_sequences("call_quick") == [1, 2, 3]
    assert [attempt.status for attempt in receiver.attempts_of(slow[0].id)] == [500, 500, 200]

    order = [attempt.event_id for attempt in receiver.attempts]
    head_success = max(index for index, event_id in enumerate(order) if event_id == slow[0].id)
    assert receiver.attempts[head_success].succeeded
    assert slow[1].id not in order[:head_success], "sequence 2 was attempted while sequence 1 was pending"
    for event in quick:
        assert order.index(event.id) < head_success, "the failing call held back another call"


async def test_dispatcher_gives_up_after_max_age(
    store: Outbox, clock: FakeClock, start_receiver: StartReceiver, make_dispatcher: MakeDispatcher
) -> None:
    receiver = await start_receiver(always(503))
    dispatcher = make_dispatcher(receiver.url, schedule=RetrySchedule(max_age=60))
    queue = OutboxQueue(store, dispatcher, clock=clock)
    (event,) = await emit_events(queue, clock, "call_down", ["call.started"])

    for _ in range(MAX_ROUNDS):
        assert await dispatcher.run_once() == 1
        row = await row_of(store, event.id)
        if row.status != PENDING:
            break
        clock.now = row.next_attempt_at
    await store.purge(older_than_seconds=0)

    assert row.status == DEAD
    assert row.attempts == len(receiver.attempts)
    assert row.last_status == 503
    assert row.last_error == "HTTP 503"
    assert row.finished_at == clock.now
    assert receiver.attempts[-1].clock_time - event.timestamp >= 60
    assert all(attempt.clock_time - event.timestamp < 60 for attempt in receiver.attempts[:-1])
    assert [dead.id for dead in await store.rows(status=DEAD)] == [event.id]


async def test_outbox_command_purges_old_deliveries(
    store: Outbox,
    outbox_path: Path,
    clock: FakeClock,
    start_receiver: StartReceiver,
    make_dispatcher: MakeDispatcher,
    capsys: pytest.CaptureFixture[str],
) -> None:
    replies = {"call_dead": Reply(410), "call_pending": Reply(503)}
    receiver = await start_receiver(lambda payload, number: replies.get(payload["call_id"], Reply(200)))
    dispatcher = make_dispatcher(receiver.url)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    # The command purges by the wall clock, so the rows finish at times relative to it.
    wall_now = time.time()
    for call_id, finished_days_ago in (("call_dead", 30), ("call_old", 8), ("call_new", 6), ("call_pending", 5)):
        clock.now = wall_now - finished_days_ago * DAY
        await emit_events(queue, clock, call_id, ["call.started"])
        assert await dispatcher.run_once() == 1
    before = {row.call_id: row.status for row in await store.rows()}

    assert await run_command(["--path", str(outbox_path), "purge", "--older-than-days", "7"]) == 0
    after = {row.call_id: row.status for row in await store.rows()}

    assert before == {"call_dead": DEAD, "call_old": DELIVERED, "call_new": DELIVERED, "call_pending": PENDING}
    assert "1 delivered row(s) older than 7 days deleted" in capsys.readouterr().out
    assert after == {"call_dead": DEAD, "call_new": DELIVERED, "call_pending": PENDING}


async def test_dispatcher_logs_failures_once_per_window(
    store: Outbox,
    clock: FakeClock,
    start_receiver: StartReceiver,
    make_dispatcher: MakeDispatcher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="delivery")
    receiver = await start_receiver(always(503))
    dispatcher = make_dispatcher(receiver.url)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    for index in range(10):
        await emit_events(queue, clock, f"call_{index}", ["call.started"])

    def retry_warnings() -> list[logging.LogRecord]:
        return [record for record in caplog.records if record.getMessage() == "outbox delivery failed, retrying"]

    assert await dispatcher.run_once() == 10
    first_window = retry_warnings()
    clock.now += 30  # same 60 s window: every failure is held back
    assert await dispatcher.run_once() == 10
    same_window = retry_warnings()
    clock.now += 31  # next window
    assert await dispatcher.run_once() == 10
    both_windows = retry_warnings()

    assert len(receiver.attempts) == 30
    assert len(first_window) == 1
    assert first_window[0].similar_failures_not_logged == 0
    assert first_window[0].status == 503
    assert len(same_window) == 1
    assert len(both_windows) == 2
    assert both_windows[1].similar_failures_not_logged == 19


async def test_dispatcher_drain_delivers_only_its_call(
    store: Outbox, clock: FakeClock, start_receiver: StartReceiver, make_dispatcher: MakeDispatcher
) -> None:
    receiver = await start_receiver(always(200))
    dispatcher = make_dispatcher(receiver.url)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    await emit_events(queue, clock, "call_mine", ["call.started", "call.ended"])
    await emit_events(queue, clock, "call_other", ["call.started"])

    drained = await queue.drain("call_mine", GUARD_TIMEOUT)

    assert drained is True
    assert await store.pending_count("call_mine") == 0
    assert await store.pending_count("call_other") == 1
    assert [attempt.call_id for attempt in receiver.attempts] == ["call_mine", "call_mine"]


# Dispatcher: background loop


async def test_dispatcher_sees_wake_during_idle_delay(
    store: Outbox,
    clock: FakeClock,
    start_receiver: StartReceiver,
    make_dispatcher: MakeDispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = await start_receiver(always(200))
    # An hour-long poll interval, so only the wake-up can start the next round in time.
    dispatcher = make_dispatcher(receiver.url, poll_interval=3600)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    original_next_due_at = store.next_due_at
    stored: list[webhooks.WebhookEvent] = []

    async def next_due_at_then_store() -> float | None:
        due = await original_next_due_at()
        if not stored:
            # An event stored after the idle delay was computed, as a concurrent emit would.
            stored.extend(await emit_events(queue, clock, "call_late", ["call.started"]))
        return due

    monkeypatch.setattr(store, "next_due_at", next_due_at_then_store)
    dispatcher.start()
    async with asyncio.timeout(GUARD_TIMEOUT):
        await receiver.first_success.wait()

    assert [attempt.event_id for attempt in receiver.attempts] == [stored[0].id]


async def test_dispatcher_loop_survives_failed_round(
    store: Outbox,
    clock: FakeClock,
    start_receiver: StartReceiver,
    make_dispatcher: MakeDispatcher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="delivery")
    receiver = await start_receiver(always(200))
    dispatcher = make_dispatcher(receiver.url, poll_interval=3600)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    original_next_due_at = store.next_due_at
    failed = asyncio.Event()

    async def next_due_at_failing_once() -> float | None:
        if not failed.is_set():
            failed.set()
            raise sqlite3.OperationalError("database is locked")
        return await original_next_due_at()

    monkeypatch.setattr(store, "next_due_at", next_due_at_failing_once)
    dispatcher.start()
    async with asyncio.timeout(GUARD_TIMEOUT):
        await failed.wait()
    (event,) = await emit_events(queue, clock, "call_after_error", ["call.started"])
    async with asyncio.timeout(GUARD_TIMEOUT):
        await receiver.first_success.wait()

    assert [attempt.event_id for attempt in receiver.attempts] == [event.id]
    assert [record.getMessage() for record in caplog.records] == [
        "outbox delivery round failed; retrying after the poll interval"
    ]


# Dispatcher: CRM writes


async def test_dispatcher_retries_crm_writes(
    store: Outbox,
    clock: FakeClock,
    crm: Server,
    flaky_crm: tuple[FlakyCrmProxy, str],
    http: aiohttp.ClientSession,
    make_dispatcher: MakeDispatcher,
) -> None:
    proxy, proxy_url = flaky_crm
    client = CrmClient(base_url=proxy_url, api_key=CRM_API_KEY, session=http)
    dispatcher = make_dispatcher(None, crm=client)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    activity = {"call_id": "call_crm", "outcome": "completed", "duration_seconds": 42.0}

    await queue.put_crm_write(CRM_NOTE, call_id="call_crm", contact_id="ct_1001", text="Wants a callback on Monday")
    await queue.put_crm_write(CRM_ACTIVITY, call_id="call_crm", contact_id="ct_1001", activity=activity)
    await deliver_all(dispatcher, store, clock)
    rows = await store.rows(call_id="call_crm")
    async with http.get(
        f"{crm.url}/contacts/ct_1001",
        headers={"Authorization": f"Bearer {CRM_API_KEY}"},
        timeout=aiohttp.ClientTimeout(total=GUARD_TIMEOUT),
    ) as response:
        contact = await response.json()

    assert [(row.kind, row.status, row.attempts) for row in rows] == [
        (CRM_NOTE, DELIVERED, 3),
        (CRM_ACTIVITY, DELIVERED, 1),
    ]
    assert proxy.log == [
        ("/contacts/ct_1001/notes", 503),
        ("/contacts/ct_1001/notes", 503),
        ("/contacts/ct_1001/notes", 201),
        ("/contacts/ct_1001/activities", 201),
    ]
    notes = [note for note in contact["notes"] if note["call_id"] == "call_crm"]
    assert [(note["text"], note["source"]) for note in notes] == [("Wants a callback on Monday", "ai-agent")]
    activities = [entry for entry in contact["activities"] if entry["call_id"] == "call_crm"]
    assert [(entry["type"], entry["outcome"]) for entry in activities] == [("call", "completed")]


async def test_dispatcher_unknown_crm_contact_dead(
    store: Outbox, clock: FakeClock, crm: Server, http: aiohttp.ClientSession, make_dispatcher: MakeDispatcher
) -> None:
    client = CrmClient(base_url=crm.url, api_key=CRM_API_KEY, session=http)
    dispatcher = make_dispatcher(None, crm=client)
    queue = OutboxQueue(store, dispatcher, clock=clock)
    await queue.put_crm_write(CRM_NOTE, call_id="call_crm", contact_id="ct_missing", text="Asked about invoices")

    assert await dispatcher.run_once() == 1
    clock.now += DAY / 2
    assert await dispatcher.run_once() == 0
    (row,) = await store.rows(call_id="call_crm")

    assert row.status == DEAD
    assert row.attempts == 1
    assert row.last_status == 404
    assert row.last_error == "not_found"
