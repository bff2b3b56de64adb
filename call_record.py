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
VOICEMAIL = "voicemail"
NO_ANSWER = "no_answer"
BUSY = "busy"
REJECTED = "rejected"
FAILED = "failed"

# Values of the `ended_by` field of call.ended.
BY_CALLEE = "callee"
BY_AGENT = "agent"
BY_TRANSFER = "transfer"
BY_SYSTEM = "system"

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

    # When the job started, which is when the dispatch reached this worker.
    created_at: float = field(default_factory=time.time)
    dial_started_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    ended_by: str | None = None
    sip_status_code: int | None = None
    sip_reason: str | None = None
    end_reason: str | None = None

    # Filled from the session when the call ends.
    transcript: list[dict[str, Any]] | None = None
    usage: dict[str, float] = field(
        default_factory=lambda: {
            "llm_prompt_tokens": 0,
            "llm_completion_tokens": 0,
            "stt_audio_seconds": 0.0,
            "tts_characters": 0,
        }
    )

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
    def talk_seconds(self) -> float:
        """Seconds from answer to end; 0 for a call that was never answered."""
        if self.answered_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else time.time()
        return round(max(0.0, end - self.answered_at), 3)

    @property
    def ring_seconds(self) -> float | None:
        """Seconds from the dial request to answer or failure; None when nothing was dialed."""
        if self.dial_started_at is None:
            return None
        end = self.answered_at or self.ended_at or time.time()
        return round(max(0.0, end - self.dial_started_at), 3)

    def mark_dialing(self, at: float | None = None) -> None:
        self.dial_started_at = time.time() if at is None else at

    def mark_answered(self, at: float | None = None) -> None:
        self.answered_at = time.time() if at is None else at

    def mark_dial_failed(self, *, outcome: str, sip_status_code: int | None, reason: str) -> None:
        self.outcome = outcome
        self.ended_by = BY_SYSTEM
        self.sip_status_code = sip_status_code
        self.sip_reason = reason

    def mark_voicemail(self) -> None:
        self.outcome = VOICEMAIL
        self.ended_by = BY_AGENT
        self.end_reason = "answering machine"

    def mark_callee_left(self) -> None:
        """Record that the caller's SIP participant left: a hang-up, or the end of a transfer."""
        if self.ended_by is None:
            self.ended_by = BY_TRANSFER if self.transfer_to is not None else BY_CALLEE
        self.end_reason = self.end_reason or "callee left"

    def finish(self, *, reason: str, at: float | None = None) -> None:
        """Fix the end time, outcome and ended_by; later calls change nothing."""
        if self.ended_at is not None:
            return

        self.ended_at = time.time() if at is None else at
        self.end_reason = self.end_reason or reason
        if self.outcome is None:
            self.outcome = self._outcome_from_state()
        if self.ended_by is None:
            self.ended_by = BY_TRANSFER if self.outcome == TRANSFERRED else BY_SYSTEM

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
            parts[0] += f", {round(self.talk_seconds)} s after answer"
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
            **self.event_fields(),
            "direction": self.direction,
            "trunk_id": self.trunk_id,
            "contact_name": self.contact_name,
            "outcome": self.outcome,
            "ended_by": self.ended_by,
            "sip_status_code": self.sip_status_code,
            "sip_reason": self.sip_reason,
            "end_reason": self.end_reason,
            "dispatched_at": self.created_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "ring_seconds": self.ring_seconds,
            "talk_seconds": self.talk_seconds,
            "intent": self.intents[-1] if self.intents else None,
            "intents": list(self.intents),
            "notes": [
                {"text": note.text, "created_at": note.created_at, "saved_to_crm": note.saved_to_crm}
                for note in self.notes
            ],
            "destination": self.transfer_to,
            "failed_transfers": list(self.failed_transfers),
            "summary": self.summary(),
            "usage": dict(self.usage),
            "transcript": self.transcript,
            "metadata": self.metadata,
        }

    def activity(self) -> dict[str, Any]:
        """Return the CRM activity body for this call; the client adds "type": "call"."""
        return {
            "call_id": self.call_id,
            "phone": self.phone,
            "outcome": self.outcome,
            "ended_by": self.ended_by,
            "duration_seconds": self.talk_seconds,
            "ring_seconds": self.ring_seconds,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "intent": self.intents[-1] if self.intents else None,
            "summary": self.summary(),
            "transfer_to": self.transfer_to,
        }
