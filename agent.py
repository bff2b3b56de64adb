"""CRM-aware phone agent: a LiveKit Agents worker for calls over a Vobiz SIP trunk.

Run `python agent.py dev` to register with a LiveKit server, `python agent.py start`
in production, or `python agent.py console --text` to talk to the agent in the
terminal with only an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import sys
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import AMD, Agent, AgentServer, AgentSession, JobContext, JobProcess, cli, room_io
from livekit.agents.voice.events import CloseEvent
from livekit.plugins import deepgram, openai, silero

import log_redaction
from call_lifecycle import (
    CallRuntime,
    DispatchError,
    build_services,
    failed_record,
    open_outbox_queue,
    parse_dispatch_metadata,
)
from call_record import INBOUND, CallRecord
from phone import InvalidPhoneNumber, normalize_e164
from prompt import build_instructions, greeting_instructions
from settings import CONSOLE, WORKER, ConfigError, Settings, load_dotenv_file, load_settings
from telephony import DialFailure, LiveKitSip, TransferResult
from tools import CallServices, CallTools

logger = logging.getLogger("agent")

SIP_PHONE_ATTRIBUTE = "sip.phoneNumber"
# How long a job with no dispatch metadata waits for an inbound caller to appear.
INBOUND_WAIT_SECONDS = 20.0
# Longest wait for VOICEMAIL_MESSAGE to finish playing before hanging up.
VOICEMAIL_PLAYOUT_SECONDS = 30.0

# Longest a job may take to exit once asked to stop. The end of a call waits at
# most WEBHOOK_DRAIN_TIMEOUT (8 s or less) for its events and CRM writes, which
# leaves room for closing the session. The framework kills the process after this.
SHUTDOWN_PROCESS_TIMEOUT = 15.0

# Calls running in this process, by job id, so that `on_session_end` finds the
# call whatever state the entrypoint reached. Popping the entry makes the end
# report happen once.
_calls: dict[str, CallRuntime] = {}


class CallAgent(CallTools, Agent):
    """The phone agent: instructions built from the CRM record, plus the four CRM tools."""

    def __init__(self, *, record: CallRecord, services: CallServices) -> None:
        super().__init__(instructions=build_instructions(record))
        self.services = services


def prewarm(proc: JobProcess) -> None:
    """Load the VAD once per process, before a job arrives."""
    proc.userdata["vad"] = silero.VAD.load()


def build_session(settings: Settings, record: CallRecord, *, console: bool, vad: Any) -> AgentSession[CallRecord]:
    """Build the voice pipeline. The console runs text only, so it needs no Deepgram key or VAD."""
    model = openai.LLM(model=settings.openai_model, base_url=settings.openai_base_url, api_key=settings.openai_api_key)
    if console:
        # Typed turns end when the line is sent, so there is no speech to detect turns in.
        return AgentSession[CallRecord](llm=model, userdata=record, vad=None, turn_handling={"turn_detection": "manual"})

    return AgentSession[CallRecord](
        llm=model,
        stt=deepgram.STT(api_key=settings.deepgram_api_key),
        tts=openai.TTS(voice=settings.openai_tts_voice, api_key=settings.openai_api_key, base_url=settings.openai_base_url),
        vad=vad,
        userdata=record,
    )


async def entrypoint(ctx: JobContext) -> None:
    """Run one call: find the callee, look them up, start the agent, dial, and wait for the end."""
    console = ctx.is_fake_job() and not ctx.job.metadata
    settings = load_settings(mode=CONSOLE if console else WORKER)
    log_redaction.install(settings.secrets)

    record = await _call_record(ctx, settings, console=console)
    if record is None:
        return

    runtime = await _open_runtime(ctx, settings, record)
    services = runtime.services
    await runtime.lookup_contact()

    # A fake job (the console, or a test) has no audio, so it runs text only.
    session = build_session(settings, record, console=ctx.is_fake_job(), vad=ctx.proc.userdata.get("vad"))
    # Model clients hold their own connection pools, which the session does not close.
    runtime.own(session.llm, session.stt, session.tts)
    session.on("close", lambda event: _on_session_close(runtime, event))
    runtime.session = session
    agent = CallAgent(record=record, services=services)

    if console:
        await _start_session(ctx, session, agent, record)
        await _answer(runtime, session)
        return

    sip = LiveKitSip(ctx.api, room_name=ctx.room.name, participant_identity=record.participant_identity)
    services.calls = _Transfers(sip, settings)

    # Start the session before dialing so that it listens from the first moment
    # of the call. It stays silent until the dial returns answered.
    await _start_session(ctx, session, agent, record)
    _watch_callee(ctx, runtime)
    if record.direction == INBOUND:
        await _answer(runtime, session)
        return
    await _dial(ctx, runtime, sip, session)


async def _call_record(ctx: JobContext, settings: Settings, *, console: bool) -> CallRecord | None:
    """Work out whom this job calls; a bad dispatch is recorded as a failed call."""
    room = ctx.room.name
    if console:
        return CallRecord(phone=settings.console_phone_number, room=room, job_id=ctx.job.id)

    if not ctx.job.metadata and not ctx.is_fake_job():
        return await _inbound_record(ctx, settings)

    try:
        target = parse_dispatch_metadata(ctx.job.metadata, default_region=settings.default_region)
    except DispatchError as err:
        logger.error("invalid dispatch metadata, not dialing", extra={"room": room, "error": str(err)})
        await _report_failed_dispatch(ctx, settings, reason=str(err))
        return None

    return CallRecord(
        phone=target.phone,
        room=room,
        trunk_id=settings.outbound_trunk_id,
        job_id=ctx.job.id,
        metadata=target.metadata,
    )


async def _inbound_record(ctx: JobContext, settings: Settings) -> CallRecord | None:
    """Read the caller of an inbound call, or end the job if no SIP participant joins in time."""
    try:
        async with asyncio.timeout(INBOUND_WAIT_SECONDS):
            participant = await ctx.wait_for_participant(kind=rtc.ParticipantKind.PARTICIPANT_KIND_SIP)
    except TimeoutError:
        reason = (
            "dispatch metadata is empty and no SIP participant joined within "
            f"{INBOUND_WAIT_SECONDS:g} s; dispatch with {{\"phone_number\": \"+91...\"}} to place a call"
        )
        logger.error("no phone number to call and no inbound caller", extra={"room": ctx.room.name})
        await _report_failed_dispatch(ctx, settings, reason=reason)
        return None

    raw = participant.attributes.get(SIP_PHONE_ATTRIBUTE, "")
    try:
        phone = normalize_e164(raw, default_region=settings.default_region)
    except InvalidPhoneNumber:
        logger.warning("inbound caller number unreadable", extra={"room": ctx.room.name})
        phone = None

    return CallRecord(
        phone=phone,
        room=ctx.room.name,
        direction=INBOUND,
        job_id=ctx.job.id,
        participant_identity=participant.identity,
    )


async def _report_failed_dispatch(ctx: JobContext, settings: Settings, *, reason: str) -> None:
    """Send the one call.ended of a dispatch that could not dial, then end the job."""
    record = failed_record(room=ctx.room.name, job_id=ctx.job.id, reason=reason)
    await _open_runtime(ctx, settings, record)
    ctx.shutdown("invalid dispatch metadata")


async def _open_runtime(ctx: JobContext, settings: Settings, record: CallRecord) -> CallRuntime:
    """Connect the call to the outbox, CRM and webhooks, and register it for `on_session_end`."""
    http = aiohttp.ClientSession()
    try:
        queue = await open_outbox_queue(settings, http)
    except (sqlite3.Error, OSError):
        # Calls must go on without the file; events then live in memory only.
        logger.exception("outbox unavailable, delivering from memory", extra={"path": str(settings.outbox_path)})
        queue = None

    runtime = CallRuntime(record=record, services=build_services(settings, record, http, queue), http=http)
    runtime.own(queue)
    runtime.end_call = ctx.shutdown
    _calls[ctx.job.id] = runtime
    ctx.log_context_fields = runtime.log_fields
    ctx.add_shutdown_callback(runtime.aclose)
    return runtime


async def _start_session(
    ctx: JobContext, session: AgentSession[CallRecord], agent: CallAgent, record: CallRecord
) -> None:
    if ctx.is_fake_job():
        # A fake job's room is a mock; the console wires its own input and output.
        await session.start(agent)
        return

    options = room_io.RoomOptions(participant_identity=record.participant_identity, delete_room_on_close=True)
    await session.start(agent, room=ctx.room, room_options=options)


async def _dial(ctx: JobContext, runtime: CallRuntime, sip: LiveKitSip, session: AgentSession[CallRecord]) -> None:
    record = runtime.record
    settings = runtime.services.settings
    detector = create_machine_detector(ctx, session, record, settings)

    async with contextlib.AsyncExitStack() as stack:
        # The detector listens from the first moment of the call, so it starts before dialing.
        if detector is not None:
            await stack.enter_async_context(detector)

        record.mark_dialing()
        try:
            await sip.dial(
                trunk_id=settings.outbound_trunk_id,
                phone=record.phone or "",
                ringing_timeout=settings.ringing_timeout,
                max_call_duration=settings.max_call_duration,
                attributes={"call_id": record.call_id},
            )
        except DialFailure as failure:
            record.end_reason = "dial failed"
            record.mark_dial_failed(
                outcome=failure.outcome, sip_status_code=failure.sip_status_code, reason=failure.reason
            )
            logger.warning(
                "dial failed",
                extra={**runtime.log_fields, "outcome": failure.outcome, "sip_status_code": failure.sip_status_code},
            )
            runtime.end_call("dial failed")
            return

        await runtime.mark_answered()
        if detector is not None and (await detector.execute()).is_machine:
            await _leave_voicemail(runtime, session)
            return

    await _greet(runtime, session)


def create_machine_detector(
    ctx: JobContext, session: AgentSession[CallRecord], record: CallRecord, settings: Settings
) -> AMD | None:
    """Answering-machine detection for an outbound call; None when off or without audio (fake jobs)."""
    if ctx.is_fake_job() or not settings.voicemail_detection:
        return None
    return AMD(session, participant_identity=record.participant_identity)


async def _leave_voicemail(runtime: CallRuntime, session: AgentSession[CallRecord]) -> None:
    """End a call a machine answered, after leaving VOICEMAIL_MESSAGE when configured."""
    settings = runtime.services.settings
    runtime.record.mark_voicemail()
    logger.info("answering machine detected", extra={**runtime.log_fields, "action": settings.voicemail_action})

    if settings.voicemail_action == "message":
        handle = session.say(settings.voicemail_message, allow_interruptions=False, add_to_chat_ctx=True)
        try:
            async with asyncio.timeout(VOICEMAIL_PLAYOUT_SECONDS):
                await handle.wait_for_playout()
        except TimeoutError:
            logger.warning("voicemail message playout timed out", extra=runtime.log_fields)
    runtime.end_call("answering machine")


async def _answer(runtime: CallRuntime, session: AgentSession[CallRecord]) -> None:
    await runtime.mark_answered()
    await _greet(runtime, session)


async def _greet(runtime: CallRuntime, session: AgentSession[CallRecord]) -> None:
    session.generate_reply(instructions=greeting_instructions(runtime.record))


def _watch_callee(ctx: JobContext, runtime: CallRuntime) -> None:
    """End the job when the callee leaves the room, whatever the disconnect reason."""

    def on_participant_disconnected(participant: rtc.RemoteParticipant) -> None:
        if participant.identity == runtime.record.participant_identity:
            runtime.callee_left()

    ctx.room.on("participant_disconnected", on_participant_disconnected)


def _on_session_close(runtime: CallRuntime, event: CloseEvent) -> None:
    # A closed session does not end the job by itself; the job would stay in the room.
    runtime.record.end_reason = runtime.record.end_reason or f"session closed: {event.reason.value}"
    runtime.end_call(f"session closed: {event.reason.value}")


async def on_session_end(ctx: JobContext) -> None:
    """Send the call's one call.ended event; the framework awaits this before the process exits."""
    runtime = _calls.pop(ctx.job.id, None)
    if runtime is None:
        return
    await runtime.finish(reason=runtime.record.end_reason or "job shutdown")


class _Transfers:
    """Transfers for the tools, bounded by TRANSFER_TIMEOUT."""

    def __init__(self, sip: LiveKitSip, settings: Settings) -> None:
        self._sip = sip
        self._timeout = settings.transfer_timeout

    async def transfer(self, *, transfer_to: str) -> TransferResult:
        return await self._sip.transfer(transfer_to=transfer_to, timeout=self._timeout)


class CallServer(AgentServer):
    """The worker, plus a process-wide outbox sweeper in the main process.

    Job processes deliver their own call's rows while they run. Rows they leave
    behind (receiver down past the drain time, a process killed) are retried by
    this sweeper for as long as the worker runs, and on the next start.
    """

    def __init__(self, settings: Settings, **options: Any) -> None:
        super().__init__(**options)
        self._settings = settings

    async def run(self, *, devmode: bool = False, unregistered: bool = False) -> None:
        http = aiohttp.ClientSession()
        try:
            sweeper = await open_outbox_queue(self._settings, http)
        except (sqlite3.Error, OSError):
            logger.exception("outbox unavailable, leftover rows are not retried", extra={"path": str(self._settings.outbox_path)})
            sweeper = None

        try:
            await super().run(devmode=devmode, unregistered=unregistered)
        finally:
            if sweeper is not None:
                await sweeper.aclose()
            await http.close()


def create_server(settings: Settings) -> AgentServer:
    server = CallServer(
        settings,
        host=settings.worker_host,
        setup_fnc=prewarm,
        shutdown_process_timeout=SHUTDOWN_PROCESS_TIMEOUT,
    )
    server.rtc_session(entrypoint, agent_name=settings.agent_name, on_session_end=on_session_end)
    return server


# Commands that start a worker or a console and so need valid settings first.
_COMMANDS_NEEDING_SETTINGS = ("dev", "start", "console", "connect")


def main(argv: list[str]) -> int:
    load_dotenv_file()
    command = argv[1] if len(argv) > 1 else ""
    mode = CONSOLE if command == "console" else WORKER
    asking_for_help = any(arg in ("-h", "--help") for arg in argv[1:])

    settings = Settings()
    if command in _COMMANDS_NEEDING_SETTINGS and not asking_for_help:
        try:
            settings = load_settings(mode=mode)
        except ConfigError as err:
            print(f"agent.py {command}: {err}", file=sys.stderr)
            return 2
        log_redaction.install(settings.secrets)

    if command == "console":
        _allow_console_without_portaudio(argv)
    cli.run_app(create_server(settings))
    return 0


def _allow_console_without_portaudio(argv: list[str]) -> None:
    """Let `console --text` run where the PortAudio library is missing.

    The framework's console imports `sounddevice` even in text mode, and that
    import fails without PortAudio (Linux servers rarely have it). Text mode
    never touches audio, so an empty stand-in module is enough there.
    """
    if "--text" not in argv:
        return
    try:
        import sounddevice  # noqa: F401
    except OSError:
        import types

        stand_in = types.ModuleType("sounddevice")
        stand_in.query_devices = lambda *args, **kwargs: None  # type: ignore[attr-defined]
        sys.modules["sounddevice"] = stand_in


if __name__ == "__main__":
    sys.exit(main(sys.argv))
