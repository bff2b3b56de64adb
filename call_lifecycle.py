"""One call from dispatch to report: target, pre-call lookup, answer and end.

The entrypoint in `agent.py` drives a `CallRuntime` through these steps, and the
framework's `on_session_end` hook calls `CallRuntime.finish`, which sends the
one `call.ended` event and logs the call on the CRM contact.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

import call_report
from call_record import FAILED, CallRecord
from crm_client import CrmClient, CrmError
from delivery import OutboxDispatcher, OutboxQueue, RowSender
from outbox import CRM_ACTIVITY, CRM_NOTE, Outbox
from phone import InvalidPhoneNumber, normalize_e164
from settings import Settings
from tools import CallServices
from webhooks import CallEmitter, WebhookSender

logger = logging.getLogger(__name__)

class DispatchError(ValueError):
    """Dispatch metadata that cannot start a call."""


@dataclass(frozen=True)
class CallTarget:
    phone: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_dispatch_metadata(raw: str, *, default_region: str) -> CallTarget:
    """Read the job metadata: JSON with a `phone_number`; other keys are kept."""
    if not raw or not raw.strip():
        raise DispatchError("dispatch metadata is empty; expected JSON such as {\"phone_number\": \"+919800000001\"}")

    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DispatchError(f"dispatch metadata is not valid JSON ({err.msg} at position {err.pos})") from err
    if not isinstance(data, dict):
        raise DispatchError(f"dispatch metadata must be a JSON object, got {type(data).__name__}")
    if "phone_number" not in data:
        raise DispatchError("dispatch metadata has no phone_number; add the callee's number in E.164")

    try:
        phone = normalize_e164(data["phone_number"], default_region=default_region)
    except InvalidPhoneNumber as err:
        raise DispatchError(f"dispatch metadata phone_number is invalid: {err}") from err

    extra = {key: value for key, value in data.items() if key != "phone_number"}
    return CallTarget(phone=phone, metadata=extra)


async def open_outbox_queue(settings: Settings, http: aiohttp.ClientSession) -> OutboxQueue:
    """Open the outbox file and start delivering from it on `http`."""
    outbox = await Outbox(settings.outbox_path).open()
    webhook_sender = None
    if settings.webhook_url:
        webhook_sender = WebhookSender(url=settings.webhook_url, secret=settings.webhook_secret, session=http)

    sender = RowSender(webhook_sender=webhook_sender, crm=_crm_client(settings, http), crm_timeout=settings.crm_tool_timeout)
    dispatcher = OutboxDispatcher(outbox, sender)
    dispatcher.start()
    return OutboxQueue(outbox, dispatcher)


def build_services(
    settings: Settings, record: CallRecord, http: aiohttp.ClientSession, queue: OutboxQueue | None
) -> CallServices:
    """Build the CRM client and webhook emitter of one call; events go through `queue` when given."""
    emitter_queue = queue if settings.webhook_url else None
    sender = None
    if settings.webhook_url and queue is None:
        sender = WebhookSender(url=settings.webhook_url, secret=settings.webhook_secret, session=http)

    return CallServices(
        settings=settings,
        emitter=CallEmitter(call_id=record.call_id, sender=sender, queue=emitter_queue),
        crm=_crm_client(settings, http),
        queue=queue,
    )


def _crm_client(settings: Settings, http: aiohttp.ClientSession) -> CrmClient | None:
    if not settings.crm_base_url:
        return None
    return CrmClient(base_url=settings.crm_base_url, api_key=settings.crm_api_key, session=http)


class CallRuntime:
    """The record and services of the call running in this job."""

    def __init__(self, *, record: CallRecord, services: CallServices, http: aiohttp.ClientSession) -> None:
        self.record = record
        self.services = services
        self._http = http
        self._owned: list[Any] = []
        self._finished = False
        # Ends the job (JobContext.shutdown in a worker); a no-op until the entrypoint sets it.
        self.end_call: Callable[[str], None] = lambda reason: None
        self.session: Any = None
        self.loop = asyncio.get_running_loop()

    @property
    def log_fields(self) -> dict[str, Any]:
        return {"call_id": self.record.call_id, "room": self.record.room}

    async def lookup_contact(self) -> None:
        """Find the callee in the CRM within CRM_LOOKUP_TIMEOUT; any failure leaves the contact unknown."""
        record = self.record
        crm = self.services.crm
        if crm is None or record.phone is None:
            record.lookup_status = "not_configured" if crm is None else "no_number"
            logger.info("CRM lookup skipped", extra={**self.log_fields, "reason": record.lookup_status})
            return

        timeout = self.services.settings.crm_lookup_timeout
        try:
            # The client enforces the budget per request; this bounds the whole step too.
            async with asyncio.timeout(timeout):
                record.contact = await crm.find_by_phone(record.phone, timeout=timeout)
        except CrmError as err:
            record.lookup_status = err.reason
        except TimeoutError:
            record.lookup_status = "timeout"
        else:
            record.lookup_status = "found" if record.contact else "not_found"

        level = logging.INFO if record.lookup_status in ("found", "not_found") else logging.WARNING
        logger.log(level, "CRM lookup finished", extra={**self.log_fields, "lookup_status": record.lookup_status})

    async def mark_answered(self) -> None:
        """Record the answer and send call.started; later calls do nothing."""
        if self.record.answered:
            return
        self.record.mark_answered()
        await self.services.emitter.emit("call.started", self.record.started_fields())
        logger.info("call answered", extra=self.log_fields)

    def callee_left(self) -> None:
        """End the job because the caller's SIP participant left: a hang-up, or a completed transfer."""
        self.record.mark_callee_left()
        self.end_call("callee left")

    async def finish(self, *, reason: str) -> None:
        """Send call.ended once, log the call on the CRM, and wait for delivery within the drain time."""
        if self._finished:
            return
        self._finished = True

        record = self.record
        record.finish(reason=reason)
        self._collect_session_report()
        await self._queue_crm_writes()

        emitter = self.services.emitter
        await emitter.emit("call.ended", record.ended_fields())
        logger.info(
            "call ended",
            extra={**self.log_fields, "outcome": record.outcome, "sip_status_code": record.sip_status_code, "reason": reason},
        )

        # Whatever is not delivered in time stays in the outbox, and the worker's
        # main process keeps retrying it after this job has exited.
        queue = self.services.queue
        timeout = self.services.settings.webhook_drain_timeout
        if queue is not None:
            await queue.drain(record.call_id, timeout)
        else:
            await emitter.drain(timeout)
        await emitter.aclose()

    def own(self, *resources: Any) -> None:
        """Close these (model clients and the like) with the call; None entries are skipped."""
        self._owned.extend(resource for resource in resources if resource is not None)

    async def aclose(self) -> None:
        """Release the call's connections: the emitter, owned model clients, then the HTTP session."""
        await self.services.emitter.aclose()
        for resource in self._owned:
            await resource.aclose()
        await self._http.close()

    def _collect_session_report(self) -> None:
        """Copy usage figures, and the transcript when REPORT_TRANSCRIPT is on, from the session."""
        if self.session is None:
            return
        self.record.usage = call_report.usage(self.session.usage.model_usage)
        if self.services.settings.report_transcript:
            self.record.transcript = call_report.transcript(self.session.history)

    async def _queue_crm_writes(self) -> None:
        """Store the call activity and every note the CRM has not confirmed in the outbox."""
        record = self.record
        queue = self.services.queue
        if self.services.crm is None or record.contact_id is None:
            return
        if queue is None:
            await self._write_crm_directly()
            return

        for note in record.notes:
            if not note.saved_to_crm and not note.queued_for_crm:
                await queue.put_crm_write(CRM_NOTE, call_id=record.call_id, contact_id=record.contact_id, text=note.text)
                note.queued_for_crm = True
        await queue.put_crm_write(
            CRM_ACTIVITY, call_id=record.call_id, contact_id=record.contact_id, activity=record.activity()
        )


    async def _write_crm_directly(self) -> None:
        """Write the activity and unconfirmed notes once, without the outbox, within CRM_TOOL_TIMEOUT each.

        Used only when the outbox file could not be opened; a failure here is logged and not retried.
        """
        record = self.record
        crm = self.services.crm
        assert crm is not None and record.contact_id is not None
        timeout = self.services.settings.crm_tool_timeout

        writes = [crm.add_note(record.contact_id, text=n.text, call_id=record.call_id, timeout=timeout) for n in record.notes if not n.saved_to_crm]
        writes.append(crm.log_call(record.contact_id, record.activity(), timeout=timeout))
        for result in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(result, CrmError):
                logger.error(
                    "CRM write after the call failed and is not retried (no outbox)",
                    extra={**self.log_fields, "reason": result.reason, "status": result.status},
                )
            elif isinstance(result, BaseException):
                raise result


def failed_record(*, room: str, job_id: str, reason: str) -> CallRecord:
    """Return a failed-call record for a dispatch that could not start a call."""
    record = CallRecord(phone=None, room=room, job_id=job_id)
    record.mark_dial_failed(outcome=FAILED, sip_status_code=None, reason=reason)
    return record
