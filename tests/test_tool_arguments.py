"""Bad, hostile and unusual tool arguments, run through the real CallAgent in an AgentSession.

The scripted model calls one tool with the argument under test and then replies
with one text line, so every test also checks that the caller hears a reply after
the tool output. The CRM and the webhook receiver are the dev stack's servers, and
LiveKit's SIP API is the stub in tests/sip_stub.py, all on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from livekit import api

import dev_server
import webhooks
from dev_llm import ToolCall
from tests.conftest import CRM_API_KEY, WEBHOOK_SECRET, received_events
from tests.servers import serve

# Importing call_factory registers it as a fixture of this module.
from tests.test_agent_tools import LiveKitApi, _transfers, call_factory, make_settings  # noqa: F401

ASHA_ID = "ct_1001"
BILLING = "+919800000099"
SALES = "+919800000098"
SIP_DOMAIN = "trunk.example.invalid"
ALLOWED_NUMBER = "+14155550123"
REPLY = "Sorry, could you say that again?"


class RawReceiver:
    """The dev webhook receiver, plus the raw body bytes of every request."""

    def __init__(self) -> None:
        self.app = dev_server.create_receiver_app(secret=WEBHOOK_SECRET)
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.app.router.add_post("/raw", self._receive)
        self.url = ""

    async def _receive(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        return await dev_server.handle_webhook(request, secret=WEBHOOK_SECRET.encode("utf-8"))


@pytest.fixture
async def raw_receiver() -> AsyncIterator[RawReceiver]:
    receiver = RawReceiver()
    async with serve(receiver.app) as url:
        receiver.url = f"{url}/raw"
        yield receiver


@pytest.fixture
async def livekit(sip) -> AsyncIterator[LiveKitApi]:
    _, url = sip
    client = LiveKitApi(url)
    yield client
    await client.aclose()


@pytest.fixture
async def stalled_sip(sip) -> AsyncIterator:
    """The SIP stub with TransferSIPParticipant held open until teardown."""
    stub, _ = sip
    stub.transfer_gate = asyncio.Event()
    yield stub
    # The stub's server cannot stop while a request handler still waits.
    stub.transfer_gate.set()


def settings_for(llm, crm, webhook_url: str, tmp_path, **extra: str):
    return make_settings(llm, crm, webhook_url, outbox_path=str(tmp_path / "outbox.sqlite3"), **extra)


async def run_tool(call, llm, tool: str, arguments: dict, *, reply: str = REPLY):
    """Script one tool call and one text line, run a user turn, and wait for webhook delivery."""
    llm.script.steps += [ToolCall(tool, arguments), reply]
    result = await call.say("Hello?")
    assert await call.runtime.services.emitter.drain(5)
    return result


def tool_output(result, *, is_error: bool):
    """Check the turn (the tool call, its output, then an assistant message) and return the output."""
    result.expect.next_event().is_function_call()
    output = result.expect.next_event().is_function_call_output(is_error=is_error).event().item
    result.expect.next_event().is_message(role="assistant")
    return output


def event_names(receiver) -> list[str]:
    return [event["payload"]["event"] for event in received_events(receiver)]


async def crm_notes(http, crm, contact_id: str = ASHA_ID) -> list[str]:
    headers = {"Authorization": f"Bearer {CRM_API_KEY}"}
    async with http.get(f"{crm.url}/contacts/{contact_id}", headers=headers) as response:
        assert response.status == 200
        contact = await response.json()
    return [note["text"] for note in contact["notes"]]


# update_crm_note


@pytest.mark.parametrize(
    ("note", "expected"),
    [
        pytest.param("", ["The note argument is empty", "Ask the person"], id="empty"),
        pytest.param("   ", ["The note argument is empty", "Ask the person"], id="blank"),
        pytest.param(" \u200d\u200c ", ["The note argument is empty", "Ask the person"], id="joiners-only"),
        pytest.param("x" * 100_000, ["The note is too long", "maximum is 2000", "Shorten it"], id="100kb"),
        # LiveKit's argument validation rejects the integer before the tool runs, and its
        # message names the argument on a line of its own.
        pytest.param(123, ["\nnote\n", "Input should be a valid string"], id="integer"),
    ],
)
async def test_update_crm_note_invalid_rejected(llm, crm, receiver, call_factory, http, tmp_path, note, expected):
    call = await call_factory(settings_for(llm, crm, receiver.url, tmp_path))

    result = await run_tool(call, llm, "update_crm_note", {"note": note})

    output = tool_output(result, is_error=True).output
    for fragment in expected:
        assert fragment in output
    assert event_names(receiver) == ["call.started"]
    assert call.record.notes == []
    assert await crm_notes(http, crm) == []


async def test_update_crm_note_integer_sent_raw(llm, crm, receiver, call_factory, tmp_path):
    call = await call_factory(settings_for(llm, crm, receiver.url, tmp_path))

    await run_tool(call, llm, "update_crm_note", {"note": 123})

    tool_calls = [message for message in llm.requests[-1]["messages"] if message.get("tool_calls")]
    assert tool_calls[-1]["tool_calls"][0]["function"]["arguments"] == '{"note": 123}'


async def test_update_crm_note_unicode_kept(llm, crm, raw_receiver, call_factory, http, tmp_path):
    # U+202E is a bidi override, which is dropped. U+200D and U+200C are joiners, which are kept.
    note = "Call back\x00 after 5\x07 pm \x1b[31m\u202e 😀 👩\u200d💻 🇮🇳 مرحبا بك שלום می\u200cخواهم"
    expected = "Call back after 5 pm [31m 😀 👩\u200d💻 🇮🇳 مرحبا بك שלום می\u200cخواهم"
    call = await call_factory(settings_for(llm, crm, raw_receiver.url, tmp_path))

    result = await run_tool(call, llm, "update_crm_note", {"note": note}, reply="Noted.")

    assert "saved on the CRM record" in tool_output(result, is_error=False).output
    assert await crm_notes(http, crm) == [expected]
    assert [saved.text for saved in call.record.notes] == [expected]

    body, headers = raw_receiver.bodies[-1], raw_receiver.headers[-1]
    payload = webhooks.verify(WEBHOOK_SECRET, headers, body)
    assert payload["event"] == "call.note"
    assert payload["note"] == expected
    assert expected.encode("utf-8") in body
    assert b"\\u" not in body


async def test_update_crm_note_double_encoded_unwrapped(llm, crm, receiver, call_factory, http, tmp_path):
    call = await call_factory(settings_for(llm, crm, receiver.url, tmp_path))

    result = await run_tool(call, llm, "update_crm_note", {"note": '{"note": "call me at 5"}'}, reply="Noted.")

    tool_output(result, is_error=False)
    assert await crm_notes(http, crm) == ["call me at 5"]
    assert [saved.text for saved in call.record.notes] == ["call me at 5"]
    note_event = received_events(receiver)[-1]["payload"]
    assert note_event["event"] == "call.note"
    assert note_event["note"] == "call me at 5"


# record_intent


@pytest.mark.parametrize(
    ("intent", "expected"),
    [
        pytest.param("", ["The intent argument is empty", "Ask the person"], id="empty"),
        pytest.param("y" * 500, ["The intent is too long", "maximum is 200", "Shorten it"], id="500-chars"),
    ],
)
async def test_record_intent_invalid_rejected(llm, crm, receiver, call_factory, tmp_path, intent, expected):
    call = await call_factory(settings_for(llm, crm, receiver.url, tmp_path))

    result = await run_tool(call, llm, "record_intent", {"intent": intent})

    output = tool_output(result, is_error=True).output
    for fragment in expected:
        assert fragment in output
    assert event_names(receiver) == ["call.started"]
    assert call.record.intents == []


# transfer_call


@pytest.mark.parametrize(
    ("destination", "team", "number"),
    [
        pytest.param("SALES ", "sales", SALES, id="sales"),
        pytest.param("Billing", "billing", BILLING, id="billing"),
        pytest.param("+1 415 555 0123", ALLOWED_NUMBER, ALLOWED_NUMBER, id="allowlisted-number"),
    ],
)
async def test_transfer_call_accepted_destination(
    llm, crm, receiver, call_factory, sip, livekit, tmp_path, destination, team, number
):
    stub, _ = sip
    settings = settings_for(llm, crm, receiver.url, tmp_path, TRANSFER_ALLOWLIST=ALLOWED_NUMBER)
    call = await call_factory(settings, calls=_transfers(livekit.sip("callee"), settings))

    # The extra keys try to steer the SIP request, but the tool has no such parameters.
    arguments = {
        "destination": destination,
        "participant_identity": "someone-else",
        "room_name": "room-other",
        "transfer_to": "sip:attacker@elsewhere.example",
    }
    result = await run_tool(call, llm, "transfer_call", arguments, reply="Transferring you now.")

    assert "transfer succeeded" in tool_output(result, is_error=False).output
    assert len(stub.transfers) == 1
    assert stub.transfers[0].transfer_to == f"sip:{number}@{SIP_DOMAIN}"
    assert stub.transfers[0].participant_identity == "callee"
    assert stub.transfers[0].room_name == "room-test"
    transferred = received_events(receiver)[-1]["payload"]
    assert transferred["event"] == "call.transferred"
    assert transferred["destination"] == team
    assert transferred["transfer_to"] == number
    assert call.record.transfer_to == team


@pytest.mark.parametrize(
    "destination",
    [
        pytest.param("+1 (555) 000-1111", id="unlisted-number"),
        pytest.param("sip:someone@elsewhere.example", id="sip-uri"),
        pytest.param("+1 900 555 0199", id="premium-rate"),
        pytest.param("support", id="unconfigured-team"),
    ],
)
async def test_transfer_call_rejected_destination(
    llm, crm, receiver, call_factory, sip, livekit, tmp_path, destination
):
    stub, _ = sip
    settings = settings_for(llm, crm, receiver.url, tmp_path, TRANSFER_ALLOWLIST=ALLOWED_NUMBER)
    call = await call_factory(settings, calls=_transfers(livekit.sip("callee"), settings))

    result = await run_tool(call, llm, "transfer_call", {"destination": destination})

    output = tool_output(result, is_error=True).output
    assert output.startswith("Cannot transfer to")
    assert "Transfers go only to these teams: billing, sales." in output
    assert "Ask the person which team they need." in output
    assert stub.transfers == []
    assert event_names(receiver) == ["call.started"]
    assert call.record.transfer_to is None
    assert call.record.failed_transfers == []


async def test_transfer_call_failed_status_reported(llm, crm, receiver, call_factory, sip, livekit, tmp_path):
    stub, _ = sip
    # In livekit-protocol 1.1.29 `reason` is the SIPTransferReason enum, not text.
    stub.transfer_response = api.TransferSIPParticipantResponse(status=api.STS_TRANSFER_FAILED, reason=api.STR_REJECTED)
    settings = settings_for(llm, crm, receiver.url, tmp_path)
    call = await call_factory(settings, calls=_transfers(livekit.sip("callee"), settings))

    result = await run_tool(call, llm, "transfer_call", {"destination": "sales"}, reply="Sorry, sales did not pick up.")

    output = tool_output(result, is_error=False).output
    assert "did not go through" in output
    assert "Tell the person" in output
    assert len(stub.transfers) == 1
    assert call.record.transfer_to is None
    assert call.record.failed_transfers == ["sales"]
    failed = received_events(receiver)[-1]["payload"]
    assert failed["event"] == "call.transfer_failed"
    assert failed["destination"] == "sales"
    assert isinstance(failed["reason"], str)
    assert "REJECTED" in failed["reason"].upper()


async def test_transfer_call_timeout_reported(llm, crm, receiver, call_factory, stalled_sip, livekit, tmp_path):
    settings = settings_for(llm, crm, receiver.url, tmp_path, TRANSFER_TIMEOUT="0.5")
    call = await call_factory(settings, calls=_transfers(livekit.sip("callee"), settings))

    # A guard only: without TRANSFER_TIMEOUT the turn would wait on the stalled stub forever.
    async with asyncio.timeout(30):
        result = await run_tool(call, llm, "transfer_call", {"destination": "billing"}, reply="Sorry, billing did not answer.")

    output = tool_output(result, is_error=False).output
    assert "did not go through" in output
    assert len(stalled_sip.transfers) == 1
    failed = received_events(receiver)[-1]["payload"]
    assert failed["event"] == "call.transfer_failed"
    assert failed["destination"] == "billing"
    assert "Timeout" in failed["reason"]
    assert call.record.transfer_to is None
    assert call.record.failed_transfers == ["billing"]
