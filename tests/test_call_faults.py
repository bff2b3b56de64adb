"""Carrier, CRM and resource faults on whole calls through the in-process worker."""

from __future__ import annotations

import asyncio
import gc
import os
import warnings

import pytest
from aiohttp import web

from dev_llm import REQUESTS
from tests.conftest import received_events
from tests.servers import serve
from tests.sip_stub import SipError
from tests.test_call_lifecycle import (  # noqa: F401
    dispatch,
    events_of,
    talk_and_hang_up,
    unanswered_call,
    wait_for_event,
    worker_env,
)
from tests.worker_harness import in_job, worker


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (SipError(sip_status_code=400, sip_status="Bad Request"), "failed"),
        (SipError(sip_status_code=404, sip_status="Not Found"), "failed"),
        (SipError(sip_status_code=408, sip_status="Request Timeout"), "no_answer"),
        (SipError(sip_status_code=503, sip_status="Service Unavailable"), "failed"),
        (SipError(sip_status_code=603, sip_status="Decline"), "rejected"),
        (SipError(sip_status_code=None, code="internal", http_status=400), "failed"),
    ],
)
async def test_dial_error_maps_to_outcome(worker_env, receiver, sip, error, outcome):
    stub, _ = sip
    stub.dial_error = error

    async with worker() as harness:
        ended = await unanswered_call(harness, receiver)

    assert ended["outcome"] == outcome
    assert ended["sip_status_code"] == error.sip_status_code
    assert ended["sip_reason"]
    assert len(stub.dials) == 1
    assert events_of(receiver, "call.started") == []


async def test_agent_silent_until_answered(worker_env, llm, receiver, sip):
    stub, _ = sip
    stub.dial_gate = asyncio.Event()
    llm.script.steps += ["Hello Asha."]

    async with worker() as harness:
        job_id = await harness.launch(dispatch())
        runtime = await harness.runtime(job_id)
        async with asyncio.timeout(10):
            while not stub.dials:
                await asyncio.sleep(0.02)
        # Ringing: the dial request is open, so nothing may be said or reported yet.
        await asyncio.sleep(0.3)
        greetings_before_answer = len(llm.app[REQUESTS])
        started_before_answer = len(events_of(receiver, "call.started"))

        stub.dial_gate.set()
        await wait_for_event(receiver, "call.started")
        async with asyncio.timeout(10):
            while not llm.app[REQUESTS]:
                await asyncio.sleep(0.02)
        in_job(runtime, runtime.callee_left)
        await wait_for_event(receiver, "call.ended")
        await harness.wait_job_done(job_id)

    assert greetings_before_answer == 0
    assert started_before_answer == 0
    assert len(llm.app[REQUESTS]) == 1


async def test_crm_never_answering_does_not_stop_dial(worker_env, monkeypatch, llm, receiver, sip):
    stub, _ = sip
    hang = asyncio.Event()

    async def never_answer(request: web.Request) -> web.Response:
        await hang.wait()
        return web.json_response({"results": []})

    app = web.Application()
    app.router.add_get("/contacts/search", never_answer)
    llm.script.steps += ["Hello."]
    async with serve(app) as crm_url:
        monkeypatch.setenv("CRM_BASE_URL", crm_url)
        monkeypatch.setenv("CRM_LOOKUP_TIMEOUT", "0.3")
        async with worker() as harness:
            job_id = await harness.launch(dispatch())
            runtime = await harness.runtime(job_id)
            started = await wait_for_event(receiver, "call.started")
            in_job(runtime, runtime.callee_left)
            ended = await wait_for_event(receiver, "call.ended")
            await harness.wait_job_done(job_id)
        hang.set()

    assert len(stub.dials) == 1
    assert started["contact_id"] is None
    assert runtime.record.lookup_status == "timeout"
    assert ended["outcome"] == "completed"


async def test_fifty_calls_leave_no_leaks(worker_env, llm, receiver, sip):
    calls = 50
    llm.script.steps += ["Hello."] * calls
    gc.collect()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with worker() as harness:
            fds_after_first = None
            for number in range(calls):
                job_id = await harness.launch(dispatch())
                runtime = await harness.runtime(job_id)
                await wait_for_event_count(receiver, "call.started", number + 1)
                in_job(runtime, runtime.callee_left)
                await wait_for_event_count(receiver, "call.ended", number + 1)
                await harness.wait_job_done(job_id)
                if number == 0:
                    gc.collect()
                    fds_after_first = _open_fds()
                    tasks_after_first = len(asyncio.all_tasks())
            gc.collect()
            fds_after_last = _open_fds()
            tasks_after_last = len(asyncio.all_tasks())

    unclosed = [w for w in caught if "Unclosed" in str(w.message) or issubclass(w.category, ResourceWarning)]
    assert unclosed == []
    assert len(events_of(receiver, "call.ended")) == calls
    # A handful of descriptors may come and go with pooled connections; a leak grows with every call.
    assert fds_after_last - fds_after_first < 10
    assert tasks_after_last - tasks_after_first < 5


async def wait_for_event_count(receiver, event: str, count: int, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while len(events_of(receiver, event)) < count:
            await asyncio.sleep(0.02)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
