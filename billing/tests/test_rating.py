"""The pure rating engine: golden cases worked out by hand, and properties checked by hypothesis.

No database: these tests import nothing from Django and need no fixture.
"""

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.rating import (
    BulkRater,
    MinutePackage,
    PackageTier,
    Rate,
    RateDeck,
    TimeBand,
    billed_seconds,
    encode_numbers,
    parse_increment,
    price_tier_parts,
    rate_one,
    split_by_tiers,
)

D = Decimal
MONDAY = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # a Monday
PEAK = TimeBand(name="peak", weekdays=frozenset({0, 1, 2, 3, 4}), start=time(8), end=time(18))
NIGHT = TimeBand(name="night", weekdays=frozenset({0, 1, 2, 3, 4}), start=time(22), end=time(7))


def quote(rates, number="74951234567", seconds=60, at=MONDAY, tz="UTC", bands=(), **kwargs):
    return rate_one(RateDeck(rates, bands=bands), number=number, seconds=seconds, at=at, tz=tz, **kwargs)


def voice(prefix="7495", rate="0.10", increment=(60, 60), **kwargs):
    first, following = increment
    return Rate(prefix=prefix, destination=f"dest {prefix}", rate=D(rate), first_increment=first,
                next_increment=following, **kwargs)  # fmt: skip


# --- increments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("billsec", "increment", "expected"),
    [
        # 60/60: the first minute is billed whole, then whole minutes.
        (1, (60, 60), 60),
        (60, (60, 60), 60),
        (61, (60, 60), 120),  # 60 + ceil(1/60)*60
        (121, (60, 60), 180),  # 60 + ceil(61/60)*60 = 60 + 2*60
        # 30/6: 30 s first, then 6 s blocks.
        (1, (30, 6), 30),
        (30, (30, 6), 30),
        (31, (30, 6), 36),  # 30 + ceil(1/6)*6
        (95, (30, 6), 96),  # 30 + ceil(65/6)*6 = 30 + 11*6
        # 1/1: per second.
        (1, (1, 1), 1),
        (179, (1, 1), 179),
        # 0/60: no first block, whole minutes from the first second.
        (61, (0, 60), 120),  # 0 + ceil(61/60)*60
        # An unanswered call is billed nothing.
        (0, (60, 60), 0),
        (0, (30, 6), 0),
    ],
)
def test_billed_seconds_follow_the_increment(billsec, increment, expected):
    assert billed_seconds(billsec, *increment) == expected


def test_a_call_in_60_60_is_billed_by_whole_minutes():
    # 61 s in 60/60 bills 120 s; 2 min x 0.20 = 0.40.
    result = quote([voice(rate="0.20")], seconds=61)
    assert (result.billed_seconds, result.amount) == (120, D("0.40"))


def test_a_call_in_30_6_is_billed_by_6_second_blocks():
    # 95 s in 30/6 bills 96 s; 96/60 min x 0.60 = 0.96.
    result = quote([voice(rate="0.60", increment=(30, 6))], seconds=95)
    assert (result.billed_seconds, result.amount) == (96, D("0.96"))


def test_180_seconds_at_a_tenth_per_minute_in_1_1_is_exactly_three_tenths():
    # 180 s x 0.1 / 60 = 0.3, with no float anywhere.
    result = quote([voice(rate="0.1", increment=(1, 1))], seconds=180)
    assert result.amount == D("0.3")
    assert str(result.amount) == "0.300000"  # kept to the micro unit, not rounded to cents


def test_usage_is_rounded_half_up_at_the_micro_unit():
    # 7 s x 0.1 / 60 = 0.011666... -> 0.011667.
    assert quote([voice(rate="0.1", increment=(1, 1))], seconds=7).amount == D("0.011667")
    # 1 s x 0.00003 / 60 = 0.0000005 exactly: half rounds up to 0.000001.
    assert quote([voice(rate="0.00003", increment=(1, 1))], seconds=1).amount == D("0.000001")


# --- connect fee and minimum charge ---------------------------------------------------------------


def test_the_connect_fee_is_added_to_an_answered_call():
    # 61 s in 60/60 at 0.20 = 0.40, + 0.05 connect fee = 0.45.
    result = quote([voice(rate="0.20", connect_fee=D("0.05"))], seconds=61)
    assert (result.connect_fee, result.amount) == (D("0.05"), D("0.45"))


def test_the_minimum_charge_lifts_a_short_call():
    # 5 s in 1/1 at 0.10 = 0.008333, + 0.01 connect = 0.018333, below the 0.05 minimum: 0.05.
    result = quote([voice(rate="0.10", increment=(1, 1), connect_fee=D("0.01"), min_charge=D("0.05"))], seconds=5)
    assert result.amount == D("0.05")


def test_the_minimum_charge_includes_the_connect_fee():
    # 12 s in 1/1 at 0.10 = 0.02, + 0.04 connect = 0.06 >= 0.05 minimum: 0.06 (not 0.05 + 0.04).
    result = quote([voice(rate="0.10", increment=(1, 1), connect_fee=D("0.04"), min_charge=D("0.05"))], seconds=12)
    assert result.amount == D("0.06")


def test_an_unanswered_call_costs_nothing_not_even_the_connect_fee_or_minimum():
    result = quote([voice(connect_fee=D("0.05"), min_charge=D("0.10"))], seconds=0)
    assert (result.billed_seconds, result.connect_fee, result.amount) == (0, D(0), D(0))
    assert result.prefix == "7495"  # still rated: the destination is known


# --- choosing the rate ----------------------------------------------------------------------------


def test_the_longest_matching_prefix_wins():
    rates = [voice("7", "0.30"), voice("79", "0.20"), voice("7916", "0.10")]
    assert quote(rates, number="79161234567").prefix == "7916"
    assert quote(rates, number="79261234567").prefix == "79"
    assert quote(rates, number="+74951234567").prefix == "7"  # a leading + is ignored


def test_a_number_with_no_rate_or_not_a_number_is_unrated():
    assert quote([voice("7")], number="4420") is None
    assert quote([voice("7")], number="7-495") is None
    assert quote([voice("7")], number="") is None
    assert quote([voice("7")], number="٧٤٩٥") is None  # Arabic-Indic digits are not E.164


def test_a_future_dated_rate_takes_over_on_its_date():
    switch = datetime(2024, 7, 1, tzinfo=UTC)
    rates = [voice("7495", "0.05"), voice("7495", "0.04", effective_from=switch)]
    assert quote(rates, at=switch - timedelta(seconds=1)).rate.rate == D("0.05")
    assert quote(rates, at=switch).rate.rate == D("0.04")


def test_a_longer_prefix_with_only_future_rates_falls_back_to_a_shorter_one():
    opening = datetime(2025, 1, 1, tzinfo=UTC)
    rates = [voice("7495", "0.05"), voice("74951", "0.01", effective_from=opening)]
    assert quote(rates, number="74951234567", at=opening - timedelta(days=1)).prefix == "7495"
    assert quote(rates, number="74951234567", at=opening).prefix == "74951"


def test_the_time_band_is_chosen_at_the_call_start_in_the_operator_time_zone():
    rates = [voice("7495", "0.04"), voice("7495", "0.09", time_band="peak")]
    # 14:59 UTC on a Monday is 17:59 in Moscow (UTC+3): peak, and the whole 10 minutes stay peak
    # although the call ends at 18:09 off-peak. 10 min x 0.09 = 0.90.
    moscow_1759 = datetime(2024, 6, 3, 14, 59, tzinfo=UTC)
    result = quote(rates, seconds=600, at=moscow_1759, tz="Europe/Moscow", bands=[PEAK])
    assert (result.rate.time_band, result.amount) == ("peak", D("0.90"))
    # A minute later it is 18:00 in Moscow: off-peak, 10 min x 0.04 = 0.40.
    result = quote(rates, seconds=600, at=moscow_1759 + timedelta(minutes=1), tz="Europe/Moscow", bands=[PEAK])
    assert (result.rate.time_band, result.amount) == (None, D("0.40"))
    # The same instant judged in UTC (15:00) would be peak: the zone matters.
    assert quote(rates, at=moscow_1759 + timedelta(minutes=1), tz="UTC", bands=[PEAK]).rate.time_band == "peak"


def test_a_band_past_midnight_belongs_to_the_day_it_opened():
    rates = [voice("7495", "0.04"), voice("7495", "0.01", time_band="night")]
    friday_night = datetime(2024, 6, 8, 1, 0, tzinfo=UTC)  # Saturday 01:00, Friday's night band
    monday_early = datetime(2024, 6, 3, 1, 0, tzinfo=UTC)  # Monday 01:00, Sunday night has no band
    assert quote(rates, at=friday_night, bands=[NIGHT]).rate.time_band == "night"
    assert quote(rates, at=monday_early, bands=[NIGHT]).rate.time_band is None


def test_when_bands_overlap_the_one_listed_first_in_the_deck_wins():
    everyday = TimeBand(name="everyday", weekdays=frozenset(range(7)), start=time(0), end=time(0))
    rates = [voice("7495", "0.09", time_band="peak"), voice("7495", "0.02", time_band="everyday")]
    assert quote(rates, bands=[PEAK, everyday]).rate.time_band == "peak"
    assert quote(rates, bands=[everyday, PEAK]).rate.time_band == "everyday"


def test_a_banded_prefix_outside_its_bands_falls_back_to_a_shorter_prefix():
    rates = [voice("7", "0.30"), voice("7495", "0.09", time_band="peak")]
    evening = datetime(2024, 6, 3, 20, 0, tzinfo=UTC)
    assert quote(rates, at=evening, bands=[PEAK]).prefix == "7"


def test_sms_and_ussd_are_priced_per_unit_on_their_own_rates():
    rates = [voice("7", "0.30", connect_fee=D("0.10")), Rate(prefix="7", rate=D("0.05"), service="sms")]
    # 3 message parts x 0.05 = 0.15; no increments, connect fee or minimum.
    result = quote(rates, number="79161234567", seconds=0, service="sms", units=3)
    assert (result.units, result.billed_seconds, result.amount) == (3, 0, D("0.15"))
    assert quote(rates, number="79161234567", service="ussd") is None


# --- the deck and its data ------------------------------------------------------------------------


def test_two_versions_of_the_same_rate_on_the_same_date_are_refused():
    with pytest.raises(ValueError, match="two voice rates for prefix 7495"):
        RateDeck([voice("7495", "0.1"), voice("7495", "0.2")])


def test_a_rate_naming_an_unknown_band_is_refused():
    with pytest.raises(ValueError, match="unknown time band"):
        RateDeck([voice("7495", time_band="weekend")])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate": 0.1}, "must be a Decimal"),
        ({"rate": D("-0.1")}, "must not be negative"),
        ({"rate": D("0.0000001")}, "at most 6 decimal places"),
        ({"prefix": "+7"}, "digits only"),
        ({"prefix": "7" * 16}, "at most 15 digits"),
        ({"effective_from": datetime(2024, 7, 1)}, "timezone-aware"),
        ({"next_increment": 0}, "next increment"),
        ({"service": "fax"}, "service must be one of"),
    ],
)
def test_a_bad_rate_is_refused_with_a_clear_reason(changes, message):
    fields = {"prefix": "7495", "rate": D("0.1")} | changes
    with pytest.raises((ValueError, TypeError), match=message):
        Rate(**fields)


def test_parse_increment_reads_first_and_next_seconds():
    assert parse_increment("60/60") == (60, 60)
    assert parse_increment(" 30 / 6 ") == (30, 6)
    for bad in ("60", "60-60", "a/b", "60/60/60", "-1/1"):
        with pytest.raises(ValueError, match="increment must look like 60/60"):
            parse_increment(bad)
    with pytest.raises(ValueError, match="next increment"):
        parse_increment("60/0")


# --- minute packages ------------------------------------------------------------------------------


def test_a_call_crossing_a_tier_boundary_is_split_and_priced_part_by_part():
    tiers = [PackageTier(up_to_minutes=D(100), rate=D("0.05")), PackageTier(up_to_minutes=None, rate=D("0.03"))]
    # 99 minutes used; a 150 s call: 60 s finish tier 1, 90 s fall in tier 2.
    parts = split_by_tiers(99 * 60, 150, tiers)
    assert parts == [(60, D("0.05")), (90, D("0.03"))]
    # 60/60 x 0.05 + 90/60 x 0.03 = 0.05 + 0.045 = 0.095.
    assert price_tier_parts(parts) == D("0.095")


def test_included_minutes_come_first_and_uncovered_seconds_are_left_to_the_deck():
    package = MinutePackage(
        name="Business 100",
        prefixes=frozenset({"7495"}),
        included_minutes=D(100),
        tiers=(PackageTier(up_to_minutes=D(200), rate=D("0.02")),),
    )
    # 99.5 minutes used, a 200 minute call: 30 s free, 100 min at 0.02, the rest (99.5 min) not covered.
    parts = split_by_tiers(5970, 12000, package.all_tiers())
    assert parts == [(30, D(0)), (6000, D("0.02")), (5970, None)]
    assert price_tier_parts(parts) == D("2.00")  # 6000/60 x 0.02
    assert package.covers("+74951234567") and not package.covers("79161234567")


def test_package_tiers_must_increase():
    with pytest.raises(ValueError, match="increase"):
        split_by_tiers(0, 60, [PackageTier(up_to_minutes=D(10), rate=D(0)), PackageTier(up_to_minutes=D(5), rate=D(0))])


# --- bulk rating ----------------------------------------------------------------------------------


def test_bulk_rating_gives_the_same_golden_answers():
    switch = datetime(2024, 7, 1, tzinfo=UTC)
    deck = RateDeck(
        [
            voice("7", "0.30", increment=(1, 1)),
            voice("7495", "0.05", connect_fee=D("0.01")),
            voice("7495", "0.04", effective_from=switch),
            voice("7495", "0.09", time_band="peak"),
        ],
        bands=[PEAK],
    )
    numbers = ["+74951234567", "74951234567", "74951234567", "79161234567", "nonsense", "7" * 20]
    seconds = [61, 61, 61, 180, 60, 60]
    starts = np.array(
        ["2024-06-03T10:00", "2024-06-03T20:00", "2024-07-01T20:00", "2024-06-03T10:00", "2024-06-03T10:00",
         "2024-06-03T10:00"],
        dtype="datetime64[s]",
    )  # fmt: skip
    result = BulkRater(deck).rate_bulk(numbers, seconds, starts, tz="UTC")
    # peak 120 s x 0.09; off-peak 120 s x 0.05 + 0.01; from July 0.04; prefix 7 per second 180 s x 0.30.
    assert result.amounts()[:5] == [D("0.18"), D("0.11"), D("0.08"), D("0.90"), D(0)]
    assert result.rate_index.tolist()[:5] == [3, 1, 2, 0, -1]
    assert result.billed_seconds.tolist()[:5] == [120, 120, 120, 180, 0]
    # A 20-digit number does not fit the int64 encoding: rated one by one, prefix 7, 60 s x 0.30.
    assert (result.rate_index[5], result.amount(5), result.scalar_rows) == (0, D("0.30"), 1)


def test_bulk_rating_skips_a_prefix_whose_versions_are_all_still_in_the_future():
    july, august = datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 8, 1, tzinfo=UTC)
    deck = RateDeck(
        [
            voice("7", "0.30"),
            voice("79", "0.20", effective_from=july),
            voice("79", "0.10", effective_from=august),
            voice("7916", "0.40", effective_from=july),
            voice("7916", "0.50", effective_from=august),
        ]
    )
    starts = np.array(["2024-06-15", "2024-07-15", "2024-08-15", "2024-06-15"], dtype="datetime64[s]")
    numbers = ["79161234567", "79161234567", "79161234567", "79261234567"]
    result = BulkRater(deck).rate_bulk(numbers, [60] * 4, starts)
    # June: nothing under 7916 or 79 yet, so prefix 7; July and August: 7916's versions in turn.
    assert [deck.rates[i].rate for i in result.rate_index] == [D("0.30"), D("0.40"), D("0.50"), D("0.30")]


def test_numbers_are_encoded_as_right_padded_18_digit_integers():
    padded, ndigits = encode_numbers(["7495", "+7495", "", "7a", "0049"])
    assert padded.tolist() == [749500000000000000, 749500000000000000, 0, 0, 4900000000000000]
    assert ndigits.tolist() == [4, 4, 0, 0, 4]


def test_bulk_rating_accepts_epoch_seconds_and_numpy_strings():
    deck = RateDeck([voice("7", "0.60", increment=(1, 1))])
    epoch = int(MONDAY.timestamp())
    result = BulkRater(deck).rate_bulk(np.array(["79161234567"]), np.array([10]), np.array([epoch]))
    assert result.amounts() == [D("0.10")]  # 10 s x 0.60 / 60


# --- properties -----------------------------------------------------------------------------------

money = st.integers(min_value=0, max_value=10_000_000).map(lambda n: D(n).scaleb(-6))
increments = st.tuples(st.integers(min_value=0, max_value=120), st.integers(min_value=1, max_value=120))


@given(
    rate=money,
    connect_fee=money,
    min_charge=money,
    increment=increments,
    durations=st.tuples(st.integers(0, 100_000), st.integers(0, 100_000)),
)
def test_the_price_never_decreases_with_duration(rate, connect_fee, min_charge, increment, durations):
    deck = RateDeck([Rate(prefix="1", rate=rate, connect_fee=connect_fee, min_charge=min_charge,
                          first_increment=increment[0], next_increment=increment[1])])  # fmt: skip
    shorter, longer = sorted(durations)
    cost = [rate_one(deck, number="1", seconds=s, at=MONDAY, tz="UTC").amount for s in (shorter, longer)]
    assert cost[0] <= cost[1]


@given(billsec=st.integers(0, 1_000_000), increment=increments)
def test_billed_seconds_are_the_first_block_or_first_plus_whole_next_blocks(billsec, increment):
    first, following = increment
    billed = billed_seconds(billsec, first, following)
    if billsec == 0:
        assert billed == 0
        return
    assert billed >= billsec
    assert billed == first or (billed > first and (billed - first) % following == 0)
    assert billed - billsec < max(first, following)  # never a whole block too many


tier_lists = st.lists(st.integers(1, 5_000), min_size=0, max_size=5, unique=True).flatmap(
    lambda bounds: st.tuples(
        st.just(sorted(bounds)), st.lists(money, min_size=len(bounds) + 1, max_size=len(bounds) + 1), st.booleans()
    )
)


@given(tiers=tier_lists, used=st.integers(0, 400_000), billsec=st.integers(0, 400_000))
def test_split_parts_always_add_up_to_the_whole_call(tiers, used, billsec):
    bounds, rates, open_ended = tiers
    package = [PackageTier(up_to_minutes=D(b), rate=r) for b, r in zip(bounds, rates, strict=False)]
    if open_ended:
        package.append(PackageTier(up_to_minutes=None, rate=rates[-1]))
    parts = split_by_tiers(used, billsec, package)
    assert sum(seconds for seconds, _ in parts) == billsec
    assert all(seconds > 0 for seconds, _ in parts)
    # Each part lies inside the tier where it starts and carries that tier's rate; beyond the tiers, None.
    position = used
    for seconds, rate in parts:
        tier = next((t for t in package if t.up_to_seconds is None or t.up_to_seconds > position), None)
        if tier is None:
            assert rate is None
        else:
            assert rate == tier.rate
            assert tier.up_to_seconds is None or position + seconds <= tier.up_to_seconds
        position += seconds


# Random decks: prefixes over a small alphabet so they nest, a few effective dates around the calls,
# bands that wrap midnight and cover whole days, zones with DST and half-hour shifts.
EFFECTIVE = [
    datetime(2024, 3, 31, 1, 0, tzinfo=UTC),
    datetime(2024, 4, 1, 12, 0, 30, 500_000, tzinfo=UTC),
    datetime(2024, 4, 6, tzinfo=UTC),
]
BANDS = [
    NIGHT,
    PEAK,
    TimeBand(name="weekend", weekdays=frozenset({5, 6}), start=time(0), end=time(0)),
    TimeBand(name="lunch", weekdays=frozenset({2}), start=time(12, 30), end=time(13, 15, 0, 1)),
]
ZONES = ["UTC", "Europe/Moscow", "America/New_York", "Australia/Lord_Howe", "Europe/London"]
prefixes = st.text("0123", min_size=1, max_size=4)
random_rates = st.builds(
    Rate,
    prefix=prefixes,
    destination=st.just("somewhere"),
    rate=money,
    connect_fee=st.sampled_from([D(0), D("0.01"), D("0.333333")]),
    first_increment=st.sampled_from([0, 1, 6, 30, 60]),
    next_increment=st.sampled_from([1, 6, 60]),
    min_charge=st.sampled_from([D(0), D("0.05")]),
    effective_from=st.none() | st.sampled_from(EFFECTIVE),
    time_band=st.none() | st.sampled_from([b.name for b in BANDS]),
    service=st.sampled_from(["voice", "voice", "sms"]),
)
random_decks = st.lists(
    random_rates, min_size=1, max_size=30, unique_by=lambda r: (r.prefix, r.service, r.time_band, r.effective_from)
)
call_moments = st.datetimes(min_value=datetime(2024, 3, 28), max_value=datetime(2024, 4, 9), timezones=st.just(UTC))


def rare(common, uncommon):
    """``common`` most of the time, ``uncommon`` about once in 16 draws (hypothesis favours small integers)."""
    return st.tuples(st.integers(0, 15), common, uncommon).map(lambda t: t[2] if t[0] == 7 else t[1])


@st.composite
def calls_to(draw, rates):
    """A batch of calls, mostly to numbers under the deck's prefixes."""
    known = sorted({r.prefix for r in rates}) or ["1"]
    number = st.tuples(st.sampled_from(["", "+"]), st.sampled_from(known), st.text("0123456789", max_size=6))
    number = rare(number.map("".join), st.text("0123+a", max_size=8))  # mostly junk that never matches
    number = rare(number, st.text("0123", min_size=19, max_size=21))  # too long for int64: scalar path
    seconds = rare(st.integers(0, 400), st.just(1_000_001))  # over 10**6 s: scalar path
    moment = call_moments | st.sampled_from(EFFECTIVE)
    return draw(st.lists(st.tuples(number, seconds, moment, st.integers(0, 5)), min_size=1, max_size=40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rates=random_decks, tz=st.sampled_from(ZONES))
def test_bulk_rating_equals_rate_one_row_by_row(data, rates, tz):
    deck = RateDeck(rates, bands=BANDS)
    service = data.draw(st.sampled_from(sorted({r.service for r in rates} | {"voice"})))
    batch = data.draw(calls_to(rates))
    number_list = [n for n, _, _, _ in batch]
    seconds = [s for _, s, _, _ in batch]
    moments = [m for _, _, m, _ in batch]
    units = [u for _, _, _, u in batch]
    starts = np.array([m.replace(tzinfo=None) for m in moments], dtype="datetime64[us]")
    result = BulkRater(deck).rate_bulk(number_list, seconds, starts, tz=tz, service=service, units=units)
    for row, (number, answered, moment, parts) in enumerate(batch):
        expected = rate_one(deck, number=number, seconds=answered, at=moment, tz=tz, service=service, units=parts)
        if expected is None:
            assert result.rate_index[row] == -1
            assert result.amount_micro[row] == 0
            continue
        assert deck.rates[result.rate_index[row]] is expected.rate
        assert result.billed_seconds[row] == expected.billed_seconds
        assert result.amount(row) == expected.amount
