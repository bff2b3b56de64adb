"""The four tools, run through the real CallAgent in an AgentSession without a room.

The model is the openai plugin pointed at the scripted dev LLM on 127.0.0.1; the
CRM and the webhook receiver are the dev stack's servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from livekit.agents import AgentSession

import webhooks
from agent import CallAgent, build_session
from call_lifecycle import CallRuntime, build_services, open_outbox_queue
from call_record import CallRecord
from dev_llm import ToolCall
from settings import CONSOLE, load_settings
from telephony import LiveKitSip
from tests.conftest import CRM_API_KEY, WEBHOOK_SECRET, received_events
from tests.servers import serve

ASHA = "+919800000001"


def make_settings(llm, crm, webhook_url: str, *, outbox_path: str, **extra: str):
    env = {
        "OUTBOX_PATH": outbox_path,
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": llm.base_url,
        "CRM_BASE_URL": crm.url,
        "CRM_API_KEY": CRM_API_KEY,
        "WEBHOOK_URL": webhook_url,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TRANSFER_BILLING": "+919800000099",
        "TRANSFER_SALES": "+919800000098",
        "VOBIZ_SIP_DOMAIN": "trunk.example.invalid",
        **extra,
    }
    return load_settings(env, mode=CONSOLE)


class Call:
    """A started session with the real agent, plus its runtime."""

    def __init__(self, session: AgentSession, runtime: CallRuntime) -> None:
        self.session = session
        self.runtime = runtime

    @property
    def record(self) -> CallRecord:
        return self.runtime.record

    async def say(self, text: str):
        return await self.session.run(user_input=text)


@pytest.fixture
async def call_factory(http) -> AsyncIterator:
    sessions: list[AgentSession] = []
    runtimes: list[CallRuntime] = []

    async def start(settings, *, phone: str | None = ASHA, calls=None) -> Call:
        record = CallRecord(phone=phone, room="room-test")
        queue = await open_outbox_queue(settings, http)
        services = build_services(settings, record, http, queue)
        services.calls = calls
        runtime = CallRuntime(record=record, services=services, http=http)
        runtime.own(queue)
        await runtime.lookup_contact()

        session = build_session(settings, record, console=True, vad=None)
        runtime.own(session.llm)
        sessions.append(session)
        runtimes.append(runtime)
        await session.start(CallAgent(record=record, services=services))
        await runtime.mark_answered()
        return Call(session, runtime)

    yield start

    for session in sessions:
        await session.aclose()
    for runtime in runtimes:
        await runtime.aclose()


def payloads(receiver) -> list[dict]:
    return [event["payload"] for event in received_events(receiver)]


async def test_record_intent_sends_signed_event(llm, crm, receiver, call_factory, tmp_path):
    settings = make_settings(llm, crm, receiver.url, outbox_path=str(tmp_path / "outbox.sqlite3"))
    call = await call_factory(settings)
    llm.script.steps += [ToolCall("record_intent", {"intent": "billing question"}), "Thanks."]

    result = await call.say("I have a question about my bill")
    assert await call.runtime.services.emitter.drain(5)

    result.expect.next_event().is_function_call(name="record_intent", arguments={"intent": "billing question"})
    result.expect.next_event().is_function_call_output()
    result.expect.next_event().is_message(role="assistant")
    assert call.record.intents == ["billing question"]
    events = received_events(receiver)
    assert [event["payload"]["event"] for event in events] == ["call.started", "call.intent"]
    assert [event["payload"]["sequence"] for event in events] == [1, 2]
    assert all(event["standard_valid"] and event["legacy_valid"] for event in events)
    assert events[1]["payload"]["intent"] == "billing question"
    assert events[1]["payload"]["contact_id"] == "ct_1001"


async def test_lookup_crm_returns_contact_and_reports(llm, crm, receiver, call_factory, tmp_path):
    settings = make_settings(llm, crm, receiver.url, outbox_path=str(tmp_path / "outbox.sqlite3"))
    call = await call_factory(settings)
    llm.script.steps += [ToolCall("lookup_crm", {"phone_or_name": "Dana"}), "Found Dana."]

    result = await call.say("Can you look up Dana?")
    assert await call.runtime.services.emitter.drain(5)

    result.expect.next_event().is_function_call(name="lookup_crm")
    output = result.expect.next_event().is_function_call_output().event().item.output
    assert "Dana Lee" in output
    assert "Northwind Labs" in output
    assert "dana.lee@example.com" not in output
    lookup = payloads(receiver)[-1]
    assert lookup["event"] == "call.lookup"
    assert lookup["found"] is True
    assert lookup["match_id"] == "ct_1003"


async def test_update_crm_note_saves_on_known_contact(llm, crm, receiver, call_factory, http, tmp_path):
    settings = make_settings(llm, crm, receiver.url, outbox_path=str(tmp_path / "outbox.sqlite3"))
    call = await call_factory(settings)
    llm.script.steps += [ToolCall("update_crm_note", {"note": "Prefers calls after 5 pm"}), "Noted."]

    await call.say("Please note that I prefer calls after 5 pm")
    assert await call.runtime.services.emitter.drain(5)

    note_event = payloads(receiver)[-1]
    assert note_event["event"] == "call.note"
    assert note_event["note"] == "Prefers calls after 5 pm"
    assert note_event["saved_to_crm"] is True
    headers = {"Authorization": f"Bearer {CRM_API_KEY}"}
    async with http.get(f"{crm.url}/contacts/ct_1001", headers=headers) as response:
        contact = await response.json()
    assert [note["text"] for note in contact["notes"]] == ["Prefers calls after 5 pm"]
    assert contact["notes"][0]["call_id"] == call.record.call_id


async def test_update_crm_note_unknown_contact_kept(llm, crm, receiver, call_factory, tmp_path):
    settings = make_settings(llm, crm, receiver.url, outbox_path=str(tmp_path / "outbox.sqlite3"))
    call = await call_factory(settings, phone="+919811111111")
    llm.script.steps += [ToolCall("update_crm_note", {"note": "Call back Monday"}), "Noted."]

    result = await call.say("Note: call back Monday")
    await call.runtime.finish(reason="test")

    output = result.expect.next_event(type="function_call_output").event().item.output
    assert "no CRM record" in output
    assert call.record.contact is None
    assert call.record.lookup_status == "not_found"
    ended = payloads(receiver)[-1]
    assert ended["event"] == "call.ended"
    assert ended["notes"][0]["text"] == "Call back Monday"
    assert ended["notes"][0]["saved_to_crm"] is False


async def test_transfer_call_to_department(llm, crm, receiver, call_factory, sip, tmp_path):
    stub, sip_url = sip
    settings = make_settings(llm, crm, receiver.url, outbox_path=str(tmp_path / "outbox.sqlite3"))
    livekit = LiveKitApi(sip_url)
    call = await call_factory(settings, calls=_transfers(livekit.sip("callee"), settings))
    llm.script.steps += [ToolCall("transfer_call", {"destination": "Billing "}), "Transferring."]

    await call.say("I need billing")
    assert await call.runtime.services.emitter.drain(5)
    await livekit.aclose()

    assert len(stub.transfers) == 1
    assert stub.transfers[0].transfer_to == "sip:+919800000099@trunk.example.invalid"
    assert stub.transfers[0].participant_identity == "callee"
    assert stub.transfers[0].room_name == "room-test"
    transferred = payloads(receiver)[-1]
    assert transferred["event"] == "call.transferred"
    assert transferred["destination"] == "billing"
    assert call.record.transfer_to == "billing"


async def test_transfer_call_outside_allowlist_rejected(llm, crm, receiver, call_factory, sip, tmp_path):
    stub, sip_url = sip
    settings = make_settings(llm, crm, receiver.url, outbox_path=str(tmp_path / "outbox.sqlite3"))
    livekit = LiveKitApi(sip_url)
    call = await call_factory(settings, calls=_transfers(livekit.sip("callee"), settings))
    llm.script.steps += [ToolCall("transfer_call", {"destination": "+1 (555) 000-1111"}), "I can't do that."]

    result = await call.say("Transfer me to +1 555 000 1111")
    assert await call.runtime.services.emitter.drain(5)
    await livekit.aclose()

    result.expect.next_event().is_function_call(name="transfer_call")
    result.expect.next_event().is_function_call_output(is_error=True)
    assert stub.transfers == []
    assert [p["event"] for p in payloads(receiver)] == ["call.started"]
    assert call.record.transfer_to is None


async def test_transfer_call_failure_reported(llm, crm, receiver, call_factory, sip, tmp_path):
    stub, sip_url = sip
    from tests.sip_stub import SipError

    stub.transfer_error = SipError(sip_status_code=486, sip_status="Busy Here")
    settings = make_settings(llm, crm, receiver.url, outbox_path=str(tmp_path / "outbox.sqlite3"))
    livekit = LiveKitApi(sip_url)
    call = await call_factory(settings, calls=_transfers(livekit.sip("callee"), settings))
    llm.script.steps += [ToolCall("transfer_call", {"destination": "sales"}), "Sorry, sales is busy."]

    result = await call.say("Put me through to sales")
    assert await call.runtime.services.emitter.drain(5)
    await livekit.aclose()

    output = result.expect.next_event(type="function_call_output").event().item
    assert not output.is_error
    assert "did not go through" in output.output
    failed = payloads(receiver)[-1]
    assert failed["event"] == "call.transfer_failed"
    assert failed["sip_status_code"] == 486
    assert call.record.transfer_to is None
    assert call.record.failed_transfers == ["sales"]


async def test_tool_answer_does_not_wait_for_webhook(llm, crm, call_factory, tmp_path):
    gate = asyncio.Event()
    answered: list[int] = []

    async def slow_receiver(request: web.Request) -> web.Response:
        await request.read()
        await gate.wait()
        answered.append(1)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/webhooks", slow_receiver)
    async with serve(app) as url:
        settings = make_settings(llm, crm, f"{url}/webhooks", outbox_path=str(tmp_path / "outbox.sqlite3"))
        call = await call_factory(settings)
        llm.script.steps += [ToolCall("record_intent", {"intent": "renewal"}), "Thanks."]

        result = await call.say("I want to renew")

        result.expect.contains_function_call_output()
        emitter = call.runtime.services.emitter
        assert await call.runtime.services.queue.outbox.pending_count(call.record.call_id) == 2
        assert answered == []
        gate.set()
        assert await emitter.drain(5)
        assert len(answered) == 2


class LiveKitApi:
    """A LiveKitAPI aimed at the SIP stub."""

    def __init__(self, url: str) -> None:
        from livekit import api

        self._api = api.LiveKitAPI(url=url, api_key="devkey", api_secret="devsecret-devsecret-devsecret-00")

    def sip(self, identity: str) -> LiveKitSip:
        return LiveKitSip(self._api, room_name="room-test", participant_identity=identity)

    async def aclose(self) -> None:
        await self._api.aclose()


def _transfers(sip: LiveKitSip, settings):
    class Transfers:
        async def transfer(self, *, transfer_to: str):
            return await sip.transfer(transfer_to=transfer_to, timeout=settings.transfer_timeout)

    return Transfers()
