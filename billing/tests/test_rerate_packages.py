"""Rerating package-priced calls (their period replayed in call order) and freephone legs (on the class grid).

Package books, worked out by hand (UTC; tariff "Pkg retail", EUR: 34 Spain 0.10/min + 0.02 connect fee, 60/60;
package "Spain 10": 10 included minutes, then up to 20 min at 0.05, up to 25 min at 0.04, beyond it the deck):

    A 10:00  250 s → 300 s billed, all included                           = 0.02        counter    0 →  300
    B 11:00 1230 s → 1260 s: 300 free, 600 at 0.05, 300 at 0.04, 60 deck  = 0.82        counter  300 → 1500
    C 12:00   60 s → past the last tier: 0.10 + 0.02                      = 0.12        counter 1500

Candidate "Per second" (34 Spain 0.12/min, no connect fee, 1/1), replayed from zero:

    A  250 s billed, all included                                         = 0           counter    0 →  250
    B 1230 s: 350 free, 600 at 0.05 = 0.50, 280 at 0.04 = 0.186667        = 0.686667    counter  250 → 1480
    C   60 s: 20 s at 0.04 = 0.013333, 40 s beyond at 0.12 = 0.08         = 0.093333    counter 1480 → 1500

    old 0.96, new 0.78: difference -0.18; adjustments +0.02, +0.133333, +0.026667 (the customer gets 0.18 back).
"""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db.models import Sum

from billing.choices import EntryKind, RerateStatus
from billing.csvformats import parse_asterisk_master_csv, parse_freephone_cdrs
from billing.models import Account, Cdr, ClassRate, FreephoneNumber, LedgerEntry, MinutePackage, PackageUsage, Tariff
from billing.services import RerateStale, account_create, cdrs_ingest, rerate_confirm, rerate_preview
from billing.tests.engine_support import master_line, tariff_with_deck
from billing.tests.test_engine_freephone import grid_tariff, record

D = Decimal
JAN, FEB = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
TIERS = [{"up_to_minutes": "20", "rate": "0.05"}, {"up_to_minutes": "25", "rate": "0.04"}]
CALLS = (
    master_line("C", "34911234567", "2024-01-10 12:00:00", 60, account="rp-pkg")
    + master_line("A", "34911234567", "2024-01-10 10:00:00", 250, account="rp-pkg")
    + master_line("B", "34911234567", "2024-01-10 11:00:00", 1230, account="rp-pkg")
)


def _snapshot():
    return (
        list(LedgerEntry.objects.order_by("id").values_list("id", "amount")),
        list(Account.objects.order_by("id").values_list("id", "balance")),
        list(Cdr.objects.order_by("id").values_list("id", "price", "package_seconds", "billed_seconds", "extra")),
        list(PackageUsage.objects.order_by("id").values_list("id", "used_seconds")),
    )


@pytest.fixture
def package_books(world, in_schema):
    with in_schema("demo"):
        retail = tariff_with_deck("Pkg retail", "34,Spain,0.10,0.02,60/60,,,,\n")
        account = account_create(name="Packaged", code="rp-pkg", currency="EUR", tariff=retail, kind="postpaid")
        package = MinutePackage.objects.create(name="Spain 10", prefixes=["34"], included_minutes=D(10), tiers=TIERS)
        account.packages.add(package)
        cdrs_ingest(source="switch", records=parse_asterisk_master_csv(CALLS, tz="UTC"), tz="UTC")
        candidate = tariff_with_deck("Per second", "34,Spain,0.12,0,1/1,,,,\n")
        yield {"account": account, "package": package, "candidate": candidate}


def _cdrs() -> dict[str, Cdr]:
    return {c.source_id: c for c in Cdr.objects.filter(source="switch")}


@pytest.mark.django_db
def test_package_calls_are_replayed_in_call_order_under_a_candidate_and_confirmed_once(package_books, in_schema):
    account = package_books["account"]
    with in_schema("demo"):
        # Given the calls as imported: 0.02, 0.82, 0.12 and the counter at 1500 s
        assert {k: (c.price, c.package_seconds) for k, c in _cdrs().items()} == {
            "A": (D("0.02"), 300),
            "B": (D("0.82"), 1200),
            "C": (D("0.12"), 0),
        }
        before = _snapshot()
        # When the month is re-rated under the per-second candidate
        run = rerate_preview(start=JAN, end=FEB, account=account, tariff=package_books["candidate"], tz="UTC")
        # Then the what-if shows 0.96 → 0.78 and touches nothing, not even the counter
        [line] = run.summary["accounts"]
        assert (line["cdrs"], line["changed"], line["old_total"], line["new_total"], line["difference"]) == (
            3,
            3,
            "0.960000",
            "0.780000",
            "-0.180000",
        )
        assert run.summary["skipped"] == []
        assert _snapshot() == before
        # When confirmed (twice)
        rerate_confirm(run=run)
        after = _snapshot()
        again = rerate_confirm(run=run)
        assert again.status == RerateStatus.CONFIRMED and _snapshot() == after
        # Then each call carries its replayed price, package seconds and parts, and the counter is their sum
        cdrs = _cdrs()
        assert {k: (c.price, c.package_seconds, c.billed_seconds) for k, c in cdrs.items()} == {
            "A": (D("0"), 250, 250),
            "B": (D("0.686667"), 1230, 1230),
            "C": (D("0.093333"), 20, 60),
        }
        assert cdrs["C"].extra["package_parts"] == [
            {"seconds": 20, "rate": "0.04", "from": "package"},
            {"seconds": 40, "rate": "0.120000", "from": "deck"},
        ]
        assert cdrs["B"].extra["rerated"][0]["package_seconds"] == 1200
        usage = PackageUsage.objects.get(account=account, package=package_books["package"])
        assert usage.used_seconds == 1500 == sum(c.package_seconds for c in cdrs.values())
        # one adjustment per call, keyed like every rerate, summing to minus the difference; past entries untouched
        adjustments = LedgerEntry.objects.filter(account=account, kind=EntryKind.ADJUSTMENT)
        assert sorted(adjustments.values_list("idempotency_key", "amount")) == sorted(
            [
                (f"rerate:{run.pk}:{cdrs['A'].pk}", D("0.020000")),
                (f"rerate:{run.pk}:{cdrs['B'].pk}", D("0.133333")),
                (f"rerate:{run.pk}:{cdrs['C'].pk}", D("0.026667")),
            ]
        )
        assert [e for e in after[0] if e in before[0]] == before[0]
        account.refresh_from_db()
        assert (
            account.balance == D("-0.78") == LedgerEntry.objects.filter(account=account).aggregate(t=Sum("amount"))["t"]
        )


@pytest.mark.django_db
def test_the_current_tariff_gives_no_difference_and_a_late_call_makes_a_preview_stale(package_books, in_schema):
    account = package_books["account"]
    with in_schema("demo"):
        # Given a what-if under the account's own tariff: the replay gives back exactly what ingestion charged
        run = rerate_preview(start=JAN, end=FEB, account=account, tz="UTC")
        [line] = run.summary["accounts"]
        assert (line["cdrs"], line["changed"], line["difference"]) == (3, 0, "0.000000")
        candidate = rerate_preview(start=JAN, end=FEB, account=account, tariff=package_books["candidate"], tz="UTC")
        # When a call of the period that started before them arrives (re-sequencing the period) before confirming
        late = master_line("L", "34911234567", "2024-01-10 09:00:00", 60, account="rp-pkg")
        cdrs_ingest(source="switch", records=parse_asterisk_master_csv(late, tz="UTC"), tz="UTC")
        before = _snapshot()
        # Then confirming the candidate's preview is refused and writes nothing
        with pytest.raises(RerateStale):
            rerate_confirm(run=candidate)
        assert _snapshot() == before
        assert Tariff.objects.filter(pk=package_books["candidate"].pk).exists()


@pytest.mark.django_db
def test_a_window_inside_the_month_reprices_its_calls_at_the_positions_the_earlier_calls_leave(
    package_books, in_schema
):
    account = package_books["account"]
    with in_schema("demo"):
        # Given a window holding call C only: A and B keep their rating and leave the counter at 1500 s
        noon, one = datetime(2024, 1, 10, 12, tzinfo=UTC), datetime(2024, 1, 10, 13, tzinfo=UTC)
        run = rerate_preview(start=noon, end=one, account=account, tariff=package_books["candidate"], tz="UTC")
        # Then C is past the last tier under the candidate too: 60 s at 0.12 = 0.12, no difference
        [line] = run.summary["accounts"]
        assert (line["cdrs"], line["old_total"], line["new_total"]) == (1, "0.120000", "0.120000")


# --- freephone legs on a class grid ---------------------------------------------------------------------------------

OCT, NOV = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.django_db
def test_a_freephone_call_whose_grid_cell_changes_is_repriced_as_ingestion_prices_it(world, in_schema):
    with in_schema("demo"):
        # Given a fixed caller forwarded to another network, 90 s → 2 min: 2 × 0.50 + 2 × (1.90 - 0.50) = 1.00 + 2.80
        tariff = grid_tariff("RR grid")
        owner = account_create(name="Grid owner", code="rp-grid", currency="EUR", tariff=tariff)
        FreephoneNumber.objects.create(number="8007770001", account=owner)
        text = record("g1", "74991234567", "79031234567", 90, number="8007770001")
        cdrs_ingest(source="ff", records=parse_freephone_cdrs(text, tz="UTC"), tz="UTC")
        legs = {c.leg: c for c in Cdr.objects.filter(source="ff")}
        assert (legs["origination"].price, legs["termination"].price) == (D("1.00"), D("2.80"))
        # When the cell Fixed → Other networks goes to 2.10 and the month is re-rated under the current tariff
        ClassRate.objects.filter(tariff=tariff, origination__name="Fixed", termination__name="Other networks").update(
            rate=D("2.10")
        )
        before = _snapshot()
        run = rerate_preview(start=OCT, end=NOV, account=owner, tz="UTC")
        # Then the termination leg costs 2 × 1.60 = 3.20 (+0.40), the origination leg stays 1.00; nothing is written
        [line] = run.summary["accounts"]
        by_destination = {d["destination"]: d for d in line["destinations"]}
        assert by_destination["Freephone to Other networks"]["difference"] == "0.400000"
        assert by_destination["Freephone from Fixed"]["difference"] == "0.000000"
        assert (line["cdrs"], line["changed"], line["difference"]) == (2, 1, "0.400000")
        assert _snapshot() == before
        # When confirmed: one adjustment of -0.40 on the termination leg; both legs carry the new cell and total
        rerate_confirm(run=run)
        adjustments = LedgerEntry.objects.filter(account=owner, kind=EntryKind.ADJUSTMENT)
        assert list(adjustments.values_list("idempotency_key", "amount")) == [
            (f"rerate:{run.pk}:{legs['termination'].pk}", D("-0.400000"))
        ]
        rerated = {c.leg: c for c in Cdr.objects.filter(source="ff")}
        assert rerated["termination"].extra["rerated"][0]["cell_rate"] == "1.900000"
        # and they equal what ingestion gives the same call now
        cdrs_ingest(source="ff-now", records=parse_freephone_cdrs(text, tz="UTC"), tz="UTC")
        fresh = {c.leg: c for c in Cdr.objects.filter(source="ff-now")}
        for leg in ("origination", "termination"):
            got, want = rerated[leg], fresh[leg]
            assert (got.price, got.billed_seconds, got.matched_prefix, got.destination) == (
                want.price,
                want.billed_seconds,
                want.matched_prefix,
                want.destination,
            )
            assert {k: v for k, v in got.extra.items() if k != "rerated"} == want.extra
        owner.refresh_from_db()
        assert owner.balance == LedgerEntry.objects.filter(account=owner).aggregate(t=Sum("amount"))["t"]
        assert owner.balance == D("-3.80") - D("4.20") - D("0.40")  # the first call, its re-run, the adjustment
