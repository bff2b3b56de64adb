"""One job process for figure 6, run as `python -m bench.job_process --vad prewarm|job`.

It does what a LiveKit job process does before and during the start of a call,
without a room:

1. import agent.py and run the framework's process warm-up,
   `livekit.agents.ipc._preload`, which the worker runs once in its forkserver
   on Linux (it loads the local VAD and end-of-turn models, among others);
2. with `--vad prewarm`, run `agent.prewarm`, the product's setup function;
3. job start. With `--vad job`, load the silero VAD now. Then run
   `build_session`, which builds the phone pipeline (Deepgram STT, OpenAI LLM and
   TTS, the VAD), and `session.start(CallAgent)`. Session started.

Deepgram and OpenAI are pointed at a stub on 127.0.0.1 in this process, and the
loopback guard rejects any other address. The process reports on standard
output as JSON lines and stops at two pauses ("before_job" and
"session_started") until the parent writes a line, so that the parent can read
/proc/<pid>/status while nothing runs. After the second pause it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from functools import partial
from types import SimpleNamespace
from typing import Any

from bench.loopback import install_guard

PREWARM = "prewarm"
IN_JOB = "job"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.job_process", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vad",
        choices=(PREWARM, IN_JOB),
        required=True,
        help="load the VAD in the setup function (prewarm) or at job start (job)",
    )
    args = parser.parse_args(argv)

    install_guard()
    started = time.perf_counter()
    import agent

    _report(import_seconds=time.perf_counter() - started, rss_after_import_mib=_own_vm_rss_mib())
    import livekit.agents.ipc._preload  # noqa: F401

    _report(rss_after_warm_up_mib=_own_vm_rss_mib())
    asyncio.run(_run_job(agent, vad_in_job=args.vad == IN_JOB))


async def _run_job(agent: Any, *, vad_in_job: bool) -> None:
    # Imported after `agent`, so that the timed import above includes the framework.
    from livekit.agents.utils import http_context
    from livekit.plugins import deepgram, silero

    from call_record import CallRecord
    from settings import CONSOLE, load_settings
    from tools import CallServices
    from webhooks import CallEmitter

    stub_url = await _start_provider_stub()
    # build_session takes no Deepgram URL, so the module it calls is replaced by one aimed at the stub.
    agent.deepgram = SimpleNamespace(STT=partial(deepgram.STT, base_url=f"{stub_url}/v1/listen"))
    env = {"OPENAI_API_KEY": "bench-openai-key", "OPENAI_BASE_URL": f"{stub_url}/v1", "DEEPGRAM_API_KEY": "bench-deepgram-key"}
    settings = load_settings(env, mode=CONSOLE)

    proc = SimpleNamespace(userdata={})
    if not vad_in_job:
        prewarm_started = time.perf_counter()
        agent.prewarm(proc)
        _report(prewarm_seconds=time.perf_counter() - prewarm_started)
    await _pause("before_job")

    # The framework opens this HTTP context around every job, and the plugins use it.
    async with http_context.open():
        job_started = time.perf_counter()
        if vad_in_job:
            proc.userdata["vad"] = silero.VAD.load()
        vad_loaded = time.perf_counter()
        record = CallRecord(phone="+919800000001", room="bench-room")
        session = agent.build_session(settings, record, console=False, vad=proc.userdata["vad"])
        session_built = time.perf_counter()
        services = CallServices(settings=settings, emitter=CallEmitter(call_id=record.call_id, sender=None))
        await session.start(agent.CallAgent(record=record, services=services))
        session_started = time.perf_counter()

        _report(
            job_start_seconds=session_started - job_started,
            vad_in_job_seconds=vad_loaded - job_started,
            build_seconds=session_built - vad_loaded,
            start_seconds=session_started - session_built,
        )
        await _pause("session_started")

        # NOTE: the session is not closed, because `AgentSession.aclose` waits up to
        # 2 s (session_close_transcript_timeout) for a final transcript that the stub
        # never sends. The process exits inside the HTTP context instead, so that no
        # plugin task meets a closed HTTP session first.
        _report(done=True)
        os._exit(0)


async def _start_provider_stub() -> str:
    """Serve a WebSocket sink for the Deepgram stream and 404 for anything else, on 127.0.0.1."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response({"error": "not found"}, status=404)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for _ in socket:
            pass
        return socket

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # port 0 picks a free port
    return f"http://127.0.0.1:{port}"


def _own_vm_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmRSS line")


def _report(**values: Any) -> None:
    print(json.dumps(values), flush=True)


async def _pause(name: str) -> None:
    _report(pause=name)
    await asyncio.to_thread(sys.stdin.readline)


if __name__ == "__main__":
    main()
