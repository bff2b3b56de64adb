"""Settings read from the environment and validated once at startup.

Variable names match the public single-file example of this design, so an
existing `.env` keeps working. Every problem found is reported together, each
naming the variable and the fix.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import phonenumbers
from dotenv import load_dotenv

from phone import InvalidPhoneNumber, normalize_e164

PROJECT_DIR = Path(__file__).resolve().parent

TRANSFER_DEPARTMENTS = ("sales", "billing", "support")

# Modes, each with its own required settings. A worker places real calls, the
# console talks text to an OpenAI-compatible endpoint only, and make_call only dispatches.
WORKER = "worker"
CONSOLE = "console"
DISPATCH = "dispatch"
_REQUIRED = {
    WORKER: (
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
        "OPENAI_API_KEY",
        "DEEPGRAM_API_KEY",
        "OUTBOUND_TRUNK_ID",
    ),
    CONSOLE: ("OPENAI_API_KEY",),
    DISPATCH: ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"),
}


class ConfigError(Exception):
    """One or more settings are missing or invalid; the message lists each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid configuration:\n{lines}")


@dataclass(frozen=True)
class Settings:
    livekit_url: str = ""
    livekit_api_key: str = field(default="", repr=False)
    livekit_api_secret: str = field(default="", repr=False)
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_tts_voice: str = "alloy"
    deepgram_api_key: str = field(default="", repr=False)
    outbound_trunk_id: str = ""
    vobiz_sip_domain: str | None = None
    agent_name: str = "outbound-caller"
    worker_host: str = "127.0.0.1"
    default_region: str = "IN"

    crm_base_url: str | None = None
    crm_api_key: str = field(default="", repr=False)
    crm_lookup_timeout: float = 2.0
    crm_tool_timeout: float = 3.0

    webhook_url: str | None = None
    webhook_secret: bytes = field(default=b"", repr=False)
    webhook_drain_timeout: float = 6.0
    outbox_path: Path = PROJECT_DIR / "data" / "outbox.sqlite3"

    # department name -> E.164 number
    transfer_destinations: Mapping[str, str] = field(default_factory=dict)
    transfer_allowlist: frozenset[str] = frozenset()
    transfer_timeout: float = 40.0

    ringing_timeout: float = 30.0
    max_call_duration: float = 1800.0
    console_phone_number: str | None = None

    # call.ended carries the transcript only when enabled, since it is personal data.
    report_transcript: bool = False
    voicemail_detection: bool = True
    # "hangup", or "message" to leave voicemail_message first.
    voicemail_action: str = "hangup"
    voicemail_message: str = ""

    @property
    def secrets(self) -> list[str]:
        """Secret values that must never appear in a log line."""
        values = [
            self.livekit_api_secret,
            self.openai_api_key,
            self.deepgram_api_key,
            self.crm_api_key,
            self.webhook_secret.decode("utf-8"),
        ]
        return [value for value in values if value]

    @property
    def crm_enabled(self) -> bool:
        return bool(self.crm_base_url)

    @property
    def webhooks_enabled(self) -> bool:
        return bool(self.webhook_url)


def load_dotenv_file() -> None:
    """Read `.env` from the project folder, whatever the working directory.

    Values already in the environment win, so a deployment can override them.
    """
    load_dotenv(PROJECT_DIR / ".env", override=False)


def load_settings(environ: Mapping[str, str] | None = None, *, mode: str = WORKER) -> Settings:
    """Build `Settings` from `environ` (default `os.environ`) for `mode`.

    Raises ConfigError listing every missing or invalid variable.
    """
    env = _Reader(os.environ if environ is None else environ)

    for name in _REQUIRED[mode]:
        env.require(name)
    env.livekit_url()
    env.trunk_id()

    region = env.region("PHONE_DEFAULT_REGION", "IN")
    destinations = _transfer_destinations(env, region)
    webhook_url = env.webhook_url()

    settings = Settings(
        livekit_url=env.text("LIVEKIT_URL"),
        livekit_api_key=env.text("LIVEKIT_API_KEY"),
        livekit_api_secret=env.text("LIVEKIT_API_SECRET"),
        openai_api_key=env.text("OPENAI_API_KEY"),
        openai_base_url=env.http_url("OPENAI_BASE_URL"),
        openai_model=env.text("OPENAI_MODEL") or "gpt-4o-mini",
        openai_tts_voice=env.text("OPENAI_TTS_VOICE") or "alloy",
        deepgram_api_key=env.text("DEEPGRAM_API_KEY"),
        outbound_trunk_id=env.text("OUTBOUND_TRUNK_ID"),
        vobiz_sip_domain=_sip_domain(env),
        agent_name=env.text("AGENT_NAME") or "outbound-caller",
        worker_host=env.text("WORKER_HOST") or "127.0.0.1",
        default_region=region,
        crm_base_url=env.http_url("CRM_BASE_URL"),
        crm_api_key=env.text("CRM_API_KEY"),
        crm_lookup_timeout=env.seconds("CRM_LOOKUP_TIMEOUT", 2.0),
        crm_tool_timeout=env.seconds("CRM_TOOL_TIMEOUT", 3.0),
        webhook_url=webhook_url,
        webhook_secret=env.text("WEBHOOK_SECRET").encode("utf-8"),
        webhook_drain_timeout=env.seconds("WEBHOOK_DRAIN_TIMEOUT", 6.0, maximum=8.0),
        outbox_path=_outbox_path(env),
        transfer_destinations=destinations,
        transfer_allowlist=_transfer_allowlist(env, region),
        transfer_timeout=env.seconds("TRANSFER_TIMEOUT", 40.0),
        ringing_timeout=env.seconds("RINGING_TIMEOUT", 30.0),
        max_call_duration=env.seconds("MAX_CALL_DURATION", 1800.0),
        console_phone_number=env.phone("CONSOLE_PHONE_NUMBER", region),
        report_transcript=env.flag("REPORT_TRANSCRIPT", False),
        voicemail_detection=env.flag("VOICEMAIL_DETECTION", True),
        voicemail_action=env.choice("VOICEMAIL_ACTION", ("hangup", "message"), "hangup"),
        voicemail_message=env.text("VOICEMAIL_MESSAGE"),
    )

    if settings.crm_base_url and not settings.crm_api_key:
        env.problem("CRM_API_KEY is missing: CRM_BASE_URL is set, so set CRM_API_KEY to the CRM's bearer token")
    if settings.crm_api_key and not env.text("CRM_BASE_URL"):
        env.problem("CRM_BASE_URL is missing: CRM_API_KEY is set, so set the CRM's base URL, or unset CRM_API_KEY")
    # Checked on the raw value, so that an invalid WEBHOOK_URL and a missing secret show up in one run.
    if env.text("WEBHOOK_URL") and not settings.webhook_secret:
        env.problem(
            "WEBHOOK_SECRET is missing: WEBHOOK_URL is set, so set WEBHOOK_SECRET to the secret "
            "your receiver verifies signatures with, or unset WEBHOOK_URL"
        )

    if settings.voicemail_action == "message" and not settings.voicemail_message:
        env.problem(
            "VOICEMAIL_MESSAGE is missing: VOICEMAIL_ACTION is message, so set the short message "
            "to leave on an answering machine, or set VOICEMAIL_ACTION=hangup"
        )

    transfers_configured = settings.transfer_destinations or settings.transfer_allowlist
    if mode == WORKER and transfers_configured and not settings.vobiz_sip_domain:
        env.problem(
            "VOBIZ_SIP_DOMAIN is missing: transfer numbers are set, and transfers are sent as "
            "sip:<number>@<VOBIZ_SIP_DOMAIN>, so set the trunk's SIP domain"
        )

    if env.problems:
        raise ConfigError(env.problems)
    return settings


def _outbox_path(env: _Reader) -> Path:
    raw = env.text("OUTBOX_PATH")
    if not raw:
        return PROJECT_DIR / "data" / "outbox.sqlite3"

    path = Path(raw).expanduser()
    # A relative path is read from the project folder, like .env, so every process agrees on it.
    return path if path.is_absolute() else PROJECT_DIR / path


def _transfer_destinations(env: _Reader, region: str) -> dict[str, str]:
    destinations = {}
    for department in TRANSFER_DEPARTMENTS:
        number = env.phone(f"TRANSFER_{department.upper()}", region)
        if number:
            destinations[department] = number
    return destinations


def _transfer_allowlist(env: _Reader, region: str) -> frozenset[str]:
    raw = env.text("TRANSFER_ALLOWLIST")
    numbers = set()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            numbers.add(normalize_e164(item, default_region=region))
        except InvalidPhoneNumber as err:
            env.problem(f"TRANSFER_ALLOWLIST is invalid: {err}; list E.164 numbers separated by commas")
    return frozenset(numbers)


def _sip_domain(env: _Reader) -> str | None:
    domain = env.text("VOBIZ_SIP_DOMAIN")
    if not domain:
        return None

    has_scheme = domain.lower().startswith(("sip:", "sips:", "tel:"))
    if has_scheme or "://" in domain or "/" in domain or "@" in domain or " " in domain:
        env.problem(
            f"VOBIZ_SIP_DOMAIN is invalid ({domain!r}): set the bare SIP domain of the trunk, "
            "such as 'example.sip.vobiz.ai', without scheme, user or path"
        )
        return None
    return domain


class _Reader:
    """Reads variables and collects problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.problems: list[str] = []

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def text(self, name: str) -> str:
        return (self._environ.get(name) or "").strip()

    def require(self, name: str) -> None:
        if not self.text(name):
            self.problem(f"{name} is missing: set it in the environment or in {PROJECT_DIR / '.env'}")

    def seconds(self, name: str, default: float, *, maximum: float | None = None) -> float:
        raw = self.text(name)
        if not raw:
            return default

        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0 or (maximum is not None and value > maximum):
            limit = f" and at most {maximum:g}" if maximum is not None else ""
            self.problem(f"{name} is invalid ({raw!r}): set a number of seconds above 0{limit}")
            return default
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name).lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problem(f"{name} is invalid ({raw!r}): set true or false")
        return default

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        raw = self.text(name).lower()
        if not raw:
            return default
        if raw not in options:
            self.problem(f"{name} is invalid ({raw!r}): set one of {', '.join(options)}")
            return default
        return raw

    def region(self, name: str, default: str) -> str:
        raw = self.text(name).upper() or default
        if raw not in phonenumbers.SUPPORTED_REGIONS:
            self.problem(f"{name} is invalid ({raw!r}): set a two-letter region code such as IN or US")
            return default
        return raw

    def phone(self, name: str, region: str) -> str | None:
        raw = self.text(name)
        if not raw:
            return None

        try:
            return normalize_e164(raw, default_region=region)
        except InvalidPhoneNumber as err:
            self.problem(f"{name} is invalid: {err}")
            return None

    def http_url(self, name: str) -> str | None:
        raw = self.text(name)
        if not raw:
            return None

        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(f"{name} is invalid ({raw!r}): set an http:// or https:// URL with a host")
            return None
        return raw.rstrip("/")

    def livekit_url(self) -> None:
        raw = self.text("LIVEKIT_URL")
        parts = urlsplit(raw)
        if raw and (parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname):
            self.problem(
                f"LIVEKIT_URL is invalid ({raw!r}): set the server's URL with its scheme, "
                "such as wss://<project>.livekit.cloud or ws://127.0.0.1:7880"
            )

    def trunk_id(self) -> None:
        raw = self.text("OUTBOUND_TRUNK_ID")
        if raw and not raw.startswith("ST_"):
            self.problem(
                f"OUTBOUND_TRUNK_ID is invalid ({raw!r}): set the id LiveKit gave the outbound trunk, "
                "which starts with ST_ (see `lk sip outbound list`)"
            )

    def webhook_url(self) -> str | None:
        url = self.http_url("WEBHOOK_URL")
        if url is None:
            return None

        parts = urlsplit(url)
        allow_insecure = self.flag("WEBHOOK_ALLOW_INSECURE", False)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or "") and not allow_insecure:
            self.problem(
                "WEBHOOK_URL is invalid: plain http is accepted only for loopback hosts, because "
                "event bodies carry personal data; use https, or set WEBHOOK_ALLOW_INSECURE=true"
            )
            return None
        return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
