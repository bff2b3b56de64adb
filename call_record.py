"""The state of one call, shared by the entrypoint, the tools and the end-of-call report.

A `CallRecord` is the `AgentSession[CallRecord]` userdata, so tools reach it
through `RunContext[CallRecord].userdata`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from crm_client import Contact

# Values of the `outcome` field of call.ended.
COMPLETED = "completed"
TRANSFERRED = "transferred"
BUSY = "busy"
NO_ANSWER = "no_answer"
FAILED = "failed"

OUTBOUND = "outbound"
INBOUND = "inbound"


@dataclass
class Note:
    text: str
    created_at: float
    # True once the CRM confirmed it; every note also ships with call.ended.
    saved_to_crm: bool = False
    # True once stored in the outbox for a later CRM write.
    queued_for_crm: bool = False


@dataclass
class CallRecord:
    phone: str | None
    room: str
    direction: str = OUTBOUND
    trunk_id: str | None = None
    call_id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex}")
    job_id: str | None = None
    # Identity of the caller's SIP participant in the room; transfers act on it.
    participant_identity: str = "callee"
    # Dispatch metadata keys other than phone_number, kept as sent.
    metadata: dict[str, Any] = field(default_factory=dict)

    contact: Contact | None = None
    # How the pre-call lookup ended: found, not_found, not_configured, timeout, or a CrmError reason.
    lookup_status: str = "not_configured"

    intents: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    transfer_to: str | None = None
    failed_transfers: list[str] = field(default_factory=list)

    created_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    sip_status: int | None = None
    sip_reason: str | None = None
    end_reason: str | None = None

    @property
    def contact_id(self) -> str | None:
        return self.contact.id if self.contact else None

    @property
    def contact_name(self) -> str | None:
        return self.contact.name if self.contact else None

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    @property
    def duration_seconds(self) -> float:
        """Seconds from answer to end; 0 for a call that was never answered."""
        if self.answered_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else time.time()
        return round(max(0.0, end - self.answered_at), 3)

    def mark_answered(self, at: float | None = None) -> None:
        self.answered_at = time.time() if at is None else at

    def mark_dial_failed(self, *, outcome: str, sip_status: int | None, reason: str) -> None:
        self.outcome = outcome
        self.sip_status = sip_status
        self.sip_reason = reason

    def finish(self, *, reason: str, at: float | None = None) -> None:
        """Fix the end time and the outcome; later calls change nothing."""
        if self.ended_at is not None:
            return

        self.ended_at = time.time() if at is None else at
        self.end_reason = reason
        if self.outcome is None:
            self.outcome = self._outcome_from_state()

    def _outcome_from_state(self) -> str:
        if self.transfer_to is not None:
            return TRANSFERRED
        if self.answered:
            return COMPLETED
        return FAILED

    def summary(self) -> str:
        """Describe the call in one or two plain sentences, for CRMs and dashboards."""
        parts = [f"{self.direction.capitalize()} call, outcome {self.outcome or 'unknown'}"]
        if self.answered:
            parts[0] += f", {round(self.duration_seconds)} s after answer"
        if self.intents:
            parts.append("Intent: " + "; ".join(self.intents))
        if self.notes:
            count = len(self.notes)
            parts.append(f"{count} note taken" if count == 1 else f"{count} notes taken")
        if self.transfer_to:
            parts.append(f"Transferred to {self.transfer_to}")
        return ". ".join(parts) + "."

    def event_fields(self) -> dict[str, Any]:
        """Fields every event of the call carries."""
        return {"phone": self.phone, "room": self.room, "contact_id": self.contact_id}

    def started_fields(self) -> dict[str, Any]:
        return {
            **self.event_fields(),
            "direction": self.direction,
            "trunk_id": self.trunk_id,
            "contact_name": self.contact_name,
            "answered_at": self.answered_at,
            "metadata": self.metadata,
        }

    def ended_fields(self) -> dict[str, Any]:
        """Return the fields of call.ended. Call `finish` first."""
        return {
            "phone": self.phone,
            "room": self.room,
            "direction": self.direction,
            "trunk_id": self.trunk_id,
            "contact_id": self.contact_id,
            "contact_name": self.contact_name,
            "outcome": self.outcome,
            "sip_status": self.sip_status,
            "sip_reason": self.sip_reason,
            "end_reason": self.end_reason,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "duration_seconds": self.duration_seconds,
            "intent": self.intents[-1] if self.intents else None,
            "intents": list(self.intents),
            "notes": [
                {"text": note.text, "created_at": note.created_at, "saved_to_crm": note.saved_to_crm}
                for note in self.notes
            ],
            "destination": self.transfer_to,
            "failed_transfers": list(self.failed_transfers),
            "summary": self.summary(),
            "metadata": self.metadata,
        }

    def activity(self) -> dict[str, Any]:
        """Return the CRM activity body for this call; the client adds "type": "call"."""
        return {
            "call_id": self.call_id,
            "phone": self.phone,
            "outcome": self.outcome,
            "duration_seconds": self.duration_seconds,
            "intent": self.intents[-1] if self.intents else None,
            "summary": self.summary(),
            "transfer_to": self.transfer_to,
        }
