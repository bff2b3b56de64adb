"""Figure 3: webhook deliveries per second, verified by a receiver in another process.

- product: `WebhookSender.attempt` (one signed POST, as the outbox dispatcher
  makes) on one shared `aiohttp.ClientSession` that keeps connections alive;
- naive: the same signed POST on a new `aiohttp.ClientSession` per request;
- loopback limit: a plain aiohttp client with a shared session posting the same
  bytes to a plain handler that checks nothing.

Every variant keeps `CONCURRENCY` requests in flight. The receiver runs in a
child process (`python -m bench.receiver`), so client and server each have an
event loop and a core of their own. For the product and the naive variant it
runs `webhooks.verify` on every request, and the benchmark checks its count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from bench.naive import REQUEST_TIMEOUT, post_with_new_session
from bench.receiver import PLAIN, SECRET, VERIFY, Receiver, receiver_process
from bench.stats import summarize
from bench.table import Row
from webhooks import WebhookEvent, WebhookSender, build_event

CONCURRENCY = 10
WARMUP_REQUESTS = 50

Post = Callable[[WebhookEvent], Awaitable[bool]]


@dataclass
class RateSamples:
    """Events per second of each repetition, and the seconds each request took."""

    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def run(*, requests: int, repetitions: int) -> list[Row]:
    """Send `requests` events per repetition and variant, `repetitions` times."""
    shared = RateSamples()
    per_request = RateSamples()
    raw = RateSamples()

    async with receiver_process(mode=VERIFY) as receiver, aiohttp.ClientSession() as http:
        sender = WebhookSender(url=receiver.url, secret=SECRET, session=http)

        async def product_post(event: WebhookEvent) -> bool:
            return (await sender.attempt(event)).delivered

        async def naive_post(event: WebhookEvent) -> bool:
            status = await post_with_new_session(receiver.url, secret=SECRET, event=event)
            return 200 <= status <= 299

        await _send(product_post, WARMUP_REQUESTS, RateSamples())
        for _ in range(repetitions):
            await _send_verified(receiver, http, product_post, requests, shared)
            await _send_verified(receiver, http, naive_post, requests, per_request)

    async with receiver_process(mode=PLAIN) as plain_receiver, aiohttp.ClientSession() as http:
        plain_post = _plain_post(http, plain_receiver.url)
        await _send(plain_post, WARMUP_REQUESTS, RateSamples())
        for _ in range(repetitions):
            await _send(plain_post, requests, raw)

    return [
        Row(
            figure=f"3a. delivery rate, verified, {CONCURRENCY} in flight: shared session vs session per request",
            unit="events/s",
            product=summarize(shared.rates),
            naive=summarize(per_request.rates),
            higher_is_better=True,
        ),
        Row(
            figure="3b. one delivery, request to response: shared session vs session per request",
            unit="ms",
            product=summarize(shared.latencies, scale=1000),
            naive=summarize(per_request.latencies, scale=1000),
        ),
        Row(
            figure="3c. loopback limit: plain aiohttp client and handler, no signing or verify",
            unit="events/s",
            product=summarize(raw.rates),
            higher_is_better=True,
        ),
    ]


async def _send_verified(
    receiver: Receiver, http: aiohttp.ClientSession, post: Post, requests: int, samples: RateSamples
) -> None:
    before = await receiver.stats(http)
    await _send(post, requests, samples)
    after = await receiver.stats(http)

    verified = after["verified"] - before["verified"]
    rejected = after["rejected"] - before["rejected"]
    if verified != requests or rejected:
        raise RuntimeError(f"the receiver verified {verified} of {requests} events and rejected {rejected}")


async def _send(post: Post, requests: int, samples: RateSamples) -> None:
    """POST `requests` fresh events with CONCURRENCY workers and record the rate."""
    events = [
        build_event("call.intent", call_id="call_bench_rate", sequence=number + 1, fields={"intent": "billing question"})
        for number in range(requests)
    ]
    queue: asyncio.Queue[WebhookEvent] = asyncio.Queue()
    for event in events:
        queue.put_nowait(event)

    async def worker() -> None:
        while not queue.empty():
            event = queue.get_nowait()
            started = time.perf_counter()
            if not await post(event):
                raise RuntimeError(f"event {event.id} was not delivered")
            samples.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    samples.rates.append(requests / (time.perf_counter() - started))


def _plain_post(http: aiohttp.ClientSession, url: str) -> Post:
    async def post(event: WebhookEvent) -> bool:
        async with http.post(url, data=event.body, timeout=REQUEST_TIMEOUT) as response:
            await response.read()
            return response.status == 200

    return post
