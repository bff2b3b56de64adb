"""Tests for the dev stack: the sample CRM and the webhook receiver, served on 127.0.0.1."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import dev_server
import webhooks
from tests.servers import serve

API_KEY = "test-crm-key-3b9e"
SECRET = "test-webhook-secret"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TIMEOUT = aiohttp.ClientTimeout(total=5)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client_session:
        yield client_session


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "crm.sqlite3"


@pytest.fixture
async def crm_url(db_path) -> AsyncIterator[str]:
    async with serve(dev_server.create_crm_app(db_path=str(db_path), api_key=API_KEY)) as url:
        yield url


@pytest.fixture
async def receiver_url() -> AsyncIterator[str]:
    async with serve(dev_server.create_receiver_app(secret=SECRET)) as url:
        yield url


def signed_event(*, call_id: str = "call_8f1c", sequence: int = 2) -> tuple[bytes, dict[str, str]]:
    event = webhooks.build_event("call.intent", call_id=call_id, sequence=sequence, fields={"intent": "billing"})
    headers = webhooks.sign(SECRET.encode(), msg_id=event.id, timestamp=int(time.time()), body=event.body)
    return event.body, headers


async def post_webhook(
    session: aiohttp.ClientSession, receiver_url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with session.post(f"{receiver_url}/webhooks", data=body, headers=headers) as response:
        return response.status, await response.json()


async def kept_events(session: aiohttp.ClientSession, receiver_url: str) -> list[dict[str, Any]]:
    async with session.get(f"{receiver_url}/events") as response:
        assert response.status == 200
        return await response.json()


def count_contacts(db_path: Path) -> int:
    connection = sqlite3.connect(db_path)
    try:
        (count,) = connection.execute("SELECT COUNT(*) FROM contacts").fetchone()
    finally:
        connection.close()
    return count


# --- Webhook receiver ---------------------------------------------------------------------------


async def test_receiver_signed_event_accepted_and_kept(session, receiver_url, capsys):
    body, headers = signed_event()

    status, reply = await post_webhook(session, receiver_url, body, headers)

    assert status == 200
    assert reply == {"ok": True}
    events = await kept_events(session, receiver_url)
    assert len(events) == 1
    event = events[0]
    assert event["standard_valid"] is True
    assert event["legacy_valid"] is True
    assert event["error"] is None
    assert event["payload"]["call_id"] == "call_8f1c"
    assert event["payload"]["intent"] == "billing"
    assert capsys.readouterr().out == "call_8f1c seq=2 call.intent standard=valid legacy=valid\n"


async def test_receiver_keeps_only_signature_headers(session, receiver_url):
    body, headers = signed_event()

    await post_webhook(session, receiver_url, body, {**headers, "X-Other": "dropped"})

    events = await kept_events(session, receiver_url)
    assert set(events[0]["headers"]) == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "X-Webhook-Signature",
    }
    assert events[0]["headers"]["webhook-id"] == events[0]["payload"]["id"]


async def test_receiver_tampered_body_rejected_and_kept(session, receiver_url, capsys):
    body, headers = signed_event()
    tampered = body.replace(b"billing", b"refunds")

    status, reply = await post_webhook(session, receiver_url, tampered, headers)

    assert status == 401
    assert "X-Webhook-Signature" in reply["error"]
    events = await kept_events(session, receiver_url)
    assert len(events) == 1
    assert events[0]["standard_valid"] is False
    assert events[0]["legacy_valid"] is False
    assert events[0]["payload"]["intent"] == "refunds"
    assert capsys.readouterr().out == "call_8f1c seq=2 call.intent standard=invalid legacy=invalid\n"


async def test_receiver_wrong_secret_rejected(session, receiver_url):
    event = webhooks.build_event("call.started", call_id="call_1", sequence=1, fields={})
    headers = webhooks.sign(b"another-secret", msg_id=event.id, timestamp=int(time.time()), body=event.body)

    status, _ = await post_webhook(session, receiver_url, event.body, headers)

    assert status == 401
    events = await kept_events(session, receiver_url)
    assert events[0]["standard_valid"] is False
    assert events[0]["legacy_valid"] is False


async def test_receiver_missing_signatures_rejected(session, receiver_url):
    body, _ = signed_event()

    status, reply = await post_webhook(session, receiver_url, body, {"Content-Type": "application/json"})

    assert status == 401
    assert "missing" in reply["error"]
    events = await kept_events(session, receiver_url)
    assert events[0]["headers"] == {}


async def test_receiver_non_json_body_is_bad_request(session, receiver_url, capsys):
    body = b"not json"
    headers = webhooks.sign(SECRET.encode(), msg_id="evt_1", timestamp=int(time.time()), body=body)

    status, reply = await post_webhook(session, receiver_url, body, headers)

    assert status == 400
    assert "not valid JSON" in reply["error"]
    events = await kept_events(session, receiver_url)
    assert events[0]["payload"] is None
    assert events[0]["legacy_valid"] is True
    assert capsys.readouterr().out == "- seq=- - standard=invalid legacy=valid\n"


async def test_receiver_without_secret_marks_unchecked(session, capsys):
    body, _ = signed_event()

    async with serve(dev_server.create_receiver_app(secret=None)) as url:
        status, reply = await post_webhook(session, url, body, {"Content-Type": "application/json"})
        events = await kept_events(session, url)

    assert status == 200
    assert reply == {"ok": True}
    assert events[0]["standard_valid"] is None
    assert events[0]["legacy_valid"] is None
    assert capsys.readouterr().out.endswith("standard=unchecked legacy=unchecked\n")


def test_format_event_line_replaces_control_characters():
    event = {
        "payload": {"call_id": "call_\x1b[2J", "sequence": 3, "event": "call.note\n"},
        "standard_valid": True,
        "legacy_valid": False,
    }

    line = dev_server.format_event_line(event)

    assert line == "call_?[2J seq=3 call.note? standard=valid legacy=invalid"


# --- Sample CRM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
async def test_crm_rejects_missing_or_wrong_bearer(session, crm_url, headers):
    async with session.get(f"{crm_url}/contacts/search", params={"query": "asha"}, headers=headers) as response:
        status = response.status
        body = await response.json()

    assert status == 401
    assert "bearer token" in body["error"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_crm_rejection_logged_without_phone(session, crm_url, caplog):
    caplog.set_level(logging.WARNING, logger=dev_server.logger.name)
    params = {"phone": "+919800000001", "query": "asha"}

    async with session.get(f"{crm_url}/contacts/search", params=params, headers=AUTH) as response:
        assert response.status == 400

    records = [record for record in caplog.records if record.name == dev_server.logger.name]
    assert len(records) == 1
    assert records[0].status == 400
    assert records[0].path == "/contacts/search"
    for value in records[0].__dict__.values():
        assert "9800000001" not in str(value)


async def test_crm_accepts_correct_bearer(session, crm_url):
    async with session.get(f"{crm_url}/contacts/search", params={"query": "asha"}, headers=AUTH) as response:
        status = response.status
        body = await response.json()

    assert status == 200
    assert [contact["id"] for contact in body["results"]] == ["ct_1001"]


async def test_crm_without_api_key_needs_no_bearer(session, db_path):
    async with serve(dev_server.create_crm_app(db_path=str(db_path), api_key=None)) as url:
        async with session.get(f"{url}/contacts/search", params={"phone": "+14155550100"}) as response:
            status = response.status
            body = await response.json()

    assert status == 200
    assert body["results"][0]["name"] == "Dana Lee"


async def test_crm_search_phone_is_exact_match(session, crm_url):
    async with session.get(f"{crm_url}/contacts/search", params={"phone": "+91980000000"}, headers=AUTH) as response:
        body = await response.json()

    assert body == {"results": []}


async def test_crm_search_query_is_case_insensitive(session, crm_url):
    async with session.get(f"{crm_url}/contacts/search", params={"query": "ACME"}, headers=AUTH) as response:
        body = await response.json()

    assert [contact["id"] for contact in body["results"]] == ["ct_1001", "ct_1004"]


@pytest.mark.parametrize("params", [{}, {"phone": "+919800000001", "query": "asha"}, {"query": "  "}])
async def test_crm_search_invalid_parameters_rejected(session, crm_url, params):
    async with session.get(f"{crm_url}/contacts/search", params=params, headers=AUTH) as response:
        status = response.status
        body = await response.json()

    assert status == 400
    assert body["error"]


async def test_crm_note_invalid_json_rejected(session, crm_url):
    async with session.post(
        f"{crm_url}/contacts/ct_1001/notes", data=b"{text: oops", headers={**AUTH, "Content-Type": "application/json"}
    ) as response:
        status = response.status
        body = await response.json()

    assert status == 400
    assert "not valid JSON" in body["error"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["text"], "JSON object"),
        ({}, "'text' is missing"),
        ({"text": "   "}, "'text' is missing"),
        ({"text": "hi", "call_id": 5}, "'call_id' must be a string"),
        ({"text": "x" * 10_001}, "maximum is 10000"),
    ],
)
async def test_crm_note_invalid_fields_rejected(session, crm_url, payload, message):
    async with session.post(f"{crm_url}/contacts/ct_1001/notes", json=payload, headers=AUTH) as response:
        status = response.status
        body = await response.json()

    assert status == 400
    assert message in body["error"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"call_id": "c"}, "'type' is missing"),
        ({"type": "call", "duration_seconds": "12"}, "'duration_seconds'"),
        ({"type": "call", "duration_seconds": -1}, "'duration_seconds'"),
        ({"type": "call", "duration_seconds": True}, "'duration_seconds'"),
        ({"type": "call", "summary": ["a"]}, "'summary' must be a string"),
    ],
)
async def test_crm_activity_invalid_fields_rejected(session, crm_url, payload, message):
    async with session.post(f"{crm_url}/contacts/ct_1001/activities", json=payload, headers=AUTH) as response:
        status = response.status
        body = await response.json()

    assert status == 400
    assert message in body["error"]


async def test_crm_note_stored_and_returned(session, crm_url):
    payload = {"text": "Wants a callback.", "source": "ai-agent", "call_id": "call_9"}

    async with session.post(f"{crm_url}/contacts/ct_1002/notes", json=payload, headers=AUTH) as response:
        status = response.status
        row = await response.json()
    async with session.get(f"{crm_url}/contacts/ct_1002", headers=AUTH) as response:
        contact = await response.json()

    assert status == 201
    assert row["contact_id"] == "ct_1002"
    assert row["text"] == "Wants a callback."
    assert row["created_at"]
    assert contact["notes"] == [row]
    assert contact["activities"] == []


async def test_crm_activity_unknown_keys_ignored(session, crm_url):
    payload = {"type": "call", "outcome": "resolved", "sentiment": "calm"}

    async with session.post(f"{crm_url}/contacts/ct_1002/activities", json=payload, headers=AUTH) as response:
        status = response.status
        row = await response.json()

    assert status == 201
    assert row["outcome"] == "resolved"
    assert "sentiment" not in row


@pytest.mark.parametrize("path", ["/contacts/ct_9999/notes", "/contacts/ct_9999/activities"])
async def test_crm_write_unknown_contact_not_found(session, crm_url, path):
    async with session.post(f"{crm_url}{path}", json={"text": "hi", "type": "call"}, headers=AUTH) as response:
        status = response.status
        body = await response.json()

    assert status == 404
    assert "not found" in body["error"]


async def test_crm_get_unknown_contact_not_found(session, crm_url):
    async with session.get(f"{crm_url}/contacts/ct_9999", headers=AUTH) as response:
        status = response.status
        body = await response.json()

    assert status == 404
    assert body == {"error": "contact 'ct_9999' not found"}


async def test_crm_unknown_route_returns_json_error(session, crm_url):
    async with session.get(f"{crm_url}/deals", headers=AUTH) as response:
        status = response.status
        body = await response.json()

    assert status == 404
    assert body == {"error": "Not Found"}


async def test_crm_seeds_once_across_restarts(session, db_path):
    for _ in range(2):
        async with serve(dev_server.create_crm_app(db_path=str(db_path), api_key=None)):
            pass

    assert count_contacts(db_path) == len(dev_server.SAMPLE_CONTACTS)


async def test_crm_restart_keeps_stored_notes(session, db_path):
    async with serve(dev_server.create_crm_app(db_path=str(db_path), api_key=None)) as url:
        async with session.post(f"{url}/contacts/ct_1001/notes", json={"text": "first run"}) as response:
            assert response.status == 201

    async with serve(dev_server.create_crm_app(db_path=str(db_path), api_key=None)) as url:
        async with session.get(f"{url}/contacts/ct_1001") as response:
            contact = await response.json()

    assert [note["text"] for note in contact["notes"]] == ["first run"]


# --- Command line -------------------------------------------------------------------------------


def test_parse_args_defaults():
    args = dev_server.parse_args([])

    assert args.crm_port == 8780
    assert args.webhook_port == 8781
    assert args.db == Path(dev_server.__file__).resolve().parent / "data" / "dev_crm.sqlite3"


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_parse_args_invalid_port_rejected(port, capsys):
    with pytest.raises(SystemExit):
        dev_server.parse_args(["--crm-port", port])

    assert "invalid port" in capsys.readouterr().err
