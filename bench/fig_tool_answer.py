"""Figure 1: time from record_intent tool call to tool result while the receiver takes 500 ms.

Both variants run the real `CallAgent` in a real `AgentSession` driven by the
scripted dev LLM, as tests/test_agent_tools.py does, so the framework calls the
real `CallTools.record_intent`. Only the emitter differs:

- product: `CallEmitter` on an `OutboxQueue` (the SQLite outbox in a temporary
  folder plus its dispatcher), built by `open_outbox_queue` and `build_services`;
- naive: `AwaitingEmitter`, which POSTs on a new session and waits for the response.

The tool time is `FunctionCallOutput.created_at - FunctionCall.created_at` of
the turn, both stamped by the framework. The whole turn (two LLM requests and
the tool) is timed too.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from livekit.agents.voice.run_result import FunctionCallEvent, FunctionCallOutputEvent, RunResult

from agent import CallAgent, build_session
from bench.naive import AwaitingEmitter
from bench.receiver import VERIFY, receiver_process
from bench.stack import ScriptedLlm, console_settings, scripted_llm
from bench.stats import summarize
from bench.table import Row
from call_lifecycle import build_services, open_outbox_queue
from call_record import CallRecord
from dev_llm import ToolCall
from settings import Settings
from tools import CallServices

RECEIVER_DELAY = 0.5
WARMUP_TURNS = 1


@dataclass
class TurnSamples:
    """Seconds per turn: the tool alone, and the whole `session.run`."""

    tool: list[float] = field(default_factory=list)
    turn: list[float] = field(default_factory=list)


async def run(*, turns: int, receiver_delay: float = RECEIVER_DELAY) -> list[Row]:
    """Time `turns` record_intent turns per variant and return the figure's rows."""
    async with receiver_process(mode=VERIFY, delay=receiver_delay) as receiver, scripted_llm() as llm:
        with tempfile.TemporaryDirectory(prefix="bench-tool-") as folder:
            settings = console_settings(
                llm_url=llm.base_url, webhook_url=receiver.url, outbox_path=str(Path(folder) / "outbox.sqlite3")
            )
            product = await _time_turns(settings, llm, turns=turns, naive=False)
            naive = await _time_turns(settings, llm, turns=turns, naive=True)

    delay_ms = f"{receiver_delay * 1000:g} ms"
    return [
        Row(
            figure=f"1a. record_intent, tool call to tool result, receiver takes {delay_ms}",
            unit="ms",
            product=summarize(product.tool, scale=1000),
            naive=summarize(naive.tool, scale=1000),
        ),
        Row(
            figure=f"1b. whole turn with record_intent (2 LLM requests), receiver takes {delay_ms}",
            unit="ms",
            product=summarize(product.turn, scale=1000),
            naive=summarize(naive.turn, scale=1000),
        ),
    ]


async def _time_turns(settings: Settings, llm: ScriptedLlm, *, turns: int, naive: bool) -> TurnSamples:
    samples = TurnSamples()
    record = CallRecord(phone=None, room="bench-room")

    async with aiohttp.ClientSession() as http:
        queue = None
        if naive:
            emitter = AwaitingEmitter(call_id=record.call_id, url=settings.webhook_url or "", secret=settings.webhook_secret)
            services = CallServices(settings=settings, emitter=emitter)  # type: ignore[arg-type]
        else:
            queue = await open_outbox_queue(settings, http)
            services = build_services(settings, record, http, queue)

        session = build_session(settings, record, console=True, vad=None)
        try:
            await session.start(CallAgent(record=record, services=services))
            for number in range(WARMUP_TURNS + turns):
                llm.script.steps += [ToolCall("record_intent", {"intent": f"billing question {number}"}), "Thanks."]
                started = time.perf_counter()
                result = await session.run(user_input="I have a question about my bill")
                turn_seconds = time.perf_counter() - started
                if number >= WARMUP_TURNS:
                    samples.tool.append(_tool_seconds(result))
                    samples.turn.append(turn_seconds)
        finally:
            await session.aclose()
            await session.llm.aclose()
            await services.emitter.aclose()
            if queue is not None:
                await queue.aclose()
    return samples


def _tool_seconds(result: RunResult) -> float:
    calls = [event.item for event in result.events if isinstance(event, FunctionCallEvent)]
    outputs = [event.item for event in result.events if isinstance(event, FunctionCallOutputEvent)]
    if len(calls) != 1 or len(outputs) != 1:
        raise RuntimeError(f"expected one record_intent call and output in the turn, got {len(calls)} and {len(outputs)}")
    if outputs[0].is_error:
        raise RuntimeError(f"record_intent failed in the benchmark: {outputs[0].output}")
    return outputs[0].created_at - calls[0].created_at
