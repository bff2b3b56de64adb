"""Tests for webhook signing, verification, event building and retry decisions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import time
from datetime import datetime, timezone

import pytest
import standardwebhooks
from multidict import CIMultiDict

from webhooks import (
    ENVELOPE_KEYS,
    RetryPolicy,
    WebhookVerificationError,
    body_signature,
    build_event,
    retry_delay,
    sign,
    verify,
    verify_body_signature,
)

SECRET_TEXT = "test-webhook-secret"
SECRET = SECRET_TEXT.encode("utf-8")
MSG_ID = "evt_00000000000000000000000000000001"
TIMESTAMP = 1700000000
BODY = b'{"id":"evt_00000000000000000000000000000001","event":"call.started"}'

# Computed once outside this code base with Python's hmac module and checked with
# `openssl dgst -sha256 -hmac test-webhook-secret` on the same input.
EXPECTED_HEX = "7cb90fde88e8ded4483f360c05b5dc78ad059401d82ec00248f42eece206e80b"
EXPECTED_V1 = "v1,+VBq125roxbxTj0jfHMbEJp/AgvyNJQtAn6jQAays8Q="


def signed_headers(
    body: bytes = BODY, *, msg_id: str = MSG_ID, timestamp: int = TIMESTAMP, secret: bytes = SECRET
) -> dict[str, str]:
    return sign(secret, msg_id=msg_id, timestamp=timestamp, body=body)


def v1_entry(secret: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


# Known-answer vectors


def test_body_signature_known_vector():
    assert body_signature(SECRET, BODY) == EXPECTED_HEX


def test_sign_known_vector():
    headers = signed_headers()

    assert headers == {
        "Content-Type": "application/json",
        "X-Webhook-Signature": EXPECTED_HEX,
        "webhook-id": MSG_ID,
        "webhook-timestamp": "1700000000",
        "webhook-signature": EXPECTED_V1,
    }


def test_sign_accepted_by_standardwebhooks_verify():
    # standardwebhooks checks the timestamp against the real clock, so sign with it.
    timestamp = int(time.time())
    headers = signed_headers(timestamp=timestamp)

    payload = standardwebhooks.Webhook(SECRET).verify(BODY, headers)

    assert payload == {"id": MSG_ID, "event": "call.started"}


def test_sign_str_secret_rejected():
    with pytest.raises(TypeError, match="must be bytes"):
        sign(SECRET_TEXT, msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)


def test_sign_empty_secret_rejected():
    with pytest.raises(ValueError, match="empty"):
        sign(b"", msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)


# verify


def test_verify_round_trip():
    payload = verify(SECRET_TEXT, signed_headers(), BODY, now=TIMESTAMP)

    assert payload == {"id": MSG_ID, "event": "call.started"}


def test_verify_bytes_secret_round_trip():
    payload = verify(SECRET, signed_headers(), BODY, now=TIMESTAMP)

    assert payload["id"] == MSG_ID


def test_verify_str_secret_not_base64_decoded():
    # "dGVzdA==" is base64 for b"test". The text itself must be the key.
    headers = signed_headers(secret=b"dGVzdA==")

    assert verify("dGVzdA==", headers, BODY, now=TIMESTAMP)["id"] == MSG_ID
    with pytest.raises(WebhookVerificationError):
        verify(b"test", headers, BODY, now=TIMESTAMP)


def test_verify_tampered_body_rejected():
    tampered = BODY.replace(b"call.started", b"call.ended")

    with pytest.raises(WebhookVerificationError, match="no webhook-signature entry matches"):
        verify(SECRET_TEXT, signed_headers(), tampered, now=TIMESTAMP)


def test_verify_wrong_secret_rejected():
    with pytest.raises(WebhookVerificationError, match="no webhook-signature entry matches"):
        verify("another-secret", signed_headers(), BODY, now=TIMESTAMP)


def test_verify_empty_secret_rejected():
    with pytest.raises(WebhookVerificationError, match="secret is empty"):
        verify("", signed_headers(), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("offset", [300, -300, 0])
def test_verify_timestamp_within_tolerance(offset):
    payload = verify(SECRET_TEXT, signed_headers(), BODY, now=TIMESTAMP + offset)

    assert payload["id"] == MSG_ID


@pytest.mark.parametrize(
    ("offset", "message"),
    [(301, "s old"), (-301, "in the future")],
)
def test_verify_timestamp_outside_tolerance(offset, message):
    with pytest.raises(WebhookVerificationError, match=message):
        verify(SECRET_TEXT, signed_headers(), BODY, now=TIMESTAMP + offset)


def test_verify_custom_tolerance_edge():
    payload = verify(SECRET_TEXT, signed_headers(), BODY, tolerance=10, now=TIMESTAMP + 10)

    assert payload["id"] == MSG_ID
    with pytest.raises(WebhookVerificationError, match="s old"):
        verify(SECRET_TEXT, signed_headers(), BODY, tolerance=10, now=TIMESTAMP + 11)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_missing_header_rejected(name):
    headers = signed_headers()
    del headers[name]

    with pytest.raises(WebhookVerificationError, match=f"missing {name} header"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "value",
    ["abc", "", " 1700000000", "1700000000.0", "-1", "١٧٠٠٠٠٠٠٠٠", "9" * 5000],
)
def test_verify_malformed_timestamp_rejected(value):
    headers = signed_headers()
    headers["webhook-timestamp"] = value

    with pytest.raises(WebhookVerificationError, match="invalid webhook-timestamp header"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("v1", "malformed webhook-signature entry"),
        ("v2,xxx", "has no v1 signature"),
        ("", "has no v1 signature"),
        ("v1,!!not-base64!!", "not valid base64"),
        ("v1,abc", "not valid base64"),
        ("v1,é", "not valid base64"),
        ("v1,AAAA", "no webhook-signature entry matches"),
    ],
)
def test_verify_malformed_signature_header_rejected(value, message):
    headers = signed_headers()
    headers["webhook-signature"] = value

    with pytest.raises(WebhookVerificationError, match=message):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


def test_verify_lowercase_header_names():
    headers = {name.lower(): value for name, value in signed_headers().items()}

    assert verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)["id"] == MSG_ID


def test_verify_mixed_case_header_names():
    signed = signed_headers()
    headers = {
        "Webhook-Id": signed["webhook-id"],
        "WEBHOOK-TIMESTAMP": signed["webhook-timestamp"],
        "Webhook-Signature": signed["webhook-signature"],
        "x-webhook-signature": signed["X-Webhook-Signature"],
    }

    assert verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)["id"] == MSG_ID


def test_verify_mixed_case_legacy_header_still_checked():
    headers = signed_headers()
    del headers["X-Webhook-Signature"]
    headers["x-WEBHOOK-signature"] = body_signature(b"another-secret", BODY)

    with pytest.raises(WebhookVerificationError, match="X-Webhook-Signature does not match"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


def test_verify_cimultidict_headers():
    headers = CIMultiDict({name.upper(): value for name, value in signed_headers().items()})

    assert verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)["id"] == MSG_ID


def test_verify_non_ascii_body_round_trip():
    event = build_event(
        "call.note",
        call_id="call_1",
        sequence=2,
        fields={"greeting": "नमस्ते", "caller_name": "José"},
        timestamp=TIMESTAMP,
    )
    headers = signed_headers(event.body, msg_id=event.id)

    payload = verify(SECRET_TEXT, headers, event.body, now=TIMESTAMP)

    assert payload["greeting"] == "नमस्ते"
    assert payload["caller_name"] == "José"


def test_verify_non_ascii_secret_round_trip():
    secret_text = "sécret-नमस्ते"
    headers = signed_headers(secret=secret_text.encode("utf-8"))

    assert verify(secret_text, headers, BODY, now=TIMESTAMP)["id"] == MSG_ID


def test_verify_legacy_signature_mismatch_rejected():
    headers = signed_headers()
    headers["X-Webhook-Signature"] = body_signature(b"another-secret", BODY)

    with pytest.raises(WebhookVerificationError, match="X-Webhook-Signature does not match"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize("value", ["zz", "", "é" * 64, EXPECTED_HEX[:-1]])
def test_verify_legacy_signature_malformed_rejected(value):
    headers = signed_headers()
    headers["X-Webhook-Signature"] = value

    with pytest.raises(WebhookVerificationError, match="invalid X-Webhook-Signature header"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


def test_verify_without_legacy_signature_passes():
    headers = signed_headers()
    del headers["X-Webhook-Signature"]

    assert verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)["id"] == MSG_ID


@pytest.mark.parametrize(
    "extra_entries",
    [
        ["v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],
        ["v2,abc", "v1"],
        ["v1,!!not-base64!!"],
    ],
)
def test_verify_one_of_several_signatures_matches(extra_entries):
    old_key_entry = v1_entry(b"old-secret", msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)
    headers = signed_headers()
    headers["webhook-signature"] = " ".join([old_key_entry, *extra_entries, EXPECTED_V1])

    assert verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)["id"] == MSG_ID


def test_verify_several_signatures_none_matches():
    old_key_entry = v1_entry(b"old-secret", msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)
    headers = signed_headers()
    headers["webhook-signature"] = f"{old_key_entry} v2,abc"

    with pytest.raises(WebhookVerificationError, match="no webhook-signature entry matches"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


def test_verify_id_mismatch_rejected():
    headers = signed_headers(msg_id="evt_other")

    with pytest.raises(WebhookVerificationError, match="does not match webhook-id header"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


def test_verify_empty_id_rejected():
    headers = signed_headers()
    headers["webhook-id"] = ""

    with pytest.raises(WebhookVerificationError, match="webhook-id header is empty"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


def test_verify_unencodable_id_rejected():
    headers = signed_headers()
    headers["webhook-id"] = "evt_\udcff"

    with pytest.raises(WebhookVerificationError, match="webhook-id header is not valid UTF-8"):
        verify(SECRET_TEXT, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid UTF-8 JSON"),
        (b'{"id":"evt_1"', "not valid UTF-8 JSON"),
        (b'{"id":"\xff"}', "not valid UTF-8 JSON"),
        (b"[" * 100_000, "not valid UTF-8 JSON"),
        (b'["evt_1"]', "not a JSON object"),
        (b'{"event":"call.started"}', "does not match webhook-id header"),
    ],
)
def test_verify_invalid_signed_body_rejected(body, message):
    headers = signed_headers(body, msg_id="evt_1")

    with pytest.raises(WebhookVerificationError, match=message):
        verify(SECRET_TEXT, headers, body, now=TIMESTAMP)


# verify_body_signature


def test_verify_body_signature_match():
    assert verify_body_signature(SECRET_TEXT, BODY, EXPECTED_HEX) is None


def test_verify_body_signature_uppercase_hex_accepted():
    assert verify_body_signature(SECRET, BODY, EXPECTED_HEX.upper()) is None


def test_verify_body_signature_missing_rejected():
    with pytest.raises(WebhookVerificationError, match="missing X-Webhook-Signature header"):
        verify_body_signature(SECRET_TEXT, BODY, None)


def test_verify_body_signature_mismatch_rejected():
    with pytest.raises(WebhookVerificationError, match="does not match the body"):
        verify_body_signature(SECRET_TEXT, BODY + b" ", EXPECTED_HEX)


def test_verify_body_signature_malformed_rejected():
    with pytest.raises(WebhookVerificationError, match="invalid X-Webhook-Signature header"):
        verify_body_signature(SECRET_TEXT, BODY, "not-hex")


# build_event


def test_build_event_compact_ordered_utf8_bytes():
    event = build_event(
        "call.note",
        call_id="call_1",
        sequence=3,
        fields={"note": "José said नमस्ते", "tags": ["a", "b"]},
        timestamp=1700000000.25,
        event_id="evt_fixed",
    )

    expected = (
        '{"id":"evt_fixed","event":"call.note","timestamp":1700000000.25,"call_id":"call_1",'
        '"sequence":3,"note":"José said नमस्ते","tags":["a","b"]}'
    ).encode("utf-8")
    assert event.body == expected


def test_build_event_field_order():
    event = build_event(
        "call.intent", call_id="call_1", sequence=1, fields={"intent": "billing", "confidence": 0.9}
    )

    assert list(event.payload()) == [*ENVELOPE_KEYS, "intent", "confidence"]


def test_build_event_non_ascii_not_escaped():
    event = build_event(
        "call.note", call_id="call_1", sequence=1, fields={"note": "नमस्ते José"}
    )

    assert b"\\u" not in event.body
    assert "नमस्ते José".encode("utf-8") in event.body


def test_build_event_attributes_match_body():
    event = build_event(
        "call.started", call_id="call_7", sequence=4, fields={}, timestamp=1700000000
    )
    payload = event.payload()

    assert payload["id"] == event.id
    assert payload["event"] == event.event == "call.started"
    assert payload["call_id"] == event.call_id == "call_7"
    assert payload["sequence"] == event.sequence == 4
    assert payload["timestamp"] == event.timestamp == 1700000000.0
    assert isinstance(event.timestamp, float)


def test_build_event_generated_ids_unique():
    first = build_event("call.started", call_id="call_1", sequence=1, fields={})
    second = build_event("call.started", call_id="call_1", sequence=1, fields={})

    assert re.fullmatch(r"evt_[0-9a-f]{32}", first.id)
    assert first.id != second.id


@pytest.mark.parametrize("key", ENVELOPE_KEYS)
def test_build_event_envelope_collision_rejected(key):
    with pytest.raises(ValueError, match=f"'{key}' collides with an envelope key"):
        build_event("call.note", call_id="call_1", sequence=1, fields={key: "x"})


def test_build_event_nan_rejected():
    with pytest.raises(ValueError):
        build_event(
            "call.intent", call_id="call_1", sequence=1, fields={"confidence": float("nan")}
        )


def test_build_event_sequence_zero_rejected():
    with pytest.raises(ValueError, match="sequence must be 1 or more"):
        build_event("call.started", call_id="call_1", sequence=0, fields={})


def test_build_event_body_parses_as_json():
    event = build_event("call.ended", call_id="call_1", sequence=9, fields={"duration_s": 42})

    assert json.loads(event.body.decode("utf-8"))["duration_s"] == 42


# retry_delay

POLICY = RetryPolicy()


def decide(*, attempt=1, status=None, retry_after=None, policy=POLICY, now=1_700_000_000.0, seed=7):
    return retry_delay(
        attempt=attempt,
        status=status,
        retry_after=retry_after,
        policy=policy,
        now=now,
        rng=random.Random(seed),
    )


@pytest.mark.parametrize("status", [None, 408, 425, 429, 500, 502, 503, 504, 599])
def test_retry_delay_retryable_status(status):
    delay = decide(status=status)

    assert delay is not None
    assert 0 <= delay <= POLICY.base_delay


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 200, 204, 301, 302])
def test_retry_delay_final_status(status):
    assert decide(status=status) is None


def test_retry_delay_final_status_ignores_retry_after():
    assert decide(status=410, retry_after="5") is None


def test_retry_delay_attempt_limit():
    policy = RetryPolicy(max_attempts=3)

    assert decide(attempt=2, status=503, policy=policy) is not None
    assert decide(attempt=3, status=503, policy=policy) is None
    assert decide(attempt=4, status=503, policy=policy) is None


def test_retry_delay_single_attempt_policy():
    assert decide(attempt=1, status=None, policy=RetryPolicy(max_attempts=1)) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("-5", 0.0),
        ("120", 120.0),
        ("121", 120.0),
        ("3600", 120.0),
    ],
)
def test_retry_delay_retry_after_seconds(value, expected):
    assert decide(status=503, retry_after=value) == expected


def test_retry_delay_retry_after_huge_seconds_capped():
    assert decide(status=429, retry_after="9" * 400) == POLICY.max_retry_after


def test_retry_delay_retry_after_http_date():
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=timezone.utc).timestamp()

    assert decide(status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 30.0


def test_retry_delay_http_date_without_zone():
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=timezone.utc).timestamp()

    assert decide(status=503, retry_after="Wed, 21 Oct 2015 07:28:00 -0000", now=now) == 30.0


def test_retry_delay_retry_after_past_date():
    now = datetime(2015, 10, 21, 8, 0, 0, tzinfo=timezone.utc).timestamp()

    assert decide(status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0


def test_retry_delay_retry_after_far_date_capped():
    now = datetime(2015, 10, 21, 7, 0, 0, tzinfo=timezone.utc).timestamp()

    assert decide(status=429, retry_after="Wed, 21 Oct 2015 09:00:00 GMT", now=now) == 120.0


@pytest.mark.parametrize(
    "value", ["soon", "", "1.5", "Wed, 32 Oct 2015 07:28:00 GMT", "nan", "inf"]
)
def test_retry_delay_retry_after_garbage_ignored(value):
    delay = decide(attempt=1, status=503, retry_after=value, seed=11)

    assert delay == random.Random(11).uniform(0, POLICY.base_delay)


def test_retry_delay_full_jitter_bounds():
    policy = RetryPolicy(max_attempts=20, base_delay=0.5, max_delay=30.0)
    rng = random.Random(1234)
    twin = random.Random(1234)

    for attempt in range(1, 20):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [
            retry_delay(
                attempt=attempt, status=503, retry_after=None, policy=policy, now=0.0, rng=rng
            )
            for _ in range(200)
        ]

        assert delays == [twin.uniform(0, ceiling) for _ in range(200)]
        assert min(delays) >= 0
        assert max(delays) <= ceiling
        assert max(delays) > ceiling / 2
        assert min(delays) < ceiling / 2


def test_retry_delay_max_delay_caps_backoff():
    policy = RetryPolicy(max_attempts=50, base_delay=1.0, max_delay=4.0)
    rng = random.Random(3)

    delays = [
        retry_delay(attempt=40, status=None, retry_after=None, policy=policy, now=0.0, rng=rng)
        for _ in range(200)
    ]

    assert max(delays) <= 4.0
    assert max(delays) > 3.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay": -1},
        {"max_delay": -1},
        {"max_retry_after": -1},
        {"request_timeout": 0},
        {"connect_timeout": -1},
    ],
)
def test_retry_policy_invalid_values_rejected(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)
