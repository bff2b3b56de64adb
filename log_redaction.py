"""A logging filter that masks phone numbers and removes secrets from framework log records.

The project's own log lines carry no personal data, but LiveKit Agents logs tool
arguments and transcripts at DEBUG level, and those can contain a number the
caller spoke or a note with one. The filter rewrites such records before any
handler formats them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from phone import mask_phone

# Loggers of the framework and plugins that may log conversation content.
FRAMEWORK_LOGGERS = (
    "livekit",
    "livekit.agents",
    "livekit.api",
    "livekit.plugins.openai",
    "livekit.plugins.deepgram",
    "livekit.plugins.silero",
)

# Nine or more digits, optionally after "+", with single spaces, dots or dashes between them.
_PHONE_PATTERN = re.compile(r"\+?\d(?:[ .\-]?\d){8,}")
_REDACTED = "[redacted]"
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Masks phone numbers and replaces `secrets` in a record's message and extra fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({secret for secret in secrets if len(secret) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRIBUTES:
                setattr(record, key, self._clean_value(value))
        return True

    def _clean_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._clean(value)
        if isinstance(value, dict):
            return {key: self._clean_value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._clean_value(item) for item in value)
        return value

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return _PHONE_PATTERN.sub(lambda match: mask_phone(re.sub(r"[ .\-]", "", match.group())), text)


def install(secrets: Iterable[str], *, loggers: Iterable[str] = FRAMEWORK_LOGGERS) -> None:
    """Attach one RedactingFilter to each logger in `loggers`, replacing an earlier one."""
    redactor = RedactingFilter(secrets)
    for name in loggers:
        target = logging.getLogger(name)
        for existing in [f for f in target.filters if isinstance(f, RedactingFilter)]:
            target.removeFilter(existing)
        target.addFilter(redactor)
