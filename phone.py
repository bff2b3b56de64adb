"""Phone number normalisation to E.164 and masking for logs."""

from __future__ import annotations

import phonenumbers

DEFAULT_REGION = "IN"


class InvalidPhoneNumber(ValueError):
    """A phone number that cannot be read as a valid E.164 number."""


def normalize_e164(raw: object, *, default_region: str = DEFAULT_REGION) -> str:
    """Return `raw` as an E.164 string such as "+919800000001".

    National formats are read in `default_region`. A leading trunk prefix
    followed by the country code ("0919800000001") and a bare country code
    without "+" ("919800000001") are both accepted, as carriers and CRMs write
    numbers that way.
    """
    if not isinstance(raw, str):
        raise InvalidPhoneNumber(
            f"phone number must be a string such as '+919800000001', got {type(raw).__name__}"
        )

    text = raw.strip()
    if not text:
        raise InvalidPhoneNumber("phone number is empty; expected E.164, e.g. '+919800000001'")

    for candidate in _candidates(text, default_region):
        try:
            parsed = phonenumbers.parse(candidate, default_region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)

    raise InvalidPhoneNumber(
        f"invalid phone number {mask_phone(text)!r}: expected E.164 such as '+919800000001' "
        f"or a national number valid in region {default_region}"
    )


def _candidates(text: str, default_region: str) -> list[str]:
    if text.startswith("+"):
        return [text]

    digits = "".join(ch for ch in text if ch.isdigit())
    country_code = str(phonenumbers.country_code_for_region(default_region))
    candidates = [text]

    # "919800000001" is the country code without "+"; "0919800000001" adds a trunk "0".
    if digits.startswith(country_code):
        candidates.append("+" + digits)
    if digits.startswith("0" + country_code):
        candidates.append("+" + digits[1:])
    if digits.startswith("00"):
        candidates.append("+" + digits[2:])
    return candidates


def mask_phone(number: str | None) -> str:
    """Mask all but the country prefix and last 4 digits: "+91******0001"."""
    if not number:
        return ""
    text = str(number)
    if len(text) <= 6:
        return "*" * len(text)
    return text[:3] + "*" * (len(text) - 7) + text[-4:]
