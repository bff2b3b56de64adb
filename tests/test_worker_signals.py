"""SIGTERM to a running worker in the middle of a call, through the real command line.

`agent.py console --text` runs the same worker and job path as `dev`, without a
LiveKit server; a pseudo-terminal stands in for the user's terminal.
"""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import sys
import threading

import pytest

from tests.conftest import CRM_API_KEY, ROOT, WEBHOOK_SECRET, received_events
from tests.test_call_lifecycle import events_of, wait_for_event


class Terminal:
    """A pseudo-terminal whose output is read in the background so the child never blocks."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output.extend(chunk)

    def close(self) -> None:
        os.close(self.slave)
        os.close(self.master)


@pytest.fixture
def terminal():
    term = Terminal()
    yield term
    term.close()


async def test_sigterm_mid_call_delivers_call_ended(tmp_path, llm, crm, receiver, terminal):
    llm.script.steps += ["Hello Asha, how can I help?"]
    env = {
        **os.environ,
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": llm.base_url,
        "CRM_BASE_URL": crm.url,
        "CRM_API_KEY": CRM_API_KEY,
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CONSOLE_PHONE_NUMBER": "+919800000001",
        "OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"),
        "TRANSFER_SALES": "",
        "TRANSFER_BILLING": "",
        "TRANSFER_SUPPORT": "",
        "LIVEKIT_URL": "",
        "LIVEKIT_API_KEY": "",
        "LIVEKIT_API_SECRET": "",
    }
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "agent.py"), "console", "--text"],
        stdin=terminal.slave,
        stdout=terminal.slave,
        stderr=terminal.slave,
        env=env,
        cwd=str(tmp_path),
        start_new_session=True,
    )
    try:
        await wait_for_event(receiver, "call.started", timeout=60)
        process.send_signal(signal.SIGTERM)
        ended = await wait_for_event(receiver, "call.ended", timeout=30)
        exit_code = await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    assert exit_code == 0, terminal.output.decode(errors="replace")[-2000:]
    assert ended["outcome"] == "completed"
    assert ended["contact_id"] == "ct_1001"
    assert len(events_of(receiver, "call.ended")) == 1
    assert [e["payload"]["sequence"] for e in received_events(receiver)] == [1, 2]
