"""Tests for crm_client against the dev CRM and purpose-built servers on 127.0.0.1.

NOTE: aioresponses 0.7.9 cannot build responses under aiohttp 3.14.5 (ClientResponse now
requires `stream_writer`), so canned responses come from a small loopback server instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import crm_client
import dev_server
from crm_client import Contact, CrmClient, CrmError
from tests.servers import serve

API_KEY = "test-crm-key-7d41"
PHONE = "+919800000001"
TIMEOUT = 5.0
SHORT_TIMEOUT = 0.2

# Base URL for tests that fail before any request is sent.
UNUSED_BASE_URL = "http://127.0.0.1:9/api"


class DevCrm:
    """The dev CRM served under an /api prefix, with every request it received."""

    def __init__(self, base_url: str, requests: list[dict[str, Any]]):
        self.base_url = base_url
        self.requests = requests


class CannedServer:
    """A loopback server whose search route sends the response that a test sets."""

    def __init__(self) -> None:
        self.base_url = ""
        self.redirect_hits = 0
        self._status = 200
        self._body = b'{"results": []}'
        self._content_type = "application/json"
        self._headers: dict[str, str] = {}

    def respond(
        self,
        *,
        status: int = 200,
        body: str | bytes = "",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self._status = status
        self._body = body.encode() if isinstance(body, str) else body
        self._content_type = content_type
        self._headers = headers or {}

    def respond_json(self, payload: object, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.respond(status=status, body=json.dumps(payload), headers=headers)

    async def handle_search(self, request: web.Request) -> web.Response:
        headers = {"Content-Type": self._content_type, **self._headers}
        return web.Response(status=self._status, body=self._body, headers=headers)

    async def handle_redirect_target(self, request: web.Request) -> web.Response:
        self.redirect_hits += 1
        return web.json_response({"results": [{"id": "redirected"}]})


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def dev_crm(tmp_path) -> AsyncIterator[DevCrm]:
    requests: list[dict[str, Any]] = []

    @web.middleware
    async def record(request: web.Request, handler):
        requests.append(
            {
                "path": request.path,
                "raw_path": request.raw_path,
                "query": dict(request.query),
                "authorization": request.headers.get("Authorization"),
            }
        )
        return await handler(request)

    root = web.Application(middlewares=[record])
    root.add_subapp("/api", dev_server.create_crm_app(db_path=str(tmp_path / "crm.sqlite3"), api_key=API_KEY))

    async with serve(root) as url:
        yield DevCrm(url + "/api", requests)


@pytest.fixture
async def canned() -> AsyncIterator[CannedServer]:
    server = CannedServer()
    app = web.Application()
    app.router.add_get("/api/contacts/search", server.handle_search)
    app.router.add_get("/elsewhere/contacts/search", server.handle_redirect_target)

    async with serve(app) as url:
        server.base_url = url + "/api"
        yield server


@pytest.fixture
async def stalled_url() -> AsyncIterator[str]:
    """A server that delays each response, or the rest of a body, until the test ends."""
    release = asyncio.Event()

    async def stalled(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"results": []})

    async def stalled_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"results": [')
        await release.wait()
        return response

    async def stalled_large_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 5_000_000
        await response.prepare(request)
        await response.write(b'{"results": [')
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/contacts/search", stalled)
    app.router.add_get("/large/contacts/search", stalled_large_body)
    app.router.add_post("/contacts/{contact_id}/notes", stalled)
    app.router.add_get("/slow-body/contacts/search", stalled_body)

    async with serve(app) as url:
        yield url
        release.set()


@pytest.fixture
async def large_body_url() -> AsyncIterator[str]:
    """A server that streams a 5 MB JSON body, chunked or with Content-Length."""
    filler = b'{"id": "x", "name": "' + b"a" * 65_000 + b'"},'
    count = 80

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"results": [')
        try:
            for _ in range(count):
                await response.write(filler)
        except ConnectionResetError:
            return response  # the client stopped reading, as it should
        await response.write(b'{"id": "last"}]}')
        return response

    async def sized(request: web.Request) -> web.Response:
        body = b'{"results": [' + filler * count + b'{"id": "last"}]}'
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/chunked/contacts/search", chunked)
    app.router.add_get("/sized/contacts/search", sized)

    async with serve(app) as url:
        yield url


@pytest.fixture
def closed_port() -> int:
    """A loopback port that was bound and closed, so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_client(session: aiohttp.ClientSession, base_url: str = UNUSED_BASE_URL, **options: Any) -> CrmClient:
    return CrmClient(base_url=base_url, api_key=API_KEY, session=session, **options)


async def fetch_contact(session: aiohttp.ClientSession, dev_crm: DevCrm, contact_id: str) -> dict[str, Any]:
    async with session.get(
        f"{dev_crm.base_url}/contacts/{contact_id}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
    ) as response:
        assert response.status == 200
        return await response.json()


async def search_canned(
    session: aiohttp.ClientSession, canned: CannedServer, body: object, **options: Any
) -> Contact | None:
    canned.respond_json(body)
    return await make_client(session, canned.base_url, **options).search("acme", timeout=TIMEOUT)


# --- Lookup against the dev CRM ---------------------------------------------------------------


async def test_find_by_phone_maps_full_contact(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    contact = await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert contact == Contact(
        id="ct_1001",
        name="Asha Rao",
        email="asha.rao@example.com",
        company="Acme Logistics",
        open_tickets=2,
    )


async def test_find_by_phone_keeps_base_path_prefix(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert dev_crm.requests[-1]["path"] == "/api/contacts/search"


async def test_find_by_phone_unknown_number_returns_none(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    contact = await client.find_by_phone("+919800009999", timeout=TIMEOUT)

    assert contact is None


async def test_find_by_phone_plus_sign_arrives_intact(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert dev_crm.requests[-1]["query"] == {"phone": PHONE}


async def test_search_special_characters_arrive_literally(session, dev_crm):
    client = make_client(session, dev_crm.base_url)
    query = "O'Brien \"Acme\" * 100% _x_ + & = #"

    contact = await client.search(query, timeout=TIMEOUT)

    assert dev_crm.requests[-1]["query"] == {"query": query}
    assert contact is None


async def test_search_matches_case_insensitive_substring(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    contact = await client.search("dana LEE", timeout=TIMEOUT)

    assert contact is not None
    assert contact.id == "ct_1003"


async def test_search_several_matches_returns_first(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    contact = await client.search("acme logistics", timeout=TIMEOUT)

    assert contact is not None
    assert contact.id == "ct_1001"


async def test_search_blank_query_sends_no_request(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    contact = await client.search("   ", timeout=TIMEOUT)

    assert contact is None
    assert dev_crm.requests == []


async def test_search_sends_bearer_header(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    await client.search("asha", timeout=TIMEOUT)

    assert dev_crm.requests[-1]["authorization"] == f"Bearer {API_KEY}"


async def test_search_wrong_api_key_is_unauthorized(session, dev_crm):
    client = CrmClient(base_url=dev_crm.base_url, api_key="wrong-key", session=session)

    with pytest.raises(CrmError) as caught:
        await client.search("asha", timeout=TIMEOUT)

    assert caught.value.reason == "unauthorized"
    assert caught.value.status == 401


# --- Writes against the dev CRM -----------------------------------------------------------------


async def test_add_note_lands_in_crm(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    await client.add_note("ct_1001", text="Asked about invoice 42.", call_id="call_1", timeout=TIMEOUT)

    contact = await fetch_contact(session, dev_crm, "ct_1001")
    assert len(contact["notes"]) == 1
    note = contact["notes"][0]
    assert note["text"] == "Asked about invoice 42."
    assert note["source"] == "ai-agent"
    assert note["call_id"] == "call_1"
    assert dev_crm.requests[0]["authorization"] == f"Bearer {API_KEY}"


async def test_log_call_lands_in_crm(session, dev_crm):
    client = make_client(session, dev_crm.base_url)
    activity = {
        "call_id": "call_2",
        "phone": PHONE,
        "outcome": "transferred",
        "duration_seconds": 83.5,
        "intent": "billing",
        "summary": "Caller disputed an invoice.",
        "transfer_to": "billing-desk",
    }

    await client.log_call("ct_1001", activity, timeout=TIMEOUT)

    contact = await fetch_contact(session, dev_crm, "ct_1001")
    assert len(contact["activities"]) == 1
    stored = contact["activities"][0]
    assert stored["type"] == "call"
    for key, value in activity.items():
        assert stored[key] == value, key
    assert dev_crm.requests[0]["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("operation", ["add_note", "log_call"])
async def test_write_unknown_contact_is_not_found(session, dev_crm, operation):
    client = make_client(session, dev_crm.base_url)

    with pytest.raises(CrmError) as caught:
        if operation == "add_note":
            await client.add_note("ct_9999", text="hello", call_id="call_3", timeout=TIMEOUT)
        else:
            await client.log_call("ct_9999", {"call_id": "call_3"}, timeout=TIMEOUT)

    assert caught.value.reason == "not_found"
    assert caught.value.status == 404


async def test_add_note_encodes_contact_id_segment(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    with pytest.raises(CrmError) as caught:
        await client.add_note("ct/1001?x=1 #", text="hello", call_id="call_4", timeout=TIMEOUT)

    assert caught.value.reason == "not_found"
    assert dev_crm.requests[-1]["raw_path"] == "/api/contacts/ct%2F1001%3Fx%3D1%20%23/notes"


async def test_add_note_dot_segment_stays_in_path(session, dev_crm):
    client = make_client(session, dev_crm.base_url)

    with pytest.raises(CrmError) as caught:
        await client.add_note("..", text="hello", call_id="call_5", timeout=TIMEOUT)

    assert caught.value.reason == "not_found"
    assert dev_crm.requests[-1]["raw_path"] == "/api/contacts/%2E%2E/notes"


# --- Canned responses from a loopback server ----------------------------------------------------


async def test_search_full_name_fallback(session, canned):
    contact = await search_canned(session, canned, {"results": [{"id": 7, "full_name": "  Asha Rao  "}]})

    assert contact == Contact(id="7", name="Asha Rao")


async def test_search_name_preferred_over_full_name(session, canned):
    body = {"results": [{"id": "a", "name": "Asha", "full_name": "Asha Rao"}]}

    contact = await search_canned(session, canned, body)

    assert contact is not None
    assert contact.name == "Asha"


async def test_search_canned_matches_returns_first(session, canned):
    body = {"results": [{"id": "first", "name": "A"}, {"id": "second", "name": "B"}]}

    contact = await search_canned(session, canned, body)

    assert contact is not None
    assert contact.id == "first"


async def test_search_empty_results_returns_none(session, canned):
    contact = await search_canned(session, canned, {"results": []})

    assert contact is None


async def test_search_non_text_fields_dropped(session, canned):
    body = {"results": [{"id": "a", "name": "Asha", "email": 42, "company": ["Acme"], "tier": "gold"}]}

    contact = await search_canned(session, canned, body)

    assert contact == Contact(id="a", name="Asha")


async def test_search_long_name_capped(session, canned):
    contact = await search_canned(session, canned, {"results": [{"id": "a", "name": "n" * 10_000}]})

    assert contact is not None
    assert contact.name == "n" * 500


async def test_search_field_cap_is_configurable(session, canned):
    body = {"results": [{"id": "a", "company": "Acme Logistics"}]}

    contact = await search_canned(session, canned, body, max_field_chars=4)

    assert contact is not None
    assert contact.company == "Acme"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3), (0, 0), ("4", 4), (" 5 ", 5), ("three", None), (-1, None), (True, None), (2.5, None), ("٣", None)],
)
async def test_search_open_tickets_parsing(session, canned, value, expected):
    contact = await search_canned(session, canned, {"results": [{"id": "a", "open_tickets": value}]})

    assert contact is not None
    assert contact.open_tickets == expected


@pytest.mark.parametrize(
    "body",
    [
        {"results": {"id": "a"}},
        {"results": None},
        {"contacts": []},
        [{"id": "a"}],
        {"results": ["a"]},
        {"results": [{"name": "no id"}]},
        {"results": [{"id": True}]},
        {"results": [{"id": None}]},
        {"results": [{"id": 1.5}]},
        {"results": [{"id": "   "}]},
        {"results": [{"id": "x" * 501}]},
    ],
    ids=[
        "results-dict",
        "results-null",
        "results-missing",
        "top-level-list",
        "first-not-dict",
        "missing-id",
        "bool-id",
        "null-id",
        "float-id",
        "blank-id",
        "overlong-id",
    ],
)
async def test_search_wrong_shape_rejected(session, canned, body):
    with pytest.raises(CrmError) as caught:
        await search_canned(session, canned, body)

    assert caught.value.reason == "invalid_response"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "http_error"),
        (401, "unauthorized"),
        (403, "unauthorized"),
        (404, "not_found"),
        (418, "http_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
async def test_search_error_status_maps_to_reason(session, canned, status, reason):
    canned.respond_json({"error": "details that stay out of the message"}, status=status)

    with pytest.raises(CrmError) as caught:
        await make_client(session, canned.base_url).search("acme", timeout=TIMEOUT)

    assert caught.value.reason == reason
    assert caught.value.status == status
    assert caught.value.retry_after is None
    assert "details" not in str(caught.value)


async def test_search_redirect_not_followed(session, canned):
    location = canned.base_url.removesuffix("/api") + "/elsewhere/contacts/search"
    canned.respond(status=302, headers={"Location": location})

    with pytest.raises(CrmError) as caught:
        await make_client(session, canned.base_url).search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "http_error"
    assert caught.value.status == 302
    assert canned.redirect_hits == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [("30", 30.0), ("1.5", 1.5), (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-4", None)],
)
async def test_search_rate_limited_parses_retry_after(session, canned, header, expected):
    headers = {"Retry-After": header} if header is not None else {}
    canned.respond_json({"error": "slow down"}, status=429, headers=headers)

    with pytest.raises(CrmError) as caught:
        await make_client(session, canned.base_url).search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "rate_limited"
    assert caught.value.status == 429
    assert caught.value.retry_after == expected


async def test_search_html_maintenance_page_rejected(session, canned):
    canned.respond(body="<html><body>Down for maintenance</body></html>", content_type="text/html")

    with pytest.raises(CrmError) as caught:
        await make_client(session, canned.base_url).search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "invalid_response"
    assert caught.value.status == 200


@pytest.mark.parametrize("content_type", ["text/html", "text/plain", "application/jsonp"])
async def test_search_other_content_type_rejected(session, canned, content_type):
    canned.respond(body='{"results": [{"id": "a"}]}', content_type=content_type)

    with pytest.raises(CrmError) as caught:
        await make_client(session, canned.base_url).search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "invalid_response"


async def test_search_invalid_json_rejected(session, canned):
    canned.respond(body='{"results": [', content_type="application/json")

    with pytest.raises(CrmError) as caught:
        await make_client(session, canned.base_url).search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "invalid_response"
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)


async def test_search_deeply_nested_json_rejected(session, canned):
    canned.respond(body="[" * 100_000 + "]" * 100_000, content_type="application/json")

    with pytest.raises(CrmError) as caught:
        await make_client(session, canned.base_url).search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "invalid_response"


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json"])
async def test_search_accepts_json_content_types(session, canned, content_type):
    canned.respond(body='{"results": [{"id": "a"}]}', content_type=content_type)

    contact = await make_client(session, canned.base_url).search("acme", timeout=TIMEOUT)

    assert contact == Contact(id="a")


async def test_search_body_over_cap_rejected(session, dev_crm):
    client = make_client(session, dev_crm.base_url, max_response_bytes=50)

    with pytest.raises(CrmError) as caught:
        await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert caught.value.reason == "invalid_response"


# --- Misbehaving servers ------------------------------------------------------------------------


async def test_search_past_budget_times_out(session, stalled_url):
    client = make_client(session, stalled_url)

    with pytest.raises(CrmError) as caught:
        await client.search("acme", timeout=SHORT_TIMEOUT)

    assert caught.value.reason == "timeout"
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, asyncio.TimeoutError)


async def test_search_stalled_body_times_out(session, stalled_url):
    client = make_client(session, stalled_url + "/slow-body")

    with pytest.raises(CrmError) as caught:
        await client.search("acme", timeout=SHORT_TIMEOUT)

    assert caught.value.reason == "timeout"


async def test_add_note_past_budget_times_out(session, stalled_url):
    client = make_client(session, stalled_url)

    with pytest.raises(CrmError) as caught:
        await client.add_note("ct_1001", text="hello", call_id="call_6", timeout=SHORT_TIMEOUT)

    assert caught.value.reason == "timeout"


async def test_search_connection_refused(session, closed_port):
    client = make_client(session, f"http://127.0.0.1:{closed_port}")

    with pytest.raises(CrmError) as caught:
        await client.search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "connection_failed"
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


@pytest.mark.parametrize("route", ["/chunked", "/sized"])
async def test_search_several_megabyte_body_rejected(session, large_body_url, route):
    client = make_client(session, large_body_url + route)

    with pytest.raises(CrmError) as caught:
        await client.search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "invalid_response"
    assert caught.value.status == 200


async def test_search_declared_length_over_cap(session, stalled_url):
    client = make_client(session, stalled_url + "/large")

    with pytest.raises(CrmError) as caught:
        await client.search("acme", timeout=TIMEOUT)

    assert caught.value.reason == "invalid_response"


async def test_search_body_under_larger_cap_is_read(session, large_body_url):
    client = make_client(session, large_body_url + "/chunked", max_response_bytes=8_000_000)

    contact = await client.search("acme", timeout=TIMEOUT)

    assert contact is not None
    assert contact.id == "x"


# --- Errors, arguments and logs -----------------------------------------------------------------


def test_crm_error_message_names_reason_and_status():
    err = CrmError("rate_limited", status=429, retry_after=30.0)

    assert str(err) == "CRM request failed with reason 'rate_limited' and HTTP status 429, retry after 30 seconds."
    assert err.reason == "rate_limited"
    assert err.status == 429
    assert err.retry_after == 30.0


def test_crm_error_unknown_reason_rejected():
    with pytest.raises(ValueError, match="unknown CrmError reason"):
        CrmError("teapot")


@pytest.mark.parametrize("base_url", ["127.0.0.1:8780", "ftp://127.0.0.1/", "/api"])
async def test_client_rejects_invalid_base_url(session, base_url):
    with pytest.raises(ValueError, match="absolute http"):
        CrmClient(base_url=base_url, api_key=API_KEY, session=session)


async def test_client_rejects_empty_api_key(session):
    with pytest.raises(ValueError, match="CRM_API_KEY"):
        CrmClient(base_url=UNUSED_BASE_URL, api_key="", session=session)


@pytest.mark.parametrize("timeout", [0, -1.0])
async def test_search_rejects_non_positive_timeout(session, timeout):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        await make_client(session).search("acme", timeout=timeout)


async def test_failure_logs_omit_phone_and_api_key(session, dev_crm, stalled_url, closed_port, caplog):
    caplog.set_level(logging.WARNING, logger=crm_client.logger.name)
    failures = [
        (make_client(session, stalled_url), SHORT_TIMEOUT, "timeout"),
        (make_client(session, f"http://127.0.0.1:{closed_port}"), TIMEOUT, "connection_failed"),
        (CrmClient(base_url=dev_crm.base_url, api_key=API_KEY + "x", session=session), TIMEOUT, "unauthorized"),
        (make_client(session, dev_crm.base_url, max_response_bytes=50), TIMEOUT, "invalid_response"),
    ]
    errors = []

    for client, timeout, _ in failures:
        with pytest.raises(CrmError) as caught:
            await client.find_by_phone(PHONE, timeout=timeout)
        errors.append(caught.value)
    with pytest.raises(CrmError) as caught:
        await make_client(session, dev_crm.base_url).add_note("ct_9999", text=PHONE, call_id="c", timeout=TIMEOUT)
    errors.append(caught.value)

    records = [record for record in caplog.records if record.name == crm_client.logger.name]
    assert [record.reason for record in records] == [reason for _, _, reason in failures] + ["not_found"]
    assert [record.crm_operation for record in records] == ["find_by_phone"] * 4 + ["add_note"]
    for record in records:
        assert record.levelno == logging.WARNING
        assert record.getMessage() == "CRM request failed"
        for value in record.__dict__.values():
            assert PHONE not in str(value)
            assert PHONE[3:] not in str(value)
            assert API_KEY not in str(value)
    for err in errors:
        assert PHONE[3:] not in str(err)
        assert API_KEY not in str(err)


async def test_failure_logs_include_status(session, dev_crm, caplog):
    caplog.set_level(logging.WARNING, logger=crm_client.logger.name)
    client = make_client(session, dev_crm.base_url)

    with pytest.raises(CrmError):
        await client.log_call("ct_9999", {"phone": PHONE}, timeout=TIMEOUT)

    records = [record for record in caplog.records if record.name == crm_client.logger.name]
    assert len(records) == 1
    assert records[0].status == 404
    assert records[0].crm_operation == "log_call"


def test_parse_search_response_is_pure():
    body = json.loads('{"results": [{"id": 12, "name": " Dana ", "open_tickets": "1"}]}')

    contact = crm_client.parse_search_response(body, max_field_chars=500)

    assert contact == Contact(id="12", name="Dana", open_tickets=1)
