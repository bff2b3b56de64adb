"""Event-loop lag probe: a task that sleeps 1 ms and records how late it wakes up."""

from __future__ import annotations

import asyncio
import time

TICK_SECONDS = 0.001


class LoopLagProbe:
    """Collects the overshoot of each 1 ms sleep, in seconds, while running.

    An idle loop already overshoots by the timer and selector granularity, so
    compare against an idle baseline rather than against zero.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def __aenter__(self) -> LoopLagProbe:
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="loop-lag-probe")
        # Yield once so that the first tick starts before the measured work.
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping = True
        if self._task is not None:
            await self._task

    async def _tick(self) -> None:
        while not self._stopping:
            started = time.perf_counter()
            await asyncio.sleep(TICK_SECONDS)
            self.samples.append(time.perf_counter() - started - TICK_SECONDS)


async def idle_lag(seconds: float) -> list[float]:
    """Return the lag samples of this loop while it does nothing else for `seconds`."""
    async with LoopLagProbe() as probe:
        await asyncio.sleep(seconds)
    return probe.samples
