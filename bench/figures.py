"""The benchmark figures in table order, each run with the iteration counts of a `Scale`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench import fig_job_start, fig_loop_stall, fig_outbox_write, fig_pre_call, fig_throughput, fig_tool_answer
from bench.scale import Scale
from bench.table import Row


@dataclass(frozen=True)
class Figure:
    number: int
    title: str
    run: Callable[[Scale], Awaitable[list[Row]]]


FIGURES = (
    Figure(
        1,
        "tool answer time with a slow receiver",
        lambda scale: fig_tool_answer.run(turns=scale.tool_turns, receiver_delay=scale.tool_receiver_delay),
    ),
    Figure(
        2,
        "event-loop stall during a burst",
        lambda scale: fig_loop_stall.run(
            events_per_call=scale.burst_events_per_call,
            repetitions=scale.burst_repetitions,
            idle_seconds=scale.burst_idle_seconds,
        ),
    ),
    Figure(
        3,
        "delivery throughput",
        lambda scale: fig_throughput.run(requests=scale.rate_requests, repetitions=scale.rate_repetitions),
    ),
    Figure(4, "outbox write cost", lambda scale: fig_outbox_write.run(writes=scale.outbox_writes)),
    Figure(
        5,
        "pre-call delay",
        lambda scale: fig_pre_call.run(
            healthy_calls=scale.healthy_calls, silent_calls=scale.silent_calls, lookup_timeout=scale.lookup_timeout
        ),
    ),
    Figure(
        6,
        "job start and job-process memory",
        lambda scale: fig_job_start.run(processes=scale.job_processes, concurrent=scale.job_processes_concurrent),
    ),
)
