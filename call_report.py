"""Transcript and usage figures of a finished session, for the call.ended report.

Both come from the framework's own records: `AgentSession.history` for the
conversation and `AgentSession.usage` for the model usage that drives cost.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import llm
from livekit.agents.metrics.usage import LLMModelUsage, STTModelUsage, TTSModelUsage


def transcript(history: llm.ChatContext) -> list[dict[str, Any]]:
    """Return the conversation turns and tool calls in order, as JSON-ready dicts."""
    entries: list[dict[str, Any]] = []
    for item in history.items:
        if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant"):
            text = item.text_content
            if text:
                speaker = "callee" if item.role == "user" else "agent"
                entries.append({"type": "message", "speaker": speaker, "text": text, "at": item.created_at})
        elif isinstance(item, llm.FunctionCall):
            entries.append({"type": "tool_call", "name": item.name, "arguments": item.arguments, "at": item.created_at})
        elif isinstance(item, llm.FunctionCallOutput):
            entries.append(
                {
                    "type": "tool_result",
                    "name": item.name,
                    "output": item.output,
                    "is_error": item.is_error,
                    "at": item.created_at,
                }
            )
    return entries


def usage(model_usage: list[Any]) -> dict[str, float]:
    """Sum the session's usage into the figures that cost depends on."""
    totals = {
        "llm_prompt_tokens": 0,
        "llm_completion_tokens": 0,
        "stt_audio_seconds": 0.0,
        "tts_characters": 0,
    }
    for entry in model_usage:
        if isinstance(entry, LLMModelUsage):
            totals["llm_prompt_tokens"] += entry.input_tokens
            totals["llm_completion_tokens"] += entry.output_tokens
        elif isinstance(entry, STTModelUsage):
            totals["stt_audio_seconds"] += entry.audio_duration
        elif isinstance(entry, TTSModelUsage):
            totals["tts_characters"] += entry.characters_count
    totals["stt_audio_seconds"] = round(totals["stt_audio_seconds"], 3)
    return totals
