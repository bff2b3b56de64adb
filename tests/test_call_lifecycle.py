"""Whole calls through the real worker: dispatch, dial, talk, end, and the one call.ended.

The worker runs in-process (tests/worker_harness.py); LiveKit's SIP API is the
stub in tests/sip_stub.py, the model is the scripted dev LLM, and the CRM and
webhook receiver are the dev stack's servers, all on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback

import pytest

from dev_llm import ToolCall
from tests.conftest import CRM_API_KEY, WEBHOOK_SECRET, received_events
from tests.sip_stub import SipError
from tests.worker_harness import in_job, say, worker

ASHA = "+919800000001"


@pytest.fixture
def worker_env(monkeypatch, tmp_path, llm, crm, receiver, sip):
    _, sip_url = sip
    env = {
        "OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"),
        "LIVEKIT_URL": sip_url,
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret-devsecret-devsecret-00",
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": llm.base_url,
        "DEEPGRAM_API_KEY": "test-deepgram-key",
        "OUTBOUND_TRUNK_ID": "ST_test_trunk",
        "VOBIZ_SIP_DOMAIN": "trunk.example.invalid",
        "CRM_BASE_URL": crm.url,
        "CRM_API_KEY": CRM_API_KEY,
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TRANSFER_BILLING": "+919800000099",
        "WEBHOOK_DRAIN_TIMEOUT": "3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LIVEKIT_DEV_MODE", raising=False)
    return env


def dispatch(phone: str = ASHA, **extra) -> str:
    return json.dumps({"phone_number": phone, **extra})


def events_of(receiver, event: str) -> list[dict]:
    return [e["payload"] for e in received_events(receiver) if e["payload"]["event"] == event]


async def wait_for_event(receiver, event: str, timeout: float = 20) -> dict:
    async with asyncio.timeout(timeout):
        while not events_of(receiver, event):
            await asyncio.sleep(0.05)
    return events_of(receiver, event)[0]


async def talk_and_hang_up(harness, receiver, *lines: str, metadata: str | None = None):
    """Dispatch a call, wait for the answer, say `lines`, then hang up as the callee.

    Returns the job's CallRuntime and the call.ended payload, once the job is done.
    """
    job_id = await harness.launch(metadata or dispatch())
    runtime = await harness.runtime(job_id)
    await wait_for_event(receiver, "call.started")
    for line in lines:
        await say(runtime, line)
    in_job(runtime, runtime.callee_left)
    ended = await wait_for_event(receiver, "call.ended")
    await harness.wait_job_done(job_id)
    return runtime, ended


async def unanswered_call(harness, receiver, metadata: str | None = None) -> dict:
    """Dispatch a call that ends without an answer; return call.ended once the job is done."""
    job_id = await harness.launch(metadata or dispatch())
    ended = await wait_for_event(receiver, "call.ended")
    await harness.wait_job_done(job_id)
    return ended


async def test_answered_call_hung_up_by_callee(worker_env, llm, receiver, sip, http, crm):
    stub, _ = sip
    llm.script.steps += [
        "Hello Asha, how can I help?",
        ToolCall("record_intent", {"intent": "upgrade plan"}),
        "Sure, let me help with that.",
    ]

    async with worker() as harness:
        _, ended = await talk_and_hang_up(harness, receiver, "I want to upgrade my plan", metadata=dispatch(campaign="renewals"))

    assert len(stub.dials) == 1
    assert stub.dials[0].sip_call_to == ASHA
    assert stub.dials[0].sip_trunk_id == "ST_test_trunk"
    assert stub.dials[0].wait_until_answered
    assert ended["outcome"] == "completed"
    assert ended["intents"] == ["upgrade plan"]
    assert ended["contact_id"] == "ct_1001"
    assert ended["metadata"] == {"campaign": "renewals"}
    assert ended["talk_seconds"] > 0
    assert ended["end_reason"] == "callee left"
    names = [e["payload"]["event"] for e in received_events(receiver)]
    assert names == ["call.started", "call.intent", "call.ended"]
    assert [e["payload"]["sequence"] for e in received_events(receiver)] == [1, 2, 3]
    assert all(e["standard_valid"] and e["legacy_valid"] for e in received_events(receiver))
    async with http.get(f"{crm.url}/contacts/ct_1001", headers={"Authorization": f"Bearer {CRM_API_KEY}"}) as resp:
        contact = await resp.json()
    assert [a["outcome"] for a in contact["activities"]] == ["completed"]
    assert contact["activities"][0]["call_id"] == ended["call_id"]


@pytest.mark.parametrize(
    ("sip_status", "reason", "outcome"),
    [(486, "Busy Here", "busy"), (480, "Temporarily Unavailable", "no_answer"), (403, "Forbidden", "failed")],
)
async def test_dial_failure_ends_with_outcome(worker_env, receiver, sip, sip_status, reason, outcome):
    stub, _ = sip
    stub.dial_error = SipError(sip_status_code=sip_status, sip_status=reason)

    async with worker() as harness:
        ended = await unanswered_call(harness, receiver)

    assert ended["outcome"] == outcome
    assert ended["sip_status_code"] == sip_status
    assert ended["answered_at"] is None
    assert ended["talk_seconds"] == 0
    assert events_of(receiver, "call.started") == []
    assert len(events_of(receiver, "call.ended")) == 1
    assert len(stub.dials) == 1


async def test_transfer_success_ends_transferred(worker_env, llm, receiver, sip):
    stub, _ = sip
    llm.script.steps += ["Hello Asha.", ToolCall("transfer_call", {"destination": "billing"}), "Transferring."]

    async with worker() as harness:
        # After a cold transfer the SIP participant leaves the room, as in a hang-up.
        _, ended = await talk_and_hang_up(harness, receiver, "Billing please")

    assert stub.transfers[0].transfer_to == "sip:+919800000099@trunk.example.invalid"
    names = [e["payload"]["event"] for e in received_events(receiver)]
    assert names == ["call.started", "call.transferred", "call.ended"]
    assert ended["outcome"] == "transferred"
    assert ended["destination"] == "billing"


async def test_transfer_failure_keeps_call(worker_env, llm, receiver, sip):
    stub, _ = sip
    stub.transfer_error = SipError(sip_status_code=603, sip_status="Decline", transfer_reason="STR_DECLINED")
    llm.script.steps += ["Hello Asha.", ToolCall("transfer_call", {"destination": "billing"}), "Sorry, billing is unavailable."]

    async with worker() as harness:
        _, ended = await talk_and_hang_up(harness, receiver, "Billing please")

    failed = events_of(receiver, "call.transfer_failed")
    assert len(failed) == 1
    assert failed[0]["sip_status_code"] == 603
    assert events_of(receiver, "call.transferred") == []
    assert ended["outcome"] == "completed"
    assert ended["failed_transfers"] == ["billing"]


async def test_disconnect_twice_sends_one_call_ended(worker_env, llm, receiver, sip):
    llm.script.steps += ["Hello Asha."]

    async with worker() as harness:
        job_id = await harness.launch(dispatch())
        runtime = await harness.runtime(job_id)
        await wait_for_event(receiver, "call.started")
        in_job(runtime, runtime.callee_left)
        in_job(runtime, runtime.callee_left)
        in_job(runtime, runtime.end_call, "room disconnected")
        await wait_for_event(receiver, "call.ended")
        await harness.wait_job_done(job_id)

    assert len(events_of(receiver, "call.ended")) == 1


@pytest.mark.parametrize(
    "metadata",
    ['{"phone_number": "+9198000', "{}", '{"phone_number": 919800000001}', '{"phone_number": "12345"}', "[1]"],
)
async def test_invalid_dispatch_not_dialed(worker_env, receiver, sip, metadata):
    stub, _ = sip

    async with worker() as harness:
        ended = await unanswered_call(harness, receiver, metadata)

    assert stub.dials == []
    assert ended["outcome"] == "failed"
    assert ended["sip_reason"]
    assert len(received_events(receiver)) == 1


async def test_worker_shutdown_mid_call_sends_call_ended(worker_env, llm, receiver, sip):
    llm.script.steps += ["Hello Asha."]

    async with worker() as harness:
        await harness.launch(dispatch())
        await wait_for_event(receiver, "call.started")

    ended = await wait_for_event(receiver, "call.ended", timeout=5)
    assert ended["outcome"] == "completed"
    assert len(events_of(receiver, "call.ended")) == 1


async def test_full_call_logs_no_secrets(worker_env, llm, receiver, sip, caplog):
    caplog.set_level(logging.DEBUG)
    llm.script.steps += [
        "Hello Asha.",
        ToolCall("update_crm_note", {"note": "Call back on +919800000001 tomorrow"}),
        "Noted.",
    ]

    async with worker() as harness:
        job_id = await harness.launch(dispatch())
        runtime = await harness.runtime(job_id)
        await wait_for_event(receiver, "call.started")
        await say(runtime, "Note that I want a call back")
        in_job(runtime, runtime.callee_left)
        await wait_for_event(receiver, "call.ended")
        await harness.wait_job_done(job_id)

    secrets = [worker_env[name] for name in ("WEBHOOK_SECRET", "CRM_API_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY")]
    assert caplog.records
    for record in caplog.records:
        text = _record_text(record)
        for secret in secrets:
            assert secret not in text, f"secret in log record {record.name}: {record.msg}"
        assert "9800000001" not in text, f"phone number in log record {record.name}: {record.msg}"


def _record_text(record: logging.LogRecord) -> str:
    """All text a handler could output for `record`: message, extra fields and traceback."""
    standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
    extras = {key: value for key, value in vars(record).items() if key not in standard}
    parts = [record.getMessage(), repr(extras)]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)
