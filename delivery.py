"""Delivery from the outbox: claim due rows, attempt each once, then record the result.

One `OutboxDispatcher` runs per process. A job process runs one to send its
call's events at once. The worker's main process runs one that keeps retrying
whatever jobs leave behind, including rows of processes that died.

A failed attempt is retried on a schedule of capped exponential backoff with
full jitter, honouring Retry-After, until the row is older than the schedule's
maximum age (a day by default); then it is marked dead with its last status and
error, and stays in the file for the operator command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import webhooks
from crm_client import CrmClient, CrmError
from outbox import CRM_ACTIVITY, CRM_NOTE, WEBHOOK, Outbox, OutboxRow, new_owner_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttemptResult:
    """Outcome of one attempt. `retryable` is False for a final failure such as HTTP 400 or 410."""

    delivered: bool
    status: int | None = None
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None


Deliver = Callable[[OutboxRow], Awaitable[AttemptResult]]


@dataclass(frozen=True)
class RetrySchedule:
    """When to try a failed row again. All times are in seconds."""

    initial_delay: float = 1.0
    max_delay: float = 1800.0
    # Rows keep being retried until they are this old, so at least a day by default.
    max_age: float = 24 * 3600.0

    def next_delay(self, *, attempts: int, age: float, retry_after: float | None, rng: random.Random) -> float | None:
        """Seconds until the next attempt after `attempts` failures, or None to give up."""
        if age >= self.max_age:
            return None
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)

        ceiling = min(self.max_delay, self.initial_delay * 2 ** min(attempts - 1, 40))
        return rng.uniform(0, ceiling)


class _RepeatLimiter:
    """Log a repeated failure once per window, with the count of lines it stood for."""

    def __init__(self, *, window: float, clock: Callable[[], float]) -> None:
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[object, ...], tuple[float, int]] = {}

    def admit(self, key: tuple[object, ...]) -> int | None:
        """Return how many similar lines were held back, or None to hold this one back too."""
        now = self._clock()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self._window:
            self._seen[key] = (last, held + 1)
            return None
        self._seen[key] = (now, 0)
        return held


class OutboxDispatcher:
    """Sends due outbox rows with `deliver`, several streams at a time."""

    def __init__(
        self,
        outbox: Outbox,
        deliver: Deliver,
        *,
        schedule: RetrySchedule = RetrySchedule(),
        lease_seconds: float = 60.0,
        batch_size: int = 32,
        poll_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.owner = new_owner_id()
        self._outbox = outbox
        self._deliver = deliver
        self._schedule = schedule
        self._lease_seconds = lease_seconds
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._repeats = _RepeatLimiter(window=60.0, clock=clock)

    def start(self) -> None:
        """Run the delivery loop in the background until `aclose`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox-dispatcher")

    def wake(self) -> None:
        """Look for due rows now instead of at the next poll."""
        self._wakeup.set()

    async def aclose(self) -> None:
        """Stop delivering and release this dispatcher's leases.

        A row whose attempt was cut short may have reached the receiver already; it
        is sent again by the next process, which at-least-once delivery allows.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._outbox.release(self.owner)

    async def run_once(self, *, call_id: str | None = None) -> int:
        """Claim due rows (of `call_id` only, when given) and attempt each once; return how many."""
        rows = await self._outbox.claim(
            self.owner, lease_seconds=self._lease_seconds, limit=self._batch_size, call_id=call_id
        )
        if rows:
            await asyncio.gather(*(self._attempt(row) for row in rows))
        return len(rows)

    async def drain(self, *, call_id: str, timeout: float) -> bool:
        """Deliver until no row of `call_id` is pending or `timeout` passes; True when none is pending."""
        self.wake()
        try:
            async with asyncio.timeout(timeout):
                while await self._outbox.pending_count(call_id):
                    self._wakeup.clear()
                    # Only this call's rows, so a slow receiver of another call cannot hold the drain.
                    if await self.run_once(call_id=call_id) == 0:
                        await self._wait(0.05)
        except TimeoutError:
            pending = await self._outbox.pending_count(call_id)
            logger.warning(
                "outbox drain timed out; the rows stay in the outbox for a later process",
                extra={"call_id": call_id, "pending": pending, "timeout": timeout},
            )
            return False
        return True

    async def _run(self) -> None:
        while True:
            # Cleared before the claim, not after it, so that a row stored while this
            # round runs wakes the next round instead of waiting for the poll interval.
            self._wakeup.clear()
            try:
                attempted = await self.run_once()
                delay = None if attempted else await self._idle_delay()
            except Exception:
                # A locked or unreadable file must not stop delivery for good.
                logger.exception("outbox delivery round failed; retrying after the poll interval")
                delay = self._poll_interval
            if delay is not None:
                await self._wait(delay)

    async def _idle_delay(self) -> float:
        due = await self._outbox.next_due_at()
        if due is None:
            return self._poll_interval
        return min(self._poll_interval, max(due - self._clock(), 0.01))

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()

    async def _attempt(self, row: OutboxRow) -> None:
        try:
            result = await self._deliver(row)
        except Exception as err:
            logger.exception("outbox delivery raised", extra=_extra(row, attempt=row.attempts + 1))
            result = AttemptResult(delivered=False, error=type(err).__name__)

        if result.delivered:
            await self._outbox.mark_delivered(row, status=result.status)
            if row.attempts > 0:
                logger.info("outbox row delivered after retries", extra=_extra(row, attempt=row.attempts + 1, status=result.status))
            return

        await self._record_failure(row, result)

    async def _record_failure(self, row: OutboxRow, result: AttemptResult) -> None:
        attempt = row.attempts + 1
        delay = None
        if result.retryable:
            age = self._clock() - row.created_at
            delay = self._schedule.next_delay(attempts=attempt, age=age, retry_after=result.retry_after, rng=self._rng)

        if delay is None:
            await self._outbox.mark_dead(row, status=result.status, error=result.error)
            logger.error(
                "outbox row dead; redeliver it with `python outbox.py redeliver`",
                extra={**_extra(row, attempt=attempt, status=result.status), "error": result.error},
            )
            return

        await self._outbox.reschedule(row, next_attempt_at=self._clock() + delay, status=result.status, error=result.error)
        held = self._repeats.admit((row.kind, result.status, result.error))
        if held is not None:
            logger.warning(
                "outbox delivery failed, retrying",
                extra={
                    **_extra(row, attempt=attempt, status=result.status),
                    "error": result.error,
                    "retry_delay": round(delay, 3),
                    "similar_failures_not_logged": held,
                },
            )


def _extra(row: OutboxRow, *, attempt: int, status: int | None = None) -> dict[str, object]:
    return {
        "event_id": row.id,
        "call_id": row.call_id,
        "kind": row.kind,
        "event": row.name,
        "attempt": attempt,
        "status": status,
    }


# CRM failures worth retrying. The others (401, 404, a malformed response) fail the same way again.
_RETRYABLE_CRM_REASONS = frozenset({"timeout", "connection_failed", "rate_limited", "server_error"})


class RowSender:
    """Attempts one outbox row: a webhook POST or a CRM write, by the row's kind."""

    def __init__(
        self,
        *,
        webhook_sender: webhooks.WebhookSender | None,
        crm: CrmClient | None,
        crm_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._webhooks = webhook_sender
        self._crm = crm
        self._crm_timeout = crm_timeout
        self._clock = clock

    async def __call__(self, row: OutboxRow) -> AttemptResult:
        if row.kind == WEBHOOK:
            return await self._send_webhook(row)
        if row.kind in (CRM_NOTE, CRM_ACTIVITY):
            return await self._write_crm(row)
        return AttemptResult(delivered=False, error=f"unknown row kind {row.kind!r}", retryable=False)

    async def _send_webhook(self, row: OutboxRow) -> AttemptResult:
        if self._webhooks is None:
            return AttemptResult(delivered=False, error="WEBHOOK_URL is not set in this process")

        event = webhooks.WebhookEvent(
            id=row.id, event=row.name, call_id=row.call_id, sequence=row.sequence, timestamp=row.created_at, body=row.body
        )
        outcome = await self._webhooks.attempt(event)
        return AttemptResult(
            delivered=outcome.delivered,
            status=outcome.status,
            error=outcome.error,
            retryable=webhooks.is_retryable(outcome.status),
            retry_after=webhooks.parse_retry_after(outcome.retry_after, now=self._clock()),
        )

    async def _write_crm(self, row: OutboxRow) -> AttemptResult:
        if self._crm is None:
            return AttemptResult(delivered=False, error="CRM_BASE_URL is not set in this process")

        write = row.json()
        try:
            if row.kind == CRM_NOTE:
                await self._crm.add_note(
                    write["contact_id"], text=write["text"], call_id=row.call_id, timeout=self._crm_timeout
                )
            else:
                await self._crm.log_call(write["contact_id"], write["activity"], timeout=self._crm_timeout)
        except CrmError as err:
            return AttemptResult(
                delivered=False,
                status=err.status,
                error=err.reason,
                retryable=err.reason in _RETRYABLE_CRM_REASONS,
                retry_after=err.retry_after,
            )
        return AttemptResult(delivered=True)


def webhook_row(event: webhooks.WebhookEvent) -> OutboxRow:
    """Return the outbox row of a webhook event; the call's events form one stream."""
    return OutboxRow(
        id=event.id,
        kind=WEBHOOK,
        call_id=event.call_id,
        stream=event.call_id,
        sequence=event.sequence,
        name=event.event,
        body=event.body,
        created_at=event.timestamp,
    )


class OutboxQueue:
    """Stores a call's webhook events and CRM writes in the outbox and wakes the dispatcher.

    CRM writes of a call form their own stream, so a CRM outage never holds back
    the call's webhook events, nor the other way round.
    """

    def __init__(
        self, outbox: Outbox, dispatcher: OutboxDispatcher, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.outbox = outbox
        self.dispatcher = dispatcher
        # CRM rows get their created_at from this clock, so it must be the clock
        # that the outbox and the dispatcher schedule rows by.
        self._clock = clock
        self._crm_sequences: dict[str, int] = {}

    async def put(self, event: webhooks.WebhookEvent) -> None:
        await self.outbox.put(webhook_row(event))
        self.dispatcher.wake()

    async def put_crm_write(self, kind: str, *, call_id: str, contact_id: str, **fields: object) -> None:
        """Store a CRM note (`text=`) or call activity (`activity=`) for delivery."""
        sequence = self._crm_sequences.get(call_id, 0) + 1
        self._crm_sequences[call_id] = sequence
        body = json.dumps({"contact_id": contact_id, **fields}, ensure_ascii=False, separators=(",", ":"))
        row = OutboxRow(
            id=f"crm_{uuid.uuid4().hex}",
            kind=kind,
            call_id=call_id,
            stream=f"{call_id}/crm",
            sequence=sequence,
            name=kind,
            body=body.encode("utf-8"),
            created_at=self._clock(),
        )
        await self.outbox.put(row)
        self.dispatcher.wake()

    async def drain(self, call_id: str, timeout: float) -> bool:
        return await self.dispatcher.drain(call_id=call_id, timeout=timeout)

    async def aclose(self) -> None:
        """Stop the dispatcher, then close the file; undelivered rows stay for a later process."""
        await self.dispatcher.aclose()
        await self.outbox.aclose()
