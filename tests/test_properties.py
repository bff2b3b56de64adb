"""Property-based tests: number normalisation and the sign-then-verify round trip."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import webhooks
from phone import InvalidPhoneNumber, normalize_e164

# Indian mobile numbers: ten digits starting with 6, 7, 8 or 9.
indian_mobiles = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("6789"),
    st.text(alphabet="0123456789", min_size=9, max_size=9),
)
separators = st.sampled_from(["", " ", "-", "  "])


def spaced(digits: str, separator: str) -> str:
    return separator.join([digits[:5], digits[5:]]) if separator else digits


@given(number=indian_mobiles, separator=separators)
def test_normalize_indian_forms_agree(number, separator):
    try:
        expected = normalize_e164("+91" + number)
    except InvalidPhoneNumber:
        return  # not every 10-digit string is an allocated range

    forms = ["0" + spaced(number, separator), "91" + number, "+91 " + spaced(number, separator), "091" + number]

    for form in forms:
        assert normalize_e164(form, default_region="IN") == expected


@given(text=st.text(max_size=40))
def test_normalize_raises_only_invalid_number(text):
    try:
        result = normalize_e164(text)
    except InvalidPhoneNumber:
        return

    assert result.startswith("+")
    assert result[1:].isdigit()
    assert normalize_e164(result) == result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
field_names = st.text(min_size=1, max_size=12).filter(lambda name: name not in webhooks.ENVELOPE_KEYS)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(
    secret=st.text(min_size=1, max_size=64),
    fields=st.dictionaries(field_names, json_values, max_size=5),
    timestamp=st.integers(min_value=1_000_000_000, max_value=4_000_000_000),
)
def test_sign_verify_round_trip(secret, fields, timestamp):
    event = webhooks.build_event("call.note", call_id="call_x", sequence=1, fields=fields, timestamp=float(timestamp))
    headers = webhooks.sign(secret.encode("utf-8"), msg_id=event.id, timestamp=timestamp, body=event.body)

    payload = webhooks.verify(secret, headers, event.body, now=timestamp)

    assert payload == event.payload()
    for key, value in fields.items():
        assert payload[key] == value


@settings(max_examples=100)
@given(
    secret=st.text(min_size=1, max_size=32),
    note=st.text(min_size=1, max_size=200),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_verify_rejects_any_changed_byte(secret, note, position, flip):
    event = webhooks.build_event("call.note", call_id="call_x", sequence=1, fields={"note": note}, timestamp=1.7e9)
    headers = webhooks.sign(secret.encode("utf-8"), msg_id=event.id, timestamp=1_700_000_000, body=event.body)
    body = bytearray(event.body)
    body[position % len(body)] ^= flip

    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(secret, headers, bytes(body), now=1_700_000_000)
