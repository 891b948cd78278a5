"""Delivery receipt parsing: TLVs, the Appendix B text in its many dialects, and message id matching."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
