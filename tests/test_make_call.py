"""Tests for make_call against a stand-in for LiveKit's agent dispatch API on 127.0.0.1.

`main()` runs its own event loop, so the tests that need the stub run it in a worker
thread while the stub serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from livekit import api

import make_call
import settings as settings_module
from settings import DISPATCH, load_settings
from tests.servers import serve

CREATE_DISPATCH_PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"
API_KEY = "test-livekit-key"
API_SECRET = "test-livekit-secret-with-enough-length"
PHONE = "+919800000001"
MASKED_PHONE = "+91******0001"

# Variables that change what make_call does. Each test starts without them, so a
# developer's shell cannot change the outcome.
ISOLATED_VARIABLES = (
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
    "LIVEKIT_TOKEN",
    "AGENT_NAME",
    "PHONE_DEFAULT_REGION",
)


@dataclass
class DispatchStub:
    """Stand-in for LiveKit's CreateDispatch endpoint that stores every request it receives."""

    error_status: int | None = None
    error_body: dict[str, str] = field(default_factory=dict)
    requests: list[api.CreateAgentDispatchRequest] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CREATE_DISPATCH_PATH, self._create)
        return app

    def fail_with(self, status: int, *, code: str, msg: str) -> None:
        self.error_status = status
        self.error_body = {"code": code, "msg": msg}

    def sent_metadata(self) -> dict[str, object]:
        assert len(self.requests) == 1, f"expected one dispatch request, got {len(self.requests)}"
        return json.loads(self.requests[0].metadata)

    async def _create(self, request: web.Request) -> web.Response:
        dispatch_request = api.CreateAgentDispatchRequest.FromString(await request.read())
        self.requests.append(dispatch_request)
        self.authorizations.append(request.headers.get("Authorization", ""))

        if self.error_status is not None:
            return web.json_response(self.error_body, status=self.error_status)

        dispatch = api.AgentDispatch(
            id="AD_test",
            agent_name=dispatch_request.agent_name,
            room=dispatch_request.room,
            metadata=dispatch_request.metadata,
        )
        return web.Response(body=dispatch.SerializeToString(), content_type="application/protobuf")


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


RunMain = Callable[..., Awaitable[CommandResult]]


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # load_dotenv_file() reads PROJECT_DIR/.env, and tmp_path has none, so a real .env cannot leak in.
    # delenv also restores these names after the test, including any value a .env wrote.
    monkeypatch.setattr(settings_module, "PROJECT_DIR", tmp_path)
    for name in ISOLATED_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def stub() -> AsyncIterator[tuple[DispatchStub, str]]:
    dispatch_stub = DispatchStub()
    async with serve(dispatch_stub.app()) as url:
        yield dispatch_stub, url


@pytest.fixture
def livekit_env(monkeypatch: pytest.MonkeyPatch, stub: tuple[DispatchStub, str]) -> DispatchStub:
    """Point the LIVEKIT_* variables at the stub and return it."""
    dispatch_stub, url = stub
    monkeypatch.setenv("LIVEKIT_URL", url)
    monkeypatch.setenv("LIVEKIT_API_KEY", API_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", API_SECRET)
    return dispatch_stub


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]) -> RunMain:
    async def run(*argv: str) -> CommandResult:
        exit_code = await asyncio.to_thread(make_call.main, list(argv))
        captured = capsys.readouterr()
        return CommandResult(exit_code=exit_code, stdout=captured.out, stderr=captured.err)

    return run


@pytest.mark.parametrize("raw", ["09800000001", "919800000001", "+91 98000-00001", "0919800000001"])
async def test_main_normalises_phone_forms(livekit_env, run_main, raw):
    result = await run_main("--to", raw)

    assert result.exit_code == 0, result.stderr
    assert livekit_env.sent_metadata() == {"phone_number": PHONE}


@pytest.mark.parametrize("raw", ["12345", "call-me-maybe", "", "   "])
async def test_main_invalid_number_exits_2(livekit_env, run_main, raw):
    result = await run_main("--to", raw)

    assert result.exit_code == 2
    assert "--to is invalid" in result.stderr
    assert livekit_env.requests == []


async def test_main_invalid_number_uses_default_region(livekit_env, run_main, monkeypatch):
    monkeypatch.setenv("PHONE_DEFAULT_REGION", "US")

    result = await run_main("--to", "09800000001")

    assert result.exit_code == 2
    assert "region US" in result.stderr
    assert livekit_env.requests == []


async def test_main_missing_api_key_exits_2(livekit_env, run_main, monkeypatch):
    monkeypatch.delenv("LIVEKIT_API_KEY")

    result = await run_main("--to", PHONE)

    assert result.exit_code == 2
    assert "LIVEKIT_API_KEY is missing" in result.stderr
    assert "LIVEKIT_API_SECRET" not in result.stderr
    assert livekit_env.requests == []


async def test_main_reads_dotenv_from_project_folder(stub, run_main, tmp_path):
    dispatch_stub, url = stub
    dotenv = f"LIVEKIT_URL={url}\nLIVEKIT_API_KEY={API_KEY}\nLIVEKIT_API_SECRET={API_SECRET}\nAGENT_NAME=dotenv-caller\n"
    (tmp_path / ".env").write_text(dotenv)

    result = await run_main("--to", PHONE)

    assert result.exit_code == 0, result.stderr
    assert dispatch_stub.requests[0].agent_name == "dotenv-caller"


async def test_main_merges_metadata(livekit_env, run_main):
    result = await run_main("--to", PHONE, "--metadata", '{"campaign": "renewal", "attempt": 2}')

    assert result.exit_code == 0, result.stderr
    assert livekit_env.sent_metadata() == {"phone_number": PHONE, "campaign": "renewal", "attempt": 2}


async def test_main_metadata_phone_number_exits_2(livekit_env, run_main):
    result = await run_main("--to", PHONE, "--metadata", '{"phone_number": "+919800000002"}')

    assert result.exit_code == 2
    assert "--metadata must not contain phone_number" in result.stderr
    assert livekit_env.requests == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("not json", "--metadata is not valid JSON"),
        ("[1, 2]", "--metadata must be a JSON object"),
        ('"text"', "--metadata must be a JSON object"),
    ],
)
async def test_main_metadata_not_object_exits_2(livekit_env, run_main, raw, expected):
    result = await run_main("--to", PHONE, "--metadata", raw)

    assert result.exit_code == 2
    assert expected in result.stderr
    assert livekit_env.requests == []


async def test_main_blank_room_exits_2(livekit_env, run_main):
    result = await run_main("--to", PHONE, "--room", "  ")

    assert result.exit_code == 2
    assert "--room is empty" in result.stderr
    assert livekit_env.requests == []


@pytest.mark.parametrize(
    ("status", "code", "msg"),
    [
        (401, "unauthenticated", "invalid API key"),
        (404, "not_found", "agent dispatch is not available"),
    ],
)
async def test_main_server_error_exits_1(livekit_env, run_main, status, code, msg):
    livekit_env.fail_with(status, code=code, msg=msg)

    result = await run_main("--to", PHONE)

    assert result.exit_code == 1
    assert f"returned HTTP {status} ({code}): {msg}" in result.stderr
    assert result.stdout == ""


async def test_main_prints_dispatch_and_masked_number(livekit_env, run_main):
    result = await run_main("--to", "09800000001", "--room", "call-fixed")

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "dispatch_id: AD_test" in lines
    assert "room: call-fixed" in lines
    assert f"phone: {MASKED_PHONE}" in lines
    assert "9800000001" not in result.stdout
    assert "9800000001" not in result.stderr


async def test_main_default_room_is_generated(livekit_env, run_main):
    result = await run_main("--to", PHONE)

    assert result.exit_code == 0, result.stderr
    room = livekit_env.requests[0].room
    assert re.fullmatch(r"call-[0-9a-f]{12}", room)
    assert f"room: {room}" in result.stdout.splitlines()


async def test_main_agent_name_from_settings(livekit_env, run_main, monkeypatch):
    monkeypatch.setenv("AGENT_NAME", "renewals-caller")

    result = await run_main("--to", PHONE)

    assert result.exit_code == 0, result.stderr
    assert livekit_env.requests[0].agent_name == "renewals-caller"


async def test_dispatch_call_sends_signed_request(livekit_env):
    settings = load_settings(mode=DISPATCH)

    dispatch = await make_call.dispatch_call(
        settings=settings,
        phone=PHONE,
        room="call-direct",
        metadata={"campaign": "renewal"},
    )

    assert dispatch.id == "AD_test"
    assert dispatch.room == "call-direct"
    sent = livekit_env.requests[0]
    assert sent.agent_name == "outbound-caller"
    assert sent.room == "call-direct"
    assert json.loads(sent.metadata) == {"phone_number": PHONE, "campaign": "renewal"}

    token = livekit_env.authorizations[0].removeprefix("Bearer ")
    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)
    assert claims.video.room_admin is True
    assert claims.video.room == "call-direct"


async def test_dispatch_call_rejects_phone_number_metadata(livekit_env):
    settings = load_settings(mode=DISPATCH)

    with pytest.raises(ValueError, match="must not contain 'phone_number'"):
        await make_call.dispatch_call(
            settings=settings,
            phone=PHONE,
            room="call-direct",
            metadata={"phone_number": "+919800000002"},
        )

    assert livekit_env.requests == []


def test_describe_dispatch_error_timeout():
    message = make_call.describe_dispatch_error(asyncio.TimeoutError(), url="http://127.0.0.1:7880")

    assert "did not answer within 10 seconds" in message
    assert "Check LIVEKIT_URL" in message


def test_main_connection_error_exits_1(mock_http, monkeypatch, capsys):
    # mock_http sends http://127.0.0.1 to real servers, so the canned error uses the name
    # localhost instead. A mock that failed to apply would still send nothing off this machine.
    livekit_url = "http://localhost:9"
    mock_http.post(
        f"{livekit_url}{CREATE_DISPATCH_PATH}",
        exception=aiohttp.ClientConnectionError("Connection reset by peer"),
    )
    monkeypatch.setenv("LIVEKIT_URL", livekit_url)
    monkeypatch.setenv("LIVEKIT_API_KEY", API_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", API_SECRET)

    exit_code = make_call.main(["--to", PHONE])

    captured = capsys.readouterr()
    assert exit_code == 1
    assert f"could not reach the LiveKit API at {livekit_url}" in captured.err
    assert "ClientConnectionError: Connection reset by peer" in captured.err
    assert [method for method, _ in mock_http.requests] == ["POST"]
    assert captured.out == ""
