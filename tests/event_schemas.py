"""Validation of webhook payloads against the JSON Schemas in schemas/."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


@functools.cache
def validator(event: str) -> Draft202012Validator:
    path = SCHEMA_DIR / f"{event}.schema.json"
    if not path.exists():
        raise AssertionError(f"no schema for event {event!r}: expected {path}")
    return Draft202012Validator(json.loads(path.read_text()))


def schema_errors(payload: dict[str, Any]) -> list[str]:
    """Return one message per schema violation of `payload`, empty when it is valid."""
    envelope = validator("envelope")
    errors = [error.message for error in envelope.iter_errors(payload)]
    if errors:
        return errors
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator(payload["event"]).iter_errors(payload)]
