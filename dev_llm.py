"""A local OpenAI-compatible chat-completions endpoint for development and tests.

It answers `POST /v1/chat/completions` (streamed as server-sent events, or as
one JSON body) and `GET /v1/models`. Two ways to decide a reply:

- `KeywordReplies`, the dev stack's default, picks a tool from words in the
  caller's last message, so the console run exercises every tool with no
  OpenAI account.
- `ScriptedReplies` plays a fixed list of steps, for tests.

It is a stand-in for a model, not a model: its replies are canned.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


# A reply is either text for the caller or one tool call.
Reply = str | ToolCall
ReplyPolicy = Callable[[list[dict[str, Any]]], Reply]

REQUESTS = web.AppKey("requests", list)

_DEPARTMENTS = ("sales", "billing", "support")


class KeywordReplies:
    """Choose a reply from keywords in the last message, as a scripted caller would expect."""

    def __call__(self, messages: list[dict[str, Any]]) -> Reply:
        last = messages[-1] if messages else {}
        if last.get("role") == "tool":
            return _after_tool(str(last.get("content", "")))

        text = _last_user_text(messages)
        if text is None:
            return _greeting(messages)

        lowered = text.lower()
        if "note" in lowered:
            note = re.split(r"\bnote\b[:,]?", text, maxsplit=1, flags=re.IGNORECASE)[-1].strip(" :,.")
            return ToolCall("update_crm_note", {"note": note or text})
        for department in _DEPARTMENTS:
            if department in lowered:
                return ToolCall("transfer_call", {"destination": department})
        if "look up" in lowered or "lookup" in lowered:
            target = re.split(r"look ?up", text, maxsplit=1, flags=re.IGNORECASE)[-1].strip(" :,.")
            return ToolCall("lookup_crm", {"phone_or_name": target or text})
        if not _tool_called(messages, "record_intent"):
            return ToolCall("record_intent", {"intent": text[:120]})
        return "Understood. Is there anything else I can help you with?"


@dataclass
class ScriptedReplies:
    """Play `steps` in order; raise when a request arrives after the last step."""

    steps: list[Reply] = field(default_factory=list)

    def __call__(self, messages: list[dict[str, Any]]) -> Reply:
        if not self.steps:
            raise LookupError("the scripted LLM has no step left for this request")
        return self.steps.pop(0)


def create_llm_app(policy: ReplyPolicy | None = None) -> web.Application:
    """Build the endpoint. Every request body is kept in `app[REQUESTS]` for inspection."""
    app = web.Application()
    app[REQUESTS] = []
    reply_policy = policy or KeywordReplies()

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        request.app[REQUESTS].append(body)
        try:
            reply = reply_policy(body.get("messages", []))
        except LookupError as err:
            return web.json_response({"error": {"message": str(err)}}, status=500)

        if body.get("stream"):
            return await _stream(request, reply)
        return web.json_response(_completion(reply))

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "dev-llm", "object": "model"}]})

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    return app


async def _stream(request: web.Request, reply: Reply) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    for chunk in _chunks(reply):
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _chunks(reply: Reply) -> list[dict[str, Any]]:
    if isinstance(reply, ToolCall):
        delta = {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": f"call_{uuid.uuid4().hex[:12]}",
                    "type": "function",
                    "function": {"name": reply.name, "arguments": json.dumps(reply.arguments)},
                }
            ],
        }
        finish = "tool_calls"
    else:
        delta = {"role": "assistant", "content": reply}
        finish = "stop"

    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    return [
        _chunk({"index": 0, "delta": delta, "finish_reason": None}),
        _chunk({"index": 0, "delta": {}, "finish_reason": finish}),
        {**_chunk(None), "choices": [], "usage": usage},
    ]


def _chunk(choice: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-dev",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "dev-llm",
        "choices": [choice] if choice else [],
    }


def _completion(reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if isinstance(reply, ToolCall):
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": reply.name, "arguments": json.dumps(reply.arguments)},
            }
        ]
    else:
        message["content"] = reply
    return {
        "id": "chatcmpl-dev",
        "object": "chat.completion",
        "created": 0,
        "model": "dev-llm",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if "tool_calls" in message else "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content or "").strip() or None
    return None


def _tool_called(messages: list[dict[str, Any]], name: str) -> bool:
    for message in messages:
        for call in message.get("tool_calls") or []:
            if call.get("function", {}).get("name") == name:
                return True
    return False


def _greeting(messages: list[dict[str, Any]]) -> str:
    system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") in ("system", "developer"))
    match = re.search(r"<crm_record>\s*(\{.*?\})\s*</crm_record>", system, flags=re.DOTALL)
    if match:
        name = json.loads(match.group(1)).get("name")
        if name:
            return f"Hello {name}, this is the assistant from the business. How can I help you today?"
    return "Hello, this is the assistant from the business. How can I help you today?"


def _after_tool(output: str) -> str:
    lowered = output.lower()
    if "transfer" in lowered and "did not go through" in lowered:
        return "I'm sorry, I couldn't transfer you just now. Can I help you myself, or take a note for the team?"
    if "transfer" in lowered:
        return "You're being transferred now."
    if "note" in lowered:
        return "I've noted that for you. Anything else?"
    if "intent recorded" in lowered:
        return "Thanks, I've got that. How else can I help?"
    return "Thanks. Anything else I can help with?"
