"""Dialing and transferring calls through LiveKit SIP, with results checked.

LiveKit reports a failed dial or transfer as `api.SipCallError` carrying the
SIP status, a transport failure as the aiohttp or timeout error itself, and a
transfer may also come back with a non-successful status and no error at all.
This module turns each of these into a plain result the call flow can record.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import aiohttp
from livekit import api

from call_record import BUSY, FAILED, NO_ANSWER, REJECTED

logger = logging.getLogger(__name__)

# SIP final responses that mean the callee was reached but did not talk
# (RFC 3261 section 21, RFC 8197, RFC 8688). 486 Busy Here and 600 Busy
# Everywhere are busy. 408 Request Timeout, 480 Temporarily Unavailable and
# 487 Request Terminated (ringing cancelled) mean the call was not picked up.
# 603 Decline, 607 Unwanted and 608 Rejected mean the callee or their network
# turned the call down. Every other code, and no code at all, is a failure.
_SIP_OUTCOMES = {
    486: BUSY,
    600: BUSY,
    408: NO_ANSWER,
    480: NO_ANSWER,
    487: NO_ANSWER,
    603: REJECTED,
    607: REJECTED,
    608: REJECTED,
}


def dial_outcome(sip_status_code: int | None) -> str:
    """Map the SIP status code of a failed dial to a call.ended outcome."""
    if sip_status_code is None:
        return FAILED
    return _SIP_OUTCOMES.get(sip_status_code, FAILED)


class DialFailure(Exception):
    """The callee was not reached or did not answer."""

    def __init__(self, sip_status_code: int | None, reason: str) -> None:
        super().__init__(f"dial failed: {reason} (SIP {sip_status_code})")
        self.sip_status_code = sip_status_code
        self.reason = reason

    @property
    def outcome(self) -> str:
        return dial_outcome(self.sip_status_code)


@dataclass(frozen=True)
class TransferResult:
    ok: bool
    sip_status_code: int | None = None
    reason: str | None = None


class CallControl(Protocol):
    """Phone-system operation the tools use: a transfer of the caller."""

    async def transfer(self, *, transfer_to: str) -> TransferResult: ...


def transfer_uri(number: str, sip_domain: str | None) -> str:
    """Address of a transfer target: sip:<E.164>@<domain>, or tel:<E.164> without a domain."""
    if sip_domain:
        return f"sip:{number}@{sip_domain}"
    return f"tel:{number}"


class LiveKitSip:
    """Outbound dialing and cold transfer for one room."""

    def __init__(self, lkapi: api.LiveKitAPI, *, room_name: str, participant_identity: str) -> None:
        self._api = lkapi
        self._room_name = room_name
        self.participant_identity = participant_identity

    async def dial(
        self,
        *,
        trunk_id: str,
        phone: str,
        ringing_timeout: float,
        max_call_duration: float,
        attributes: dict[str, str] | None = None,
    ) -> None:
        """Call `phone` and return once it is answered; raise DialFailure otherwise."""
        request = api.CreateSIPParticipantRequest(
            room_name=self._room_name,
            sip_trunk_id=trunk_id,
            sip_call_to=phone,
            participant_identity=self.participant_identity,
            participant_name="Callee",
            participant_attributes=attributes or {},
            wait_until_answered=True,
            ringing_timeout=timedelta(seconds=ringing_timeout),
            max_call_duration=timedelta(seconds=max_call_duration),
        )
        try:
            await self._api.sip.create_sip_participant(request)
        except api.SipCallError as err:
            raise DialFailure(err.sip_status_code, err.sip_status or err.message or "sip error") from err
        except api.ServerError as err:
            raise DialFailure(None, f"livekit error {err.code}") from err
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise DialFailure(None, f"livekit unreachable: {type(err).__name__}") from err

    async def transfer(self, *, transfer_to: str, timeout: float = 40.0) -> TransferResult:
        """Cold-transfer the room's SIP participant; reporting success only when LiveKit reports it."""
        request = api.TransferSIPParticipantRequest(
            room_name=self._room_name,
            participant_identity=self.participant_identity,
            transfer_to=transfer_to,
            play_dialtone=False,
        )
        try:
            async with asyncio.timeout(timeout):
                response = await self._api.sip.transfer_sip_participant(request, timeout=timeout)
        except api.SipCallError as err:
            reason = err.sip_transfer_reason or err.sip_status or err.message or "sip error"
            return TransferResult(ok=False, sip_status_code=err.sip_status_code, reason=reason)
        except api.ServerError as err:
            return TransferResult(ok=False, reason=f"livekit error {err.code}")
        except (aiohttp.ClientError, TimeoutError) as err:
            return TransferResult(ok=False, reason=f"transfer did not complete: {type(err).__name__}")

        return _transfer_result(response)


def _transfer_result(response: api.TransferSIPParticipantResponse) -> TransferResult:
    sip_status_code = response.sip_status.code if response.HasField("sip_status") else None
    if response.status == api.STS_TRANSFER_SUCCESSFUL:
        return TransferResult(ok=True, sip_status_code=sip_status_code)

    # NOTE: a response with no status, id or reason is read as success, on the
    # assumption that servers predating the status field answer that way and
    # report failures only by raising. Not checked against such a server.
    if response.status == api.STS_TRANSFER_ONGOING and not response.transfer_id and not response.reason:
        return TransferResult(ok=True, sip_status_code=sip_status_code)

    # `reason` is a SIPTransferReason enum value; report its name, like STR_REJECTED.
    reason_field = response.DESCRIPTOR.fields_by_name["reason"].enum_type
    reason = reason_field.values_by_number[response.reason].name if response.reason else None
    status_name = api.SIPTransferStatus.Name(response.status)
    return TransferResult(ok=False, sip_status_code=sip_status_code, reason=reason or status_name)
