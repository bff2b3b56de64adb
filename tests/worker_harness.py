"""Run the real worker in-process and hand it jobs, without a LiveKit server.

The worker runs unregistered with the thread executor, so each job runs the
framework's own job path, shutdown sequence and `on_session_end` hook, in a
thread with its own event loop. Jobs are fake (their room is a mock), but their
`ctx.api` reaches LIVEKIT_URL, which the tests point at the SIP stub.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from livekit.agents import JobExecutorType
from livekit.agents.job import JobAcceptArguments, RunningJobInfo
from livekit.protocol import agent as agent_proto
from livekit.protocol import models

import agent
from call_lifecycle import CallRuntime
from settings import load_settings


class WorkerHarness:
    def __init__(self) -> None:
        self.server = agent.create_server(load_settings())
        # The console runs jobs the same way: in threads of this process.
        self.server._job_executor_type = JobExecutorType.THREAD
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        started = asyncio.Event()
        self.server.once("worker_started", lambda *_: started.set())
        self._task = asyncio.create_task(self.server.run(devmode=True, unregistered=True))
        await asyncio.wait_for(started.wait(), 20)

    async def launch(self, metadata: str, *, room: str | None = None) -> str:
        """Start a job with this dispatch metadata and return its id."""
        job_id = f"job-{uuid.uuid4().hex[:8]}"
        room_name = room or f"call-{job_id}"
        job = agent_proto.Job(
            id=job_id,
            type=agent_proto.JobType.JT_ROOM,
            room=models.Room(sid=f"RM_{job_id}", name=room_name),
            metadata=metadata,
        )
        info = RunningJobInfo(
            worker_id="test-worker",
            accept_arguments=JobAcceptArguments(identity="agent", name="", metadata=""),
            job=job,
            url="",
            token="",
            fake_job=True,
        )
        await self.server._proc_pool.launch_job(info)
        return job_id

    async def runtime(self, job_id: str, timeout: float = 10) -> CallRuntime:
        """The job's CallRuntime, once the entrypoint has registered it."""
        async with asyncio.timeout(timeout):
            while job_id not in agent._calls:
                await asyncio.sleep(0.02)
        return agent._calls[job_id]

    async def wait_job_done(self, job_id: str, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while any(job.job.id == job_id for job in self.server.active_jobs):
                await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        await self.server.aclose()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def in_job(runtime: CallRuntime, fn, *args) -> None:
    """Call `fn(*args)` on the job's event loop, as a room event would."""
    runtime.loop.call_soon_threadsafe(fn, *args)


async def say(runtime: CallRuntime, text: str) -> None:
    """Send the caller's `text` to the session on the job's event loop and wait for the turn to finish."""

    async def run() -> None:
        await runtime.session.run(user_input=text)

    future = asyncio.run_coroutine_threadsafe(run(), runtime.loop)
    await asyncio.wrap_future(future)


@contextlib.asynccontextmanager
async def worker() -> AsyncIterator[WorkerHarness]:
    harness = WorkerHarness()
    await harness.start()
    try:
        yield harness
    finally:
        await harness.aclose()
