"""A late package call re-sequences its month, and the calls after it keep the tariff they were priced with
(``extra["tariff_id"]``): a tariff switched since, or a candidate a rerate run confirmed; golden cases by hand.

Books (UTC; package "Spain 2-6": 2 included minutes, then up to 6 minutes at 0.05, beyond it the deck's rate; the
connect fee of the deck always applies; all 60/60 unless said):

    "Old" 34 Spain 0.10/min + 0.02 connect fee      "New" 34 Spain 0.20/min, no connect fee
    "Per second" (a rerate candidate) 34 Spain 0.15/min, no connect fee, 1/1
"""

import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db.models import Sum

from billing.choices import EntryKind
from billing.csvformats import parse_asterisk_master_csv
from billing.models import Account, Cdr, LedgerEntry, MinutePackage, PackageUsage, Rate, Tariff
from billing.services import account_create, cdrs_import_bulk, cdrs_ingest, rerate_confirm, rerate_preview
from billing.tests.engine_support import master_line, tariff_with_deck

D = Decimal
JAN, FEB = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
OLD_DECK = "34,Spain,0.10,0.02,60/60,,,,\n"
NEW_DECK = "34,Spain,0.20,0,60/60,,,,\n"
CALLS = {
    "t10": master_line("t10", "34911234567", "2024-01-10 10:00:00", 120, account="rt"),
    "t11": master_line("t11", "34911234567", "2024-01-10 11:00:00", 180, account="rt"),
    "t12": master_line("t12", "34911234567", "2024-01-10 12:00:00", 120, account="rt"),
    "t14": master_line("t14", "34911234567", "2024-01-10 14:00:00", 120, account="rt"),
}


@pytest.fixture
def books(world, in_schema):
    with in_schema("demo"):
        old = tariff_with_deck("Old", OLD_DECK)
        new = tariff_with_deck("New", NEW_DECK)
        account = account_create(name="Re-sequenced", code="rt", currency="EUR", tariff=old, kind="postpaid")
        tiers = [{"up_to_minutes": "6", "rate": "0.05"}]
        package = MinutePackage.objects.create(name="Spain 2-6", prefixes=["34"], included_minutes=D(2), tiers=tiers)
        account.packages.add(package)
        yield {"account": account, "old": old, "new": new}


def _import(*ids: str, path: str = "exact") -> None:
    text = "".join(CALLS[i] for i in ids)
    if path == "exact":
        cdrs_ingest(source="switch", records=parse_asterisk_master_csv(text, tz="UTC"), tz="UTC")
    else:
        cdrs_import_bulk(source=io.StringIO(text), tz="UTC", source_name="switch")


def _switch(account: Account, tariff: Tariff) -> None:
    Account.objects.filter(pk=account.pk).update(tariff=tariff)


def _cdrs() -> dict[str, Cdr]:
    return {c.source_id: c for c in Cdr.objects.filter(source="switch")}


def _books_balance(account: Account) -> tuple[Decimal, Decimal]:
    """(balance, sum of the account's ledger entries)."""
    account.refresh_from_db()
    return account.balance, LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]


def _adjustments(account: Account, prefix: str) -> list[tuple[str, Decimal]]:
    entries = LedgerEntry.objects.filter(account=account, kind=EntryKind.ADJUSTMENT, idempotency_key__startswith=prefix)
    return sorted(entries.values_list("idempotency_key", "amount"))


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["exact", "bulk"])
def test_calls_priced_before_a_tariff_switch_keep_their_tariff_when_a_late_call_resequences_them(
    books, in_schema, path
):
    account, old, new = books["account"], books["old"], books["new"]
    with in_schema("demo"):
        # Given two calls under "Old": 10:00 included (0.02), 12:00 two minutes at 0.05 + 0.02 = 0.12; counter 240 s
        _import("t10", "t12", path=path)
        # and, once the account switched to "New", 14:00 two minutes at 0.05, no connect fee = 0.10; counter 360 s
        _switch(account, new)
        _import("t14", path=path)
        cdrs = _cdrs()
        assert {k: (c.price, c.package_seconds, c.extra["tariff_id"]) for k, c in cdrs.items()} == {
            "t10": (D("0.02"), 120, old.pk),
            "t12": (D("0.12"), 120, old.pk),
            "t14": (D("0.10"), 120, new.pk),
        }
        entries_before = list(LedgerEntry.objects.filter(account=account).values_list("id", "amount", "kind"))
        # When a 3-minute call of 11:00 arrives: under the account's tariff ("New") at 120 s, 3 min at 0.05 = 0.15
        _import("t11", path=path)
        # Then 12:00 is re-priced under "Old", its own tariff, at 300 s: 60 s at 0.05 + 60 s at the deck's 0.10 +
        # 0.02 connect fee = 0.17 (under "New" it would be 0.05 + 0.20 = 0.25); 14:00 under "New" at 360 s: past the
        # last tier, 2 min at 0.20 = 0.40. Each keeps its tariff id.
        cdrs = _cdrs()
        assert {k: (c.price, c.package_seconds, c.extra["tariff_id"]) for k, c in cdrs.items()} == {
            "t10": (D("0.02"), 120, old.pk),
            "t11": (D("0.15"), 180, new.pk),
            "t12": (D("0.17"), 60, old.pk),
            "t14": (D("0.40"), 0, new.pk),
        }
        assert cdrs["t12"].extra["package_parts"] == [
            {"seconds": 60, "rate": "0.05", "from": "package"},
            {"seconds": 60, "rate": "0.100000", "from": "deck"},
        ]
        # corrected by one adjustment each: 0.12 - 0.17 and 0.10 - 0.40; earlier entries untouched
        assert _adjustments(account, "resequence:") == [
            (f"resequence:{cdrs['t12'].pk}:switch:t11", D("-0.050000")),
            (f"resequence:{cdrs['t14'].pk}:switch:t11", D("-0.300000")),
        ]
        assert all(
            LedgerEntry.objects.filter(pk=pk, amount=amount, kind=kind).exists() for pk, amount, kind in entries_before
        )
        assert _books_balance(account) == (D("-0.74"), D("-0.74"))  # 0.02 + 0.15 + 0.17 + 0.40
        assert (
            PackageUsage.objects.get(account=account).used_seconds
            == 360
            == sum(c.package_seconds for c in cdrs.values())
        )
        # When the late call comes again, nothing moves
        count = LedgerEntry.objects.filter(account=account).count()
        _import("t11", path=path)
        assert LedgerEntry.objects.filter(account=account).count() == count
        assert _books_balance(account) == (D("-0.74"), D("-0.74"))


@pytest.mark.django_db
def test_a_candidate_confirmed_by_a_rerate_run_is_kept_when_a_late_call_resequences_the_month(books, in_schema):
    account, old = books["account"], books["old"]
    with in_schema("demo"):
        # Given 10:00 (0.02) and 12:00 (0.12) under "Old"
        _import("t10", "t12")
        candidate = tariff_with_deck("Per second", "34,Spain,0.15,0,1/1,,,,\n")
        # When January is re-rated under the per-second candidate and confirmed: 10:00 120 s included = 0,
        # 12:00 120 s at 0.05 = 0.10 (adjustments +0.02 and +0.02); both now carry the candidate's id
        run = rerate_preview(start=JAN, end=FEB, account=account, tariff=candidate, tz="UTC")
        rerate_confirm(run=run)
        cdrs = _cdrs()
        assert {k: (c.price, c.extra["tariff_id"]) for k, c in cdrs.items()} == {
            "t10": (D("0"), candidate.pk),
            "t12": (D("0.10"), candidate.pk),
        }
        assert cdrs["t12"].extra["rerated"][0]["tariff_id"] == old.pk  # what it was priced with before
        # When the 3-minute call of 11:00 arrives: under the account's tariff ("Old") at 120 s, 0.15 + 0.02 = 0.17
        _import("t11")
        # Then 12:00 is re-sequenced under the candidate, at 300 s: 60 s at 0.05 + 60 s at 0.15 = 0.20 (under "Old"
        # it would be 0.05 + 0.10 + 0.02 = 0.17), one adjustment 0.10 - 0.20; the confirmed 10:00 stays at 0
        cdrs = _cdrs()
        assert {k: (c.price, c.package_seconds, c.extra["tariff_id"]) for k, c in cdrs.items()} == {
            "t10": (D("0"), 120, candidate.pk),
            "t11": (D("0.17"), 180, old.pk),
            "t12": (D("0.20"), 60, candidate.pk),
        }
        assert cdrs["t12"].extra["package_parts"] == [
            {"seconds": 60, "rate": "0.05", "from": "package"},
            {"seconds": 60, "rate": "0.150000", "from": "deck"},
        ]
        assert _adjustments(account, "resequence:") == [(f"resequence:{cdrs['t12'].pk}:switch:t11", D("-0.100000"))]
        assert _adjustments(account, "rerate:") == sorted(
            [(f"rerate:{run.pk}:{cdrs['t10'].pk}", D("0.020000")), (f"rerate:{run.pk}:{cdrs['t12'].pk}", D("0.020000"))]
        )
        # -0.02 - 0.12 (charges) + 0.04 (rerate) - 0.17 (late call) - 0.10 (re-sequence) = -(0 + 0.17 + 0.20)
        assert _books_balance(account) == (D("-0.37"), D("-0.37"))
        assert PackageUsage.objects.get(account=account).used_seconds == 360
        # and a what-if of the month under the same candidate finds nothing left to change but the late call's
        # tariff: 11:00 at 120 s under "Per second" = 180 s at 0.05 = 0.15 (0.02 less)
        again = rerate_preview(start=JAN, end=FEB, account=account, tariff=candidate, tz="UTC")
        [line] = again.summary["accounts"]
        assert (line["changed"], line["difference"]) == (1, "-0.020000")


@pytest.mark.django_db
def test_cdrs_without_a_tariff_id_are_resequenced_under_the_accounts_tariff_as_before(books, in_schema):
    account, new = books["account"], books["new"]
    with in_schema("demo"):
        # Given 10:00 (0.02) and 12:00 (0.12) under "Old", stored before the tariff id was kept
        _import("t10", "t12")
        for cdr in Cdr.objects.filter(source="switch"):
            cdr.extra.pop("tariff_id")
            cdr.save(update_fields=["extra"])
        # When the account moves to "New" and the 3-minute call of 11:00 arrives (0.15 under "New", at 120 s)
        _switch(account, new)
        _import("t11")
        # Then 12:00 is re-priced under the account's tariff now, "New", at 300 s: 60 s at 0.05 + 60 s at 0.20 = 0.25
        # (adjustment 0.12 - 0.25), and now says so; 10:00, not re-priced, is left as it was
        cdrs = _cdrs()
        assert {k: (c.price, c.package_seconds, c.extra.get("tariff_id")) for k, c in cdrs.items()} == {
            "t10": (D("0.02"), 120, None),
            "t11": (D("0.15"), 180, new.pk),
            "t12": (D("0.25"), 60, new.pk),
        }
        assert _adjustments(account, "resequence:") == [(f"resequence:{cdrs['t12'].pk}:switch:t11", D("-0.130000"))]
        assert _books_balance(account) == (D("-0.42"), D("-0.42"))  # 0.02 + 0.15 + 0.25
        assert PackageUsage.objects.get(account=account).used_seconds == 360


@pytest.mark.django_db
def test_calls_of_a_deleted_tariff_fall_back_to_the_accounts_tariff(books, in_schema):
    account, old, new = books["account"], books["old"], books["new"]
    with in_schema("demo"):
        # Given 10:00 and 12:00 priced under "Old", then the account on "New" and "Old" deleted (its rates with it)
        _import("t10", "t12")
        _switch(account, new)
        Tariff.objects.filter(pk=old.pk).delete()
        # When the late 11:00 call arrives, 12:00 is re-priced under "New" (0.25, as if it had no tariff id)
        _import("t11")
        cdrs = _cdrs()
        assert {k: (c.price, c.extra["tariff_id"]) for k, c in cdrs.items()} == {
            "t10": (D("0.02"), old.pk),
            "t11": (D("0.15"), new.pk),
            "t12": (D("0.25"), new.pk),
        }
        assert _books_balance(account) == (D("-0.42"), D("-0.42"))


@pytest.mark.django_db
def test_a_rate_corrected_in_place_reaches_the_calls_a_late_call_resequences(books, in_schema):
    account, old = books["account"], books["old"]
    with in_schema("demo"):
        # Given 10:00 (0.02) and 12:00 (0.12) under "Old"
        _import("t10", "t12")
        # When the operator corrects "Old"'s Spain rate in place (same effective date) from 0.10 to 0.30
        spain = Rate.objects.get(tariff=old, prefix="34")
        spain.rate = D("0.30")
        spain.save()
        # and the late 11:00 call arrives (3 min at 0.05 + 0.02 = 0.17)
        _import("t11")
        # Then 12:00, re-priced at 300 s, takes the corrected rate for its minute past the tier: 0.05 + 0.30 + 0.02;
        # 10:00, before the late call, keeps its price
        assert {k: c.price for k, c in _cdrs().items()} == {"t10": D("0.02"), "t11": D("0.17"), "t12": D("0.37")}
        assert _books_balance(account) == (D("-0.56"), D("-0.56"))
