"""Child process for tests/test_outbox_crash.py that stores or delivers outbox rows on the real clock.

Commands:
  store    Start a dispatcher, emit events of several calls through
           CallEmitter(queue=OutboxQueue(...)), print "stored", then block until killed.
  deliver  Print "ready", wait for a "go" line on stdin, then run delivery rounds
           until no row is pending or --deadline passes. Print a JSON summary line
           and exit with 0 when no row is pending, else 1.

The webhook secret is read from the WEBHOOK_SECRET environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

import aiohttp  # noqa: E402

import webhooks  # noqa: E402
from delivery import OutboxDispatcher, OutboxQueue, RetrySchedule, RowSender  # noqa: E402
from outbox import Outbox  # noqa: E402

# Short backoff, so that retries of the deliver command finish within a test.
SCHEDULE = RetrySchedule(initial_delay=0.05, max_delay=0.5)
IDLE_SLEEP = 0.02


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("store", "deliver"))
    parser.add_argument("--path", type=Path, required=True, help="outbox file")
    parser.add_argument("--url", required=True, help="webhook URL on 127.0.0.1")
    parser.add_argument("--lease-seconds", type=float, default=60.0, help="lease of each claimed row, in seconds")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="timeout of one POST, in seconds")
    parser.add_argument("--batch-size", type=int, default=32, help="maximum rows claimed per round")
    parser.add_argument("--calls", type=int, default=3, help="store: number of calls")
    parser.add_argument("--events-per-call", type=int, default=5, help="store: events emitted per call")
    parser.add_argument("--deadline", type=float, default=45.0, help="deliver: maximum run time, in seconds")
    return parser.parse_args(argv)


def note_fields(note_index: int) -> dict[str, object]:
    """Fields of a call.note event that match schemas/call.note.schema.json."""
    return {
        "phone": None,
        "room": "room-outbox-test",
        "contact_id": None,
        "note": f"Note {note_index + 1} of the call",
        "saved_to_crm": False,
    }


async def store(args: argparse.Namespace, outbox: Outbox, dispatcher: OutboxDispatcher) -> int:
    dispatcher.start()
    queue = OutboxQueue(outbox, dispatcher)
    emitters = [
        webhooks.CallEmitter(call_id=f"call_{uuid.uuid4().hex}", sender=None, queue=queue) for _ in range(args.calls)
    ]
    for note_index in range(args.events_per_call):
        for emitter in emitters:
            await emitter.emit("call.note", note_fields(note_index))

    print("stored", flush=True)
    await asyncio.Event().wait()
    return 0


async def deliver(args: argparse.Namespace, outbox: Outbox, dispatcher: OutboxDispatcher) -> int:
    print("ready", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != "go":
        print(f"expected 'go' on stdin, got {line.strip()!r}", file=sys.stderr)
        return 2

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.deadline
    attempted = 0
    while await outbox.pending_count() and loop.time() < deadline:
        count = await dispatcher.run_once()
        attempted += count
        if count == 0:
            await asyncio.sleep(IDLE_SLEEP)

    pending = await outbox.pending_count()
    print(json.dumps({"attempted": attempted, "pending": pending}), flush=True)
    return 0 if pending == 0 else 1


async def run(args: argparse.Namespace) -> int:
    secret = os.environ["WEBHOOK_SECRET"].encode("utf-8")
    policy = webhooks.RetryPolicy(request_timeout=args.request_timeout, connect_timeout=min(args.request_timeout, 3.0))
    outbox = await Outbox(args.path).open()
    async with aiohttp.ClientSession() as http:
        sender = webhooks.WebhookSender(url=args.url, secret=secret, session=http, policy=policy)
        row_sender = RowSender(webhook_sender=sender, crm=None, crm_timeout=3.0)
        dispatcher = OutboxDispatcher(
            outbox, row_sender, schedule=SCHEDULE, lease_seconds=args.lease_seconds, batch_size=args.batch_size
        )
        try:
            if args.command == "store":
                return await store(args, outbox, dispatcher)
            return await deliver(args, outbox, dispatcher)
        finally:
            await dispatcher.aclose()
            await outbox.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse_args(sys.argv[1:]))))
