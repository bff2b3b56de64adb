"""A minimal production-style webhook receiver: verify, deduplicate by id, store.

    WEBHOOK_SECRET=... python examples/receiver.py --port 8790 --db events.sqlite3

Delivery is at least once, so the same event can arrive twice. The primary key
on `id` turns the second copy into a no-op that still returns 200, which stops
the sender from retrying.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from webhooks import WebhookVerificationError, verify  # noqa: E402

DB = web.AppKey("db", sqlite3.Connection)
SECRET = web.AppKey("secret", str)


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        event = verify(request.app[SECRET], request.headers, body)
    except WebhookVerificationError as err:
        return web.json_response({"error": str(err)}, status=401)

    # A real service would hand this to a queue or a thread. One small insert into
    # a local file is fast enough here.
    cursor = request.app[DB].execute(
        "INSERT OR IGNORE INTO events (id, call_id, sequence, event, body) VALUES (?, ?, ?, ?, ?)",
        (event["id"], event["call_id"], event["sequence"], event["event"], body.decode("utf-8")),
    )
    request.app[DB].commit()
    return web.json_response({"ok": True, "duplicate": cursor.rowcount == 0})


def create_app(*, secret: str, db_path: str) -> web.Application:
    connection = sqlite3.connect(db_path)
    connection.execute(
        "CREATE TABLE IF NOT EXISTS events"
        " (id TEXT PRIMARY KEY, call_id TEXT, sequence INTEGER, event TEXT, body TEXT)"
    )
    app = web.Application()
    app[DB] = connection
    app[SECRET] = secret
    app.router.add_post("/webhooks", receive)
    app.on_cleanup.append(lambda app: _close(app[DB]))
    return app


async def _close(connection: sqlite3.Connection) -> None:
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Verify, deduplicate and store call events.")
    parser.add_argument("--port", type=int, default=8790, help="TCP port on 127.0.0.1 (default: %(default)s)")
    parser.add_argument("--db", default="events.sqlite3", help="SQLite file for events (default: %(default)s)")
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        sys.exit("WEBHOOK_SECRET is missing: set it to the secret the agent signs with")
    web.run_app(create_app(secret=secret, db_path=args.db), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
