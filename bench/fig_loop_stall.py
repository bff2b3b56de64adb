"""Figure 2: event-loop lag while 10 calls emit 1,000 events in a burst and they are delivered.

- product: one `CallEmitter` per call on a shared `OutboxQueue` (a SQLite outbox
  in a temporary folder plus its dispatcher), so every emit writes the outbox
  before it returns and the dispatcher sends the rows in the background;
- naive: each call awaits a POST on a new `aiohttp.ClientSession` per event.

The receiver runs in its own process and verifies every request. The lag probe
sleeps 1 ms in a loop on the emitting event loop and records each overshoot,
from the first emit until the receiver has verified every event.

A job process forked from the worker's forkserver (the default on Linux) starts
with the framework's imports frozen out of the garbage collector (`gc.freeze()`
in livekit.agents.ipc._preload_freeze), and the bursts run the same way. Where
nothing is frozen, as in a worker that runs jobs in threads (`console`, Windows)
or spawns them (macOS), a full collection walks every object the imports created. It stalls the
loop for its whole duration, whatever code runs at the time, so the figure also
times one full collection both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.lag import LoopLagProbe, idle_lag
from bench.naive import AwaitingEmitter
from bench.receiver import SECRET, VERIFY, Receiver, receiver_process
from bench.stack import console_settings
from bench.stats import summarize
from bench.table import Row
from call_lifecycle import open_outbox_queue
from outbox import Outbox
from webhooks import CallEmitter

CALLS = 10
LAG_BUDGET_MS = 5.0
IDLE_BASELINE_SECONDS = 1.0
DELIVERY_TIMEOUT = 120.0
PENDING_POLL_SECONDS = 0.02
GC_SAMPLES = 5

# Fields of every benchmark event, about the size of a real call.intent body.
EVENT_FIELDS = {
    "intent": "billing question about the last invoice",
    "contact_id": "ct_1001",
    "direction": "outbound",
    "campaign": "renewals",
}


@dataclass
class BurstSamples:
    """Samples in seconds: every lag of every burst, and per burst the time to the
    last emit returning and to the last event verified."""

    lag: list[float] = field(default_factory=list)
    emitted: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)


async def run(*, events_per_call: int, repetitions: int, idle_seconds: float = IDLE_BASELINE_SECONDS) -> list[Row]:
    """Run `repetitions` bursts of CALLS x `events_per_call` events per variant.

    The idle baseline samples the probe alone for `idle_seconds` first.
    """
    product = BurstSamples()
    naive = BurstSamples()
    unfrozen_collections = _time_full_collections()

    async with receiver_process(mode=VERIFY) as receiver, aiohttp.ClientSession() as http:
        with tempfile.TemporaryDirectory(prefix="bench-burst-") as folder, _frozen_heap():
            baseline = await idle_lag(idle_seconds)
            for repetition in range(repetitions):
                outbox_path = Path(folder) / f"outbox-{repetition}.sqlite3"
                await _product_burst(receiver, http, outbox_path, events_per_call, product)
                await _naive_burst(receiver, http, events_per_call, naive)
            # Timed after the bursts, so the collector has the objects they left to walk.
            frozen_collections = _time_full_collections()

    total = CALLS * events_per_call
    budget = f"< {LAG_BUDGET_MS:g} ms"
    return [
        Row(
            figure=f"2a. event-loop lag, {total:,} events from {CALLS} calls",
            unit="ms",
            product=summarize(product.lag, scale=1000),
            naive=summarize(naive.lag, scale=1000),
            budget=f"p99 {budget}",
        ),
        Row(
            figure="2b. event-loop lag, max over all bursts",
            unit="ms",
            product=max(product.lag) * 1000,
            naive=max(naive.lag) * 1000,
            budget=f"max {budget}",
        ),
        Row(
            figure="2c. idle loop lag, same probe, no work (baseline)",
            unit="ms",
            product=summarize(baseline, scale=1000),
        ),
        Row(
            figure=f"2d. burst: first emit to last emit returned ({total:,} events)",
            unit="s",
            product=summarize(product.emitted),
            naive=summarize(naive.emitted),
        ),
        Row(
            figure=f"2e. burst: first emit to last event verified ({total:,} events)",
            unit="s",
            product=summarize(product.delivered),
            naive=summarize(naive.delivered),
        ),
        Row(
            figure="2f. one full garbage collection of this process, heap frozen as in a forkserver job",
            unit="ms",
            product=summarize(frozen_collections, scale=1000),
        ),
        Row(
            figure="2g. one full garbage collection of this process, heap not frozen (thread executor, spawn)",
            unit="ms",
            product=summarize(unfrozen_collections, scale=1000),
        ),
    ]


def _time_full_collections() -> list[float]:
    """Time GC_SAMPLES full collections in seconds. Each one blocks the event loop throughout."""
    seconds = []
    for _ in range(GC_SAMPLES):
        started = time.perf_counter()
        gc.collect()
        seconds.append(time.perf_counter() - started)
    return seconds


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Move every object that exists now out of the collector's reach, as the forkserver does."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _product_burst(
    receiver: Receiver, http: aiohttp.ClientSession, outbox_path: Path, events_per_call: int, samples: BurstSamples
) -> None:
    settings = console_settings(webhook_url=receiver.url, outbox_path=str(outbox_path))
    before = await receiver.stats(http)

    async with aiohttp.ClientSession() as delivery_http:
        queue = await open_outbox_queue(settings, delivery_http)
        try:
            emitters = [CallEmitter(call_id=f"call_bench_{number}", sender=None, queue=queue) for number in range(CALLS)]
            async with LoopLagProbe() as probe:
                started = time.perf_counter()
                await asyncio.gather(*(_emit_burst(emitter, events_per_call) for emitter in emitters))
                emitted = time.perf_counter()
                await _wait_until_delivered(queue.outbox)
                delivered = time.perf_counter()
        finally:
            await queue.aclose()

    await _check_verified(receiver, http, before, expected=CALLS * events_per_call)
    samples.lag += probe.samples
    samples.emitted.append(emitted - started)
    samples.delivered.append(delivered - started)


async def _naive_burst(receiver: Receiver, http: aiohttp.ClientSession, events_per_call: int, samples: BurstSamples) -> None:
    before = await receiver.stats(http)
    emitters = [AwaitingEmitter(call_id=f"call_naive_{number}", url=receiver.url, secret=SECRET) for number in range(CALLS)]

    async with LoopLagProbe() as probe:
        started = time.perf_counter()
        await asyncio.gather(*(_emit_burst(emitter, events_per_call) for emitter in emitters))
        finished = time.perf_counter()

    await _check_verified(receiver, http, before, expected=CALLS * events_per_call)
    samples.lag += probe.samples
    # The naive emit returns only after delivery, so both times are the same.
    samples.emitted.append(finished - started)
    samples.delivered.append(finished - started)


async def _emit_burst(emitter: CallEmitter | AwaitingEmitter, count: int) -> None:
    for index in range(count):
        await emitter.emit("call.intent", {**EVENT_FIELDS, "index": index})


async def _wait_until_delivered(outbox: Outbox) -> None:
    async with asyncio.timeout(DELIVERY_TIMEOUT):
        while await outbox.pending_count():
            await asyncio.sleep(PENDING_POLL_SECONDS)


async def _check_verified(receiver: Receiver, http: aiohttp.ClientSession, before: dict[str, int], *, expected: int) -> None:
    after = await receiver.stats(http)
    verified = after["verified"] - before["verified"]
    rejected = after["rejected"] - before["rejected"]
    if verified != expected or rejected:
        raise RuntimeError(
            f"the receiver verified {verified} of {expected} events and rejected {rejected}, "
            "so the burst did not deliver every event once with a valid signature"
        )
