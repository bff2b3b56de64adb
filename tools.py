"""The four function tools of the call agent, as a mixin for `Agent` subclasses.

Each tool records what happened in the `CallRecord` and reports it as a signed
webhook. `CallEmitter.emit` only stores the event in the outbox, so no tool
result waits for webhook delivery. CRM calls are bounded by `CRM_TOOL_TIMEOUT`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from livekit.agents import RunContext, ToolError, function_tool

from call_record import CallRecord, Note
from crm_client import CrmClient, CrmError
from delivery import OutboxQueue
from outbox import CRM_NOTE
from phone import InvalidPhoneNumber, normalize_e164
from prompt import clean_text, strip_control
from settings import Settings
from telephony import CallControl, transfer_uri
from webhooks import CallEmitter

logger = logging.getLogger(__name__)

MAX_INTENT_CHARS = 200
MAX_NOTE_CHARS = 2000
MAX_QUERY_CHARS = 100

# Zero-width non-joiner and joiner. Emoji sequences such as 👩\u200d💻 and words in
# Persian and Indic scripts need them, so tool arguments keep them.
# NOTE: other format characters are still dropped, among them the tag characters
# that subdivision flags such as Scotland's are built from.
TEXT_JOINERS = "\u200c\u200d"


@dataclass
class CallServices:
    """Services the tools act through, built once per call by the call flow."""

    settings: Settings
    emitter: CallEmitter
    crm: CrmClient | None = None
    # None where no phone line exists (console, tests without SIP).
    calls: CallControl | None = None
    # Durable delivery of CRM writes that fail during the call.
    queue: OutboxQueue | None = None


class CallTools:
    """Mixin adding `record_intent`, `lookup_crm`, `update_crm_note` and `transfer_call`.

    The class using it sets `self.services` before the session starts.
    """

    services: CallServices

    @function_tool()
    async def record_intent(self, context: RunContext[CallRecord], intent: str) -> str:
        """Record why the person is talking to us, as soon as they say it.

        Args:
            intent: A short phrase for the person's reason or need, such as "billing question" or "wants a callback".
        """
        record = context.userdata
        text = _required_text(intent, name="intent", max_chars=MAX_INTENT_CHARS)

        record.intents.append(text)
        await self._emit(record, "call.intent", {"intent": text})
        return "Intent recorded. Continue the conversation."

    @function_tool()
    async def lookup_crm(self, context: RunContext[CallRecord], phone_or_name: str) -> str:
        """Look up a contact in the CRM by phone number or by name.

        Args:
            phone_or_name: A phone number, or a person's or company's name.
        """
        record = context.userdata
        crm = self._require_crm()
        query = _required_text(phone_or_name, name="phone_or_name", max_chars=MAX_QUERY_CHARS)
        timeout = self.services.settings.crm_tool_timeout

        try:
            phone = normalize_e164(query, default_region=self.services.settings.default_region)
        except InvalidPhoneNumber:
            phone = None

        try:
            if phone is not None:
                contact = await crm.find_by_phone(phone, timeout=timeout)
            else:
                contact = await crm.search(query, timeout=timeout)
        except CrmError as err:
            logger.warning("CRM lookup failed in call", extra={"call_id": record.call_id, "reason": err.reason})
            raise ToolError(
                "The CRM is unavailable right now. Tell the person you cannot check the record "
                "at the moment and carry on without it."
            ) from err

        await self._emit(
            record,
            "call.lookup",
            {"query_type": "phone" if phone else "name", "found": contact is not None, "match_id": contact and contact.id},
        )
        if contact is None:
            return "No matching contact was found in the CRM."
        # JSON, because the framework would show the model a dict as Python's repr.
        found = {"name": clean_text(contact.name), "company": clean_text(contact.company), "open_tickets": contact.open_tickets}
        return json.dumps(found, ensure_ascii=False)

    @function_tool()
    async def update_crm_note(self, context: RunContext[CallRecord], note: str) -> str:
        """Save a note about this call on the person's CRM record.

        Args:
            note: The note to save, in plain words, as the person would want it recorded.
        """
        record = context.userdata
        text = _required_text(note, name="note", max_chars=MAX_NOTE_CHARS, keep_lines=True)
        saved = Note(text=text, created_at=time.time())
        record.notes.append(saved)

        if record.contact_id is not None and self.services.crm is not None:
            saved.saved_to_crm = await self._save_note(record, saved)

        await self._emit(record, "call.note", {"note": text, "saved_to_crm": saved.saved_to_crm})
        if saved.saved_to_crm:
            return "The note is saved on the CRM record."
        if saved.queued_for_crm:
            return "The CRM did not confirm the note, so it is queued and will be saved once the CRM responds."
        return "The person has no CRM record, so the note is kept in this call's report instead."

    @function_tool()
    async def transfer_call(self, context: RunContext[CallRecord], destination: str) -> str:
        """Transfer the person to a human team: sales, billing or support.

        Say that you are transferring before calling this.

        Args:
            destination: The team to transfer to: "sales", "billing" or "support".
        """
        record = context.userdata
        name, number = self._resolve_destination(destination)
        calls = self.services.calls

        if calls is None:
            return await self._transfer_failed(
                record, name, number, sip_status_code=None, reason="no phone line in this session"
            )

        context.disallow_interruptions()
        address = transfer_uri(number, self.services.settings.vobiz_sip_domain)
        result = await calls.transfer(transfer_to=address)

        if not result.ok:
            return await self._transfer_failed(
                record, name, number, sip_status_code=result.sip_status_code, reason=result.reason
            )

        record.transfer_to = name
        await self._emit(record, "call.transferred", {"destination": name, "transfer_to": number, "sip_status_code": result.sip_status_code})
        logger.info("call transferred", extra={"call_id": record.call_id, "destination": name})
        return "The transfer succeeded; the person is now with the team."

    def _resolve_destination(self, destination: object) -> tuple[str, str]:
        settings = self.services.settings
        text = _required_text(destination, name="destination", max_chars=MAX_QUERY_CHARS).lower()
        options = ", ".join(sorted(settings.transfer_destinations)) or "none are configured"

        if text in settings.transfer_destinations:
            return text, settings.transfer_destinations[text]

        try:
            number = normalize_e164(text, default_region=settings.default_region)
        except InvalidPhoneNumber:
            number = None
        if number is not None and number in settings.transfer_allowlist:
            return number, number
        for name, configured in settings.transfer_destinations.items():
            if number == configured:
                return name, configured

        raise ToolError(
            f"Cannot transfer to {clean_text(destination, max_chars=40)!r}. "
            f"Transfers go only to these teams: {options}. Ask the person which team they need."
        )

    async def _transfer_failed(
        self, record: CallRecord, name: str, number: str, *, sip_status_code: int | None, reason: str | None
    ) -> str:
        record.failed_transfers.append(name)
        await self._emit(
            record,
            "call.transfer_failed",
            {"destination": name, "transfer_to": number, "sip_status_code": sip_status_code, "reason": reason},
        )
        logger.warning(
            "call transfer failed",
            extra={"call_id": record.call_id, "destination": name, "sip_status_code": sip_status_code, "reason": reason},
        )
        return (
            f"The transfer to {name} did not go through. Tell the person, apologise, "
            "and offer to help yourself or to take a note for the team."
        )

    async def _save_note(self, record: CallRecord, note: Note) -> bool:
        assert self.services.crm is not None and record.contact_id is not None
        try:
            await self.services.crm.add_note(
                record.contact_id, text=note.text, call_id=record.call_id, timeout=self.services.settings.crm_tool_timeout
            )
        except CrmError as err:
            logger.warning(
                "CRM note write failed; queued for retry",
                extra={"call_id": record.call_id, "reason": err.reason, "status": err.status},
            )
            await self._queue_note(record, note)
            return False
        return True

    async def _queue_note(self, record: CallRecord, note: Note) -> None:
        queue = self.services.queue
        if queue is None or record.contact_id is None:
            return
        await queue.put_crm_write(CRM_NOTE, call_id=record.call_id, contact_id=record.contact_id, text=note.text)
        note.queued_for_crm = True

    def _require_crm(self) -> CrmClient:
        if self.services.crm is None:
            raise ToolError("No CRM is connected to this agent. Carry on without the record.")
        return self.services.crm

    async def _emit(self, record: CallRecord, event: str, fields: dict[str, Any]) -> None:
        await self.services.emitter.emit(event, {**record.event_fields(), **fields})


def _unwrap_double_encoded(value: str, *, name: str) -> str:
    """Undo a model's double encoding: '{"note": "x"}' passed as the note becomes "x"."""
    stripped = value.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return value
    try:
        decoded = json.loads(stripped)
    except json.JSONDecodeError:
        return value
    if isinstance(decoded, dict) and len(decoded) == 1 and isinstance(decoded.get(name), str):
        return decoded[name]
    return value


def _required_text(value: object, *, name: str, max_chars: int, keep_lines: bool = False) -> str:
    """Validate a text argument from the model, raising ToolError with a usable message."""
    if not isinstance(value, str):
        raise ToolError(f"The {name} argument must be text, not {type(value).__name__}.")
    value = _unwrap_double_encoded(value, name=name)

    if keep_lines:
        lines = (strip_control(line, keep=TEXT_JOINERS) for line in value.splitlines())
        text = "\n".join(line for line in lines if line)
    else:
        text = strip_control(value, keep=TEXT_JOINERS)

    if not text.strip(TEXT_JOINERS):
        raise ToolError(f"The {name} argument is empty. Ask the person, then call the tool again with it.")
    if len(text) > max_chars:
        raise ToolError(f"The {name} is too long ({len(text)} characters; the maximum is {max_chars}). Shorten it.")
    return text

