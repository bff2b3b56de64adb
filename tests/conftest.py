"""Shared fixtures: the dev CRM, the dev webhook receiver and a scripted LLM on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import dev_llm  # noqa: E402
import dev_server  # noqa: E402
from tests.aioresponses_compat import CompatClientResponse  # noqa: E402
from tests.event_schemas import schema_errors  # noqa: E402
from tests.servers import serve  # noqa: E402
from tests.sip_stub import SipStub  # noqa: E402

WEBHOOK_SECRET = "test-webhook-secret"
CRM_API_KEY = "test-crm-key"


@dataclass
class Server:
    url: str
    app: web.Application


@dataclass
class LlmServer(Server):
    script: dev_llm.ScriptedReplies = field(default_factory=dev_llm.ScriptedReplies)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def requests(self) -> list[dict]:
        return self.app[dev_llm.REQUESTS]


@pytest.fixture
async def crm(tmp_path) -> AsyncIterator[Server]:
    app = dev_server.create_crm_app(db_path=str(tmp_path / "crm.sqlite3"), api_key=CRM_API_KEY)
    async with serve(app) as url:
        yield Server(url=url, app=app)


@pytest.fixture
async def receiver() -> AsyncIterator[Server]:
    app = dev_server.create_receiver_app(secret=WEBHOOK_SECRET)
    async with serve(app) as url:
        yield Server(url=f"{url}/webhooks", app=app)

    # Every event the product sent in any test must match its published schema.
    for kept in app[dev_server.EVENTS]:
        payload = kept["payload"]
        errors = schema_errors(payload)
        assert not errors, f"{payload.get('event')} does not match its schema: {errors}"


@pytest.fixture
async def llm() -> AsyncIterator[LlmServer]:
    script = dev_llm.ScriptedReplies()
    app = dev_llm.create_llm_app(script)
    async with serve(app) as url:
        yield LlmServer(url=url, app=app, script=script)


@pytest.fixture
async def sip() -> AsyncIterator[tuple[SipStub, str]]:
    stub = SipStub()
    async with serve(stub.app()) as url:
        yield stub, url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def received_events(receiver: Server) -> list[dict]:
    return receiver.app[dev_server.EVENTS]


@pytest.fixture
def mock_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    """Canned responses for every aiohttp request, except that http://127.0.0.1 URLs reach real servers.

    A request that matches no canned response raises aiohttp.ClientConnectionError.
    """
    monkeypatch.setattr("aioresponses.core.ClientResponse", CompatClientResponse)
    with aioresponses(passthrough=["http://127.0.0.1"]) as mocked:
        yield mocked
