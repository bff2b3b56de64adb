"""Local stand-ins for the services a call talks to, and the settings that point at them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import dev_llm
from bench.receiver import SECRET
from settings import CONSOLE, Settings, load_settings
from tests.servers import serve


@dataclass(frozen=True)
class ScriptedLlm:
    """The dev LLM on 127.0.0.1, answering with the steps appended to `script`."""

    base_url: str
    script: dev_llm.ScriptedReplies


@contextlib.asynccontextmanager
async def scripted_llm() -> AsyncIterator[ScriptedLlm]:
    script = dev_llm.ScriptedReplies()
    async with serve(dev_llm.create_llm_app(script)) as url:
        yield ScriptedLlm(base_url=f"{url}/v1", script=script)


def console_settings(*, webhook_url: str, outbox_path: str, llm_url: str | None = None) -> Settings:
    """Settings of a text-only call whose webhooks go to `webhook_url`, signed with the bench secret.

    Without `llm_url` the settings name no model endpoint, so a session built from
    them must not be asked for a reply.
    """
    env = {
        "OPENAI_API_KEY": "bench-openai-key",
        "WEBHOOK_URL": webhook_url,
        "WEBHOOK_SECRET": SECRET.decode("utf-8"),
        "OUTBOX_PATH": outbox_path,
    }
    if llm_url is not None:
        env["OPENAI_BASE_URL"] = llm_url
    return load_settings(env, mode=CONSOLE)
