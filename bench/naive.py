"""The naive patterns that the benchmarks compare the product against.

They are written here, not in the product: a new aiohttp.ClientSession for every
request, and the webhook POST awaited by the code that produced the event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiohttp

import webhooks

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def post_with_new_session(url: str, *, secret: bytes, event: webhooks.WebhookEvent) -> int:
    """Sign `event`, POST it on a session opened for this one request, and return the HTTP status."""
    headers = webhooks.sign(secret, msg_id=event.id, timestamp=int(time.time()), body=event.body)
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=event.body, headers=headers, timeout=REQUEST_TIMEOUT) as response:
            await response.read()
            return response.status


class WebhookRejected(RuntimeError):
    """The receiver responded to a naive POST with a status other than 2xx."""


class AwaitingEmitter:
    """Stands in for `CallEmitter`: `emit` POSTs the event and returns only after the response.

    It has no outbox and no retry. A non-2xx response raises WebhookRejected, and a
    network error raises the aiohttp exception.
    """

    def __init__(self, *, call_id: str, url: str, secret: bytes) -> None:
        self.call_id = call_id
        self.events: list[webhooks.WebhookEvent] = []
        self._url = url
        self._secret = secret

    async def emit(self, event: str, fields: Mapping[str, object]) -> webhooks.WebhookEvent:
        built = webhooks.build_event(event, call_id=self.call_id, sequence=len(self.events) + 1, fields=fields)
        self.events.append(built)
        status = await post_with_new_session(self._url, secret=self._secret, event=built)
        if not 200 <= status <= 299:
            raise WebhookRejected(f"receiver responded HTTP {status} to event {built.id}")
        return built

    async def drain(self, timeout: float) -> bool:
        return True

    async def aclose(self) -> None:
        return None
