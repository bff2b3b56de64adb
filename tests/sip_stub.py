"""A stand-in for the LiveKit server's SIP API (Twirp over HTTP) on 127.0.0.1.

`livekit-api` posts protobuf requests to `/twirp/livekit.SIP/<Method>`; a 200
answer is a protobuf body and an error is Twirp JSON whose `meta` carries the
SIP status, which the client raises as `api.SipCallError`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from livekit import api


@dataclass
class SipError:
    sip_status_code: int | None = None
    sip_status: str = ""
    transfer_reason: str = ""
    http_status: int = 400
    code: str = "failed_precondition"

    def response(self) -> web.Response:
        meta = {}
        if self.sip_status_code is not None:
            meta["sip_status_code"] = str(self.sip_status_code)
            meta["sip_status"] = self.sip_status
        if self.transfer_reason:
            meta["sip_transfer_reason"] = self.transfer_reason
        body = {"code": self.code, "msg": self.sip_status or self.code, "meta": meta}
        return web.json_response(body, status=self.http_status)


@dataclass
class SipStub:
    """Scripted answers and a log of what was requested."""

    dial_error: SipError | None = None
    transfer_error: SipError | None = None
    transfer_response: api.TransferSIPParticipantResponse = field(
        default_factory=lambda: api.TransferSIPParticipantResponse(status=api.STS_TRANSFER_SUCCESSFUL)
    )
    # Set to make TransferSIPParticipant or CreateSIPParticipant wait until the test releases it.
    transfer_gate: asyncio.Event | None = None
    dial_gate: asyncio.Event | None = None
    dials: list[api.CreateSIPParticipantRequest] = field(default_factory=list)
    transfers: list[api.TransferSIPParticipantRequest] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twirp/livekit.SIP/CreateSIPParticipant", self._create)
        app.router.add_post("/twirp/livekit.SIP/TransferSIPParticipant", self._transfer)
        return app

    async def _create(self, request: web.Request) -> web.Response:
        dial = api.CreateSIPParticipantRequest.FromString(await request.read())
        self.dials.append(dial)
        if self.dial_gate is not None:
            await self.dial_gate.wait()
        if self.dial_error is not None:
            return self.dial_error.response()

        info = api.SIPParticipantInfo(
            participant_id="PA_callee",
            participant_identity=dial.participant_identity,
            room_name=dial.room_name,
            sip_call_id="SCL_test",
        )
        return web.Response(body=info.SerializeToString(), content_type="application/protobuf")

    async def _transfer(self, request: web.Request) -> web.Response:
        transfer = api.TransferSIPParticipantRequest.FromString(await request.read())
        self.transfers.append(transfer)
        if self.transfer_gate is not None:
            await self.transfer_gate.wait()
        if self.transfer_error is not None:
            return self.transfer_error.response()
        return web.Response(body=self.transfer_response.SerializeToString(), content_type="application/protobuf")
