"""Async client for a generic REST CRM: contact lookup, call notes and call activities.

Every request is relative to the CRM base URL and carries `Authorization: Bearer <key>`:

- GET  /contacts/search?phone=<E.164> or ?query=<text> returns {"results": [contact, ...]}
- POST /contacts/{id}/notes with {"text", "source": "ai-agent", "call_id"}
- POST /contacts/{id}/activities with {"type": "call", ...activity fields}

To connect HubSpot, Salesforce or another CRM, change only this module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import yarl

logger = logging.getLogger(__name__)

NOTE_SOURCE = "ai-agent"
READ_CHUNK_BYTES = 65_536

REASONS = frozenset(
    {
        "timeout",
        "connection_failed",
        "unauthorized",
        "not_found",
        "rate_limited",
        "server_error",
        "http_error",
        "invalid_response",
    }
)


@dataclass(frozen=True)
class Contact:
    """A CRM contact as returned by a search."""

    id: str
    name: str | None = None
    email: str | None = None
    company: str | None = None
    open_tickets: int | None = None


class CrmError(Exception):
    """A failed CRM request.

    `reason` is one of REASONS. `status` is the HTTP status when a response arrived.
    `retry_after` is the Retry-After value in seconds of a 429 response, when present.
    The message never contains the response body, the URL query, a phone number or the API key.
    """

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown CrmError reason {reason!r}; expected one of {sorted(REASONS)}")

        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(_describe_error(reason, status, retry_after))


def _describe_error(reason: str, status: int | None, retry_after: float | None) -> str:
    message = f"CRM request failed with reason {reason!r}"
    if status is not None:
        message += f" and HTTP status {status}"
    if retry_after is not None:
        message += f", retry after {retry_after:g} seconds"
    return message + "."


class CrmClient:
    """Client for the CRM REST contract above, using a session that the caller owns and closes.

    `max_response_bytes` caps every response body that the client reads. `max_field_chars`
    caps each string field of a contact.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        max_response_bytes: int = 1_048_576,
        max_field_chars: int = 500,
    ):
        base = yarl.URL(base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError("CRM base URL must be an absolute http(s) URL such as http://127.0.0.1:8780")
        if not api_key:
            raise ValueError("CRM API key is empty; set CRM_API_KEY")
        if max_response_bytes <= 0 or max_field_chars <= 0:
            raise ValueError("max_response_bytes and max_field_chars must be positive")

        self._base = base.with_query(None).with_fragment(None)
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._session = session
        self._max_response_bytes = max_response_bytes
        self._max_field_chars = max_field_chars

    async def find_by_phone(self, phone_e164: str, *, timeout: float) -> Contact | None:
        """Return the first contact whose phone is `phone_e164`, or None.

        A blank number returns None without a request. Raises CrmError.
        """
        if not phone_e164.strip():
            return None
        return await self._search("find_by_phone", {"phone": phone_e164}, timeout=timeout)

    async def search(self, query: str, *, timeout: float) -> Contact | None:
        """Return the first contact matching a name or free-text `query`, or None.

        A blank query returns None without a request, because it would match any contact.
        Raises CrmError.
        """
        if not query.strip():
            return None
        return await self._search("search", {"query": query}, timeout=timeout)

    async def add_note(self, contact_id: str, *, text: str, call_id: str, timeout: float) -> None:
        """Add a note from the agent to the contact. Raises CrmError."""
        payload = {"text": text, "source": NOTE_SOURCE, "call_id": call_id}
        await self._post("add_note", contact_id, "notes", payload, timeout=timeout)

    async def log_call(self, contact_id: str, activity: Mapping[str, object], *, timeout: float) -> None:
        """Log a call activity on the contact, sent as {"type": "call", **activity}. Raises CrmError."""
        payload = {"type": "call", **activity}
        await self._post("log_call", contact_id, "activities", payload, timeout=timeout)

    async def _search(self, operation: str, params: dict[str, str], *, timeout: float) -> Contact | None:
        url = self._url("contacts", "search")
        try:
            body = await self._get_json(url, params, timeout=timeout)
            return parse_search_response(body, max_field_chars=self._max_field_chars)
        except CrmError as err:
            _log_failure(operation, err)
            raise

    async def _post(
        self, operation: str, contact_id: str, collection: str, payload: Mapping[str, object], *, timeout: float
    ) -> None:
        if not contact_id:
            raise ValueError("contact_id is empty; pass the id of a contact returned by a search")

        url = self._url("contacts", contact_id, collection)
        try:
            await self._send_json(url, payload, timeout=timeout)
        except CrmError as err:
            _log_failure(operation, err)
            raise

    def _url(self, *segments: str) -> yarl.URL:
        # Each segment is percent-encoded whole, so a "/" or "?" in a contact id stays inside its segment.
        encoded = "/".join(_encode_segment(segment) for segment in segments)
        return self._base.with_path(self._base.raw_path.rstrip("/") + "/" + encoded, encoded=True)

    async def _get_json(self, url: yarl.URL, params: Mapping[str, str], *, timeout: float) -> object:
        try:
            async with self._session.get(
                url,
                params=params,
                headers=self._headers,
                timeout=_total_timeout(timeout),
                allow_redirects=False,
            ) as response:
                _raise_for_status(response)
                _require_json_content_type(response)
                raw = await _read_capped(response, max_bytes=self._max_response_bytes)
                return _decode_json(raw, charset=response.charset, status=response.status)
        except asyncio.TimeoutError as err:
            raise CrmError("timeout") from err
        except aiohttp.ClientError as err:
            raise CrmError("connection_failed") from err

    async def _send_json(self, url: yarl.URL, payload: Mapping[str, object], *, timeout: float) -> None:
        try:
            async with self._session.post(
                url,
                json=payload,
                headers=self._headers,
                timeout=_total_timeout(timeout),
                allow_redirects=False,
            ) as response:
                _raise_for_status(response)
        except asyncio.TimeoutError as err:
            raise CrmError("timeout") from err
        except aiohttp.ClientError as err:
            raise CrmError("connection_failed") from err


def _total_timeout(seconds: float) -> aiohttp.ClientTimeout:
    # aiohttp reads a total of 0 or less as "no timeout", so such a budget is rejected instead.
    if not seconds > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {seconds!r}")
    return aiohttp.ClientTimeout(total=seconds)


def _encode_segment(segment: str) -> str:
    encoded = quote(segment, safe="")
    # "." and ".." would be resolved as relative path steps, so their dots are encoded too.
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    status = response.status
    if 200 <= status < 300:
        return

    if status in (401, 403):
        raise CrmError("unauthorized", status=status)
    if status == 404:
        raise CrmError("not_found", status=status)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise CrmError("rate_limited", status=status, retry_after=retry_after)
    if status >= 500:
        raise CrmError("server_error", status=status)
    # Redirects are not followed, so a 3xx also lands here and the API key never leaves for another URL.
    raise CrmError("http_error", status=status)


def parse_retry_after(value: str | None) -> float | None:
    """Return a Retry-After value given in seconds, or None when it is missing or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _require_json_content_type(response: aiohttp.ClientResponse) -> None:
    content_type = response.content_type
    if content_type == "application/json" or content_type.endswith("+json"):
        return
    raise CrmError("invalid_response", status=response.status)


async def _read_capped(response: aiohttp.ClientResponse, *, max_bytes: int) -> bytes:
    """Read the body in chunks and raise CrmError("invalid_response") once it exceeds `max_bytes`."""
    if response.content_length is not None and response.content_length > max_bytes:
        raise CrmError("invalid_response", status=response.status)

    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise CrmError("invalid_response", status=response.status)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_json(raw: bytes, *, charset: str | None, status: int) -> object:
    try:
        text = raw.decode(charset) if charset else raw
        return json.loads(text)
    except (ValueError, LookupError, RecursionError) as err:
        # ValueError covers JSONDecodeError and UnicodeDecodeError. LookupError is an unknown
        # charset. RecursionError is JSON nested deeper than the parser can follow.
        raise CrmError("invalid_response", status=status) from err


def parse_search_response(body: object, *, max_field_chars: int) -> Contact | None:
    """Map a search response to its first contact, or None when `results` is empty.

    Raises CrmError("invalid_response") when the body is not {"results": [...]} or the first
    result is not an object with a string or integer "id".
    """
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise CrmError("invalid_response")

    results = body["results"]
    if not results:
        return None

    first = results[0]
    if not isinstance(first, dict):
        raise CrmError("invalid_response")

    name = first.get("name")
    if name is None:
        name = first.get("full_name")

    return Contact(
        id=_parse_id(first.get("id"), max_chars=max_field_chars),
        name=_clean_text(name, max_chars=max_field_chars),
        email=_clean_text(first.get("email"), max_chars=max_field_chars),
        company=_clean_text(first.get("company"), max_chars=max_field_chars),
        open_tickets=_parse_count(first.get("open_tickets")),
    )


def _parse_id(value: object, *, max_chars: int) -> str:
    # bool is a subclass of int, so without this check True would pass as id "True".
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CrmError("invalid_response")

    text = str(value).strip()
    # A truncated id would address another contact, so an overlong id is rejected, not capped.
    if not text or len(text) > max_chars:
        raise CrmError("invalid_response")
    return text


def _clean_text(value: object, *, max_chars: int) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip()[:max_chars].strip()
    return text or None


def _parse_count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            try:
                return int(text)
            except ValueError:
                # int() rejects strings of more than 4300 digits (sys.get_int_max_str_digits).
                return None
    return None


def _log_failure(operation: str, err: CrmError) -> None:
    logger.warning(
        "CRM request failed",
        extra={"crm_operation": operation, "reason": err.reason, "status": err.status},
    )
