"""Dispatch the outbound-caller agent to place one phone call.

    python make_call.py --to +919800000001 [--room NAME] [--metadata '{"campaign": "renewal"}']

The command creates a LiveKit agent dispatch for AGENT_NAME into the room named by
--room, or into a newly named room. The running worker (agent.py) receives it as a
job and dials the number stored under "phone_number" in the dispatch metadata. It reads LIVEKIT_URL, LIVEKIT_API_KEY and
LIVEKIT_API_SECRET from the environment or from `.env` in the project folder.

Exit status: 0 when the dispatch was created, 1 when the LiveKit API request failed,
2 when a setting or a command-line value is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Mapping, Sequence

import aiohttp
import phonenumbers
from livekit import api

from phone import InvalidPhoneNumber, mask_phone, normalize_e164
from settings import DISPATCH, ConfigError, Settings, load_dotenv_file, load_settings

EXIT_OK = 0
EXIT_DISPATCH_FAILED = 1
EXIT_INVALID_INPUT = 2

# LiveKitAPI also defaults to 10 seconds, but the limit is set here so that it is visible.
DISPATCH_TIMEOUT_SECONDS = 10.0

PHONE_KEY = "phone_number"
METADATA_EXAMPLE = '{"campaign": "renewal"}'


class InvalidArgument(ValueError):
    """A command-line value that cannot be used. The message names the option."""


async def dispatch_call(
    *,
    settings: Settings,
    phone: str,
    room: str,
    metadata: Mapping[str, object],
) -> api.AgentDispatch:
    """Create a dispatch of `settings.agent_name` into `room` that calls `phone`.

    The settings' LiveKit key and secret sign the request. `phone` must already be E.164.
    `metadata` contains extra keys sent next to "phone_number" and must not contain
    that key itself. Raises api.ServerError when LiveKit rejects the request, and
    aiohttp.ClientError or asyncio.TimeoutError when the server cannot be reached.
    """
    if PHONE_KEY in metadata:
        raise ValueError(f"metadata must not contain {PHONE_KEY!r}, because the number is passed as `phone`")

    request = api.CreateAgentDispatchRequest(
        agent_name=settings.agent_name,
        room=room,
        metadata=json.dumps({PHONE_KEY: phone, **metadata}),
    )
    timeout = aiohttp.ClientTimeout(total=DISPATCH_TIMEOUT_SECONDS)

    async with api.LiveKitAPI(
        settings.livekit_url,
        settings.livekit_api_key,
        settings.livekit_api_secret,
        timeout=timeout,
    ) as lkapi:
        return await lkapi.agent_dispatch.create_dispatch(request)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line. argparse exits with status 2 on a usage error."""
    parser = argparse.ArgumentParser(
        prog="make_call.py",
        description="Dispatch the agent named by AGENT_NAME (default outbound-caller) to call one phone number.",
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="NUMBER",
        help="number to call, in E.164 (+919800000001) or a national form read in "
        "PHONE_DEFAULT_REGION (default IN)",
    )
    parser.add_argument(
        "--room",
        metavar="NAME",
        help="LiveKit room to create for the call (default: call-<12 random hex digits>)",
    )
    parser.add_argument(
        "--metadata",
        metavar="JSON",
        help=f"extra JSON object merged into the dispatch metadata, such as '{METADATA_EXAMPLE}'. "
        f"It must not contain {PHONE_KEY}",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command and return its exit status."""
    args = parse_args(argv)

    load_dotenv_file()
    errors: list[str] = []
    try:
        settings = load_settings(os.environ, mode=DISPATCH)
    except ConfigError as err:
        errors.append(str(err))
        settings = None

    # Check the arguments too, so that one run reports every problem.
    region = settings.default_region if settings is not None else _region_from_env()
    try:
        phone = read_phone(args.to, default_region=region)
        room = read_room(args.room)
        metadata = read_metadata(args.metadata)
    except InvalidArgument as err:
        errors.append(str(err))

    if errors or settings is None:
        for message in errors:
            print(f"error: {message}", file=sys.stderr)
        return EXIT_INVALID_INPUT

    try:
        dispatch = asyncio.run(
            dispatch_call(
                settings=settings,
                phone=phone,
                room=room,
                metadata=metadata,
            )
        )
    except (api.ServerError, aiohttp.ClientError, asyncio.TimeoutError) as err:
        print(f"error: {describe_dispatch_error(err, url=settings.livekit_url)}", file=sys.stderr)
        return EXIT_DISPATCH_FAILED

    print(f"dispatch_id: {dispatch.id}")
    print(f"room: {dispatch.room or room}")
    print(f"agent: {settings.agent_name}")
    print(f"phone: {mask_phone(phone)}")
    return EXIT_OK


def read_phone(raw: str, *, default_region: str) -> str:
    """Return the --to value as E.164. Raises InvalidArgument."""
    try:
        return normalize_e164(raw, default_region=default_region)
    except InvalidPhoneNumber as err:
        # The number is the user's own input on their terminal, so it is shown whole here.
        raise InvalidArgument(
            f"--to is invalid ({raw!r}): expected E.164 such as +919800000001, "
            f"or a national number valid in region {default_region}"
        ) from err


def _region_from_env() -> str:
    region = (os.environ.get("PHONE_DEFAULT_REGION") or "IN").strip().upper()
    return region if region in phonenumbers.SUPPORTED_REGIONS else "IN"


def read_room(raw: str | None) -> str:
    """Return the --room value, or a new "call-" name with a random suffix when it is not given."""
    if raw is None:
        return f"call-{uuid.uuid4().hex[:12]}"

    room = raw.strip()
    if not room:
        raise InvalidArgument("--room is empty: pass a room name, or leave out --room to generate one")
    return room


def read_metadata(raw: str | None) -> dict[str, object]:
    """Return the --metadata JSON object, or an empty dict when it is not given. Raises InvalidArgument."""
    if raw is None:
        return {}

    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InvalidArgument(
            f"--metadata is not valid JSON ({err.msg} at position {err.pos}): "
            f"pass a JSON object such as '{METADATA_EXAMPLE}'"
        ) from err

    if not isinstance(value, dict):
        raise InvalidArgument(
            f"--metadata must be a JSON object such as '{METADATA_EXAMPLE}', got {type(value).__name__}"
        )
    if PHONE_KEY in value:
        raise InvalidArgument(f"--metadata must not contain {PHONE_KEY}: pass the number with --to")
    return value


def describe_dispatch_error(err: BaseException, *, url: str) -> str:
    """Return a one-line message for a failed dispatch request, with the next step to take."""
    if isinstance(err, api.ServerError):
        detail = f": {err.message}" if err.message else ""
        return (
            f"dispatch failed: the LiveKit API at {url} returned HTTP {err.status} ({err.code}){detail}. "
            "Check LIVEKIT_API_KEY and LIVEKIT_API_SECRET, and that the server accepts agent dispatches"
        )
    if isinstance(err, asyncio.TimeoutError):
        return (
            f"dispatch failed: the LiveKit API at {url} did not answer within {DISPATCH_TIMEOUT_SECONDS:g} seconds. "
            "Check LIVEKIT_URL and that the server is running"
        )
    return (
        f"dispatch failed: could not reach the LiveKit API at {url} ({type(err).__name__}: {err}). "
        "Check LIVEKIT_URL and that the server is running"
    )


if __name__ == "__main__":
    sys.exit(main())
