"""Tests for WebhookSender and CallEmitter against real aiohttp receivers on 127.0.0.1.

Time is faked: the sender gets a clock that the injected sleep advances, and the sleep
returns at once, so no test waits for a retry delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.servers import serve
from webhooks import (
    CallEmitter,
    DeliveryResult,
    RetryPolicy,
    WebhookSender,
    build_event,
    verify,
)

SECRET_TEXT = "delivery-test-secret"
SECRET = SECRET_TEXT.encode("utf-8")
START_TIME = 1_700_000_000.0

# Upper bound for waits on the loopback receiver, so that a bug fails the test
# instead of hanging it. No test asserts how long anything took.
GUARD_TIMEOUT = 5.0


class FakeClock:
    def __init__(self, start: float = START_TIME) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    """Records each requested delay, advances the fake clock by it and returns at once."""

    def __init__(self, clock: FakeClock) -> None:
        self.delays: list[float] = []
        self._clock = clock

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self._clock.now += delay


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    wait_for_release: bool = False


@dataclass(frozen=True)
class ReceivedRequest:
    headers: CIMultiDict[str]
    body: bytes
    clock_time: float


class Receiver:
    """A webhook endpoint that responds with scripted replies, then with 200."""

    def __init__(self, replies: list[Reply], clock: FakeClock) -> None:
        self.url = ""
        self.requests: list[ReceivedRequest] = []
        self.answered = 0
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self._replies = list(replies)
        self._clock = clock

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(ReceivedRequest(request.headers.copy(), body, self._clock()))
        self.arrived.set()

        reply = self._replies.pop(0) if self._replies else Reply()
        if reply.wait_for_release:
            await self.release.wait()

        self.answered += 1
        return web.Response(status=reply.status, headers=reply.headers, text="ok")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleep(clock: FakeClock) -> RecordingSleep:
    return RecordingSleep(clock)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start_receiver(clock: FakeClock):
    """Start receivers on 127.0.0.1. Teardown releases blocked handlers, then stops the servers."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(replies: list[Reply]) -> Receiver:
            receiver = Receiver(replies, clock)
            base_url = await stack.enter_async_context(serve(receiver.app()))
            stack.callback(receiver.release.set)  # runs before this server stops
            receiver.url = f"{base_url}/hooks"
            return receiver

        yield start


@pytest.fixture
def make_sender(session: aiohttp.ClientSession, clock: FakeClock, sleep: RecordingSleep):
    def make(receiver: Receiver, policy: RetryPolicy = RetryPolicy()) -> WebhookSender:
        return WebhookSender(
            url=receiver.url,
            secret=SECRET,
            session=session,
            policy=policy,
            clock=clock,
            sleep=sleep,
            rng=random.Random(5),
        )

    return make


@pytest.fixture
async def emitters():
    """Collect CallEmitters and close each one after the test."""
    created: list[CallEmitter] = []
    yield created
    for emitter in created:
        await emitter.aclose()


def sample_event(clock: FakeClock, *, sequence: int = 1):
    return build_event(
        "call.started",
        call_id="call_1",
        sequence=sequence,
        fields={"caller_name": "José", "greeting": "नमस्ते"},
        timestamp=clock(),
    )


def records_with(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == message]


# WebhookSender


async def test_sender_retry_after_then_success(start_receiver, make_sender, clock, sleep):
    busy = Reply(status=503, headers={"Retry-After": "2"})
    receiver = await start_receiver([busy, busy, busy, Reply(status=200)])
    event = sample_event(clock)

    result = await make_sender(receiver).deliver(event)

    assert result == DeliveryResult(
        event_id=event.id, delivered=True, attempts=4, status=200, error=None
    )
    assert sleep.delays == [2.0, 2.0, 2.0]
    assert len(receiver.requests) == 4
    assert [request.headers["webhook-id"] for request in receiver.requests] == [event.id] * 4
    assert [request.body for request in receiver.requests] == [event.body] * 4

    timestamps = [request.headers["webhook-timestamp"] for request in receiver.requests]
    assert timestamps == ["1700000000", "1700000002", "1700000004", "1700000006"]

    for request in receiver.requests:
        payload = verify(SECRET_TEXT, request.headers, request.body, now=request.clock_time)
        assert payload == event.payload()


async def test_sender_sends_json_content_type(start_receiver, make_sender, clock):
    receiver = await start_receiver([])

    result = await make_sender(receiver).deliver(sample_event(clock))

    assert result.delivered
    assert receiver.requests[0].headers["Content-Type"] == "application/json"


async def test_sender_timeout_retried(start_receiver, make_sender, clock, sleep, caplog):
    receiver = await start_receiver([Reply(wait_for_release=True), Reply(status=200)])
    policy = RetryPolicy(request_timeout=0.2, base_delay=0.5)
    event = sample_event(clock)

    with caplog.at_level(logging.WARNING, logger="webhooks"):
        result = await make_sender(receiver, policy).deliver(event)

    assert result.delivered
    assert result.attempts == 2
    assert len(receiver.requests) == 2
    assert len(sleep.delays) == 1
    assert 0 <= sleep.delays[0] <= 0.5

    retries = records_with(caplog, "webhook delivery failed, retrying")
    assert len(retries) == 1
    assert retries[0].status is None
    assert "Timeout" in retries[0].error
    assert retries[0].attempt == 1
    assert retries[0].event_id == event.id


@pytest.mark.parametrize("status", [410, 400])
async def test_sender_final_status_single_attempt(
    start_receiver, make_sender, clock, sleep, caplog, status
):
    receiver = await start_receiver([Reply(status=status)])
    event = sample_event(clock)

    with caplog.at_level(logging.WARNING, logger="webhooks"):
        result = await make_sender(receiver).deliver(event)

    assert result == DeliveryResult(
        event_id=event.id, delivered=False, attempts=1, status=status, error=f"HTTP {status}"
    )
    assert len(receiver.requests) == 1
    assert sleep.delays == []

    give_ups = records_with(caplog, "webhook delivery gave up")
    assert len(give_ups) == 1
    assert give_ups[0].status == status
    assert give_ups[0].call_id == "call_1"
    assert give_ups[0].event == "call.started"


async def test_sender_gives_up_after_max_attempts(
    start_receiver, make_sender, clock, sleep, caplog
):
    receiver = await start_receiver([Reply(status=500)] * 3)
    policy = RetryPolicy(max_attempts=3)

    with caplog.at_level(logging.WARNING, logger="webhooks"):
        result = await make_sender(receiver, policy).deliver(sample_event(clock))

    assert result.delivered is False
    assert result.attempts == 3
    assert result.status == 500
    assert len(receiver.requests) == 3
    assert len(sleep.delays) == 2
    assert [record.message for record in caplog.records] == [
        "webhook delivery failed, retrying",
        "webhook delivery failed, retrying",
        "webhook delivery gave up",
    ]


async def test_sender_logs_omit_body_query_and_secret(
    start_receiver, session, clock, sleep, caplog
):
    receiver = await start_receiver([Reply(status=500), Reply(status=410)])
    sender = WebhookSender(
        url=f"{receiver.url}?token=query-token-value",
        secret=SECRET,
        session=session,
        clock=clock,
        sleep=sleep,
    )

    with caplog.at_level(logging.DEBUG, logger="webhooks"):
        await sender.deliver(sample_event(clock))

    assert len(caplog.records) == 2
    for record in caplog.records:
        logged = repr(record.__dict__)
        assert "query-token-value" not in logged
        assert SECRET_TEXT not in logged
        assert "José" not in logged
        assert "caller_name" not in logged


async def test_sender_connection_refused_retried(session, clock, sleep):
    # Bind a port, then close it, so nothing listens there.
    async with serve(web.Application()) as base_url:
        closed_url = f"{base_url}/hooks"
    sender = WebhookSender(
        url=closed_url,
        secret=SECRET,
        session=session,
        policy=RetryPolicy(max_attempts=2),
        clock=clock,
        sleep=sleep,
    )

    result = await sender.deliver(sample_event(clock))

    assert result.delivered is False
    assert result.attempts == 2
    assert result.status is None
    assert result.error is not None
    assert result.error.startswith("Client")
    assert len(sleep.delays) == 1


def test_sender_str_secret_rejected(session):
    with pytest.raises(TypeError, match="must be bytes"):
        WebhookSender(url="http://127.0.0.1:9/hooks", secret=SECRET_TEXT, session=session)


def test_sender_non_http_url_rejected(session):
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSender(url="ftp://127.0.0.1/hooks", secret=SECRET, session=session)


# CallEmitter


async def test_emitter_delivers_in_sequence_order(start_receiver, make_sender, clock, emitters):
    receiver = await start_receiver([Reply(status=500), Reply(status=500), Reply(status=200)])
    emitter = CallEmitter(call_id="call_1", sender=make_sender(receiver), clock=clock)
    emitters.append(emitter)

    await emitter.emit("call.started", {"direction": "inbound"})
    await emitter.emit("call.intent", {"intent": "billing"})
    await emitter.emit("call.ended", {"reason": "caller hung up"})

    assert await emitter.drain(timeout=GUARD_TIMEOUT) is True
    assert [event.sequence for event in emitter.events] == [1, 2, 3]
    received_sequences = [
        verify(SECRET_TEXT, request.headers, request.body, now=request.clock_time)["sequence"]
        for request in receiver.requests
    ]
    assert received_sequences == [1, 1, 1, 2, 3]
    assert [result.event_id for result in emitter.results] == [event.id for event in emitter.events]
    assert [result.attempts for result in emitter.results] == [3, 1, 1]
    assert all(result.delivered for result in emitter.results)
    assert emitter.pending == 0


async def test_emitter_sequences_gapless_after_rejected_fields(
    start_receiver, make_sender, clock, emitters
):
    receiver = await start_receiver([])
    emitter = CallEmitter(call_id="call_1", sender=make_sender(receiver), clock=clock)
    emitters.append(emitter)

    await emitter.emit("call.started", {})
    with pytest.raises(ValueError, match="collides"):
        await emitter.emit("call.note", {"sequence": 99})
    await emitter.emit("call.ended", {})

    assert await emitter.drain(timeout=GUARD_TIMEOUT) is True
    assert [event.sequence for event in emitter.events] == [1, 2]
    assert len(receiver.requests) == 2


async def test_emitter_emit_does_not_wait_for_receiver(
    start_receiver, make_sender, clock, emitters
):
    receiver = await start_receiver([Reply(status=200, wait_for_release=True)])
    emitter = CallEmitter(call_id="call_1", sender=make_sender(receiver), clock=clock)
    emitters.append(emitter)

    event = await emitter.emit("call.started", {"direction": "inbound"})
    await asyncio.wait_for(receiver.arrived.wait(), GUARD_TIMEOUT)

    assert emitter.events == [event]
    assert emitter.pending == 1
    assert receiver.answered == 0
    assert emitter.results == []

    receiver.release.set()

    assert await emitter.drain(timeout=GUARD_TIMEOUT) is True
    assert emitter.pending == 0
    assert receiver.answered == 1
    assert emitter.results[0].delivered


async def test_emitter_drain_timeout_then_aclose(start_receiver, make_sender, clock, caplog):
    receiver = await start_receiver([Reply(wait_for_release=True)])
    emitter = CallEmitter(call_id="call_drain", sender=make_sender(receiver), clock=clock)

    await emitter.emit("call.started", {})
    await asyncio.wait_for(receiver.arrived.wait(), GUARD_TIMEOUT)

    with caplog.at_level(logging.WARNING, logger="webhooks"):
        drained = await emitter.drain(timeout=0.05)

    assert drained is False
    assert emitter.pending == 1
    timeouts = records_with(caplog, "webhook drain timed out with events pending")
    assert len(timeouts) == 1
    assert timeouts[0].pending == 1

    await emitter.aclose()
    await emitter.aclose()

    worker_names = {task.get_name() for task in asyncio.all_tasks()}
    assert "webhooks-call_drain" not in worker_names
    assert emitter.results == []


async def test_emitter_emit_after_aclose_not_sent(start_receiver, make_sender, clock, caplog):
    receiver = await start_receiver([])
    emitter = CallEmitter(call_id="call_1", sender=make_sender(receiver), clock=clock)
    await emitter.emit("call.started", {})
    assert await emitter.drain(timeout=GUARD_TIMEOUT) is True
    await emitter.aclose()

    with caplog.at_level(logging.WARNING, logger="webhooks"):
        late = await emitter.emit("call.note", {"note": "late"})

    assert emitter.events[-1] == late
    assert late.sequence == 2
    assert emitter.pending == 0
    assert await emitter.drain(timeout=GUARD_TIMEOUT) is True
    assert len(receiver.requests) == 1
    warnings = records_with(caplog, "webhook event emitted after the emitter closed, not sent")
    assert len(warnings) == 1
    assert warnings[0].event_id == late.id


class CrashingSender:
    async def deliver(self, event):
        raise ValueError("bug in a sender")


async def test_emitter_worker_crash_logged(clock, caplog):
    emitter = CallEmitter(call_id="call_crash", sender=CrashingSender(), clock=clock)

    with caplog.at_level(logging.ERROR, logger="webhooks"):
        await emitter.emit("call.started", {})
        drained = await emitter.drain(timeout=0.05)

    assert drained is False
    assert emitter.pending == 1
    crashes = records_with(
        caplog, "webhook delivery task crashed; later events of this call are not sent"
    )
    assert len(crashes) == 1
    assert crashes[0].exc_info[0] is ValueError
    assert crashes[0].call_id == "call_crash"
    await emitter.aclose()


async def test_emitter_without_sender_records_events(clock, caplog):
    emitter = CallEmitter(call_id="call_off", sender=None, clock=clock)

    with caplog.at_level(logging.INFO, logger="webhooks"):
        first = await emitter.emit("call.started", {})
        second = await emitter.emit("call.ended", {})

    assert emitter.events == [first, second]
    assert [event.sequence for event in emitter.events] == [1, 2]
    assert first.timestamp == START_TIME
    assert emitter.pending == 0
    assert await emitter.drain(timeout=0.01) is True
    off_messages = records_with(caplog, "webhooks are off, events are recorded but not sent")
    assert len(off_messages) == 1
    await emitter.aclose()
