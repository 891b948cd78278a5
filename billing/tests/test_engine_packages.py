"""Minute packages in the rating pipeline: included minutes, then tiers, per calendar month of the operator's zone,
in call order, counters under lock; golden cases worked out by hand."""

import io
import os
import subprocess
import sys
from datetime import date
from decimal import Decimal

import pytest
from django.db.models import Sum
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import rating
from billing.choices import EntryKind
from billing.csvformats import parse_asterisk_master_csv
from billing.models import Account, Cdr, LedgerEntry, MinutePackage, PackageUsage
from billing.services import account_create, cdrs_import_bulk, cdrs_ingest, cdrs_rate_pending
from billing.tests.engine_support import engine_operator, in_engine, master_line, tariff_with_deck
from tests.celery_worker import worker_database_url

D = Decimal
DECK = "34,Spain,0.10,0.02,60/60,,,,\n44,United Kingdom,0.30,,60/60,,,,\n"
TIERS = [{"up_to_minutes": "20", "rate": "0.05"}, {"up_to_minutes": "25", "rate": "0.04"}]


# --- the pure pricer ---------------------------------------------------------------------------------------------


def _pure(included="10", tiers=(("20", "0.05"), ("25", "0.04"))):
    return rating.MinutePackage(
        name="Spain 10",
        prefixes=frozenset({"34"}),
        included_minutes=D(included),
        tiers=tuple(rating.PackageTier(up_to_minutes=D(bound), rate=D(price)) for bound, price in tiers),
    )


SPAIN = rating.Rate(prefix="34", rate=D("0.10"), connect_fee=D("0.02"), min_charge=D("0.15"))


def test_the_deck_increment_decides_the_billed_seconds_and_the_package_prices_them():
    # 61 s in 60/60 bill 120 s, all inside the 10 included minutes: only the connect fee, 0.02.
    quote = rating.price_with_package(SPAIN, 61, 0, _pure())
    assert (quote.billed_seconds, quote.package_seconds, quote.amount) == (120, 120, D("0.02"))
    assert quote.parts == ((120, D(0)),)


def test_a_call_crossing_the_included_minutes_and_two_tier_bounds_is_priced_part_by_part():
    # Counter at 300 s; a 1230 s call bills 1260 s (60/60): 300 s free (to 600), 600 s at 0.05 (to 1200) = 0.50,
    # 300 s at 0.04 (to 1500) = 0.20, 60 s beyond the last tier at the deck's 0.10 = 0.10; + 0.02 connect = 0.82.
    quote = rating.price_with_package(SPAIN, 1230, 300, _pure())
    assert quote.parts == ((300, D(0)), (600, D("0.05")), (300, D("0.04")), (60, None))
    assert (quote.billed_seconds, quote.package_seconds, quote.amount) == (1260, 1200, D("0.82"))


def test_the_minimum_charge_lifts_only_a_call_the_package_does_not_touch():
    # Inside the package: 60 s free + 0.02 connect fee = 0.02, not lifted to the 0.15 minimum.
    assert rating.price_with_package(SPAIN, 60, 0, _pure()).amount == D("0.02")
    # Past the last tier: priced as without a package, 0.10 + 0.02 = 0.12, lifted to the minimum 0.15.
    past = rating.price_with_package(SPAIN, 60, 1500, _pure())
    assert (past.package_seconds, past.amount) == (0, D("0.15"))


def test_an_unanswered_call_costs_nothing_and_leaves_the_counter():
    quote = rating.price_with_package(SPAIN, 0, 42, _pure())
    assert (quote.billed_seconds, quote.package_seconds, quote.amount, quote.parts) == (0, 0, D(0), ())


# --- in the pipeline -----------------------------------------------------------------------------------------------

# Operator zone Europe/Madrid (UTC+2 on these dates). The file's times are the switch's wall clock, in that zone.
CALLS = (
    # C: 1 April 00:10 in Madrid is still 31 March (22:10) in UTC: the April counter, which starts at 0.
    master_line("C", "34911234567", "2026-04-01 00:10:00", 120, account="pkg")
    # B: 20 min 30 s, counter at 300 s after A: the split of the golden case above: 0.82.
    + master_line("B", "34911234567", "2026-03-31 23:10:00", 1230, account="pkg")
    # D: after B the March counter is at 1500 s, past the last tier: the deck's 0.10 + 0.02 = 0.12.
    + master_line("D", "34911234567", "2026-03-31 23:55:00", 60, account="pkg")
    # A: 5 minutes, the first call of March: free but for the 0.02 connect fee.
    + master_line("A", "34911234567", "2026-03-31 23:00:00", 300, account="pkg")
    # U: the UK is not in the package: the deck, 0.30.
    + master_line("U", "442071234567", "2026-03-31 22:00:00", 60, account="pkg")
)


@pytest.fixture
def packaged(in_schema):
    with in_schema("demo"):
        retail = tariff_with_deck("Retail", DECK)
        account = account_create(name="Packaged", code="pkg", currency="EUR", tariff=retail)
        package = MinutePackage.objects.create(name="Spain 10", prefixes=["34"], included_minutes=D(10), tiers=TIERS)
        account.packages.add(package)
        yield account, package


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["exact", "bulk"])
def test_calls_fill_the_package_in_the_order_they_started_and_april_starts_afresh(packaged, in_schema, path):
    account, package = packaged
    with in_schema("demo"):
        if path == "exact":
            records = parse_asterisk_master_csv(CALLS, tz="Europe/Madrid")
            summary = cdrs_ingest(source="switch", records=records, tz="Europe/Madrid")
        else:
            summary = cdrs_import_bulk(source=io.StringIO(CALLS), tz="Europe/Madrid", source_name="switch")
        cdrs = {c.source_id: c for c in Cdr.objects.filter(source="switch")}
        prices = {k: (c.price, c.package_seconds) for k, c in cdrs.items()}
        assert prices == {
            "A": (D("0.02"), 300),
            "B": (D("0.82"), 1200),
            "D": (D("0.12"), 0),
            "C": (D("0.02"), 120),
            "U": (D("0.30"), 0),
        }
        assert cdrs["B"].extra["package"] == "Spain 10"
        assert cdrs["B"].extra["package_parts"] == [
            {"seconds": 300, "rate": "0", "from": "package"},
            {"seconds": 600, "rate": "0.05", "from": "package"},
            {"seconds": 300, "rate": "0.04", "from": "package"},
            {"seconds": 60, "rate": "0.100000", "from": "deck"},
        ]
        counters = dict(PackageUsage.objects.filter(account=account).values_list("period_start", "used_seconds"))
        assert counters == {date(2026, 3, 1): 1500, date(2026, 4, 1): 120}
        assert summary["charged"] == {"EUR": "1.280000"}  # 0.02 + 0.82 + 0.12 + 0.02 + 0.30
        account.refresh_from_db()
        assert account.balance == D("-1.28")


@pytest.mark.django_db
def test_a_call_imported_twice_moves_the_counter_once(packaged, in_schema):
    account, _ = packaged
    with in_schema("demo"):
        for _ in range(2):
            cdrs_import_bulk(source=io.StringIO(CALLS), tz="Europe/Madrid")
        assert PackageUsage.objects.get(account=account, period_start=date(2026, 3, 1)).used_seconds == 1500
        account.refresh_from_db()
        assert account.balance == D("-1.28") and Cdr.objects.filter(source="asterisk").count() == 5


@pytest.mark.django_db
def test_a_package_that_does_not_add_up_is_reported_on_the_cdr(packaged, in_schema):
    _, package = packaged
    with in_schema("demo"):
        package.tiers = [{"up_to_minutes": "5", "rate": "0.05"}]  # below the 10 included minutes
        package.save()
        cdrs_import_bulk(source=io.StringIO(CALLS), tz="Europe/Madrid")
        cdr = Cdr.objects.get(source_id="A")
        assert cdr.status == "unrated"
        assert cdr.unrated_reason == "minute package Spain 10 is invalid: tier bounds must increase"


# Late arrivals (UTC; deck 34 at 0.10/min + 0.02 connect fee, 60/60; package "Spain 2": 2 included minutes, then up to
# 4 minutes at 0.05, beyond it the deck). Three 2-minute calls in the order they started:
#   10:00 → included: 0.02;  11:00 → 2 min at 0.05 + 0.02 = 0.12;  12:00 → past the last tier: 0.20 + 0.02 = 0.22.
LATE_CALLS = {
    "t10": master_line("t10", "34911234567", "2026-06-02 10:00:00", 120, account="late"),
    "t11": master_line("t11", "34911234567", "2026-06-02 11:00:00", 120, account="late"),
    "t12": master_line("t12", "34911234567", "2026-06-02 12:00:00", 120, account="late"),
}


@pytest.fixture
def late_account(in_schema):
    with in_schema("demo"):
        retail = tariff_with_deck("Late retail", DECK)
        account = account_create(name="Late", code="late", currency="EUR", tariff=retail, kind="postpaid")
        tiers = [{"up_to_minutes": "4", "rate": "0.05"}]
        package = MinutePackage.objects.create(name="Spain 2", prefixes=["34"], included_minutes=D(2), tiers=tiers)
        account.packages.add(package)
        yield account


def _import(path: str, *ids: str) -> None:
    text = "".join(LATE_CALLS[i] for i in ids)
    if path == "exact":
        cdrs_ingest(source="switch", records=parse_asterisk_master_csv(text, tz="UTC"), tz="UTC")
    else:
        cdrs_import_bulk(source=io.StringIO(text), tz="UTC", source_name="switch")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["exact", "bulk"])
def test_a_late_call_resequences_its_period_and_only_appends_to_the_ledger(late_account, in_schema, path):
    account = late_account
    with in_schema("demo"):
        # Given the 10:00 and 12:00 calls imported: 0.02 and 0.12 (the 12:00 call took the tier)
        _import(path, "t10", "t12")
        assert dict(Cdr.objects.filter(account=account).values_list("source_id", "price")) == {
            "t10": D("0.02"),
            "t12": D("0.12"),
        }
        entries_before = list(LedgerEntry.objects.filter(account=account).values_list("id", "amount", "kind"))
        # When the 11:00 call arrives in a later import
        _import(path, "t11")
        # Then all three are priced as if imported in order, and the 12:00 call's charge is corrected by one
        # adjustment of 0.12 - 0.22 = -0.10, keyed by the call and the late call that moved it
        cdrs = {c.source_id: c for c in Cdr.objects.filter(account=account)}
        assert {k: (c.price, c.package_seconds) for k, c in cdrs.items()} == {
            "t10": (D("0.02"), 120),
            "t11": (D("0.12"), 120),
            "t12": (D("0.22"), 0),
        }
        assert cdrs["t12"].extra["resequenced"][0] | {"at": None} == {
            "after": "switch:t11",
            "at": None,
            "price": "0.120000",
            "billed_seconds": 120,
            "package_seconds": 120,
        }
        assert cdrs["t12"].extra["package_parts"] == [{"seconds": 120, "rate": "0.100000", "from": "deck"}]
        adjustments = LedgerEntry.objects.filter(account=account, kind=EntryKind.ADJUSTMENT)
        assert list(adjustments.values_list("idempotency_key", "amount", "cdr_id")) == [
            (f"resequence:{cdrs['t12'].pk}:switch:t11", D("-0.100000"), cdrs["t12"].pk)
        ]
        # the ledger was only appended to, and balance = sum of entries = minus the sum of the prices
        assert all(
            LedgerEntry.objects.filter(pk=pk, amount=amount, kind=kind).exists() for pk, amount, kind in entries_before
        )
        account.refresh_from_db()
        entries = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
        assert account.balance == entries == -sum(c.price for c in cdrs.values()) == D("-0.36")
        # the counter is exact
        assert PackageUsage.objects.get(account=account).used_seconds == 240
        # When the late call is imported again, nothing moves
        _import(path, "t11")
        assert LedgerEntry.objects.filter(account=account).count() == len(entries_before) + 2
        assert Account.objects.get(pk=account.pk).balance == D("-0.36")


@pytest.mark.django_db
def test_a_package_call_rated_late_resequences_its_period_too(late_account, in_schema):
    account = late_account
    with in_schema("demo"):
        # Given the 11:00 call kept unrated (no tariff then) while the 10:00 and 12:00 ones were charged
        _import("exact", "t10", "t12")
        tariff = account.tariff
        Account.objects.filter(pk=account.pk).update(tariff=None)
        _import("exact", "t11")
        assert Cdr.objects.get(source_id="t11").status == "unrated"
        # When the tariff is back and the unrated calls are rated
        Account.objects.filter(pk=account.pk).update(tariff=tariff)
        assert cdrs_rate_pending(tz="UTC") == 1
        # Then the period is as if rated in order, and balance = sum of entries
        prices = dict(Cdr.objects.filter(account=account).values_list("source_id", "price"))
        assert prices == {"t10": D("0.02"), "t11": D("0.12"), "t12": D("0.22")}
        account.refresh_from_db()
        assert account.balance == LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
        assert account.balance == D("-0.36")
        assert PackageUsage.objects.get(account=account).used_seconds == 240


def test_concurrent_imports_for_one_account_never_lose_or_double_count_package_seconds(world, django_db_blocker):
    """Two processes import calls of one account at once, five of them in both: the counter is exact."""
    with django_db_blocker.unblock():
        engine_operator()
        with in_engine():
            retail = tariff_with_deck("Race retail", DECK)
            account = account_create(name="Racer", code="racer", currency="EUR", tariff=retail, kind="postpaid")
            tiers = [{"up_to_minutes": "30", "rate": "0.05"}, {"up_to_minutes": None, "rate": "0.03"}]
            package = MinutePackage.objects.create(name="Race 10", prefixes=["34"], included_minutes=10, tiers=tiers)
            account.packages.add(package)
            env = {
                **os.environ,
                "DATABASE_URL": worker_database_url(),
                "DJANGO_SETTINGS_MODULE": "config.settings.test",
            }
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "billing.tests.package_worker", "engine", "racer", str(w), "15", "5"],
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for w in range(2)
            ]
            outputs = [p.communicate(timeout=180)[0].split() for p in procs]
            assert all(p.returncode == 0 for p in procs)
            # 2 x 15 own calls + 5 shared ones = 35 one-minute calls: each stored once, the shared ones skipped once.
            assert sum(int(o[0]) for o in outputs) == 35 and sum(int(o[1]) for o in outputs) == 5
            usage = PackageUsage.objects.get(account=account, package=package)
            assert usage.used_seconds == 35 * 60
            # Each call is priced at its true position in call order, however the two imports interleaved (calls
            # arriving after later ones re-sequence their period): 10 included, then 20 at 0.05, then 0.03.
            in_order = Cdr.objects.filter(account=account).order_by("start", "source_id")
            expected = [D("0.02")] * 10 + [D("0.07")] * 20 + [D("0.05")] * 5
            assert [c.price for c in in_order] == expected
            # 35 one-minute calls: 10 free, 20 at 0.05 = 1.00, 5 at 0.03 = 0.15, plus the deck's 0.02 connect fee on
            # each call (0.70): 1.85 in all, whatever the interleaving (every bound falls between two calls).
            account.refresh_from_db()
            charged = Cdr.objects.filter(account=account).aggregate(s=Sum("price"))["s"]
            assert charged == D("1.85") and account.balance == D("-1.85")
            assert Account.objects.get(pk=account.pk).entries.aggregate(s=Sum("amount"))["s"] == D("-1.85")


# --- properties ----------------------------------------------------------------------------------------------------

prices = st.integers(0, 500_000).map(lambda n: D(n).scaleb(-6))
increments = st.sampled_from([(60, 60), (30, 6), (1, 1), (0, 60)])
packages = st.builds(
    lambda included, bounds, rates, open_ended: rating.MinutePackage(
        name="p",
        prefixes=frozenset({"34"}),
        included_minutes=D(included),
        tiers=tuple(
            rating.PackageTier(up_to_minutes=None if open_ended and i == len(bounds) - 1 else D(included + b), rate=r)
            for i, (b, r) in enumerate(zip(bounds, rates, strict=False))
        ),
    ),
    st.integers(0, 30),
    st.lists(st.integers(1, 60), min_size=0, max_size=3, unique=True).map(sorted),
    st.lists(prices, min_size=3, max_size=3),
    st.booleans(),
)


@settings(max_examples=300)
@given(
    package=packages,
    rate=prices,
    connect_fee=prices,
    increment=increments,
    used=st.integers(0, 6000),
    durations=st.lists(st.integers(0, 7200), min_size=2, max_size=2).map(sorted),
)
def test_package_parts_add_up_to_the_billed_seconds_and_longer_calls_never_cost_less(
    package, rate, connect_fee, increment, used, durations
):
    deck_rate = rating.Rate(
        prefix="34", rate=rate, connect_fee=connect_fee, first_increment=increment[0], next_increment=increment[1]
    )
    shorter, longer = (rating.price_with_package(deck_rate, d, used, package) for d in durations)
    for quote, billsec in zip((shorter, longer), durations, strict=True):
        assert sum(seconds for seconds, _ in quote.parts) == quote.billed_seconds
        assert quote.billed_seconds == rating.billed_seconds(billsec, *increment)
        assert quote.package_seconds == sum(s for s, r in quote.parts if r is not None) <= quote.billed_seconds
    assert shorter.amount <= longer.amount
