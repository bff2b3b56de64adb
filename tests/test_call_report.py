"""The end-of-call report: voicemail, ended_by, timing, transcript and usage."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import agent
from dev_llm import REQUESTS, ToolCall
from tests.conftest import received_events
from tests.sip_stub import SipError
from tests.test_call_lifecycle import (  # noqa: F401
    dispatch,
    events_of,
    talk_and_hang_up,
    unanswered_call,
    wait_for_event,
    worker_env,
)
from tests.worker_harness import in_job, say, worker


@dataclass
class Verdict:
    is_machine: bool


class FakeDetector:
    """Stands in for the framework's AMD, returning a fixed verdict after the answer."""

    def __init__(self, *, machine: bool) -> None:
        self.machine = machine
        self.entered = False
        self.executed = False

    async def __aenter__(self) -> FakeDetector:
        self.entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def execute(self) -> Verdict:
        self.executed = True
        return Verdict(is_machine=self.machine)


@pytest.fixture
def detector(monkeypatch):
    holder: dict[str, FakeDetector] = {}

    def install(*, machine: bool) -> None:
        holder["detector"] = FakeDetector(machine=machine)
        monkeypatch.setattr(agent, "create_machine_detector", lambda *args: holder["detector"])

    install.holder = holder
    return install


async def test_voicemail_hangup_ends_without_talking(worker_env, llm, receiver, sip, detector):
    detector(machine=True)

    async with worker() as harness:
        ended = await unanswered_call(harness, receiver)

    assert detector.holder["detector"].executed
    assert ended["outcome"] == "voicemail"
    assert ended["ended_by"] == "agent"
    assert ended["answered_at"] is not None
    assert [e["payload"]["event"] for e in received_events(receiver)] == ["call.started", "call.ended"]
    assert llm.app[REQUESTS] == []


async def test_voicemail_message_left_then_hangup(worker_env, monkeypatch, llm, receiver, sip, detector):
    monkeypatch.setenv("VOICEMAIL_ACTION", "message")
    monkeypatch.setenv("VOICEMAIL_MESSAGE", "Hello, this is Acme. Please call us back.")
    monkeypatch.setenv("REPORT_TRANSCRIPT", "true")
    detector(machine=True)

    async with worker() as harness:
        ended = await unanswered_call(harness, receiver)

    assert ended["outcome"] == "voicemail"
    assert ended["intents"] == []
    assert events_of(receiver, "call.intent") == []
    spoken = [entry["text"] for entry in ended["transcript"] if entry["type"] == "message"]
    assert spoken == ["Hello, this is Acme. Please call us back."]


async def test_human_answer_proceeds_to_greeting(worker_env, llm, receiver, sip, detector):
    detector(machine=False)
    llm.script.steps += ["Hello Asha.", "How can I help?"]

    async with worker() as harness:
        _, ended = await talk_and_hang_up(harness, receiver, "Hi")

    assert detector.holder["detector"].executed
    assert ended["outcome"] == "completed"
    assert ended["ended_by"] == "callee"


async def test_transcript_and_usage_reported(worker_env, monkeypatch, llm, receiver, sip):
    monkeypatch.setenv("REPORT_TRANSCRIPT", "true")
    llm.script.steps += ["Hello Asha.", ToolCall("record_intent", {"intent": "upgrade"}), "Sure."]

    async with worker() as harness:
        _, ended = await talk_and_hang_up(harness, receiver, "I want to upgrade")

    kinds = [(entry["type"], entry.get("speaker") or entry.get("name")) for entry in ended["transcript"]]
    assert kinds == [
        ("message", "agent"),
        ("message", "callee"),
        ("tool_call", "record_intent"),
        ("tool_result", "record_intent"),
        ("message", "agent"),
    ]
    assert ended["transcript"][1]["text"] == "I want to upgrade"
    assert ended["usage"]["llm_prompt_tokens"] > 0
    assert ended["usage"]["llm_completion_tokens"] > 0
    assert ended["ring_seconds"] >= 0
    assert ended["dispatched_at"] <= ended["answered_at"] <= ended["ended_at"]
    assert ended["talk_seconds"] == pytest.approx(ended["ended_at"] - ended["answered_at"], abs=0.01)


async def test_transcript_absent_by_default(worker_env, llm, receiver, sip):
    llm.script.steps += ["Hello Asha."]

    async with worker() as harness:
        _, ended = await talk_and_hang_up(harness, receiver)

    assert ended["transcript"] is None
    assert ended["usage"]["llm_completion_tokens"] > 0


@pytest.mark.parametrize(
    ("sip_status_code", "outcome"),
    [(486, "busy"), (480, "no_answer"), (603, "rejected"), (500, "failed")],
)
async def test_dial_failure_report(worker_env, receiver, sip, sip_status_code, outcome):
    stub, _ = sip
    stub.dial_error = SipError(sip_status_code=sip_status_code, sip_status="carrier reason")

    async with worker() as harness:
        ended = await unanswered_call(harness, receiver)

    assert ended["outcome"] == outcome
    assert ended["ended_by"] == "system"
    assert ended["sip_status_code"] == sip_status_code
    assert ended["sip_reason"] == "carrier reason"
    assert ended["answered_at"] is None
    assert ended["ring_seconds"] >= 0
    assert ended["talk_seconds"] == 0


async def test_crm_activity_carries_report(worker_env, llm, receiver, sip, http, crm):
    from tests.conftest import CRM_API_KEY

    llm.script.steps += ["Hello Asha."]
    async with worker() as harness:
        _, ended = await talk_and_hang_up(harness, receiver)

    async with http.get(f"{crm.url}/contacts/ct_1001", headers={"Authorization": f"Bearer {CRM_API_KEY}"}) as resp:
        activity = (await resp.json())["activities"][-1]
    assert activity["outcome"] == ended["outcome"]
    assert activity["summary"] == ended["summary"]
    assert activity["duration_seconds"] == ended["talk_seconds"]
    assert activity["details"]["ended_by"] == "callee"
    assert activity["details"]["answered_at"] == ended["answered_at"]
    assert activity["details"]["ended_at"] == ended["ended_at"]


async def test_outbox_unavailable_still_reports(worker_env, monkeypatch, llm, receiver, sip, http, crm):
    from tests.conftest import CRM_API_KEY

    # A path below a regular file cannot be created, so the outbox cannot open.
    monkeypatch.setenv("OUTBOX_PATH", "/dev/null/outbox.sqlite3")
    llm.script.steps += ["Hello Asha."]

    async with worker() as harness:
        _, ended = await talk_and_hang_up(harness, receiver)

    async with http.get(f"{crm.url}/contacts/ct_1001", headers={"Authorization": f"Bearer {CRM_API_KEY}"}) as resp:
        activities = (await resp.json())["activities"]
    assert ended["outcome"] == "completed"
    assert [activity["call_id"] for activity in activities] == [ended["call_id"]]
