"""Local development stack: a sample CRM on SQLite, a webhook receiver and a keyword LLM, on 127.0.0.1.

Run `python dev_server.py` in one terminal and the agent in another. The CRM implements the
REST contract that crm_client.py uses. The receiver checks both webhook signature schemes
and prints one line per event. The LLM (dev_llm.py) is an OpenAI-compatible endpoint with
canned replies, so the console works without an OpenAI account.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from dotenv import load_dotenv

import dev_llm
import webhooks

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_DB_PATH = PROJECT_DIR / "data" / "dev_crm.sqlite3"
DEFAULT_CRM_PORT = 8780
DEFAULT_WEBHOOK_PORT = 8781
DEFAULT_LLM_PORT = 8782
HOST = "127.0.0.1"

MAX_NOTE_CHARS = 10_000
MAX_ACTIVITY_TEXT_CHARS = 10_000
MAX_KEPT_EVENTS = 1_000
MAX_PRINTED_FIELD_CHARS = 80

DB_PATH: web.AppKey[str] = web.AppKey("db_path", str)
EVENTS: web.AppKey[list[dict[str, Any]]] = web.AppKey("events", list)
KEPT_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "X-Webhook-Signature")

# Fictional contacts. 555-01xx numbers are reserved for fiction in North America.
SAMPLE_CONTACTS = (
    ("ct_1001", "Asha Rao", "+919800000001", "asha.rao@example.com", "Acme Logistics", 2),
    ("ct_1002", "Vikram Mehta", "+919800000002", "vikram.mehta@example.com", "Mehta Textiles", 0),
    ("ct_1003", "Dana Lee", "+14155550100", "dana.lee@example.com", "Northwind Labs", 1),
    ("ct_1004", "Priya Nair", "+919800000003", "priya.nair@example.com", "Acme Logistics", 0),
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    phone TEXT,
    email TEXT,
    company TEXT,
    open_tickets INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id TEXT NOT NULL REFERENCES contacts(id),
    text TEXT NOT NULL,
    source TEXT,
    call_id TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS activities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id TEXT NOT NULL REFERENCES contacts(id),
    type TEXT NOT NULL,
    call_id TEXT,
    phone TEXT,
    outcome TEXT,
    duration_seconds REAL,
    intent TEXT,
    summary TEXT,
    transfer_to TEXT,
    details TEXT,
    created_at TEXT NOT NULL
);
"""

CONTACT_COLUMNS = "id, name, phone, email, company, open_tickets"
ACTIVITY_TEXT_FIELDS = ("call_id", "phone", "outcome", "intent", "summary", "transfer_to")

T = TypeVar("T")


# --- SQLite storage ---------------------------------------------------------------------------


@contextmanager
def _connect(db_path: str) -> Iterator[sqlite3.Connection]:
    """Open a connection, commit on success, roll back on error and always close it."""
    with closing(sqlite3.connect(db_path)) as connection:
        connection.row_factory = sqlite3.Row
        with connection:
            yield connection


async def _run_db(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # Every query runs in a worker thread with its own connection, so slow disk I/O does not
    # block the event loop and no connection is shared between threads.
    return await asyncio.to_thread(function, *args, **kwargs)


def init_db(db_path: str) -> None:
    """Create the tables and insert the sample contacts when the contacts table is empty."""
    with _connect(db_path) as connection:
        connection.executescript(SCHEMA)
        _add_missing_columns(connection)
        (count,) = connection.execute("SELECT COUNT(*) FROM contacts").fetchone()
        if count == 0:
            connection.executemany(
                f"INSERT INTO contacts ({CONTACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", SAMPLE_CONTACTS
            )


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    """Add columns that newer versions of this file use to a database made by an older one."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(activities)")}
    if "details" not in columns:
        connection.execute("ALTER TABLE activities ADD COLUMN details TEXT")


def find_contacts(db_path: str, *, phone: str | None, query: str | None) -> list[dict[str, Any]]:
    """Return contacts with exactly this phone, or whose name, company or email contains `query`."""
    with _connect(db_path) as connection:
        if phone is not None:
            rows = connection.execute(
                f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE phone = ? ORDER BY id", (phone,)
            ).fetchall()
        else:
            # instr() matches the text literally, so "%" and "_" in a query are no wildcards.
            # NOTE: SQLite lower() folds only ASCII letters, so "Ł" does not match "ł".
            rows = connection.execute(
                f"SELECT {CONTACT_COLUMNS} FROM contacts"
                " WHERE instr(lower(name), lower(:q)) > 0"
                " OR instr(lower(coalesce(company, '')), lower(:q)) > 0"
                " OR instr(lower(coalesce(email, '')), lower(:q)) > 0"
                " ORDER BY id",
                {"q": query},
            ).fetchall()
    return [dict(row) for row in rows]


def get_contact(db_path: str, contact_id: str) -> dict[str, Any] | None:
    """Return the contact with its notes and activities, or None when the id is unknown."""
    with _connect(db_path) as connection:
        row = connection.execute(
            f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE id = ?", (contact_id,)
        ).fetchone()
        if row is None:
            return None

        notes = connection.execute(
            "SELECT * FROM notes WHERE contact_id = ? ORDER BY id", (contact_id,)
        ).fetchall()
        activities = connection.execute(
            "SELECT * FROM activities WHERE contact_id = ? ORDER BY id", (contact_id,)
        ).fetchall()

    contact = dict(row)
    contact["notes"] = [dict(note) for note in notes]
    contact["activities"] = [_activity(dict(activity)) for activity in activities]
    return contact


def _activity(row: dict[str, Any]) -> dict[str, Any]:
    details = row.pop("details", None)
    row["details"] = json.loads(details) if details else {}
    return row


def insert_row(db_path: str, table: str, contact_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Insert a note or activity for the contact and return the stored row, or None for an unknown contact."""
    if table not in ("notes", "activities"):
        raise ValueError(f"unknown table {table!r}")

    values = {"contact_id": contact_id, **fields, "created_at": _utc_now()}
    columns = ", ".join(values)
    placeholders = ", ".join(f":{column}" for column in values)

    with _connect(db_path) as connection:
        exists = connection.execute("SELECT 1 FROM contacts WHERE id = ?", (contact_id,)).fetchone()
        if exists is None:
            return None

        cursor = connection.execute(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", values)
        row = connection.execute(f"SELECT * FROM {table} WHERE id = ?", (cursor.lastrowid,)).fetchone()
    return dict(row)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- CRM application ----------------------------------------------------------------------------


class InvalidBody(ValueError):
    """A request body that does not match the CRM contract. The message names the field."""


def create_crm_app(*, db_path: str, api_key: str | None) -> web.Application:
    """Build the sample CRM app on the SQLite file `db_path`.

    When `api_key` is set, every request must carry "Authorization: Bearer <api_key>".
    The tables are created and seeded when the app starts.
    """
    app = web.Application(middlewares=[_json_errors, _bearer_auth(api_key)])
    app[DB_PATH] = db_path

    app.router.add_get("/contacts/search", handle_search)
    app.router.add_get("/contacts/{contact_id}", handle_get_contact)
    app.router.add_post("/contacts/{contact_id}/notes", handle_add_note)
    app.router.add_post("/contacts/{contact_id}/activities", handle_add_activity)

    async def init_storage(app: web.Application) -> None:
        await _run_db(init_db, app[DB_PATH])

    app.on_startup.append(init_storage)
    return app


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """Send aiohttp's HTTP errors, such as 404 for an unknown route, as JSON."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return _reject(request, err.status, err.reason, headers=err.headers)


def _bearer_auth(api_key: str | None) -> Callable[..., Any]:
    expected = f"Bearer {api_key}".encode() if api_key else None

    @web.middleware
    async def check_bearer(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if expected is None:
            return await handler(request)

        received = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(received, expected):
            return _reject(
                request,
                401,
                "missing or invalid bearer token; send 'Authorization: Bearer <CRM_API_KEY>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return check_bearer


def _reject(request: web.Request, status: int, message: str, *, headers: Any = None) -> web.Response:
    """Log the rejected request and build the JSON error response {"error": message}."""
    # The path and message contain no query string, so no phone number reaches the log.
    logger.warning(
        "CRM request rejected: %s %s -> %d %s",
        request.method,
        request.path,
        status,
        message,
        extra={"method": request.method, "path": request.path, "status": status, "error": message},
    )

    response = web.json_response({"error": message}, status=status)
    if headers:
        for name in ("WWW-Authenticate", "Allow"):
            if name in headers:
                response.headers[name] = headers[name]
    return response


async def handle_search(request: web.Request) -> web.Response:
    phone = request.query.get("phone")
    query = request.query.get("query")
    if (phone is None) == (query is None):
        return _reject(request, 400, "pass exactly one of the query parameters 'phone' or 'query'")
    if not (phone or query or "").strip():
        return _reject(request, 400, "the search value is empty")

    results = await _run_db(find_contacts, request.app[DB_PATH], phone=phone, query=query)
    return web.json_response({"results": results})


async def handle_get_contact(request: web.Request) -> web.Response:
    contact_id = request.match_info["contact_id"]
    contact = await _run_db(get_contact, request.app[DB_PATH], contact_id)
    if contact is None:
        return _reject(request, 404, f"contact {contact_id!r} not found")
    return web.json_response(contact)


async def handle_add_note(request: web.Request) -> web.Response:
    return await _insert_from_body(request, "notes", parse_note)


async def handle_add_activity(request: web.Request) -> web.Response:
    return await _insert_from_body(request, "activities", parse_activity)


async def _insert_from_body(
    request: web.Request, table: str, parse: Callable[[object], dict[str, Any]]
) -> web.Response:
    contact_id = request.match_info["contact_id"]
    try:
        fields = parse(await _read_json(request))
    except InvalidBody as err:
        return _reject(request, 400, str(err))

    row = await _run_db(insert_row, request.app[DB_PATH], table, contact_id, fields)
    if row is None:
        return _reject(request, 404, f"contact {contact_id!r} not found")
    return web.json_response(row, status=201)


async def _read_json(request: web.Request) -> object:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise InvalidBody(f"request body is not valid JSON: {err}") from err


def parse_note(body: object) -> dict[str, Any]:
    """Validate a note body {"text": str, "source": str?, "call_id": str?} and return its columns."""
    if not isinstance(body, dict):
        raise InvalidBody("request body must be a JSON object such as {\"text\": \"...\"}")

    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidBody("'text' is missing or empty; it must be a non-empty string")
    if len(text) > MAX_NOTE_CHARS:
        raise InvalidBody(f"'text' has {len(text)} characters; the maximum is {MAX_NOTE_CHARS}")

    return {
        "text": text,
        "source": _optional_text(body, "source", MAX_ACTIVITY_TEXT_CHARS),
        "call_id": _optional_text(body, "call_id", MAX_ACTIVITY_TEXT_CHARS),
    }


def parse_activity(body: object) -> dict[str, Any]:
    """Validate an activity body {"type": str, ...} and return its columns; other keys go to `details`."""
    if not isinstance(body, dict):
        raise InvalidBody("request body must be a JSON object such as {\"type\": \"call\"}")

    activity_type = body.get("type")
    if not isinstance(activity_type, str) or not activity_type.strip():
        raise InvalidBody("'type' is missing or empty; it must be a string such as 'call'")

    duration = body.get("duration_seconds")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration < float("inf")
    ):
        raise InvalidBody("'duration_seconds' must be a non-negative number or null")

    fields: dict[str, Any] = {"type": activity_type, "duration_seconds": duration}
    for name in ACTIVITY_TEXT_FIELDS:
        fields[name] = _optional_text(body, name, MAX_ACTIVITY_TEXT_CHARS)
    # Keys without a column of their own (timing, ended_by) are kept as sent, for inspection.
    extra = {key: value for key, value in body.items() if key not in fields}
    fields["details"] = json.dumps(extra, ensure_ascii=False)
    return fields


def _optional_text(body: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidBody(f"{name!r} must be a string or null, got {type(value).__name__}")
    if len(value) > max_chars:
        raise InvalidBody(f"{name!r} has {len(value)} characters; the maximum is {max_chars}")
    return value


# --- Webhook receiver ---------------------------------------------------------------------------


def create_receiver_app(*, secret: str | None) -> web.Application:
    """Build the webhook receiver: POST /webhooks checks and keeps events, GET /events lists them.

    Without a secret the receiver cannot check signatures, so it accepts every JSON event
    and marks both schemes as unchecked.
    """
    app = web.Application()
    app[EVENTS] = []
    secret_bytes = secret.encode("utf-8") if secret else None

    async def receive(request: web.Request) -> web.Response:
        return await handle_webhook(request, secret=secret_bytes)

    app.router.add_post("/webhooks", receive)
    app.router.add_get("/events", handle_list_events)
    return app


async def handle_webhook(request: web.Request, *, secret: bytes | None) -> web.Response:
    """Check, keep and print one event. Returns 400 for a body that is not a JSON object, else 401 for a failed check."""
    body = await request.read()
    standard_valid, legacy_valid, errors = _verify_signatures(secret, request, body)

    payload: object = None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:
        errors.insert(0, f"body is not valid JSON: {err}")

    event = {
        "payload": payload,
        "headers": {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers},
        "standard_valid": standard_valid,
        "legacy_valid": legacy_valid,
        "error": "; ".join(errors) or None,
    }
    _keep_event(request.app[EVENTS], event)
    print(format_event_line(event), flush=True)

    if not isinstance(payload, dict):
        return web.json_response({"error": event["error"] or "body must be a JSON object"}, status=400)
    if standard_valid is False or legacy_valid is False:
        return web.json_response({"error": event["error"]}, status=401)
    return web.json_response({"ok": True})


def _verify_signatures(
    secret: bytes | None, request: web.Request, body: bytes
) -> tuple[bool | None, bool | None, list[str]]:
    """Check the Standard Webhooks and the X-Webhook-Signature schemes. None means unchecked.

    webhooks.verify also checks X-Webhook-Signature when it is present, and that the body is a
    JSON object whose "id" equals webhook-id. So a wrong legacy signature fails both checks.
    """
    if secret is None:
        return None, None, []

    errors: list[str] = []
    standard_valid = legacy_valid = True
    try:
        webhooks.verify(secret, request.headers, body)
    except webhooks.WebhookVerificationError as err:
        standard_valid = False
        errors.append(f"standard signature invalid: {err}")

    try:
        webhooks.verify_body_signature(secret, body, request.headers.get("X-Webhook-Signature"))
    except webhooks.WebhookVerificationError as err:
        legacy_valid = False
        errors.append(f"X-Webhook-Signature invalid: {err}")

    return standard_valid, legacy_valid, errors


def _keep_event(events: list[dict[str, Any]], event: dict[str, Any]) -> None:
    events.append(event)
    # A dev server may run for days, so only the latest events are kept.
    del events[:-MAX_KEPT_EVENTS]


def format_event_line(event: dict[str, Any]) -> str:
    """Format an event as one line: "call_8f1c seq=2 call.intent standard=valid legacy=valid"."""
    payload = event["payload"] if isinstance(event["payload"], dict) else {}
    call_id = _printable(payload.get("call_id"))
    sequence = _printable(payload.get("sequence"))
    name = _printable(payload.get("event"))
    standard = _check_label(event["standard_valid"])
    legacy = _check_label(event["legacy_valid"])
    return f"{call_id} seq={sequence} {name} standard={standard} legacy={legacy}"


def _printable(value: object) -> str:
    if value is None:
        return "-"
    # The body is untrusted, so control characters that could drive the terminal are replaced.
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text[:MAX_PRINTED_FIELD_CHARS]


def _check_label(valid: bool | None) -> str:
    if valid is None:
        return "unchecked"
    return "valid" if valid else "invalid"


async def handle_list_events(request: web.Request) -> web.Response:
    return web.json_response(request.app[EVENTS])


# --- Command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the sample CRM, the webhook receiver and the keyword LLM on 127.0.0.1.")
    parser.add_argument(
        "--crm-port", type=_port, default=DEFAULT_CRM_PORT, help="TCP port of the sample CRM (default: %(default)s)"
    )
    parser.add_argument(
        "--webhook-port",
        type=_port,
        default=DEFAULT_WEBHOOK_PORT,
        help="TCP port of the webhook receiver (default: %(default)s)",
    )
    parser.add_argument(
        "--llm-port",
        type=_port,
        default=DEFAULT_LLM_PORT,
        help="TCP port of the keyword LLM, an OpenAI-compatible endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--db", type=Path, default=DEFAULT_DB_PATH, help="SQLite file of the sample CRM (default: %(default)s)"
    )
    return parser.parse_args(argv)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}; expected a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}; expected a number from 1 to 65535")
    return port


def main(argv: list[str] | None = None) -> None:
    """Load .env next to this file, start both servers on 127.0.0.1 and serve until Ctrl-C."""
    load_dotenv(PROJECT_DIR / ".env", override=False)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.db.parent.mkdir(parents=True, exist_ok=True)

    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        print("Stopped.")


async def _serve(args: argparse.Namespace) -> None:
    api_key = _env("CRM_API_KEY")
    secret = _env("WEBHOOK_SECRET")

    # The access log is off because it would write each search URL, phone number included.
    crm_runner = web.AppRunner(create_crm_app(db_path=str(args.db), api_key=api_key), access_log=None)
    receiver_runner = web.AppRunner(create_receiver_app(secret=secret), access_log=None)
    llm_runner = web.AppRunner(dev_llm.create_llm_app(), access_log=None)
    try:
        await _start(crm_runner, args.crm_port, "--crm-port")
        await _start(receiver_runner, args.webhook_port, "--webhook-port")
        await _start(llm_runner, args.llm_port, "--llm-port")
        _print_banner(args, api_key=api_key, secret=secret)
        await asyncio.Event().wait()
    finally:
        await llm_runner.cleanup()
        await receiver_runner.cleanup()
        await crm_runner.cleanup()


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


async def _start(runner: web.AppRunner, port: int, option: str) -> None:
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, port).start()
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise SystemExit(f"cannot listen on {HOST}:{port}: {reason}; pick a free port with {option}") from err


def _print_banner(args: argparse.Namespace, *, api_key: str | None, secret: str | None) -> None:
    crm_url = f"http://{HOST}:{args.crm_port}"
    webhook_url = f"http://{HOST}:{args.webhook_port}/webhooks"

    print(f"Sample CRM:       {crm_url} (SQLite file {args.db})")
    print(f"Webhook receiver: {webhook_url} (events listed at http://{HOST}:{args.webhook_port}/events)")
    print(f"Keyword LLM:      http://{HOST}:{args.llm_port}/v1 (OpenAI-compatible, canned replies)")
    if api_key is None:
        print("CRM_API_KEY is unset, so the sample CRM accepts requests without a bearer token.")
    else:
        print("The sample CRM requires 'Authorization: Bearer <CRM_API_KEY>' from the environment.")
    if secret is None:
        print("WEBHOOK_SECRET is unset, so webhook signatures cannot be checked. Events are marked unchecked.")
    print()
    print("Put these lines in .env for the agent:")
    print(f"CRM_BASE_URL={crm_url}")
    print(f"WEBHOOK_URL={webhook_url}")
    print(f"OPENAI_BASE_URL=http://{HOST}:{args.llm_port}/v1")
    if api_key is None or secret is None:
        # The agent rejects CRM_BASE_URL without CRM_API_KEY and WEBHOOK_URL without WEBHOOK_SECRET.
        print("The agent also needs CRM_API_KEY and WEBHOOK_SECRET. Set them in .env, which this server")
        print("reads too, and restart it so that both sides check the same values.")
    print()
    print("Serving until Ctrl-C.", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
