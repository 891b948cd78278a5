"""Parsers of uploaded files: rate decks and CDRs. Every bad line is reported where it is; good lines survive.

No database: these tests import nothing from Django and need no fixture.
"""

import io
import itertools
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.csvformats import (
    FREEPHONE_DEFAULT_PROFILE,
    LineError,
    ParsedCdr,
    asterisk_trunk,
    iter_asterisk_master_columns,
    parse_asterisk_master_csv,
    parse_freephone_cdrs,
    parse_mapped_cdr_csv,
    parse_positional_cdrs,
    parse_rate_deck_csv,
    read_asterisk_master_columns,
    write_rate_deck_csv,
)
from billing.rating import Rate

D = Decimal
HEADER = "prefix,destination,rate,connect_fee,increment,min_charge,effective_from\n"

# --- rate decks -----------------------------------------------------------------------------------


def test_a_clean_deck_reads_with_defaults_for_empty_columns():
    rates, errors = parse_rate_deck_csv(HEADER + "+34,Spain,0.10,,,,\n346,Spain mobile,0.2,0.05,30/6,0.01,2024-07-01\n")
    assert errors == []
    assert rates == [
        Rate(prefix="34", destination="Spain", rate=D("0.10")),
        Rate(prefix="346", destination="Spain mobile", rate=D("0.2"), connect_fee=D("0.05"), first_increment=30,
             next_increment=6, min_charge=D("0.01"), effective_from=datetime(2024, 7, 1, tzinfo=UTC)),
    ]  # fmt: skip


def test_every_bad_line_is_reported_with_its_line_and_column_and_good_lines_are_kept():
    text = (
        HEADER  # line 1
        + "34,Spain,0.10,,1/1,,\n"  # 2: good
        + "12a,Nowhere,0.1,,60/60,,\n"  # 3: prefix not digits
        + "99,Bad,-1,,60/60,,\n"  # 4: negative rate
        + "98,Bad,abc,0.0000001,60-60,,2024-13-01\n"  # 5: four bad fields
        + "44,UK,0.30,,30/6,0.50,2024-07-01T12:00:00+02:00\n"  # 6: good
        + "34,Spain again,0.2,,,,\n"  # 7: duplicate of line 2
        + "97,No rate,,,,,\n"  # 8: rate missing
    )
    rates, errors = parse_rate_deck_csv(text)
    assert [r.prefix for r in rates] == ["34", "44"]
    assert [(e.line, e.column) for e in errors] == [
        (3, "prefix"),
        (4, "rate"),
        (5, "rate"),
        (5, "connect_fee"),
        (5, "increment"),
        (5, "effective_from"),
        (7, "prefix"),
        (8, "rate"),
    ]
    assert "must not be negative" in errors[1].reason
    assert "at most 6 decimal places" in errors[3].reason
    assert "increment must look like 60/60" in errors[4].reason
    assert "duplicate of line 2" in errors[6].reason
    # A date-time with an offset is stored in UTC.
    assert rates[1].effective_from == datetime(2024, 7, 1, 10, 0, tzinfo=UTC)


def test_a_header_missing_a_required_column_is_an_error_on_line_1():
    rates, errors = parse_rate_deck_csv("prefix,destination,connect_fee\n34,Spain,0\n")
    assert rates == []
    assert errors == [LineError(1, "rate", errors[0].reason)]
    assert "missing required column 'rate'" in errors[0].reason


def test_an_empty_deck_file_is_an_error_not_an_empty_deck():
    rates, errors = parse_rate_deck_csv("")
    assert (rates, [(e.line, e.column) for e in errors]) == ([], [(1, None)])


def test_a_quoted_newline_does_not_shift_the_line_numbers_of_later_errors():
    text = HEADER + '34,"Spain,\nmainland",0.10,,,,\n35,Bad,x,,,,\n'
    rates, errors = parse_rate_deck_csv(text)
    assert rates[0].destination == "Spain,\nmainland"
    assert [(e.line, e.column) for e in errors] == [(4, "rate")]


def test_columns_may_come_in_any_order_with_service_and_band_and_a_byte_order_mark():
    text = "\ufeffRate,Prefix,Destination,Service,Time_Band\n0.05,7,Russia SMS,sms,\n0.2,7,Russia peak,,peak\n"
    rates, errors = parse_rate_deck_csv(text.encode("utf-8"))
    assert errors == []
    assert [(r.service, r.time_band) for r in rates] == [("sms", None), ("voice", "peak")]


def test_a_file_object_is_read_like_text():
    rates, errors = parse_rate_deck_csv(io.StringIO(HEADER + "34,Spain,0.10,,,,\n"))
    assert (len(rates), errors) == (1, [])


deck_rates = st.builds(
    Rate,
    prefix=st.text("0123456789", min_size=1, max_size=15),
    destination=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
    rate=st.integers(0, 10**12 - 1).map(lambda n: D(n).scaleb(-6)),
    connect_fee=st.integers(0, 10**8).map(lambda n: D(n).scaleb(-6)),
    first_increment=st.integers(0, 3600),
    next_increment=st.integers(1, 3600),
    min_charge=st.integers(0, 10**8).map(lambda n: D(n).scaleb(-6)),
    effective_from=st.none() | st.datetimes(timezones=st.just(UTC)),
    time_band=st.none() | st.text("abcdefgh -", min_size=1, max_size=8).filter(str.strip).map(str.strip),
    service=st.sampled_from(["voice", "sms", "ussd"]),
)


@settings(max_examples=200)
@given(
    rates=st.lists(deck_rates, max_size=20, unique_by=lambda r: (r.prefix, r.effective_from, r.service, r.time_band))
)
def test_writing_then_reading_a_deck_gives_it_back(rates):
    assert parse_rate_deck_csv(write_rate_deck_csv(rates)) == (rates, [])


# --- Asterisk Master.csv --------------------------------------------------------------------------

ASTERISK_GOOD = (
    '"acme","1001","34911234567","from-internal","""Alice"" <1001>","SIP/1001-00000001","SIP/trunk-00000002",'
    '"Dial","SIP/trunk/34911234567,60","2024-01-15 10:00:00","2024-01-15 10:00:05","2024-01-15 10:03:05",185,180,'
    '"ANSWERED","DOCUMENTATION","1705312800.1",""\n'
)
ASTERISK_BAD_TIME = (
    '"acme","1001","34911234567","from-internal","","SIP/1001-00000003","","Dial","","15/01/2024 10:00","","",'
    '5,x,"NO ANSWER","DOCUMENTATION","1705312800.2",""\n'
)
ASTERISK_16_FIELDS = (
    '"","1002","442071234567","from-internal","","SIP/1002-00000004","SIP/trunk-00000005","Dial","",'
    '"2024-03-31 02:30:00","2024-03-31 02:30:10","2024-03-31 02:31:10",70,60,"ANSWERED","BILLING"\n'
)


def test_an_asterisk_line_parses_into_a_cdr():
    [cdr] = parse_asterisk_master_csv(ASTERISK_GOOD)
    assert cdr == ParsedCdr(
        line=1,
        source_id="1705312800.1",
        caller="1001",
        callee="34911234567",
        start=datetime(2024, 1, 15, 10, 0, tzinfo=UTC),
        duration=185,
        billsec=180,
        account="acme",
        disposition="ANSWERED",
        trunk="trunk",  # dstchannel SIP/trunk-00000002
    )


def test_a_bad_asterisk_line_is_reported_by_line_and_the_good_lines_still_come_through():
    text = ASTERISK_GOOD + ASTERISK_BAD_TIME + "\n" + "too,short\n" + ASTERISK_16_FIELDS
    results = list(parse_asterisk_master_csv(text))
    assert [type(r).__name__ for r in results] == ["ParsedCdr", "LineError", "LineError", "ParsedCdr"]
    bad_time, short = results[1], results[2]
    assert (bad_time.line, bad_time.column) == (2, "start")
    assert "YYYY" not in bad_time.reason and "2024-01-31 23:59:59" in bad_time.reason
    assert "billsec must be a whole number of seconds, got 'x'" in bad_time.reason
    assert (short.line, short.column) == (4, None)  # line 3 is blank and skipped
    assert results[3].line == 5


def test_a_malformed_csv_record_is_reported_and_reading_goes_on():
    huge = ASTERISK_GOOD.replace('"Dial"', '"' + "x" * 200_000 + '"')  # over the csv module's field limit
    text = ASTERISK_GOOD + huge + ASTERISK_GOOD
    results = list(parse_asterisk_master_csv(text))
    assert [r.line for r in results] == [1, 2, 3]
    assert isinstance(results[1], LineError) and "malformed CSV" in results[1].reason
    columns = read_asterisk_master_columns(text)
    assert (columns.line.tolist(), columns.errors) == ([1, 3], [results[1]])


def test_without_a_uniqueid_the_source_id_is_a_stable_hash_of_the_line():
    [first] = parse_asterisk_master_csv(ASTERISK_16_FIELDS)
    [again] = parse_asterisk_master_csv(ASTERISK_16_FIELDS)
    [other] = parse_asterisk_master_csv(ASTERISK_16_FIELDS.replace("70,60", "71,61"))
    assert first.source_id == again.source_id != other.source_id
    assert first.source_id.startswith("h")


def test_asterisk_times_are_read_in_the_server_zone_and_stored_in_utc():
    [moscow] = parse_asterisk_master_csv(ASTERISK_16_FIELDS, tz="Europe/Moscow")
    assert moscow.start == datetime(2024, 3, 30, 23, 30, tzinfo=UTC)  # 02:30 at UTC+3
    # 2024-03-31 02:30 never happened in London (01:00 GMT became 02:00 BST); like zoneinfo, read it as BST.
    [london] = parse_asterisk_master_csv(ASTERISK_16_FIELDS, tz="Europe/London")
    assert london.start == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)


def test_the_asterisk_parser_streams_instead_of_reading_the_whole_file():
    endless = itertools.cycle([ASTERISK_GOOD])
    first_three = list(itertools.islice(parse_asterisk_master_csv(endless), 3))
    assert [cdr.line for cdr in first_three] == [1, 2, 3]


@pytest.mark.parametrize("tz", ["UTC", "Europe/London", "America/Sao_Paulo"])
def test_the_fast_column_reader_agrees_with_the_streaming_parser(tz):
    lines = [ASTERISK_GOOD, ASTERISK_BAD_TIME, "\n", "too,short\n", ASTERISK_16_FIELDS]
    for day in range(1, 29):  # times across a DST change, a bad month and a leap day
        for hour in (0, 1, 2, 23):
            lines.append(ASTERISK_GOOD.replace("2024-01-15 10:00:00", f"2024-03-{day:02d} {hour:02d}:30:00"))
    lines.append(ASTERISK_GOOD.replace("2024-01-15 10:00:00", "2024-13-01 10:00:00"))
    lines.append(ASTERISK_GOOD.replace("2024-01-15 10:00:00", "2023-02-29 10:00:00"))
    lines.append(ASTERISK_GOOD.replace("2024-01-15 10:00:00", "2024-02-29 10:00:00"))
    lines.append(ASTERISK_GOOD.replace('"34911234567"', '" "'))
    lines.append(ASTERISK_GOOD.replace("185,180", "185,99999999999"))
    text = "".join(lines)
    streamed = list(parse_asterisk_master_csv(text, tz=tz))
    columns = read_asterisk_master_columns(text, tz=tz, chunk_rows=7)
    cdrs = [r for r in streamed if isinstance(r, ParsedCdr)]
    assert columns.errors == [r for r in streamed if isinstance(r, LineError)]
    assert columns.line.tolist() == [c.line for c in cdrs]
    assert columns.source_id == [c.source_id for c in cdrs]
    assert columns.caller == [c.caller for c in cdrs] and columns.callee == [c.callee for c in cdrs]
    assert columns.account == [c.account for c in cdrs] and columns.disposition == [c.disposition for c in cdrs]
    assert columns.start.tolist() == [c.start.replace(tzinfo=None) for c in cdrs]
    assert columns.duration.tolist() == [c.duration for c in cdrs]
    assert columns.billsec.tolist() == [c.billsec for c in cdrs]
    assert columns.trunk == [c.trunk for c in cdrs]
    assert len(columns.errors) == 6
    # Read batch by batch, the file gives the same rows and errors, with the file's line numbers.
    batches = list(iter_asterisk_master_columns(text, tz=tz, batch_rows=40, chunk_rows=7))
    assert len(batches) > 2 and all(len(b) >= 40 for b in batches[:-1])
    assert sum((b.source_id for b in batches), []) == columns.source_id
    assert np.concatenate([b.line for b in batches]).tolist() == columns.line.tolist()
    assert sum((b.errors for b in batches), []) == columns.errors


def test_the_fast_column_reader_gives_numpy_columns():
    columns = read_asterisk_master_columns(ASTERISK_GOOD * 3)
    assert len(columns) == 3
    assert columns.start.dtype == np.dtype("datetime64[s]") and columns.billsec.dtype == np.int64


# --- freephone (8-800) platform -------------------------------------------------------------------

FREEPHONE_SAMPLE = (
    "41,158148,,607,,800XXXXXXX,7499XXXXXXX,20161013112944,0,30,05,,7926XXXXXXX,,,,,8800,,,,,,,,,,11.05\n"
)


def test_the_freephone_sample_line_parses_to_the_expected_fields():
    [cdr] = parse_freephone_cdrs(FREEPHONE_SAMPLE)
    assert cdr == ParsedCdr(
        line=1,
        source_id="158148",
        caller="7499XXXXXXX",
        callee="800XXXXXXX",
        start=datetime(2016, 10, 13, 11, 29, 44, tzinfo=UTC),
        duration=30,
        billsec=30,
        account="",
        disposition="ANSWERED",
        forwarded_to="7926XXXXXXX",
        service_code="8800",
        reported_cost=D("11.05"),
        leg="combined",
    )


def test_the_freephone_platform_clock_can_be_local_time():
    [cdr] = parse_freephone_cdrs(FREEPHONE_SAMPLE, tz="Europe/Moscow")
    assert cdr.start == datetime(2016, 10, 13, 8, 29, 44, tzinfo=UTC)  # Moscow was UTC+3


def test_an_operator_can_edit_the_freephone_column_profile():
    profile = FREEPHONE_DEFAULT_PROFILE | {"account": 3, "billsec": 8}
    [cdr] = parse_freephone_cdrs(FREEPHONE_SAMPLE, profile)
    assert (cdr.account, cdr.billsec, cdr.duration, cdr.disposition) == ("607", 0, 30, "NO ANSWER")
    assert "account" not in FREEPHONE_DEFAULT_PROFILE  # the default profile is left alone


def test_a_bad_freephone_profile_is_refused_at_once():
    with pytest.raises(ValueError, match="must give a column for: start"):
        parse_freephone_cdrs(FREEPHONE_SAMPLE, {k: v for k, v in FREEPHONE_DEFAULT_PROFILE.items() if k != "start"})
    with pytest.raises(ValueError, match="unknown fields"):
        parse_freephone_cdrs(FREEPHONE_SAMPLE, FREEPHONE_DEFAULT_PROFILE | {"colour": 2})


def test_bad_freephone_lines_are_reported_and_good_ones_kept():
    text = FREEPHONE_SAMPLE + FREEPHONE_SAMPLE.replace("20161013112944", "2016101311") + "41,1,2\n" + FREEPHONE_SAMPLE
    results = list(parse_freephone_cdrs(text))
    assert [(r.line, r.column) if isinstance(r, LineError) else r.line for r in results] == [
        1,
        (2, "start"),
        (3, None),
        4,
    ]


# --- generic CSV with a saved mapping -------------------------------------------------------------

MAPPING = {"source_id": "Call ID", "caller": "From", "callee": "To", "start": "Started", "billsec": "Talk"}


def test_a_generic_csv_is_read_through_the_saved_mapping():
    text = "Call ID,From,To,Started,Talk,Notes\nc1,+1 555,4420,2024-05-01T10:00:00+02:00,42,x\n"
    [cdr] = parse_mapped_cdr_csv(text, MAPPING, tz="America/New_York")
    assert (cdr.source_id, cdr.callee, cdr.billsec, cdr.duration) == ("c1", "4420", 42, 42)
    assert cdr.start == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)  # the offset in the file wins over tz


def test_a_generic_csv_without_a_mapped_column_reports_it_on_line_1():
    results = list(parse_mapped_cdr_csv("Call ID,From,To,Started\nc1,1,2,2024-05-01\n", MAPPING))
    assert [(r.line, r.column) for r in results] == [(1, "Talk")]


def test_a_generic_csv_reports_bad_lines_and_reads_epoch_times():
    text = "Call ID,From,To,Started,Talk\nc1,1,44,1714557600,5\nc2,1,44,yesterday,5\nc3,1,44,1714557600\n"
    results = list(parse_mapped_cdr_csv(text, MAPPING, time_format="epoch"))
    assert results[0].start == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert [(r.line, r.column) for r in results[1:]] == [(3, "start"), (4, None)]


def test_a_mapping_without_the_essentials_is_refused():
    with pytest.raises(ValueError, match="caller, callee, start and duration or billsec"):
        parse_mapped_cdr_csv("", {"caller": "From", "callee": "To", "start": "Started"})


def test_a_generic_csv_names_the_trunk_service_units_and_correlation_of_a_cdr():
    mapping = {**MAPPING, "trunk": "Route", "service": "Kind", "units": "Parts", "correlation_id": "Call"}
    text = "Call ID,From,To,Started,Talk,Route,Kind,Parts,Call\nc1,1,44,2024-05-01T10:00:00Z,0,carrier2,SMS,2,x9\n"
    [cdr] = parse_mapped_cdr_csv(text, mapping)
    assert (cdr.trunk, cdr.service, cdr.units, cdr.correlation_id) == ("carrier2", "sms", 2, "x9")


def test_a_generic_csv_with_an_unknown_service_names_the_column():
    text = "Call ID,From,To,Started,Talk,Kind\nc1,1,44,2024-05-01T10:00:00Z,5,fax\n"
    [error] = parse_mapped_cdr_csv(text, {**MAPPING, "service": "Kind"})
    assert (error.line, error.column) == (2, "service")


def test_a_positional_profile_reads_a_csv_by_column_index_and_can_skip_its_header():
    profile = {"source_id": 0, "caller": 1, "callee": 2, "start": 3, "billsec": -1}
    text = "id;a;b;when;secs\nr1;100;4420;2024-05-01 12:00:00;61\nr2;100;;2024-05-01 12:00:00;5\n"
    results = list(
        parse_positional_cdrs(text, profile, delimiter=";", skip_header=True, time_format="%Y-%m-%d %H:%M:%S")
    )
    assert (results[0].source_id, results[0].callee, results[0].billsec) == ("r1", "4420", 61)
    assert results[0].start == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert (results[1].line, results[1].column) == (3, "callee")
    with pytest.raises(ValueError, match="duration or billsec"):
        parse_positional_cdrs(text, {"caller": 1, "callee": 2, "start": 3})


@pytest.mark.parametrize(
    ("dstchannel", "trunk"),
    [
        ("SIP/carrier1-00000a1b", "carrier1"),
        ("PJSIP/carrier1-000001", "carrier1"),
        ("PJSIP/my-carrier-0000002f", "my-carrier"),  # a peer name may hold dashes: only the suffix goes
        ("IAX2/wholesale-1234", "wholesale"),
        ("Local/100@from-internal-00000012;2", ""),  # a dialplan loop, not a trunk
        ("", ""),
        ("garbage", ""),
    ],
)
def test_the_trunk_is_the_peer_named_in_the_dstchannel(dstchannel, trunk):
    assert asterisk_trunk(dstchannel) == trunk
