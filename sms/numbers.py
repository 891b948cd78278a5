"""Destination numbers: parsing to E.164, and the country and mobile operator a number belongs to.

Pure module (no Django import): it runs once per recipient on the acceptance path.

The country and the mobile operator come from phonenumbers' data unless the operator's own prefix table
(:class:`PrefixTable`, built from ``sms.NumberPrefix`` rows) has a longer matching prefix: operators know about
ported ranges, MVNOs and numbering changes the library does not. Sender ids are checked here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import carrier

__all__ = ["InvalidNumber", "ParsedNumber", "PrefixTable", "number_parse", "sender_is_valid"]

_NON_DIGITS = re.compile(r"[\s().\-/]")
_ALPHANUMERIC_SENDER = re.compile(r"^[A-Za-z0-9 .\-_&]{1,11}$")


class InvalidNumber(ValueError):
    """Not a valid international phone number."""


@dataclass(frozen=True, slots=True)
class ParsedNumber:
    e164: str  # with the leading +
    country: str  # ISO 3166 alpha-2, '' when unknown
    mobile_operator: str  # '' when unknown

    @property
    def digits(self) -> str:
        return self.e164[1:]


@dataclass(frozen=True, slots=True)
class PrefixEntry:
    prefix: str
    country: str
    mobile_operator: str


class PrefixTable:
    """Longest-prefix lookup over the operator's number ranges."""

    def __init__(self, entries: list[PrefixEntry] | tuple[PrefixEntry, ...] = ()) -> None:
        self._by_prefix = {entry.prefix: entry for entry in entries}
        self._lengths = sorted({len(prefix) for prefix in self._by_prefix}, reverse=True)

    def __len__(self) -> int:
        return len(self._by_prefix)

    def lookup(self, digits: str) -> PrefixEntry | None:
        for length in self._lengths:
            entry = self._by_prefix.get(digits[:length])
            if entry is not None:
                return entry
        return None


def _normalise(raw: str) -> str:
    value = _NON_DIGITS.sub("", raw.strip())
    if value.startswith("00"):
        value = value[2:]
    elif value.startswith("+"):
        value = value[1:]
    if not value.isdigit() or not value.isascii():
        raise InvalidNumber(f"{raw!r} is not a phone number: use international format, e.g. +34612345678.")
    return value


@lru_cache(maxsize=65536)
def _library_lookup(digits: str) -> tuple[str, str]:
    """(country, mobile operator) from phonenumbers; raises InvalidNumber for numbers it does not know as valid."""
    try:
        parsed = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"+{digits} is not a valid phone number.") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(f"+{digits} is not a valid phone number.")
    return phonenumbers.region_code_for_number(parsed) or "", carrier.name_for_number(parsed, "en") or ""


def number_parse(raw: str, *, prefixes: PrefixTable | None = None) -> ParsedNumber:
    """``raw`` (``+34 612 34 56 78``, ``0034612345678`` or ``34612345678``) -> E.164, country, mobile operator.

    A number in the operator's prefix table is accepted even when phonenumbers does not know the range.
    """
    digits = _normalise(raw)
    if not 7 <= len(digits) <= 15:
        raise InvalidNumber(f"{raw!r} is not a phone number: E.164 numbers have 7 to 15 digits.")
    override = prefixes.lookup(digits) if prefixes else None
    try:
        country, mobile_operator = _library_lookup(digits)
    except InvalidNumber:
        if override is None:
            raise
        country, mobile_operator = "", ""
    if override is not None:
        country = override.country or country
        mobile_operator = override.mobile_operator
    return ParsedNumber("+" + digits, country, mobile_operator)


def sender_is_valid(sender: str) -> bool:
    """An alphanumeric sender id (1-11 characters) or a number (up to 15 digits, optional +)."""
    if not sender:
        return False
    digits = sender[1:] if sender.startswith("+") else sender
    if digits.isdigit() and digits.isascii():
        return len(digits) <= 15
    return bool(_ALPHANUMERIC_SENDER.match(sender))
