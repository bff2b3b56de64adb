"""Inbound calls: the caller's number comes from the SIP participant, or the job ends."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import agent
from call_record import INBOUND
from settings import CONSOLE, load_settings


@dataclass
class FakeParticipant:
    identity: str
    attributes: dict[str, str]


@dataclass
class FakeRoom:
    name: str = "inbound-room"


@dataclass
class FakeJob:
    id: str = "job-inbound"
    metadata: str = ""


@dataclass
class FakeJobContext:
    """The parts of JobContext that the inbound path uses."""

    participant: FakeParticipant | None
    room: FakeRoom = field(default_factory=FakeRoom)
    job: FakeJob = field(default_factory=FakeJob)
    shutdown_reasons: list[str] = field(default_factory=list)
    shutdown_callbacks: list = field(default_factory=list)
    log_context_fields: dict = field(default_factory=dict)

    async def wait_for_participant(self, *, kind) -> FakeParticipant:
        if self.participant is None:
            await agent.asyncio.Event().wait()
        return self.participant

    def add_shutdown_callback(self, callback) -> None:
        self.shutdown_callbacks.append(callback)

    def shutdown(self, reason: str = "") -> None:
        self.shutdown_reasons.append(reason)


@pytest.fixture
def settings(tmp_path):
    return load_settings({"OPENAI_API_KEY": "k", "OUTBOX_PATH": str(tmp_path / "outbox.sqlite3")}, mode=CONSOLE)


async def test_inbound_number_from_sip_attribute(settings):
    ctx = FakeJobContext(participant=FakeParticipant("sip_caller", {"sip.phoneNumber": "09800000001"}))

    record = await agent._inbound_record(ctx, settings)

    assert record.direction == INBOUND
    assert record.phone == "+919800000001"
    assert record.participant_identity == "sip_caller"
    assert ctx.shutdown_reasons == []


async def test_inbound_unreadable_number_kept_unknown(settings):
    ctx = FakeJobContext(participant=FakeParticipant("sip_caller", {"sip.phoneNumber": "anonymous"}))

    record = await agent._inbound_record(ctx, settings)

    assert record.phone is None
    assert record.direction == INBOUND


async def test_inbound_no_caller_ends_job(settings, monkeypatch):
    monkeypatch.setattr(agent, "INBOUND_WAIT_SECONDS", 0.1)
    ctx = FakeJobContext(participant=None)

    record = await agent._inbound_record(ctx, settings)
    runtime = agent._calls.pop(ctx.job.id)
    await runtime.finish(reason="test")
    for callback in ctx.shutdown_callbacks:
        await callback()

    assert record is None
    assert ctx.shutdown_reasons == ["invalid dispatch metadata"]
    ended = runtime.services.emitter.events[-1].payload()
    assert ended["event"] == "call.ended"
    assert ended["outcome"] == "failed"
    assert "no SIP participant joined" in ended["sip_reason"]
