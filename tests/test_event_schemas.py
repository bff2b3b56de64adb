"""The published JSON Schemas: well formed, matching the product's events, and strict."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from call_record import CallRecord, Note
from tests.event_schemas import SCHEMA_DIR, schema_errors
from webhooks import build_event

EVENTS = ("call.started", "call.intent", "call.lookup", "call.note", "call.transferred", "call.transfer_failed", "call.ended")


def ended_record() -> CallRecord:
    record = CallRecord(phone="+919800000001", room="call-1", trunk_id="ST_x", metadata={"campaign": "renewals"})
    record.mark_dialing(at=100.0)
    record.mark_answered(at=104.5)
    record.intents.append("upgrade")
    record.notes.append(Note(text="Prefers email", created_at=110.0, saved_to_crm=True))
    record.mark_callee_left()
    record.finish(reason="callee left", at=160.0)
    record.usage = {"llm_prompt_tokens": 10, "llm_completion_tokens": 5, "stt_audio_seconds": 3.5, "tts_characters": 80}
    return record


def payload(event: str, fields: dict) -> dict:
    return build_event(event, call_id="call_" + "a" * 32, sequence=1, fields=fields).payload()


@pytest.mark.parametrize("name", ("envelope", *EVENTS))
def test_schema_file_is_valid_schema(name):
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())

    Draft202012Validator.check_schema(schema)


def test_schema_ended_accepts_product_event():
    record = ended_record()

    errors = schema_errors(payload("call.ended", record.ended_fields()))

    assert errors == []


def test_schema_started_accepts_product_event():
    record = ended_record()

    errors = schema_errors(payload("call.started", record.started_fields()))

    assert errors == []


@pytest.mark.parametrize(
    ("field", "renamed"),
    [("outcome", "result"), ("talk_seconds", "duration_seconds"), ("sip_status_code", "sip_status"), ("phone", "to")],
)
def test_schema_ended_rejects_renamed_field(field, renamed):
    fields = ended_record().ended_fields()
    fields[renamed] = fields.pop(field)

    errors = schema_errors(payload("call.ended", fields))

    assert any(field in error for error in errors)
    assert any(renamed in error for error in errors)


def test_schema_rejects_unknown_outcome():
    fields = ended_record().ended_fields()
    fields["outcome"] = "hung_up"

    errors = schema_errors(payload("call.ended", fields))

    assert len(errors) == 1
    assert "hung_up" in errors[0]


def test_schema_rejects_event_without_schema():
    errors = schema_errors(payload("call.unknown", {}))

    assert errors
