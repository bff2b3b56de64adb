"""CrmClient edge cases served as canned responses by aioresponses (the `mock_http` fixture).

mock_http sends http://127.0.0.1 URLs to real servers, so the canned CRM uses the name
localhost instead. A mock that failed to apply would still send nothing off this machine,
and each test checks that the mock received the request.
"""

from __future__ import annotations

import re

import aiohttp
import pytest

from crm_client import CrmClient, CrmError
from tests.conftest import CRM_API_KEY

CANNED_BASE_URL = "http://localhost:9/api"
SEARCH_URL = re.compile(r"^http://localhost:9/api/contacts/search\?")
PHONE = "+919800000001"
TIMEOUT = 5.0


@pytest.fixture
def client(http: aiohttp.ClientSession) -> CrmClient:
    return CrmClient(base_url=CANNED_BASE_URL, api_key=CRM_API_KEY, session=http)


def searched_paths(mock_http) -> list[str]:
    return [url.path for method, url in mock_http.requests if method == "GET"]


async def test_find_by_phone_429_is_rate_limited(client, mock_http):
    mock_http.get(SEARCH_URL, status=429, payload={"error": "slow down"}, headers={"Retry-After": "7"})

    with pytest.raises(CrmError) as excinfo:
        await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert excinfo.value.reason == "rate_limited"
    assert excinfo.value.status == 429
    assert excinfo.value.retry_after == 7
    assert searched_paths(mock_http) == ["/api/contacts/search"]


async def test_find_by_phone_disconnect_is_connection_failed(client, mock_http):
    mock_http.get(SEARCH_URL, exception=aiohttp.ServerDisconnectedError())

    with pytest.raises(CrmError) as excinfo:
        await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert excinfo.value.reason == "connection_failed"
    assert excinfo.value.status is None
    assert isinstance(excinfo.value.__cause__, aiohttp.ServerDisconnectedError)
    assert searched_paths(mock_http) == ["/api/contacts/search"]


async def test_find_by_phone_results_string_invalid(client, mock_http):
    mock_http.get(
        SEARCH_URL,
        status=200,
        body='{"results": "x"}',
        content_type="application/json; charset=utf-8",
    )

    with pytest.raises(CrmError) as excinfo:
        await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert excinfo.value.reason == "invalid_response"
    assert searched_paths(mock_http) == ["/api/contacts/search"]


async def test_find_by_phone_html_503_is_server_error(client, mock_http):
    html = "<html><body><h1>503 Service Unavailable</h1></body></html>"
    mock_http.get(SEARCH_URL, status=503, body=html, content_type="text/html")

    with pytest.raises(CrmError) as excinfo:
        await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert excinfo.value.reason == "server_error"
    assert excinfo.value.status == 503
    assert "Service Unavailable" not in str(excinfo.value)
    assert searched_paths(mock_http) == ["/api/contacts/search"]


async def test_find_by_phone_boolean_open_tickets_is_none(client, mock_http):
    contact = {"id": "ct_2001", "name": "Ravi Kumar", "open_tickets": True}
    mock_http.get(SEARCH_URL, status=200, payload={"results": [contact]})

    found = await client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert found is not None
    assert found.id == "ct_2001"
    assert found.name == "Ravi Kumar"
    assert found.open_tickets is None


async def test_mock_http_passes_loopback_through(crm, http, mock_http):
    # The dev CRM on 127.0.0.1 starts with contact ct_1001 (Asha Rao) under this number.
    real_client = CrmClient(base_url=crm.url, api_key=CRM_API_KEY, session=http)

    found = await real_client.find_by_phone(PHONE, timeout=TIMEOUT)

    assert found is not None
    assert found.id == "ct_1001"
    assert mock_http.requests == {}
