"""Delivery receipt (DLR) parsing for deliver_sm / data_sm PDUs that carry an SMSC delivery receipt.

Pure module (no Django import). A receipt reaches us in two overlapping forms:

- SMPP 3.4 TLVs: ``receipted_message_id`` (0x001E), ``message_state`` (0x0427) and ``network_error_code``
  (0x0423: one octet network type + two octets error code). When present they are preferred: they are typed
  and were defined for exactly this purpose.
- The de-facto text of SMPP 3.4 Appendix B in ``short_message``:
  ``id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD err:E text:...``
  SMSCs vary it freely, so it is read tolerantly: any letter case, extra or missing spaces, fields in any
  order or missing, ``submit_date`` with an underscore, dates with or without seconds.

``text:`` holds the start of the original message, which may itself contain ``stat:`` or ``id:``; it therefore
runs to the end of the receipt, unless a field not seen yet follows it (an SMSC that put ``text`` first).

Message id matching
    SMSCs disagree with themselves about the id: several answer submit_sm_resp with a hex id and report the
    same id in decimal in the receipt text (or the other way round, or zero-padded, or in another case).
    :func:`message_id_variants` gives the normalised forms (lower case, leading zeros dropped, and for an
    all-digit id also its hex rendering). Store the submit_sm_resp id normalised with
    :func:`normalise_message_id`; a receipt matches a message when any of ``Receipt.message_id_variants``
    equals it. The variants include the ids of both the TLV and the text, when they differ.

Dates are the SMSC's local time and come back naive unless ``tzinfo`` names the upstream's time zone.

Speed
    A gateway parses thousands of receipts a second, nearly all in the exact Appendix B layout. That layout is
    read by one anchored regular expression (:data:`_APPENDIX_B_RE`) whose fields cannot hold a ``:``, so no
    key of the tolerant scan could start inside a value: it yields the same fields the tolerant scan would,
    and anything else falls back to that scan. Dates are built from their digits (strptime costs ~10 us) and
    remembered, since a burst of receipts shares a handful of minutes; only digits other than ASCII go through
    strptime, which is what defines the accepted forms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo

__all__ = [
    "Receipt",
    "message_id_variants",
    "normalise_message_id",
    "parse_receipt",
]

TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_NETWORK_ERROR_CODE = 0x0423
TAG_MESSAGE_STATE = 0x0427

_TLV_NAMES = {
    TAG_RECEIPTED_MESSAGE_ID: "receipted_message_id",
    TAG_NETWORK_ERROR_CODE: "network_error_code",
    TAG_MESSAGE_STATE: "message_state",
}

# SMPP 3.4 5.2.28 message_state values.
MESSAGE_STATES = {
    1: "enroute",
    2: "delivered",
    3: "expired",
    4: "deleted",
    5: "undelivered",
    6: "accepted",
    7: "unknown",
    8: "rejected",
}

# Appendix B stat values, plus the spelled-out words some SMSCs send instead.
_STAT_STATES = {
    "DELIVRD": "delivered",
    "DELIVERED": "delivered",
    "UNDELIV": "undelivered",
    "UNDELIVERABLE": "undelivered",
    "UNDELIVERED": "undelivered",
    "EXPIRED": "expired",
    "DELETED": "deleted",
    "ACCEPTD": "accepted",
    "ACCEPTED": "accepted",
    "UNKNOWN": "unknown",
    "REJECTD": "rejected",
    "REJECTED": "rejected",
    "ENROUTE": "enroute",
}

# Field names as SMSCs spell them. Longer alternatives first so 'submit date' is not read as 'sub'.
_FIELD_RE = re.compile(
    r"(submit[\s_]*date|done[\s_]*date|dlvrd|sub|stat|err|text|id)\s*:\s*",
    re.IGNORECASE,
)

# The exact Appendix B layout, as most SMSCs (and our simulator) send it. Values are ASCII without ':' or
# spaces, so the tolerant scan below would find exactly these keys; text runs to the end since every other
# field precedes it.
_APPENDIX_B_RE = re.compile(
    r"id:([0-9A-Za-z]+) sub:([0-9]+) dlvrd:([0-9]+) submit date:([0-9]+) done date:([0-9]+)"
    r" stat:([A-Za-z]+) err:([0-9A-Za-z]+) text:(.*)",
    re.DOTALL,
)

_FIELD_NAMES = {"id": "id", "sub": "sub", "dlvrd": "dlvrd", "stat": "stat", "err": "err", "text": "text"}

_DATE_FORMATS = {
    10: ("%y%m%d%H%M",),
    12: ("%y%m%d%H%M%S", "%Y%m%d%H%M"),
    14: ("%Y%m%d%H%M%S",),
}


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery receipt: the final (or intermediate) state of one submitted message part."""

    message_id: str  # as the SMSC gave it (the TLV when present, else the text)
    state: str  # delivered, undelivered, expired, rejected, deleted, unknown, accepted, enroute
    error_code: str  # network error code from the TLV, else the text's err field; '' when absent
    submit_date: datetime | None
    done_date: datetime | None
    dlvrd: int | None
    sub: int | None
    text: str
    message_id_variants: tuple[str, ...]  # normalised ids to match against the submit_sm_resp id

    @property
    def is_final(self) -> bool:
        """Whether the message has reached a final state (no further receipt will follow)."""
        return self.state not in ("enroute", "accepted", "unknown")


def normalise_message_id(message_id: str) -> str:
    """The canonical form of a message id: stripped, lower case, leading zeros dropped."""
    return message_id.strip().lower().lstrip("0") or "0"


def message_id_variants(message_id: str) -> tuple[str, ...]:
    """Normalised forms a message id may take at the other end: itself, and its hex rendering if all digits."""
    normalised = normalise_message_id(message_id)
    if normalised.isdigit() and normalised.isascii():
        as_hex = format(int(normalised), "x")
        if as_hex != normalised:
            return (normalised, as_hex)
    return (normalised,)


def parse_receipt(
    *, short_message: bytes | str | None, tlvs: Mapping[int | str, object] | None, tzinfo: tzinfo | None = None
) -> Receipt | None:
    """Parse a delivery receipt from a deliver_sm's ``short_message`` and TLVs; None if it is not one.

    ``tlvs`` may be keyed by tag (``0x001E``) or by SMPP name (``'receipted_message_id'``, as smpplib names
    its attributes); values may be raw octets, str or int. A receipt needs a message id and a state, from
    either source; anything else (an MO text, garbage) gives None. Call it only for PDUs whose esm_class
    says "SMSC delivery receipt" (0x04) when the SMSC sets that bit; some do not, hence the None result.
    """
    if tlvs:
        tlv_id = _tlv_message_id(tlvs)
        tlv_state = _tlv_message_state(tlvs)
        tlv_error = _tlv_network_error(tlvs)
    else:
        tlv_id = tlv_state = tlv_error = None

    if not short_message:
        text_fields = None
    else:
        if not isinstance(short_message, str):
            # The text is ASCII; latin-1 keeps any stray octet of the quoted message without failing.
            short_message = bytes(short_message).decode("latin-1")
        text_fields = _APPENDIX_B_RE.match(short_message)

    if text_fields is not None:
        text_id, sub, dlvrd, submit_date, done_date, stat, err, text = text_fields.groups()
        message_id = tlv_id or text_id
        state = tlv_state or _STAT_STATES.get(stat.upper(), "unknown")
        return Receipt(
            message_id=message_id,
            state=state,
            error_code=tlv_error if tlv_error is not None else err,
            submit_date=_parse_date(submit_date, tzinfo),
            done_date=_parse_date(done_date, tzinfo),
            dlvrd=int(dlvrd),
            sub=int(sub),
            text=text.strip(),
            message_id_variants=_variants(tlv_id, text_id),
        )

    fields = _parse_text(short_message) if short_message else {}
    text_id = fields.get("id") or None
    text_state = _stat_state(fields["stat"]) if "stat" in fields else None

    message_id = tlv_id or text_id
    state = tlv_state or text_state
    if not message_id or state is None:
        return None

    return Receipt(
        message_id=message_id,
        state=state,
        error_code=tlv_error if tlv_error is not None else fields.get("err", ""),
        submit_date=_parse_date(fields.get("submit_date"), tzinfo),
        done_date=_parse_date(fields.get("done_date"), tzinfo),
        dlvrd=_parse_int(fields.get("dlvrd")),
        sub=_parse_int(fields.get("sub")),
        text=fields.get("text", ""),
        message_id_variants=_variants(tlv_id, text_id),
    )


def _variants(tlv_id: str | None, text_id: str | None) -> tuple[str, ...]:
    if not tlv_id:
        return message_id_variants(text_id) if text_id else ()
    variants = message_id_variants(tlv_id)
    if text_id and text_id != tlv_id:
        extra = [v for v in message_id_variants(text_id) if v not in variants]
        if extra:
            return variants + tuple(extra)
    return variants


def _tlv(tlvs: Mapping[int | str, object] | None, tag: int) -> object | None:
    if not tlvs:
        return None
    value = tlvs.get(tag)
    if value is None:
        value = tlvs.get(_TLV_NAMES[tag])
    return value


def _tlv_message_id(tlvs: Mapping[int | str, object] | None) -> str | None:
    value = _tlv(tlvs, TAG_RECEIPTED_MESSAGE_ID)
    if isinstance(value, (bytes, bytearray, memoryview)):
        # A C-octet string: the raw TLV value still carries its NUL terminator.
        value = bytes(value).split(b"\x00", 1)[0].decode("ascii", errors="replace")
    if isinstance(value, str):
        value = value.strip().rstrip("\x00")
        return value or None
    return None


def _tlv_message_state(tlvs: Mapping[int | str, object] | None) -> str | None:
    value = _tlv(tlvs, TAG_MESSAGE_STATE)
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = int.from_bytes(bytes(value), "big") if len(value) else None
    if isinstance(value, int):
        # States outside 3.4 (SMPP 5.0 SCHEDULED 0, SKIPPED 9) say nothing final: unknown.
        return MESSAGE_STATES.get(value, "unknown")
    return None


def _tlv_network_error(tlvs: Mapping[int | str, object] | None) -> str | None:
    value = _tlv(tlvs, TAG_NETWORK_ERROR_CODE)
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value) == 3:
        # Octet 1 is the network type (1 ANSI-136, 2 IS-95, 3 GSM, ...); octets 2-3 the error code.
        return format(int.from_bytes(bytes(value[1:]), "big"), "03d")
    if isinstance(value, int):
        return format(value & 0xFFFF, "03d")
    return None


def _parse_text(short_message: str) -> dict[str, str]:
    """Appendix B receipt text -> raw field values keyed 'id', 'sub', 'dlvrd', 'submit_date', ... ."""
    matches = [(_field_name(m.group(1)), m.start(), m.end()) for m in _FIELD_RE.finditer(short_message)]
    fields: dict[str, str] = {}
    index = 0
    count = len(matches)
    while index < count:
        name, _, value_start = matches[index]
        next_index = index + 1
        if name == "text":
            # The quoted message may contain 'id:' or 'stat:': skip keys already seen or repeated.
            while next_index < count and (matches[next_index][0] in fields or matches[next_index][0] == "text"):
                next_index += 1
        if name not in fields:
            value = short_message[value_start : matches[next_index][1] if next_index < count else None]
            fields[name] = value.rstrip() if name == "text" else value.strip()
        index = next_index
    return fields


def _field_name(key: str) -> str:
    key = key.lower()
    name = _FIELD_NAMES.get(key)
    if name is not None:
        return name
    return "submit_date" if key.startswith("submit") else "done_date"


def _stat_state(stat: str) -> str:
    return _STAT_STATES.get(stat.strip().upper(), "unknown")


def _parse_date(value: str | None, tz: tzinfo | None) -> datetime | None:
    if not value:
        return None
    # Keyed by the tzinfo's identity: equal time zones may still differ in name.
    key = (value, id(tz))
    cached = _dates.get(key)
    if cached is not None and cached[0] is tz:
        return cached[1]
    parsed = _date(value, tz)
    if len(_dates) >= _DATES_REMEMBERED:
        _dates.clear()
    _dates[key] = (tz, parsed)
    return parsed


_DATES_REMEMBERED = 4096
_dates: dict[tuple[str, int], tuple[tzinfo | None, datetime | None]] = {}


def _date(value: str, tz: tzinfo | None) -> datetime | None:
    """A date field's value -> datetime (SMSC local time, ``tz`` attached), None when it is no date."""
    digits = value.strip()
    formats = _DATE_FORMATS.get(len(digits), ())
    if not (digits.isdigit() and digits.isascii()):
        return _date_strptime(digits, formats, tz)
    for fmt in formats:
        # Fixed-width digits: each strptime directive takes exactly two (four for %Y), and datetime() rejects
        # the same out-of-range values strptime's patterns and calendar checks do.
        try:
            if fmt[1] == "y":
                year = int(digits[0:2])
                year += 2000 if year <= 68 else 1900  # strptime's %y pivot
                rest = 2
            else:
                year = int(digits[0:4])
                rest = 4
            parsed = datetime(
                year,
                int(digits[rest : rest + 2]),
                int(digits[rest + 2 : rest + 4]),
                int(digits[rest + 4 : rest + 6]),
                int(digits[rest + 6 : rest + 8]),
                int(digits[rest + 8 : rest + 10]) if fmt.endswith("%S") else 0,
                tzinfo=tz,
            )
        except ValueError:
            continue
        return parsed
    return None


def _date_strptime(digits: str, formats: tuple[str, ...], tz: tzinfo | None) -> datetime | None:
    for fmt in formats:
        try:
            parsed = datetime.strptime(digits, fmt)  # SMSC local time; tz attached below
        except ValueError:
            continue
        return parsed.replace(tzinfo=tz) if tz is not None else parsed
    return None


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and value.isascii() else None
