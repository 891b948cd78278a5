"""Delivery receipt parsing: TLVs, the Appendix B text in its many dialects, and message id matching."""

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sms import receipts
from sms.receipts import message_id_variants, normalise_message_id, parse_receipt

STANDARD = (
    b"id:0123456789 sub:001 dlvrd:001 submit date:2301151230 done date:2301151231 stat:DELIVRD err:000 text:Your code"
)


def test_standard_receipt_text():
    receipt = parse_receipt(short_message=STANDARD, tlvs={})

    assert receipt.message_id == "0123456789"
    assert receipt.state == "delivered"
    assert receipt.error_code == "000"
    assert receipt.submit_date == datetime(2023, 1, 15, 12, 30)
    assert receipt.done_date == datetime(2023, 1, 15, 12, 31)
    assert (receipt.sub, receipt.dlvrd) == (1, 1)
    assert receipt.text == "Your code"
    assert receipt.is_final


def test_tlv_only_receipt_keyed_by_tag_with_raw_octets():
    receipt = parse_receipt(
        short_message=b"",
        tlvs={0x001E: b"a1b2c3\x00", 0x0427: b"\x05", 0x0423: b"\x03\x00\x22"},
    )

    assert receipt.message_id == "a1b2c3"
    assert receipt.state == "undelivered"
    assert receipt.error_code == "034"
    assert (receipt.submit_date, receipt.done_date, receipt.dlvrd, receipt.sub, receipt.text) == (
        None,
        None,
        None,
        None,
        "",
    )


def test_tlvs_keyed_by_name_as_smpplib_gives_them():
    receipt = parse_receipt(short_message=None, tlvs={"receipted_message_id": b"ff01", "message_state": 2})

    assert (receipt.message_id, receipt.state) == ("ff01", "delivered")


@pytest.mark.parametrize(
    ("message_state", "state"),
    [(1, "enroute"), (2, "delivered"), (3, "expired"), (4, "deleted"), (5, "undelivered"), (6, "accepted")]
    + [(7, "unknown"), (8, "rejected"), (9, "unknown")],
)
def test_message_state_tlv_values(message_state, state):
    assert parse_receipt(short_message=b"", tlvs={0x001E: "1", 0x0427: message_state}).state == state


def test_tlvs_win_over_text_and_both_ids_are_matchable():
    # This SMSC reports decimal in the text and hex in the TLV (and in submit_sm_resp).
    receipt = parse_receipt(
        short_message=b"id:1234567890 sub:001 dlvrd:000 submit date:2301151230 done date:2301151300 stat:DELIVRD",
        tlvs={"receipted_message_id": b"499602d2", "message_state": 5},
    )

    assert receipt.message_id == "499602d2"
    assert receipt.state == "undelivered"
    assert receipt.message_id_variants == ("499602d2", "1234567890")
    assert receipt.done_date == datetime(2023, 1, 15, 13, 0)  # the text still fills what TLVs lack


def test_network_error_code_tlv_wins_over_err_text():
    receipt = parse_receipt(short_message=b"id:1 stat:UNDELIV err:999", tlvs={0x0423: b"\x03\x00\x01"})

    assert receipt.error_code == "001"


@pytest.mark.parametrize(
    "short_message",
    [
        "ID:42 SUB:001 DLVRD:001 SUBMIT DATE:2301151230 DONE DATE:2301151231 STAT:DELIVRD ERR:000 TEXT:hi",
        "id: 42  sub: 001 dlvrd: 001  submit  date: 2301151230  done  date: 2301151231  stat: delivrd err:000 text: hi",
        "id:42sub:001dlvrd:001submit date:2301151230done date:2301151231stat:DELIVRDerr:000text:hi",
        "stat:DELIVRD err:000 done date:2301151231 id:42 dlvrd:001 submit date:2301151230 sub:001 text:hi",
        "id:42 sub:001 dlvrd:001 submit_date:2301151230 done_date:2301151231 stat:Delivrd err:000 text:hi",
        "id:42 sub:001 dlvrd:001 submitdate:2301151230 donedate:2301151231 stat:DELIVRD err:000 text:hi",
        "  id:42 sub:001 dlvrd:001 submit date:230115123000 done date:230115123100 stat:DELIVRD err:000 text:hi  ",
    ],
    ids=["upper case", "extra spaces", "missing spaces", "any order", "underscores", "no separator", "seconds"],
)
def test_receipt_text_dialects(short_message):
    receipt = parse_receipt(short_message=short_message, tlvs={})

    assert (receipt.message_id, receipt.state, receipt.error_code, receipt.text) == ("42", "delivered", "000", "hi")
    assert (receipt.sub, receipt.dlvrd) == (1, 1)
    assert receipt.submit_date == datetime(2023, 1, 15, 12, 30)
    assert receipt.done_date == datetime(2023, 1, 15, 12, 31)


def test_twelve_digit_dates_carry_seconds():
    receipt = parse_receipt(short_message="id:1 submit date:230115123045 done date:230115123159 stat:DELIVRD", tlvs={})

    assert receipt.submit_date == datetime(2023, 1, 15, 12, 30, 45)
    assert receipt.done_date == datetime(2023, 1, 15, 12, 31, 59)


def test_missing_text_and_optional_fields():
    receipt = parse_receipt(short_message="id:77 stat:EXPIRED", tlvs=None)

    assert (receipt.message_id, receipt.state) == ("77", "expired")
    assert (receipt.error_code, receipt.text, receipt.sub, receipt.dlvrd) == ("", "", None, None)
    assert (receipt.submit_date, receipt.done_date) == (None, None)


def test_text_field_may_quote_receipt_keywords():
    receipt = parse_receipt(short_message=STANDARD.replace(b"Your code", b"stat:UNDELIV id:9 err:5 ok"), tlvs={})

    assert (receipt.message_id, receipt.state, receipt.error_code) == ("0123456789", "delivered", "000")
    assert receipt.text == "stat:UNDELIV id:9 err:5 ok"


def test_text_field_before_other_fields_ends_at_the_next_new_field():
    receipt = parse_receipt(short_message="text:hello there stat:DELIVRD id:5", tlvs={})

    assert (receipt.text, receipt.state, receipt.message_id) == ("hello there", "delivered", "5")


@pytest.mark.parametrize(
    ("stat", "state"),
    [
        ("DELIVRD", "delivered"),
        ("EXPIRED", "expired"),
        ("DELETED", "deleted"),
        ("UNDELIV", "undelivered"),
        ("ACCEPTD", "accepted"),
        ("UNKNOWN", "unknown"),
        ("REJECTD", "rejected"),
        ("ENROUTE", "enroute"),
        ("DELIVERED", "delivered"),
        ("weird", "unknown"),
    ],
)
def test_stat_values(stat, state):
    assert parse_receipt(short_message=f"id:1 stat:{stat}", tlvs={}).state == state


def test_invalid_date_is_none_not_an_error():
    receipt = parse_receipt(short_message="id:1 submit date:2313451299 done date:23 stat:DELIVRD", tlvs={})

    assert (receipt.submit_date, receipt.done_date) == (None, None)


def test_dates_take_the_upstream_time_zone_when_given():
    moscow = timezone(timedelta(hours=3))
    receipt = parse_receipt(short_message=STANDARD, tlvs={}, tzinfo=moscow)

    assert receipt.done_date.astimezone(UTC) == datetime(2023, 1, 15, 9, 31, tzinfo=UTC)


def test_non_final_states():
    assert not parse_receipt(short_message="id:1 stat:ENROUTE", tlvs={}).is_final
    assert not parse_receipt(short_message="id:1 stat:ACCEPTD", tlvs={}).is_final


@pytest.mark.parametrize(
    "short_message",
    [
        b"",
        "",
        None,
        b"STOP",
        "hello world",
        "id:123 but no state",
        "stat:DELIVRD without an id",
        b"\xff\xfe\x00garbage",
    ],
)
def test_not_a_receipt_gives_none(short_message):
    assert parse_receipt(short_message=short_message, tlvs={}) is None


def test_state_tlv_without_an_id_is_not_a_receipt():
    assert parse_receipt(short_message=b"hello", tlvs={0x0427: 2}) is None


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_input_never_raises(short_message):
    parse_receipt(short_message=short_message, tlvs={})


# --- message id matching ---


@pytest.mark.parametrize(
    ("message_id", "variants"),
    [
        ("a1B2c3", ("a1b2c3",)),
        ("0000ABCDEF", ("abcdef",)),
        ("1234567890", ("1234567890", "499602d2")),
        ("00000255", ("255", "ff")),
        ("7", ("7",)),  # hex and decimal agree below 10
        ("0", ("0",)),
    ],
)
def test_message_id_variants(message_id, variants):
    assert message_id_variants(message_id) == variants


def test_decimal_receipt_matches_hex_submit_sm_resp_id():
    stored = normalise_message_id("499602D2")  # as submit_sm_resp gave it
    receipt = parse_receipt(short_message="id:1234567890 stat:DELIVRD", tlvs={})

    assert stored in receipt.message_id_variants


def test_zero_padded_receipt_id_matches():
    stored = normalise_message_id("abc123")
    receipt = parse_receipt(short_message="id:0000abc123 stat:DELIVRD", tlvs={})

    assert stored in receipt.message_id_variants


# --- the fast parser agrees with the original regex + strptime parser ---
#
# The reference below is the first implementation of parse_receipt (a regex scan of the fields, strptime for the
# dates), kept verbatim in behaviour as the oracle: the fast Appendix B path and the digit-slicing dates must give
# exactly what it gives, on the layout SMSCs send and on every dialect the tolerant scan accepts.

_REFERENCE_FIELD_RE = re.compile(r"(submit[\s_]*date|done[\s_]*date|dlvrd|sub|stat|err|text|id)\s*:\s*", re.I)
_REFERENCE_DATE_FORMATS = {10: ("%y%m%d%H%M",), 12: ("%y%m%d%H%M%S", "%Y%m%d%H%M"), 14: ("%Y%m%d%H%M%S",)}


def _reference_parse_receipt(*, short_message, tlvs, tzinfo=None):
    tlv_id, tlv_state, tlv_error = (
        receipts._tlv_message_id(tlvs),
        receipts._tlv_message_state(tlvs),
        receipts._tlv_network_error(tlvs),
    )
    fields = _reference_fields(short_message)
    text_id = fields.get("id") or None
    text_state = receipts._STAT_STATES.get(fields["stat"].strip().upper(), "unknown") if "stat" in fields else None
    message_id, state = tlv_id or text_id, tlv_state or text_state
    if not message_id or state is None:
        return None
    variants = []
    for candidate in (tlv_id, text_id):
        if candidate:
            variants.extend(v for v in message_id_variants(candidate) if v not in variants)
    return receipts.Receipt(
        message_id=message_id,
        state=state,
        error_code=tlv_error if tlv_error is not None else fields.get("err", ""),
        submit_date=_reference_date(fields.get("submit_date"), tzinfo),
        done_date=_reference_date(fields.get("done_date"), tzinfo),
        dlvrd=_reference_int(fields.get("dlvrd")),
        sub=_reference_int(fields.get("sub")),
        text=fields.get("text", ""),
        message_id_variants=tuple(variants),
    )


def _reference_fields(short_message):
    if not short_message:
        return {}
    if isinstance(short_message, bytes):
        short_message = short_message.decode("latin-1")
    matches = []
    for m in _REFERENCE_FIELD_RE.finditer(short_message):
        key = m.group(1).lower()
        name = "submit_date" if key.startswith("submit") else "done_date" if key.startswith("done") else key
        matches.append((name, m.start(), m.end()))
    fields, index = {}, 0
    while index < len(matches):
        name, _, value_start = matches[index]
        next_index = index + 1
        if name == "text":
            while next_index < len(matches) and (matches[next_index][0] in fields or matches[next_index][0] == "text"):
                next_index += 1
        value = short_message[value_start : matches[next_index][1] if next_index < len(matches) else len(short_message)]
        if name not in fields:
            fields[name] = value.rstrip() if name == "text" else value.strip()
        index = next_index
    return fields


def _reference_date(value, tz):
    if not value:
        return None
    digits = value.strip()
    for fmt in _REFERENCE_DATE_FORMATS.get(len(digits), ()):
        try:
            parsed = datetime.strptime(digits, fmt)
        except ValueError:
            continue
        return parsed.replace(tzinfo=tz) if tz is not None else parsed
    return None


def _reference_int(value):
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and value.isascii() else None


def _assert_same(short_message, tlvs, tz):
    got = parse_receipt(short_message=short_message, tlvs=tlvs, tzinfo=tz)
    expected = _reference_parse_receipt(short_message=short_message, tlvs=tlvs, tzinfo=tz)
    assert got == expected
    if got is not None:  # == on aware datetimes compares instants: the zone itself must be the same too
        assert (got.submit_date and got.submit_date.tzinfo, got.done_date and got.done_date.tzinfo) == (
            expected.submit_date and expected.submit_date.tzinfo,
            expected.done_date and expected.done_date.tzinfo,
        )


MOSCOW = timezone(timedelta(hours=3), "MSK")
_time_zones = st.sampled_from([None, UTC, MOSCOW, timezone(timedelta(0), "GMT")])
_digits = st.text("0123456789", min_size=0, max_size=15)
_dates = st.one_of(
    st.datetimes(min_value=datetime(1969, 1, 1), max_value=datetime(2068, 12, 31)).map(
        lambda d: d.strftime("%y%m%d%H%M") if d.second % 2 else d.strftime("%y%m%d%H%M%S")
    ),
    st.datetimes(min_value=datetime(1000, 1, 1)).map(lambda d: d.strftime("%Y%m%d%H%M%S")),
    st.sampled_from(["2402291230", "2302291230", "230115123060", "2301152430", "0000010112", "6801010000"]),
    _digits,
)
# Values that hold a key, a colon or a space: the fast path must leave them to the tolerant scan.
_tricky = st.sampled_from(["err:5", "a:b", "stat:x", "textid", "sub", "DLVRD", "0x1F", " 12", "id:7", "x1", "1 2"])
_ids = st.one_of(
    st.integers(min_value=0, max_value=2**64).map(str),
    st.integers(min_value=0, max_value=2**64).map(lambda n: format(n, "x")),
    st.integers(min_value=0, max_value=2**32).map(lambda n: format(n, "010X")),
    st.text("0123456789abcdefABCDEFxyz-", min_size=0, max_size=12),
    _tricky,
)
_stats = st.one_of(st.sampled_from(sorted(receipts._STAT_STATES)), st.text("ADEILNRVUdelivr :", max_size=9), _tricky)
_small = st.one_of(st.integers(min_value=0, max_value=999).map(lambda n: f"{n:03d}"), _digits, _tricky)
_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["Your code 1234", "stat:UNDELIV id:9 err:5 ok", "  spaced  ", "", "text:again", "sub:"]),
)
_tlvs = st.one_of(
    st.none(),
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "receipted_message_id": st.one_of(_ids.map(lambda i: i.encode() + b"\x00"), _ids),
            "message_state": st.one_of(st.integers(min_value=0, max_value=9), st.binary(min_size=1, max_size=1)),
            "network_error_code": st.one_of(st.binary(min_size=3, max_size=3), st.integers(0, 70000)),
        },
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message_id=_ids,
    sub=_small,
    dlvrd=_small,
    submit_date=_dates,
    done_date=_dates,
    stat=_stats,
    err=_small,
    text=_texts,
    tlvs=_tlvs,
    tz=_time_zones,
    as_bytes=st.booleans(),
)
def test_fast_parser_agrees_with_reference_on_the_appendix_b_layout(
    message_id, sub, dlvrd, submit_date, done_date, stat, err, text, tlvs, tz, as_bytes
):
    # Given a receipt in the exact layout SMSCs send (the fast path), with any values, TLVs or none
    short_message = (
        f"id:{message_id} sub:{sub} dlvrd:{dlvrd} submit date:{submit_date} done date:{done_date}"
        f" stat:{stat} err:{err} text:{text}"
    )
    if as_bytes:
        short_message = short_message.encode("utf-8")
    # Then the new parser gives what the original one gave
    _assert_same(short_message, tlvs, tz)


_KEY_SPELLINGS = {
    "id": ["id", "ID", "Id"],
    "sub": ["sub", "SUB"],
    "dlvrd": ["dlvrd", "DLVRD"],
    "submit date": ["submit date", "SUBMIT DATE", "submit_date", "submitdate", "submit  date", "Submit Date"],
    "done date": ["done date", "DONE DATE", "done_date", "donedate", "done  date"],
    "stat": ["stat", "STAT", "Stat"],
    "err": ["err", "ERR"],
    "text": ["text", "TEXT", "Text"],
}


@st.composite
def _dialect_receipts(draw):
    values = {
        "id": draw(_ids),
        "sub": draw(_small),
        "dlvrd": draw(_small),
        "submit date": draw(_dates),
        "done date": draw(_dates),
        "stat": draw(_stats),
        "err": draw(_small),
        "text": draw(_texts),
    }
    keys = draw(st.permutations(list(values)))
    keys = keys[: draw(st.integers(min_value=0, max_value=len(keys)))]
    parts = []
    for key in keys:
        spelling = draw(st.sampled_from(_KEY_SPELLINGS[key]))
        colon = draw(st.sampled_from([":", ": ", " :", ":  "]))
        parts.append(f"{spelling}{colon}{values[key]}")
        parts.append(draw(st.sampled_from([" ", "", "  ", "\t"])))
    return draw(st.sampled_from(["", " ", "  "])) + "".join(parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(short_message=_dialect_receipts(), tlvs=_tlvs, tz=_time_zones, as_bytes=st.booleans())
def test_fast_parser_agrees_with_reference_on_every_dialect(short_message, tlvs, tz, as_bytes):
    # Given a receipt in any dialect the tolerant scan reads: keys in any case, order and spelling, fields missing
    if as_bytes:
        short_message = short_message.encode("utf-8")
    # Then the new parser gives what the original one gave
    _assert_same(short_message, tlvs, tz)


@settings(max_examples=300, deadline=None)
@given(short_message=st.one_of(st.binary(max_size=200), st.text(max_size=200)), tlvs=_tlvs, tz=_time_zones)
def test_fast_parser_agrees_with_reference_on_arbitrary_input(short_message, tlvs, tz):
    _assert_same(short_message, tlvs, tz)


@pytest.mark.parametrize(
    "digits",
    ["2301151230", "230115123045", "202301151230", "20230115123045", "2402291230", "2302291230", "230115123060"]
    + ["2301152400", "2300151230", "2301001230", "0001011200", "6912312359", "6801010000", "00000101000000"]
    + ["\u0662\u0663\u0660\u0661\u0661\u0665\u0661\u0662\u0663\u0660", " 2301151230 ", "23011512301"],
    ids=lambda digits: repr(digits),
)
def test_dates_read_as_strptime_reads_them(digits):
    # Given a date field at the edges: leap days, second 60, hour 24, century pivot, Arabic-Indic digits, 11 digits
    for tz in (None, UTC, MOSCOW):
        # Then the digits are read as strptime reads them (twice: the second answer comes from memory)
        assert receipts._parse_date(digits, tz) == _reference_date(digits, tz)
        assert receipts._parse_date(digits, tz) == _reference_date(digits, tz)


def test_equal_time_zones_with_other_names_are_not_confused():
    # Given the same digits read first in UTC, then in a zone equal to UTC with another name
    receipts._parse_date("2301151230", UTC)
    gmt = timezone(timedelta(0), "GMT")

    # Then the second answer carries the zone it was asked for
    assert receipts._parse_date("2301151230", gmt).tzinfo is gmt
