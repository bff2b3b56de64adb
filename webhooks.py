"""Build, sign, deliver and verify the CRM webhooks of a call.

Every request carries two HMAC-SHA256 signatures over the same body bytes, both keyed
with the WEBHOOK_SECRET text encoded as UTF-8:

- X-Webhook-Signature (legacy scheme): lowercase hex HMAC of the raw body.
- Standard Webhooks v1, computed by the `standardwebhooks` package: the
  webhook-signature header is "v1,<base64>" of the HMAC of
  f"{webhook-id}.{webhook-timestamp}.".encode() + body. Because the timestamp is
  signed, receivers can reject replayed requests.

Delivery is at least once: a request whose 2xx response is lost is sent again with
the same webhook-id, so receivers should drop ids they have already processed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol
from email.utils import parsedate_to_datetime

import aiohttp
import standardwebhooks
from yarl import URL

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
LEGACY_SIGNATURE_HEADER = "X-Webhook-Signature"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

# Top-level JSON keys that every event starts with, in this order.
ENVELOPE_KEYS = ("id", "event", "timestamp", "call_id", "sequence")

# Ten digits cover Unix seconds up to the year 2286 and keep datetime conversion in range.
_TIMESTAMP_PATTERN = re.compile(r"[0-9]{1,10}")
_HEX_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_DELTA_SECONDS_PATTERN = re.compile(r"-?[0-9]+")

_RETRYABLE_STATUSES = frozenset({408, 425, 429})
_MAX_DISCARDED_RESPONSE_BYTES = 64 * 1024


class WebhookVerificationError(Exception):
    """A webhook request that failed verification. The message names the failed check."""


# Signing and verification


def body_signature(secret: bytes, body: bytes) -> str:
    """Return the X-Webhook-Signature value: the lowercase hex HMAC-SHA256 of `body`."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def sign(secret: bytes, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return all request headers for one delivery attempt of `body`.

    `timestamp` is in Unix seconds. Raises TypeError unless `secret` is bytes, because
    `standardwebhooks.Webhook` would base64-decode a str secret into a different key.
    """
    _require_secret_bytes(secret)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise TypeError(f"timestamp must be int Unix seconds, got {type(timestamp).__name__}")

    return {
        "Content-Type": CONTENT_TYPE,
        LEGACY_SIGNATURE_HEADER: body_signature(secret, body),
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: _v1_signature(secret, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> dict:
    """Verify a received webhook request and return its parsed JSON payload.

    A str `secret` is the WEBHOOK_SECRET text and is encoded as UTF-8. Header names
    match in any case. The webhook-timestamp may differ from `now` (default: the
    current time) by at most `tolerance` seconds in either direction. When the request
    also has X-Webhook-Signature, that signature must match too. Every failure raises
    WebhookVerificationError, including missing or malformed headers and a body that
    is not a JSON object whose "id" equals webhook-id.
    """
    key = _secret_key(secret)
    lowered = {name.lower(): value for name, value in headers.items()}

    msg_id = _required_header(lowered, ID_HEADER)
    timestamp = _parse_timestamp(_required_header(lowered, TIMESTAMP_HEADER))
    signature_header = _required_header(lowered, SIGNATURE_HEADER)

    current_time = time.time() if now is None else now
    _check_timestamp(timestamp, tolerance=tolerance, now=current_time)
    _check_v1_signature(key, msg_id=msg_id, timestamp=timestamp, body=body, header=signature_header)

    legacy_signature = lowered.get(LEGACY_SIGNATURE_HEADER.lower())
    if legacy_signature is not None:
        verify_body_signature(key, body, legacy_signature)

    return _parse_payload(body, msg_id=msg_id)


def verify_body_signature(secret: str | bytes, body: bytes, signature: str | None) -> None:
    """Check the legacy X-Webhook-Signature value against `body`.

    This scheme signs no timestamp, so it cannot reject a replayed request. Raises
    WebhookVerificationError when `signature` is missing, malformed or wrong.
    """
    key = _secret_key(secret)
    if signature is None:
        raise WebhookVerificationError(f"missing {LEGACY_SIGNATURE_HEADER} header")

    candidate = signature.lower()
    if not _HEX_SHA256_PATTERN.fullmatch(candidate):
        raise WebhookVerificationError(
            f"invalid {LEGACY_SIGNATURE_HEADER} header: expected 64 hex digits of HMAC-SHA256"
        )

    expected = body_signature(key, body)
    if not hmac.compare_digest(candidate.encode("ascii"), expected.encode("ascii")):
        raise WebhookVerificationError(f"{LEGACY_SIGNATURE_HEADER} does not match the body")


def _require_secret_bytes(secret: bytes) -> None:
    if not isinstance(secret, bytes):
        raise TypeError(
            f"webhook secret must be bytes, got {type(secret).__name__}; "
            "encode the WEBHOOK_SECRET text as UTF-8"
        )
    if not secret:
        raise ValueError("webhook secret is empty; set WEBHOOK_SECRET")


def _secret_key(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        try:
            key = secret.encode("utf-8")
        except UnicodeError as exc:
            raise WebhookVerificationError("webhook secret cannot be encoded as UTF-8") from exc
    elif isinstance(secret, bytes):
        key = secret
    else:
        raise TypeError(f"webhook secret must be str or bytes, got {type(secret).__name__}")

    if not key:
        raise WebhookVerificationError("webhook secret is empty; set WEBHOOK_SECRET")
    return key


def _v1_signature(secret: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    signed_at = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return standardwebhooks.Webhook(secret).sign(msg_id, signed_at, body)


def _required_header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise WebhookVerificationError(f"missing {name} header")
    return value


def _parse_timestamp(value: str) -> int:
    if not _TIMESTAMP_PATTERN.fullmatch(value):
        raise WebhookVerificationError(
            f"invalid {TIMESTAMP_HEADER} header {value[:32]!r}: expected integer Unix seconds"
        )
    return int(value)


def _check_timestamp(timestamp: int, *, tolerance: float, now: float) -> None:
    age = now - timestamp
    if age > tolerance:
        raise WebhookVerificationError(
            f"{TIMESTAMP_HEADER} is {age:.0f} s old, more than the {tolerance:g} s tolerance"
        )
    if age < -tolerance:
        raise WebhookVerificationError(
            f"{TIMESTAMP_HEADER} is {-age:.0f} s in the future, "
            f"more than the {tolerance:g} s tolerance"
        )


def _check_v1_signature(
    key: bytes, *, msg_id: str, timestamp: int, body: bytes, header: str
) -> None:
    """Pass when any "v1,<base64>" entry of the header matches.

    Several entries allow key rotation. Entries of other versions are skipped. A
    malformed entry fails the check only when no other entry matches.
    """
    if not msg_id:
        raise WebhookVerificationError(f"{ID_HEADER} header is empty")
    try:
        expected_header = _v1_signature(key, msg_id=msg_id, timestamp=timestamp, body=body)
    except UnicodeError as exc:
        raise WebhookVerificationError(f"{ID_HEADER} header is not valid UTF-8") from exc
    expected = base64.b64decode(expected_header.removeprefix("v1,"))

    problems: list[str] = []
    has_v1_entry = False
    for entry in header.split():
        version, separator, encoded = entry.partition(",")
        if not separator:
            problems.append(
                f"malformed {SIGNATURE_HEADER} entry {entry[:16]!r}: expected 'v1,<base64>'"
            )
            continue
        if version != "v1":
            continue

        has_v1_entry = True
        try:
            digest = base64.b64decode(encoded, validate=True)
        except ValueError:
            problems.append(f"{SIGNATURE_HEADER} v1 entry is not valid base64")
            continue
        if hmac.compare_digest(digest, expected):
            return

    if problems:
        raise WebhookVerificationError(problems[0])
    if not has_v1_entry:
        raise WebhookVerificationError(f"{SIGNATURE_HEADER} header has no v1 signature")
    raise WebhookVerificationError(f"no {SIGNATURE_HEADER} entry matches the request")


def _parse_payload(body: bytes, *, msg_id: str) -> dict:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WebhookVerificationError("webhook body is not valid UTF-8 JSON") from exc

    if not isinstance(payload, dict):
        raise WebhookVerificationError("webhook body is not a JSON object")
    body_id = payload.get("id")
    if body_id != msg_id:
        raise WebhookVerificationError(
            f"webhook body id {body_id!r} does not match {ID_HEADER} header {msg_id!r}"
        )
    return payload


# Events


@dataclass(frozen=True)
class WebhookEvent:
    """One event of a call with its JSON body, serialised once and sent as these bytes."""

    id: str
    event: str
    call_id: str
    sequence: int
    timestamp: float
    body: bytes

    def payload(self) -> dict:
        """Parse the body back into a dict."""
        return json.loads(self.body)


def build_event(
    event: str,
    *,
    call_id: str,
    sequence: int,
    fields: Mapping[str, object],
    timestamp: float | None = None,
    event_id: str | None = None,
) -> WebhookEvent:
    """Serialise one event as compact UTF-8 JSON: the envelope keys first, then `fields`.

    `timestamp` is when the event happened in Unix seconds (default: now). Raises
    ValueError when a field uses an envelope key, when `sequence` is below 1, or when
    a value cannot be written as standard JSON (NaN, infinity).
    """
    collisions = [key for key in ENVELOPE_KEYS if key in fields]
    if collisions:
        raise ValueError(
            f"event field {collisions[0]!r} collides with an envelope key; rename the field"
        )
    if sequence < 1:
        raise ValueError(f"sequence must be 1 or more, got {sequence}")
    if event_id == "":
        raise ValueError("event_id is empty; pass None to generate one")

    envelope = {
        "id": _new_event_id() if event_id is None else event_id,
        "event": event,
        "timestamp": float(time.time() if timestamp is None else timestamp),
        "call_id": call_id,
        "sequence": sequence,
    }
    body = json.dumps(
        {**envelope, **fields}, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")

    return WebhookEvent(
        id=envelope["id"],
        event=event,
        call_id=call_id,
        sequence=sequence,
        timestamp=envelope["timestamp"],
        body=body,
    )


def _new_event_id() -> str:
    """Generate a unique event id of the form "evt_<32 hex digits>"."""
    return "evt_" + uuid.uuid4().hex


# Retries


@dataclass(frozen=True)
class RetryPolicy:
    """Attempt limit, backoff and timeouts for webhook delivery. All times are in seconds."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    connect_timeout: float = 3.0
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more, got {self.max_attempts}")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("connect_timeout", "request_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def retry_delay(
    *,
    attempt: int,
    status: int | None,
    retry_after: str | None,
    policy: RetryPolicy,
    now: float,
    rng: random.Random,
) -> float | None:
    """Return the seconds to wait before the next attempt, or None to stop.

    `attempt` counts the attempts made so far, from 1. `status` is None after a network
    error or timeout. A Retry-After value in seconds or as an HTTP date (relative to
    `now`) wins over backoff and is capped at `policy.max_retry_after`. Otherwise the
    delay is capped exponential backoff with full jitter.
    """
    if not is_retryable(status):
        return None
    if attempt >= policy.max_attempts:
        return None

    requested = parse_retry_after(retry_after, now=now)
    if requested is not None:
        return min(max(requested, 0.0), policy.max_retry_after)

    ceiling = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    return rng.uniform(0, ceiling)


def is_retryable(status: int | None) -> bool:
    """Tell whether an attempt that ended with `status` (None: no response) may be retried.

    Other 4xx responses, 410 Gone included, mean that the same request will fail again.
    """
    if status is None:
        return True
    return status in _RETRYABLE_STATUSES or 500 <= status <= 599


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Return the delay that a Retry-After value requests, or None if absent or unparseable."""
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS_PATTERN.fullmatch(text):
        return float(text)

    try:
        retry_at = parsedate_to_datetime(text)
        if retry_at.tzinfo is None:  # the "-0000" zone yields a naive datetime in UTC
            retry_at = retry_at.replace(tzinfo=timezone.utc)
        return retry_at.timestamp() - now
    except (TypeError, ValueError, OverflowError):
        return None


# Delivery


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of delivering one event.

    `status` is the HTTP status of the last attempt, or None when it got no response.
    """

    event_id: str
    delivered: bool
    attempts: int
    status: int | None
    error: str | None


@dataclass(frozen=True)
class _AttemptOutcome:
    status: int | None
    retry_after: str | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status <= 299


class WebhookSender:
    """Client for one webhook URL that signs each request and retries failed deliveries.

    The caller owns `session` and closes it. `clock`, `sleep` and `rng` are injectable
    so that tests control time and jitter.
    """

    def __init__(
        self,
        *,
        url: str,
        secret: bytes,
        session: aiohttp.ClientSession,
        policy: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        _require_secret_bytes(secret)
        _require_http_url(url)

        self._url = url
        self._secret = secret
        self._session = session
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._timeout = aiohttp.ClientTimeout(
            total=policy.request_timeout, sock_connect=policy.connect_timeout
        )

    async def deliver(self, event: WebhookEvent) -> DeliveryResult:
        """POST `event` until a 2xx response, a final status or the attempt limit.

        Every attempt sends the same id and body bytes, signed with the current time.
        """
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._post(event)
            if outcome.delivered:
                return self._result(event, attempt=attempt, outcome=outcome)

            delay = retry_delay(
                attempt=attempt,
                status=outcome.status,
                retry_after=outcome.retry_after,
                policy=self._policy,
                now=self._clock(),
                rng=self._rng,
            )
            if delay is None:
                _log_attempt_failure(
                    "webhook delivery gave up", event, attempt=attempt, outcome=outcome
                )
                return self._result(event, attempt=attempt, outcome=outcome)

            _log_attempt_failure(
                "webhook delivery failed, retrying",
                event,
                attempt=attempt,
                outcome=outcome,
                delay=delay,
            )
            await self._sleep(delay)

    async def attempt(self, event: WebhookEvent) -> _AttemptOutcome:
        """POST `event` once, signed with the current time, and report the outcome without retrying."""
        return await self._post(event)

    async def _post(self, event: WebhookEvent) -> _AttemptOutcome:
        headers = sign(self._secret, msg_id=event.id, timestamp=int(self._clock()), body=event.body)

        # Redirects are not followed, because a redirected POST may turn into a GET
        # or leave the configured host.
        try:
            async with self._session.post(
                self._url,
                data=event.body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                await _discard_body(response)
                return _AttemptOutcome(
                    status=response.status,
                    retry_after=response.headers.get("Retry-After"),
                    error=None if 200 <= response.status <= 299 else f"HTTP {response.status}",
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return _AttemptOutcome(status=None, error=_describe_error(exc))

    @staticmethod
    def _result(event: WebhookEvent, *, attempt: int, outcome: _AttemptOutcome) -> DeliveryResult:
        return DeliveryResult(
            event_id=event.id,
            delivered=outcome.delivered,
            attempts=attempt,
            status=outcome.status,
            error=outcome.error,
        )


def _require_http_url(url: str) -> None:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            "webhook URL must be an absolute http:// or https:// URL; check WEBHOOK_URL"
        )


async def _discard_body(response: aiohttp.ClientResponse) -> None:
    """Read up to 64 KiB of the response so that aiohttp can reuse the connection.

    A longer body is left unread, and aiohttp then closes the connection instead.
    """
    remaining = _MAX_DISCARDED_RESPONSE_BYTES
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            return
        remaining -= len(chunk)


def _describe_error(exc: BaseException) -> str:
    """Describe the error by type and OS reason only.

    aiohttp messages can contain the request URL, query included, so they are not logged.
    """
    reason = getattr(exc, "strerror", None)
    if reason:
        return f"{type(exc).__name__}: {reason}"
    return type(exc).__name__


def _log_attempt_failure(
    message: str,
    event: WebhookEvent,
    *,
    attempt: int,
    outcome: _AttemptOutcome,
    delay: float | None = None,
) -> None:
    extra: dict[str, object] = {
        "event_id": event.id,
        "call_id": event.call_id,
        "event": event.event,
        "attempt": attempt,
        "status": outcome.status,
        "error": outcome.error,
    }
    if delay is not None:
        extra["retry_delay"] = delay
    logger.warning(message, extra=extra)


# Per-call event stream


class _MemoryOutbox:
    """FIFO of events waiting for delivery, counting those not yet delivered or given up.

    NOTE: events are held in memory only, so a crashed process loses undelivered ones.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[WebhookEvent] = asyncio.Queue()
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def put(self, event: WebhookEvent) -> None:
        self._queue.put_nowait(event)
        self._pending += 1

    async def next(self) -> WebhookEvent:
        return await self._queue.get()

    def mark_done(self) -> None:
        self._pending -= 1
        self._queue.task_done()

    async def wait_empty(self) -> None:
        await self._queue.join()


class EventQueue(Protocol):
    """Durable storage and delivery of a call's events, such as the SQLite outbox."""

    async def put(self, event: WebhookEvent) -> None: ...

    async def drain(self, call_id: str, timeout: float) -> bool: ...


class CallEmitter:
    """Per-call event stream: numbers events 1, 2, 3 ... and delivers them in order.

    With a `queue`, each event is stored there before `emit` returns and the
    queue delivers it. Without one, delivery runs in one background task per
    emitter and events live in memory only. Either way a slow receiver never
    blocks `emit`.
    """

    def __init__(
        self,
        *,
        call_id: str,
        sender: WebhookSender | None,
        queue: EventQueue | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.call_id = call_id
        self.events: list[WebhookEvent] = []
        self.results: list[DeliveryResult] = []

        self._sender = sender
        self._queue = queue
        self._clock = clock
        self._outbox = _MemoryOutbox()
        self._store_lock = asyncio.Lock()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._logged_webhooks_off = False

    @property
    def pending(self) -> int:
        """Number of events emitted but not yet delivered or given up, in memory mode.

        Always 0 with a queue, whose pending rows live in the outbox file.
        """
        return self._outbox.pending

    async def emit(self, event: str, fields: Mapping[str, object]) -> WebhookEvent:
        """Build the next event of the call, record it in `events` and queue it for delivery.

        Never waits for the network; with a queue it waits only for the event to be
        stored. After aclose() the event is recorded but not sent, and a warning is
        logged. Raises ValueError from build_event for invalid fields, in which case no
        sequence number is used.
        """
        if self._queue is not None:
            # Two tools may emit at once. The lock keeps sequence numbers gapless and
            # in the order the events are stored, even when a store fails.
            async with self._store_lock:
                built = self._build(event, fields)
                await self._queue.put(built)
                self.events.append(built)
            return built

        built = self._build(event, fields)
        if self._sender is None:
            self.events.append(built)
            self._log_webhooks_off()
            return built
        if self._closed:
            self.events.append(built)
            logger.warning(
                "webhook event emitted after the emitter closed, not sent",
                extra={"call_id": self.call_id, "event_id": built.id, "event": built.event},
            )
            return built

        self.events.append(built)
        self._start_worker()
        self._outbox.put(built)
        return built

    def _build(self, event: str, fields: Mapping[str, object]) -> WebhookEvent:
        return build_event(
            event,
            call_id=self.call_id,
            sequence=len(self.events) + 1,
            fields=fields,
            timestamp=self._clock(),
        )

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every pending event to be delivered or given up.

        Returns True when no event is pending. On timeout, logs how many events remain
        and returns False instead of raising.
        """
        if self._queue is not None:
            return await self._queue.drain(self.call_id, timeout)
        if self.pending == 0:
            return True

        try:
            async with asyncio.timeout(timeout):
                await self._outbox.wait_empty()
        except TimeoutError:
            logger.warning(
                "webhook drain timed out with events pending",
                extra={"call_id": self.call_id, "pending": self.pending, "timeout": timeout},
            )
            return False
        return True

    async def aclose(self) -> None:
        """Cancel background delivery and wait for it to stop. Pending events are dropped."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is None:
            return

        if self.pending:
            logger.warning(
                "webhook emitter closed with events pending",
                extra={"call_id": self.call_id, "pending": self.pending},
            )
        worker.cancel()
        await asyncio.wait([worker])

    def _start_worker(self) -> None:
        if self._worker is not None:
            return
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._deliver_in_order(), name=f"webhooks-{self.call_id}")
        self._worker.add_done_callback(self._log_worker_crash)

    async def _deliver_in_order(self) -> None:
        assert self._sender is not None  # the worker starts only when a sender is set
        while True:
            event = await self._outbox.next()
            result = await self._sender.deliver(event)
            self.results.append(result)
            self._outbox.mark_done()

    def _log_worker_crash(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.error(
            "webhook delivery task crashed; later events of this call are not sent",
            exc_info=task.exception(),
            extra={"call_id": self.call_id, "pending": self.pending},
        )

    def _log_webhooks_off(self) -> None:
        if self._logged_webhooks_off:
            return
        self._logged_webhooks_off = True
        logger.info(
            "webhooks are off, events are recorded but not sent",
            extra={"call_id": self.call_id},
        )
