"""Tests for the outbox shared by real OS processes: a SIGKILLed writer and two concurrent senders.

The child processes run tests/outbox_worker_proc.py on the real clock. Every
receiver listens on 127.0.0.1 in the test process. Waits are bounded polling
loops, and no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import webhooks
from delivery import AttemptResult, OutboxDispatcher, OutboxQueue, RowSender
from outbox import DELIVERED, Outbox, OutboxRow
from tests.conftest import WEBHOOK_SECRET, Server, received_events
from tests.outbox_worker_proc import note_fields
from tests.servers import serve

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "outbox_worker_proc.py"
PROCESS_TIMEOUT = 60.0
POLL_INTERVAL = 0.05

@dataclass(frozen=True)
class Child:
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


Spawn = Callable[..., Child]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start outbox_worker_proc.py children. Teardown kills any still running and reaps them."""
    children: list[Child] = []
    environment = {**os.environ, "WEBHOOK_SECRET": WEBHOOK_SECRET}

    def start(*args: str) -> Child:
        # Child logs go to a file, so a chatty child cannot fill a pipe and stall.
        log_path = tmp_path / f"worker-{len(children)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, str(WORKER), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=ROOT,
                env=environment,
            )
        children.append(Child(process=process, log_path=log_path))
        return children[-1]

    yield start
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
        child.process.wait(timeout=PROCESS_TIMEOUT)
        for stream in (child.process.stdin, child.process.stdout):
            if stream is not None:
                stream.close()


async def read_line(child: Child) -> str:
    """Return the child's next stdout line. Kill the child when none arrives in time."""
    assert child.process.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.process.stdout.readline), PROCESS_TIMEOUT)
    except TimeoutError:
        child.process.kill()
        raise
    assert line, f"child exited without output; its log:\n{child.log()}"
    return line


async def wait_for_exit(child: Child) -> int:
    return await asyncio.to_thread(child.process.wait, PROCESS_TIMEOUT)


@dataclass
class StalledReceiver:
    """A webhook endpoint that accepts requests and responds to none before teardown."""

    url: str = ""
    requests: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        self.arrived.set()
        await self.release.wait()
        return web.Response(status=503)


@pytest.fixture
async def stalled_receiver() -> AsyncIterator[StalledReceiver]:
    receiver = StalledReceiver()
    async with contextlib.AsyncExitStack() as stack:
        base_url = await stack.enter_async_context(serve(receiver.app()))
        stack.callback(receiver.release.set)  # runs before the server stops
        receiver.url = f"{base_url}/hooks"
        yield receiver


@dataclass
class Span:
    start: float
    end: float
    status: int


class ConcurrencyRecorder:
    """A webhook endpoint that records, per event id, each request's span and how many overlapped.

    The first attempt of an event whose sequence is in `fail_first_sequences` gets 503,
    so that retries, and the head-of-line wait behind them, cross between processes.
    """

    def __init__(self, *, fail_first_sequences: frozenset[int]) -> None:
        self.url = ""
        self.spans: dict[str, list[Span]] = defaultdict(list)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.successes: list[tuple[str, int, str]] = []
        self.rejected: list[str] = []
        self._in_flight: dict[str, int] = defaultdict(int)
        self._fail_first_sequences = fail_first_sequences

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        start = loop.time()
        body = await request.read()
        try:
            payload = webhooks.verify(WEBHOOK_SECRET, request.headers, body)
        except webhooks.WebhookVerificationError as err:
            self.rejected.append(str(err))
            return web.Response(status=401)

        event_id = payload["id"]
        status = 500  # recorded if the handler fails before it picks a status
        self._in_flight[event_id] += 1
        self.max_in_flight[event_id] = max(self.max_in_flight[event_id], self._in_flight[event_id])
        try:
            # A few milliseconds in flight, so that a second claim of the same row would overlap.
            await asyncio.sleep(0.005)
            first_attempt = not self.spans[event_id]
            status = 503 if first_attempt and payload["sequence"] in self._fail_first_sequences else 200
            if status == 200:
                self.successes.append((payload["call_id"], payload["sequence"], event_id))
            return web.Response(status=status)
        finally:
            self._in_flight[event_id] -= 1
            self.spans[event_id].append(Span(start=start, end=loop.time(), status=status))


@pytest.fixture
async def recorder() -> AsyncIterator[ConcurrencyRecorder]:
    receiver = ConcurrencyRecorder(fail_first_sequences=frozenset({1, 6}))
    async with serve(receiver.app()) as base_url:
        receiver.url = f"{base_url}/hooks"
        yield receiver


async def fill_outbox(path: Path, *, calls: int, events_per_call: int) -> list[webhooks.WebhookEvent]:
    """Store events through CallEmitter and OutboxQueue with a dispatcher that never runs."""

    async def never_called(row: OutboxRow) -> AttemptResult:
        raise AssertionError("the filling process must not deliver")

    outbox = await Outbox(path).open()
    queue = OutboxQueue(outbox, OutboxDispatcher(outbox, never_called))
    emitters = [webhooks.CallEmitter(call_id=f"call_{uuid.uuid4().hex}", sender=None, queue=queue) for _ in range(calls)]
    events = []
    try:
        for note_index in range(events_per_call):
            for emitter in emitters:
                events.append(await emitter.emit("call.note", note_fields(note_index)))
    finally:
        await queue.aclose()
    return events


async def test_outbox_rows_survive_sigkill_of_writer(
    tmp_path: Path,
    spawn: Spawn,
    stalled_receiver: StalledReceiver,
    receiver: Server,
    http: aiohttp.ClientSession,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    calls, events_per_call = 3, 5
    writer = spawn(
        "store",
        "--path", str(path),
        "--url", stalled_receiver.url,
        "--lease-seconds", "1",
        "--request-timeout", "30",
        "--calls", str(calls),
        "--events-per-call", str(events_per_call),
    )  # fmt: skip

    assert await read_line(writer) == "stored\n"
    # The writer's dispatcher is now blocked in a POST, holding the lease of that row.
    async with asyncio.timeout(PROCESS_TIMEOUT):
        await stalled_receiver.arrived.wait()
    writer.process.send_signal(signal.SIGKILL)
    assert await wait_for_exit(writer) == -signal.SIGKILL

    store = await Outbox(path).open()
    try:
        rows_after_kill = await store.rows()
        leased_by_writer = [row for row in rows_after_kill if (row.lease_owner or "").startswith(f"{writer.process.pid}-")]
        first_claims: dict[str, float] = {}
        row_sender = RowSender(
            webhook_sender=webhooks.WebhookSender(
                url=receiver.url, secret=WEBHOOK_SECRET.encode("utf-8"), session=http
            ),
            crm=None,
            crm_timeout=3.0,
        )

        async def deliver(row: OutboxRow) -> AttemptResult:
            first_claims.setdefault(row.id, time.time())
            return await row_sender(row)

        dispatcher = OutboxDispatcher(store, deliver)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROCESS_TIMEOUT
        while await store.pending_count():
            assert loop.time() < deadline, "rows still pending after the writer's leases should have ended"
            if await dispatcher.run_once() == 0:
                await asyncio.sleep(POLL_INTERVAL)
        final_rows = await store.rows()
    finally:
        await store.aclose()

    assert len(rows_after_kill) == calls * events_per_call
    assert leased_by_writer, "the writer held no lease when it was killed, so lease expiry went untested"
    for row in leased_by_writer:
        assert first_claims[row.id] >= row.lease_until, f"{row.id} was claimed before the writer's lease ended"
    assert {row.status for row in final_rows} == {DELIVERED}

    events = received_events(receiver)
    assert len(events) == calls * events_per_call
    assert {event["payload"]["id"] for event in events} == {row.id for row in rows_after_kill}
    for event in events:
        assert event["standard_valid"] is True, event["error"]
        assert event["legacy_valid"] is True, event["error"]
    call_ids = {row.call_id for row in rows_after_kill}
    assert len(call_ids) == calls
    for call_id in call_ids:
        sequences = [event["payload"]["sequence"] for event in events if event["payload"]["call_id"] == call_id]
        assert sequences == list(range(1, events_per_call + 1)), f"{call_id} was delivered out of order"


async def test_outbox_two_senders_never_overlap(
    tmp_path: Path, spawn: Spawn, recorder: ConcurrencyRecorder
) -> None:
    path = tmp_path / "outbox.sqlite3"
    calls, events_per_call = 20, 10
    events = await fill_outbox(path, calls=calls, events_per_call=events_per_call)
    # A small batch keeps each process busy for many rounds, so that both processes overlap.
    senders = [
        spawn("deliver", "--path", str(path), "--url", recorder.url, "--batch-size", "4") for _ in range(2)
    ]

    for sender in senders:
        assert await read_line(sender) == "ready\n"
    for sender in senders:
        assert sender.process.stdin is not None
        sender.process.stdin.write("go\n")
        sender.process.stdin.flush()
    summaries = [json.loads(await read_line(sender)) for sender in senders]
    exit_codes = [await wait_for_exit(sender) for sender in senders]

    assert exit_codes == [0, 0], "\n".join(sender.log() for sender in senders)
    assert [summary["pending"] for summary in summaries] == [0, 0]
    assert all(summary["attempted"] > 0 for summary in summaries), f"one process sent nothing: {summaries}"
    assert recorder.rejected == []

    overlapping = {event_id: count for event_id, count in recorder.max_in_flight.items() if count > 1}
    assert overlapping == {}, "some rows were in flight in two processes at once"
    for event_id, spans in recorder.spans.items():
        ordered = sorted(spans, key=lambda span: span.start)
        for earlier, later in zip(ordered, ordered[1:]):
            assert earlier.end <= later.start, f"two requests for {event_id} overlapped"

    delivered_ids = [event_id for _, _, event_id in recorder.successes]
    assert sorted(delivered_ids) == sorted(event.id for event in events)
    # Leases of 60 s are far longer than any attempt here, so a duplicate would mean
    # two processes claimed one row in sequence without a lease expiring.
    assert len(delivered_ids) == len(set(delivered_ids)), "some rows were delivered twice"
    for call_id in {event.call_id for event in events}:
        sequences = [sequence for call, sequence, _ in recorder.successes if call == call_id]
        assert sequences == list(range(1, events_per_call + 1)), f"{call_id} was delivered out of order"
    retried = [event_id for event_id, spans in recorder.spans.items() if len(spans) > 1]
    assert len(retried) == 2 * calls  # sequences 1 and 6 of every call: 503 first, then 200
