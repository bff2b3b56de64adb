"""How many iterations each figure runs: the full run, and a smoke run for the tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    """Iteration counts of every figure. `lookup_timeout` None keeps CRM_LOOKUP_TIMEOUT at 2 s."""

    tool_turns: int
    tool_receiver_delay: float
    burst_events_per_call: int
    burst_repetitions: int
    burst_idle_seconds: float
    rate_requests: int
    rate_repetitions: int
    outbox_writes: int
    healthy_calls: int
    silent_calls: int
    lookup_timeout: float | None
    job_processes: int
    # Runs the two variants' job processes at the same time; their times then compete for the cores.
    job_processes_concurrent: bool


# Sized to finish in about two and a half minutes on a 2-core machine.
FULL = Scale(
    tool_turns=40,
    tool_receiver_delay=0.5,
    burst_events_per_call=100,
    burst_repetitions=10,
    burst_idle_seconds=1.0,
    rate_requests=2000,
    rate_repetitions=5,
    outbox_writes=2000,
    healthy_calls=20,
    silent_calls=8,
    lookup_timeout=None,
    job_processes=10,
    job_processes_concurrent=False,
)

# A few iterations of each figure with shorter waits, so the code path runs in seconds.
SMOKE = Scale(
    tool_turns=2,
    tool_receiver_delay=0.05,
    burst_events_per_call=3,
    burst_repetitions=1,
    burst_idle_seconds=0.1,
    rate_requests=20,
    rate_repetitions=1,
    outbox_writes=20,
    healthy_calls=1,
    silent_calls=1,
    lookup_timeout=0.2,
    job_processes=1,
    job_processes_concurrent=True,
)
