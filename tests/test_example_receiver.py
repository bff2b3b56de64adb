"""The example receiver in examples/: verifies, deduplicates by id, stores."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path

import webhooks
from tests.conftest import ROOT
from tests.servers import serve

sys.path.insert(0, str(Path(ROOT) / "examples"))
import receiver as example  # noqa: E402

SECRET = "example-secret"


async def test_example_receiver_stores_once(tmp_path, http):
    db_path = str(tmp_path / "events.sqlite3")
    event = webhooks.build_event("call.intent", call_id="call_" + "b" * 32, sequence=2, fields={"intent": "नमस्ते"})
    headers = webhooks.sign(SECRET.encode(), msg_id=event.id, timestamp=int(event.timestamp), body=event.body)

    async with serve(example.create_app(secret=SECRET, db_path=db_path)) as url:
        async with http.post(f"{url}/webhooks", data=event.body, headers=headers) as first:
            first_body = await first.json()
        async with http.post(f"{url}/webhooks", data=event.body, headers=headers) as second:
            second_body = await second.json()
        tampered = event.body.replace("नमस्ते".encode(), b"hello")
        async with http.post(f"{url}/webhooks", data=tampered, headers=headers) as bad:
            bad_status = bad.status

    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        rows = connection.execute("SELECT id, sequence, body FROM events").fetchall()
    assert first.status == 200
    assert first_body == {"ok": True, "duplicate": False}
    assert second_body == {"ok": True, "duplicate": True}
    assert bad_status == 401
    assert rows == [(event.id, 2, event.body.decode("utf-8"))]
