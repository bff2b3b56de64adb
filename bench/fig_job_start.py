"""Figure 6: job start to session started, VAD in prewarm vs per job, and job-process memory.

Each sample is a fresh child process, `python -m bench.job_process`, because a
LiveKit job process runs one job: a VAD loaded per job is always a first load in
a new process. The children run one after another, so they do not compete for
the 2 cores. See bench/job_process.py for what a child does.

Resident memory is VmRSS from /proc/<pid>/status, read by this process while the
child is paused: once before the job (imports, framework warm-up, setup function)
and once with the session started. The child also reports its own VmRSS after
`import agent` and after the framework warm-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.job_process import IN_JOB, PREWARM
from bench.stats import summarize
from bench.table import Row

PROJECT_DIR = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 60.0
KIB_PER_MIB = 1024

# Variables that would point the framework at a LiveKit server or its cloud inference.
_CLEARED_VARIABLES = (
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
    "LIVEKIT_DEV_MODE",
    "LIVEKIT_INFERENCE_URL",
    "LIVEKIT_REMOTE_EOT_URL",
    "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE",
)


@dataclass
class JobSamples:
    """Per child process: seconds from job start to session started, and VmRSS in MiB."""

    job_start: list[float] = field(default_factory=list)
    rss_after_import: list[float] = field(default_factory=list)
    rss_after_warm_up: list[float] = field(default_factory=list)
    rss_before_job: list[float] = field(default_factory=list)
    rss_session_started: list[float] = field(default_factory=list)


async def run(*, processes: int, concurrent: bool = False) -> list[Row]:
    """Start `processes` children per variant and return the figure's rows.

    Without `concurrent`, one extra child runs first and its samples are dropped.
    With `concurrent`, the two variants' children run at the same time and compete
    for the cores, and no child is dropped. That only suits a smoke run.
    """
    product = JobSamples()
    naive = JobSamples()
    if not concurrent:
        # The first child after other work has been an outlier, so one child's samples are dropped.
        await _run_child(IN_JOB, JobSamples())
    for _ in range(processes):
        if concurrent:
            await asyncio.gather(_run_child(PREWARM, product), _run_child(IN_JOB, naive))
        else:
            await _run_child(PREWARM, product)
            await _run_child(IN_JOB, naive)

    return [
        Row(
            figure="6a. job start to session started (VAD in prewarm vs loaded per job)",
            unit="ms",
            product=summarize(product.job_start, scale=1000),
            naive=summarize(naive.job_start, scale=1000),
        ),
        Row(
            figure="6b. job process VmRSS, session built and started",
            unit="MiB",
            product=summarize(product.rss_session_started),
            naive=summarize(naive.rss_session_started),
        ),
        Row(
            figure="6c. job process VmRSS before the job (imports, framework warm-up, setup function)",
            unit="MiB",
            product=summarize(product.rss_before_job),
            naive=summarize(naive.rss_before_job),
        ),
        # The steps before the setup function are the same in both variants, so their samples are pooled.
        Row(
            figure="6d. job process VmRSS after `import agent` alone (both variants)",
            unit="MiB",
            product=summarize(product.rss_after_import + naive.rss_after_import),
        ),
        Row(
            figure="6e. job process VmRSS after the framework warm-up (both variants)",
            unit="MiB",
            product=summarize(product.rss_after_warm_up + naive.rss_after_warm_up),
        ),
    ]


async def _run_child(vad: str, samples: JobSamples) -> None:
    env = {name: value for name, value in os.environ.items() if name not in _CLEARED_VARIABLES}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.job_process",
        "--vad",
        vad,
        cwd=PROJECT_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(CHILD_TIMEOUT):
            await _follow_child(process, samples)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"bench.job_process --vad {vad} exited with status {process.returncode}")


async def _follow_child(process: asyncio.subprocess.Process, samples: JobSamples) -> None:
    assert process.stdout is not None and process.stdin is not None
    while line := await process.stdout.readline():
        message: dict[str, Any] = json.loads(line)
        if "job_start_seconds" in message:
            samples.job_start.append(message["job_start_seconds"])
        if "rss_after_import_mib" in message:
            samples.rss_after_import.append(message["rss_after_import_mib"])
        if "rss_after_warm_up_mib" in message:
            samples.rss_after_warm_up.append(message["rss_after_warm_up_mib"])

        pause = message.get("pause")
        if pause is None:
            continue
        rss = _vm_rss_mib(process.pid)
        if pause == "before_job":
            samples.rss_before_job.append(rss)
        elif pause == "session_started":
            samples.rss_session_started.append(rss)
        process.stdin.write(b"\n")
        await process.stdin.drain()


def _vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / KIB_PER_MIB
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")
