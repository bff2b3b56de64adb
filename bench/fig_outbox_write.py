"""Figure 4: the cost of accepting one event durably, `await Outbox.put`.

The outbox file is in a temporary folder on the same disk as the project. Its
WAL mode with synchronous=NORMAL commits without an fsync, so a stored row
survives a crash of the process but not a power loss. The naive way to hand an
event off is to POST it on a new session and await the response of an instant,
verifying receiver in another process. It is timed the same way.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.naive import post_with_new_session
from bench.receiver import SECRET, VERIFY, receiver_process
from bench.stats import summarize
from bench.table import Row
from delivery import webhook_row
from outbox import Outbox
from webhooks import WebhookEvent, build_event

WRITERS = 10
WARMUP_WRITES = 20

Accept = Callable[[WebhookEvent], Awaitable[None]]


async def run(*, writes: int) -> list[Row]:
    """Time `writes` sequential hand-offs, then `writes` split over WRITERS concurrent writers."""
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as folder:
        outbox = await Outbox(Path(folder) / "outbox.sqlite3").open()
        try:
            product_put = _outbox_put(outbox)
            await _time_sequential(product_put, WARMUP_WRITES, stream="warmup")
            product_sequential = await _time_sequential(product_put, writes, stream="sequential")
            product_concurrent = await _time_concurrent(product_put, writes)
        finally:
            await outbox.aclose()

    async with receiver_process(mode=VERIFY) as receiver:

        async def naive_post(event: WebhookEvent) -> None:
            status = await post_with_new_session(receiver.url, secret=SECRET, event=event)
            if status != 200:
                raise RuntimeError(f"the receiver responded HTTP {status} to event {event.id}")

        await _time_sequential(naive_post, WARMUP_WRITES, stream="warmup")
        naive_sequential = await _time_sequential(naive_post, writes, stream="sequential")
        naive_concurrent = await _time_concurrent(naive_post, writes)

    return [
        Row(
            figure="4a. accept one event: `await Outbox.put` vs awaited POST, sequential",
            unit="ms",
            product=summarize(product_sequential, scale=1000),
            naive=summarize(naive_sequential, scale=1000),
        ),
        Row(
            figure=f"4b. accept one event, {WRITERS} concurrent writers",
            unit="ms",
            product=summarize(product_concurrent, scale=1000),
            naive=summarize(naive_concurrent, scale=1000),
        ),
    ]


def _outbox_put(outbox: Outbox) -> Accept:
    async def put(event: WebhookEvent) -> None:
        await outbox.put(webhook_row(event))

    return put


async def _time_sequential(accept: Accept, count: int, *, stream: str) -> list[float]:
    seconds = []
    for sequence in range(1, count + 1):
        event = build_event("call.intent", call_id=f"call_{stream}", sequence=sequence, fields={"intent": "billing question"})
        started = time.perf_counter()
        await accept(event)
        seconds.append(time.perf_counter() - started)
    return seconds


async def _time_concurrent(accept: Accept, count: int) -> list[float]:
    per_writer = max(1, count // WRITERS)
    results = await asyncio.gather(
        *(_time_sequential(accept, per_writer, stream=f"writer{number}") for number in range(WRITERS))
    )
    return [seconds for writer in results for seconds in writer]
