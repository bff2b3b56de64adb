"""Figure 5: pre-call delay, from job start to the dial request, with a healthy and a silent CRM.

The real worker runs in-process through tests/worker_harness.py (unregistered,
thread executor, fake jobs), so each job runs the product's entrypoint: settings,
outbox, CRM lookup, session start, then `CreateSIPParticipant` to the SIP stub of
tests/sip_stub.py. Job start is the moment the entrypoint begins, and the dial
request is the moment the stub receives it. A fake job starts a text session and
connects no room, so the room connection of a real call is not included. The
text session does not use the VAD, but each variant still loads it at the
point listed below.

- product: the VAD is loaded in the process setup function (`agent.prewarm`),
  before the job starts;
- naive: no setup function, and the entrypoint loads the VAD when the job starts.

With the silent CRM the lookup must end within CRM_LOOKUP_TIMEOUT (2 s unless
the caller passes another value), and the call must still be dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from livekit.agents import JobContext, JobProcess
from livekit.plugins import silero

import agent
import dev_llm
import dev_server
from bench.environ import patched_environ
from bench.receiver import PLAIN, SECRET, create_app
from bench.stats import summarize
from bench.table import Row
from call_lifecycle import CallRuntime
from tests.servers import serve
from tests.sip_stub import SipStub
from tests.worker_harness import WorkerHarness, in_job

CRM_API_KEY = "bench-crm-key"
DEFAULT_LOOKUP_TIMEOUT = 2.0
CALLEE = "+919800000001"
DIAL_PATH_SUFFIX = "/CreateSIPParticipant"
STEP_TIMEOUT = 30.0


@dataclass
class CallTimes:
    """Per call: seconds from job start to dial request, and seconds in `lookup_contact`."""

    pre_call: list[float] = field(default_factory=list)
    lookup: list[float] = field(default_factory=list)


@dataclass
class _Clocks:
    job_started: dict[str, float] = field(default_factory=dict)
    dials: list[float] = field(default_factory=list)
    lookups: list[float] = field(default_factory=list)


async def run(*, healthy_calls: int, silent_calls: int, lookup_timeout: float | None = None) -> list[Row]:
    """Place the calls and return the figure's rows. `lookup_timeout` None keeps the 2 s default."""
    budget = DEFAULT_LOOKUP_TIMEOUT if lookup_timeout is None else lookup_timeout

    async with _local_stack() as stack:
        product = await _place_calls(stack, stack.crm_url, healthy_calls, lookup_timeout, naive=False)
        naive = await _place_calls(stack, stack.crm_url, healthy_calls, lookup_timeout, naive=True)
        silent = await _place_calls(stack, stack.silent_crm_url, silent_calls, lookup_timeout, naive=False)

    return [
        Row(
            figure="5a. pre-call delay, healthy CRM: job start to dial request (VAD in prewarm vs in job)",
            unit="ms",
            product=summarize(product.pre_call, scale=1000),
            naive=summarize(naive.pre_call, scale=1000),
        ),
        Row(
            figure="5b. pre-call delay, CRM never answers: job start to dial request",
            unit="ms",
            product=summarize(silent.pre_call, scale=1000),
            budget=f"{budget * 1000:,.0f} ms lookup + 5a",
        ),
        Row(
            figure="5c. CRM lookup step alone, CRM never answers",
            unit="ms",
            product=summarize(silent.lookup, scale=1000),
            budget=f"{budget * 1000:,.0f} ms (CRM_LOOKUP_TIMEOUT) + a few ms to cancel",
        ),
        Row(
            figure="5d. CRM lookup step alone, healthy CRM",
            unit="ms",
            product=summarize(product.lookup, scale=1000),
        ),
    ]


@dataclass(frozen=True)
class _Stack:
    folder: Path
    sip_url: str
    crm_url: str
    silent_crm_url: str
    webhook_url: str
    llm_url: str
    # Bodies of the chat requests the dev LLM received, appended as they arrive.
    llm_requests: list[dict[str, Any]]
    clocks: _Clocks


@contextlib.asynccontextmanager
async def _local_stack() -> AsyncIterator[_Stack]:
    clocks = _Clocks()
    silent_crm_released = asyncio.Event()
    sip = SipStub().app()
    sip.middlewares.append(_stamp_dials(clocks))
    llm = dev_llm.create_llm_app()

    with tempfile.TemporaryDirectory(prefix="bench-precall-") as folder:
        crm_app = dev_server.create_crm_app(db_path=str(Path(folder) / "crm.sqlite3"), api_key=CRM_API_KEY)
        async with (
            serve(sip) as sip_url,
            serve(crm_app) as crm_url,
            serve(_silent_crm(silent_crm_released)) as silent_crm_url,
            serve(create_app(mode=PLAIN)) as receiver_url,
            serve(llm) as llm_url,
        ):
            try:
                yield _Stack(
                    folder=Path(folder),
                    sip_url=sip_url,
                    crm_url=crm_url,
                    silent_crm_url=silent_crm_url,
                    webhook_url=f"{receiver_url}/webhooks",
                    llm_url=f"{llm_url}/v1",
                    llm_requests=llm[dev_llm.REQUESTS],
                    clocks=clocks,
                )
            finally:
                # Lets the silent CRM's held requests finish so the server can stop.
                silent_crm_released.set()


def _stamp_dials(clocks: _Clocks) -> Callable[..., Any]:
    @web.middleware
    async def stamp(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.endswith(DIAL_PATH_SUFFIX):
            clocks.dials.append(time.perf_counter())
        return await handler(request)

    return stamp


def _silent_crm(released: asyncio.Event) -> web.Application:
    async def never_answer(request: web.Request) -> web.Response:
        await released.wait()
        return web.json_response({"results": []})

    app = web.Application()
    app.router.add_get("/contacts/search", never_answer)
    return app


async def _place_calls(
    stack: _Stack, crm_url: str, calls: int, lookup_timeout: float | None, *, naive: bool
) -> CallTimes:
    times = CallTimes()
    env = _worker_env(stack, crm_url, lookup_timeout, outbox_name=f"outbox-{time.monotonic_ns()}.sqlite3")

    with patched_environ(env), _timed_worker_functions(stack.clocks, naive=naive):
        harness = WorkerHarness()
        await harness.start()
        try:
            for _ in range(calls):
                await _place_one_call(harness, stack, times)
        finally:
            await harness.aclose()
    return times


async def _place_one_call(harness: WorkerHarness, stack: _Stack, times: CallTimes) -> None:
    clocks = stack.clocks
    dials_before = len(clocks.dials)
    lookups_before = len(clocks.lookups)
    greetings_before = len(stack.llm_requests)
    job_id = await harness.launch(json.dumps({"phone_number": CALLEE}))
    runtime = await harness.runtime(job_id, timeout=STEP_TIMEOUT)

    await _wait_until(lambda: len(clocks.dials) > dials_before)
    times.pre_call.append(clocks.dials[dials_before] - clocks.job_started[job_id])
    times.lookup += clocks.lookups[lookups_before:]

    # Hanging up in the middle of the greeting would cut the dev LLM's stream and
    # make it log an error, so the call ends after the greeting.
    await _wait_until(lambda: len(stack.llm_requests) > greetings_before)
    await _wait_for_speech(runtime)
    in_job(runtime, runtime.callee_left)
    await harness.wait_job_done(job_id, timeout=STEP_TIMEOUT)


async def _wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(STEP_TIMEOUT):
        while not condition():
            await asyncio.sleep(0.005)


async def _wait_for_speech(runtime: CallRuntime) -> None:
    """Wait, on the job's event loop, until the session's current speech has played out."""

    async def wait() -> None:
        speech = runtime.session.current_speech
        if speech is not None:
            await speech.wait_for_playout()

    future = asyncio.run_coroutine_threadsafe(wait(), runtime.loop)
    async with asyncio.timeout(STEP_TIMEOUT):
        await asyncio.wrap_future(future)


def _worker_env(stack: _Stack, crm_url: str, lookup_timeout: float | None, *, outbox_name: str) -> dict[str, str | None]:
    return {
        "OUTBOX_PATH": str(stack.folder / outbox_name),
        "LIVEKIT_URL": stack.sip_url,
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret-devsecret-devsecret-00",
        "OPENAI_API_KEY": "bench-openai-key",
        "OPENAI_BASE_URL": stack.llm_url,
        "DEEPGRAM_API_KEY": "bench-deepgram-key",
        "OUTBOUND_TRUNK_ID": "ST_bench_trunk",
        "VOBIZ_SIP_DOMAIN": "trunk.example.invalid",
        "CRM_BASE_URL": crm_url,
        "CRM_API_KEY": CRM_API_KEY,
        "CRM_LOOKUP_TIMEOUT": None if lookup_timeout is None else str(lookup_timeout),
        "WEBHOOK_URL": stack.webhook_url,
        "WEBHOOK_SECRET": SECRET.decode("utf-8"),
        "LIVEKIT_DEV_MODE": None,
    }


@contextlib.contextmanager
def _timed_worker_functions(clocks: _Clocks, *, naive: bool) -> Iterator[None]:
    """Wrap the entrypoint and the CRM lookup with clocks. For `naive`, move the VAD load into the job.

    `agent.create_server` reads `agent.entrypoint` and `agent.prewarm` when it runs,
    so the harness built inside this block registers the wrapped functions.
    """
    original_entrypoint = agent.entrypoint
    original_prewarm = agent.prewarm
    original_lookup = CallRuntime.lookup_contact

    async def timed_entrypoint(ctx: JobContext) -> None:
        clocks.job_started[ctx.job.id] = time.perf_counter()
        if naive:
            ctx.proc.userdata["vad"] = silero.VAD.load()
        await original_entrypoint(ctx)

    def no_prewarm(proc: JobProcess) -> None:
        return None

    async def timed_lookup(runtime: CallRuntime) -> None:
        started = time.perf_counter()
        try:
            await original_lookup(runtime)
        finally:
            clocks.lookups.append(time.perf_counter() - started)

    agent.entrypoint = timed_entrypoint
    if naive:
        agent.prewarm = no_prewarm
    CallRuntime.lookup_contact = timed_lookup  # type: ignore[method-assign]
    try:
        yield
    finally:
        agent.entrypoint = original_entrypoint
        agent.prewarm = original_prewarm
        CallRuntime.lookup_contact = original_lookup  # type: ignore[method-assign]
