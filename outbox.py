"""Durable outbox of call events and CRM writes, in one SQLite file per host.

Every webhook event and every CRM write that a call produces is stored here
before the code that produced it returns, and `delivery.py` sends it from here.
All job processes of a worker on one host share the file: SQLite's WAL mode lets
them write concurrently, and a lease on each claimed row keeps two processes
from sending the same row at the same time.

Rows are ordered in streams: each call has one stream for its webhook events and
one for its CRM writes. Only the lowest pending sequence of a stream may be
claimed, so a failing row holds back the later rows of its stream and nothing
else.

Run `python outbox.py --help` for the operator command: list pending and dead
rows, redeliver them, and purge delivered rows after the retention period.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_PATH = PROJECT_DIR / "data" / "outbox.sqlite3"
DEFAULT_RETENTION_DAYS = 7.0

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"

WEBHOOK = "webhook"
CRM_NOTE = "crm_note"
CRM_ACTIVITY = "crm_activity"

# How long another process waits for a write lock before SQLite raises "database is locked".
_BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    call_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    finished_at REAL,
    UNIQUE (stream, sequence)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, stream, sequence);
CREATE INDEX IF NOT EXISTS outbox_call ON outbox (call_id);
"""

_COLUMNS = (
    "id, kind, call_id, stream, sequence, name, body, created_at, status, attempts, "
    "next_attempt_at, lease_owner, lease_until, last_status, last_error, finished_at"
)

T = TypeVar("T")


@dataclass(frozen=True)
class OutboxRow:
    """One stored event or CRM write. `body` is the exact bytes to send."""

    id: str
    kind: str
    call_id: str
    stream: str
    sequence: int
    name: str
    body: bytes
    created_at: float
    status: str = PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    lease_owner: str | None = None
    lease_until: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    finished_at: float | None = None

    def json(self) -> Any:
        return json.loads(self.body)


def new_owner_id() -> str:
    """Return a lease owner id unique to this process and object."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Outbox:
    """The outbox file. Every method runs its SQLite work on one private thread.

    SQLite calls block, so they never run on the event loop: a write costs the
    loop only a hand-off to the thread and back.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> Outbox:
        await self._run(self._open)
        return self

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def put(self, row: OutboxRow) -> None:
        """Store `row`; once this returns, the row survives a crash of this process."""
        await self._run(self._insert, row)

    async def claim(
        self, owner: str, *, lease_seconds: float, limit: int, call_id: str | None = None
    ) -> list[OutboxRow]:
        """Lease up to `limit` due rows, at most one per stream: the stream's lowest pending sequence.

        With `call_id`, only rows of that call are claimed.
        """
        return await self._run(self._claim, owner, lease_seconds, limit, call_id)

    async def mark_delivered(self, row: OutboxRow, *, status: int | None) -> None:
        await self._run(self._finish, row, DELIVERED, status, None)

    async def mark_dead(self, row: OutboxRow, *, status: int | None, error: str | None) -> None:
        await self._run(self._finish, row, DEAD, status, error)

    async def reschedule(self, row: OutboxRow, *, next_attempt_at: float, status: int | None, error: str | None) -> None:
        """Record a failed attempt and release the lease until `next_attempt_at`."""
        await self._run(self._reschedule, row, next_attempt_at, status, error)

    async def release(self, owner: str) -> int:
        """Give up the leases `owner` holds on pending rows, so another process can send them now."""
        return await self._run(self._release, owner)

    async def pending_count(self, call_id: str | None = None) -> int:
        return await self._run(self._pending_count, call_id)

    async def next_due_at(self) -> float | None:
        """Return the earliest time a pending row may be attempted, or None when none is pending."""
        return await self._run(self._next_due_at)

    async def rows(self, *, status: str | None = None, call_id: str | None = None) -> list[OutboxRow]:
        return await self._run(self._select, status, call_id)

    async def redeliver(self, *, event_id: str | None = None, call_id: str | None = None, all_dead: bool = False) -> int:
        """Put dead rows back in line for an attempt now; return how many."""
        return await self._run(self._redeliver, event_id, call_id, all_dead)

    async def purge(self, *, older_than_seconds: float) -> int:
        """Delete delivered rows finished more than `older_than_seconds` ago; return how many."""
        return await self._run(self._purge, older_than_seconds)

    # SQLite work, on the private thread.

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL keeps every committed row across a crash of the
        # process; only a power loss can drop the last transactions.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.executescript(_SCHEMA)
        self._connection = connection

    def _close(self) -> None:
        assert self._connection is not None
        self._connection.close()
        self._connection = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the outbox is not open; call `await outbox.open()` first")
        return self._connection

    def _insert(self, row: OutboxRow) -> None:
        self._db.execute(
            "INSERT INTO outbox (id, kind, call_id, stream, sequence, name, body, created_at, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.kind, row.call_id, row.stream, row.sequence, row.name, row.body, row.created_at, row.created_at),
        )

    def _claim(self, owner: str, lease_seconds: float, limit: int, call_id: str | None) -> list[OutboxRow]:
        now = self._clock()
        call_filter = "" if call_id is None else " AND o.call_id = ?"
        args: tuple[Any, ...] = (now, now) if call_id is None else (now, now, call_id)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM outbox AS o"
                " WHERE o.status = 'pending' AND o.next_attempt_at <= ?"
                " AND (o.lease_until IS NULL OR o.lease_until <= ?)"
                f"{call_filter}"
                " AND o.sequence = (SELECT MIN(p.sequence) FROM outbox AS p"
                "                   WHERE p.stream = o.stream AND p.status = 'pending')"
                " ORDER BY o.next_attempt_at, o.created_at LIMIT ?",
                (*args, limit),
            ).fetchall()
            lease_until = now + lease_seconds
            db.executemany(
                "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                [(owner, lease_until, row[0]) for row in rows],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [_row(values, lease_owner=owner, lease_until=lease_until) for values in rows]

    def _finish(self, row: OutboxRow, status: str, http_status: int | None, error: str | None) -> None:
        self._db.execute(
            "UPDATE outbox SET status = ?, attempts = attempts + 1, last_status = ?, last_error = ?,"
            " finished_at = ?, lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
            (status, http_status, error, self._clock(), row.id, row.lease_owner),
        )

    def _reschedule(self, row: OutboxRow, next_attempt_at: float, http_status: int | None, error: str | None) -> None:
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_status = ?, last_error = ?,"
            " lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
            (next_attempt_at, http_status, error, row.id, row.lease_owner),
        )

    def _pending_count(self, call_id: str | None) -> int:
        if call_id is None:
            query, args = "SELECT COUNT(*) FROM outbox WHERE status = 'pending'", ()
        else:
            query, args = "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND call_id = ?", (call_id,)
        return int(self._db.execute(query, args).fetchone()[0])

    def _next_due_at(self) -> float | None:
        # Only stream heads count, because a row behind a failing head cannot be claimed
        # at its own next_attempt_at. Counting it would make the delivery loop poll every 10 ms.
        value = self._db.execute(
            "SELECT MIN(MAX(o.next_attempt_at, COALESCE(o.lease_until, 0))) FROM outbox AS o"
            " WHERE o.status = 'pending'"
            " AND o.sequence = (SELECT MIN(p.sequence) FROM outbox AS p"
            "                   WHERE p.stream = o.stream AND p.status = 'pending')"
        ).fetchone()[0]
        return None if value is None else float(value)

    def _select(self, status: str | None, call_id: str | None) -> list[OutboxRow]:
        clauses, args = [], []
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if call_id is not None:
            clauses.append("call_id = ?")
            args.append(call_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {_COLUMNS} FROM outbox{where} ORDER BY call_id, stream, sequence"
        return [_row(values) for values in self._db.execute(query, args).fetchall()]

    def _redeliver(self, event_id: str | None, call_id: str | None, all_dead: bool) -> int:
        if sum((event_id is not None, call_id is not None, all_dead)) != 1:
            raise ValueError("redeliver needs exactly one of event_id, call_id or all_dead")

        # created_at and attempts restart, so a redelivered row gets the full retry schedule again.
        base = (
            "UPDATE outbox SET status = 'pending', next_attempt_at = :now, created_at = :now, attempts = 0,"
            " finished_at = NULL, lease_owner = NULL, lease_until = NULL WHERE status = 'dead'"
        )
        now = self._clock()
        if event_id is not None:
            cursor = self._db.execute(base + " AND id = :target", {"now": now, "target": event_id})
        elif call_id is not None:
            cursor = self._db.execute(base + " AND call_id = :target", {"now": now, "target": call_id})
        else:
            cursor = self._db.execute(base, {"now": now})
        return cursor.rowcount

    def _release(self, owner: str) -> int:
        cursor = self._db.execute(
            "UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ? AND status = 'pending'",
            (owner,),
        )
        return cursor.rowcount

    def _purge(self, older_than_seconds: float) -> int:
        cutoff = self._clock() - older_than_seconds
        cursor = self._db.execute("DELETE FROM outbox WHERE status = 'delivered' AND finished_at < ?", (cutoff,))
        return cursor.rowcount


def _row(values: Sequence[Any], **overrides: Any) -> OutboxRow:
    row = OutboxRow(*values)
    if overrides:
        row = OutboxRow(**{**row.__dict__, **overrides})
    return row


# Operator command


def main(argv: Sequence[str] | None = None) -> int:
    """Run the operator command and return its exit status."""
    args = _parser().parse_args(argv)
    return asyncio.run(_command(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outbox.py",
        description="Inspect and repair the outbox of webhook events and CRM writes.",
    )
    parser.add_argument(
        "--path",
        type=Path,
        default=Path(os.environ.get("OUTBOX_PATH") or DEFAULT_PATH),
        help="outbox file (default: OUTBOX_PATH, else %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    show = commands.add_parser("list", help="list pending and dead rows, grouped by call")
    show.add_argument("--call", help="only this call id")
    show.add_argument("--all", action="store_true", help="include delivered rows")

    redeliver = commands.add_parser("redeliver", help="send dead rows again, from now on")
    target = redeliver.add_mutually_exclusive_group(required=True)
    target.add_argument("--event", help="one row, by event id")
    target.add_argument("--call", help="every dead row of one call")
    target.add_argument("--all-dead", action="store_true", help="every dead row")

    purge = commands.add_parser("purge", help="delete delivered rows older than the retention period")
    purge.add_argument(
        "--older-than-days",
        type=float,
        default=DEFAULT_RETENTION_DAYS,
        help="retention period in days (default: %(default)s); bodies hold personal data",
    )
    return parser


async def _command(args: argparse.Namespace) -> int:
    if not args.path.exists():
        print(f"error: outbox file {args.path} does not exist; check --path or OUTBOX_PATH", file=sys.stderr)
        return 2

    outbox = await Outbox(args.path).open()
    try:
        if args.command == "list":
            rows = await outbox.rows(call_id=args.call)
            _print_rows(row for row in rows if args.all or row.status != DELIVERED)
        elif args.command == "redeliver":
            count = await outbox.redeliver(event_id=args.event, call_id=args.call, all_dead=args.all_dead)
            if count == 0:
                print("no dead row matched; `python outbox.py list` shows the rows and their status", file=sys.stderr)
                return 1
            print(f"{count} dead row(s) queued for delivery; a running worker sends them within seconds")
        else:
            count = await outbox.purge(older_than_seconds=args.older_than_days * 86400)
            print(f"{count} delivered row(s) older than {args.older_than_days:g} days deleted")
    finally:
        await outbox.aclose()
    return 0


def _print_rows(rows: Iterable[OutboxRow]) -> None:
    current_call = None
    shown = 0
    for row in rows:
        if row.call_id != current_call:
            current_call = row.call_id
            print(f"call {row.call_id}")
        status = f"{row.last_status}" if row.last_status is not None else "-"
        print(
            f"  {row.id}  {row.kind:<12} {row.name:<22} seq={row.sequence:<3} {row.status:<9}"
            f" attempts={row.attempts} last_status={status} last_error={row.last_error or '-'}"
        )
        shown += 1
    if shown == 0:
        print("no rows to show (delivered rows appear with --all)")


if __name__ == "__main__":
    sys.exit(main())
