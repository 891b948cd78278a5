"""The bulk Master.csv import (``cdrs_import_bulk``, ``import_cdrs --format asterisk``): same prices as the exact
path, idempotent, bad lines reported while good ones are imported, and its writer thread on committed data."""

import io
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Sum

from billing.csvformats import parse_asterisk_master_csv
from billing.models import Account, Cdr, LedgerEntry, MinutePackage, TimeBand, Trunk
from billing.services import account_create, cdrs_import_bulk, cdrs_ingest
from billing.tests.engine_support import engine_operator, in_engine, master_line, tariff_with_deck

D = Decimal

RETAIL = """3491,Madrid,0.011,,60/60,,,,
34,Spain,0.020,0.010,30/6,,,,
346,Spain mobile,0.045,,1/1,0.05,,,
346,Spain mobile,0.040,,1/1,0.05,2026-03-15,,
347,Spain mobile peak,0.090,,1/1,,,,peak
44,United Kingdom,0.030,,6/6,,,,
447,UK mobile,0.080,,60/60,,,,
"""
COST = """34,Spain,0.008,,1/1,,,,
346,Spain mobile,0.018,,1/1,,,,
44,United Kingdom,0.010,,1/1,,,,
"""
NUMBERS = ["34911234567", "34611111111", "34711111111", "442071234567", "447700900123", "19995550100", "3491"]
CHANNELS = ["SIP/carrier1-0000001", "PJSIP/other-00002", "Local/1@x-1;2", "", "DAHDI/1-1"]


def _world(zone: str = "Europe/Madrid"):
    retail = tariff_with_deck("Retail", RETAIL)
    TimeBand.objects.create(tariff=retail, name="peak", weekdays=[0, 1, 2, 3, 4], start="09:00", end="18:00")
    retail.save()  # a new band retires the cached deck too
    cost = tariff_with_deck("Carrier", COST, kind="cost", is_default_cost=True)
    Trunk.objects.create(name="carrier1", cost_tariff=cost)
    for code in ("acme", "beta"):
        account_create(name=code, code=code, currency="EUR", tariff=retail)
    account_create(name="No tariff", code="notariff", currency="EUR")
    packaged = account_create(name="Packaged", code="pkg", currency="EUR", tariff=retail)
    package = MinutePackage.objects.create(name="Spain 10", prefixes=["34"], included_minutes=D(10))
    packaged.packages.add(package)


def _random_file(count: int, seed: int = 7) -> str:
    """Calls over two weeks around the future-dated rate and the peak band, some to unknown accounts or numbers."""
    rng = random.Random(seed)
    lines = []
    for n in range(count):
        start = datetime(2026, 3, 8, tzinfo=UTC) + timedelta(seconds=rng.randrange(14 * 86400))
        lines.append(
            master_line(
                f"r{n}",
                rng.choice(NUMBERS),
                start.strftime("%Y-%m-%d %H:%M:%S"),
                rng.choice([0, 1, 29, 30, 31, 59, 60, 61, 185, 3601]),
                account=rng.choice(["acme", "beta", "beta", "ghost", "notariff", "pkg"]),
                dstchannel=rng.choice(CHANNELS),
                disposition="ANSWERED" if rng.random() < 0.9 else "NO ANSWER",
            )
        )
    return "".join(lines)


FIELDS = ("status", "unrated_reason", "account_id", "account_code", "price", "cost", "currency", "billed_seconds",
          "package_seconds", "matched_prefix", "destination", "trunk", "caller", "callee", "start", "duration",
          "billsec", "leg", "extra")  # fmt: skip


@pytest.mark.django_db
def test_the_bulk_path_prices_a_file_exactly_as_the_record_by_record_path(in_schema):
    text = _random_file(1500)
    with in_schema("demo"):
        _world()
        accounts = Account.objects.filter(code__in=["acme", "beta", "pkg"])
        # The record-by-record import, undone after reading what it did: the bulk import then sees the same calls
        # afresh (a package month counts every stored call of its account, whatever its source).
        with transaction.atomic():
            exact = cdrs_ingest(
                source="exact", records=parse_asterisk_master_csv(text, tz="Europe/Madrid"), tz="Europe/Madrid"
            )
            rows = {
                "exact": {c["source_id"]: c for c in Cdr.objects.filter(source="exact").values("source_id", *FIELDS)}
            }
            per_cdr = {a.code: a.entries.aggregate(s=Sum("amount"))["s"] for a in accounts}
            transaction.set_rollback(True)
        bulk = cdrs_import_bulk(source=io.StringIO(text), tz="Europe/Madrid", source_name="bulk", batch_rows=400)
        rows["bulk"] = {c["source_id"]: c for c in Cdr.objects.filter(source="bulk").values("source_id", *FIELDS)}
        # The file covers every case: rated, each unrated reason, banded, future-dated, no cost, packages.
        statuses = {(c["status"], c["unrated_reason"].split(" ")[0]) for c in rows["exact"].values()}
        assert statuses == {("rated", ""), ("unrated", "unknown"), ("unrated", "account"), ("unrated", "no")}
        assert any(c["package_seconds"] for c in rows["exact"].values())
        assert any(c["matched_prefix"] == "347" for c in rows["exact"].values())
        assert len(rows["exact"]) == 1500 and rows["exact"] == rows["bulk"]
        assert {k: v for k, v in exact.items()} == {k: v for k, v in bulk.items()}
        # Same money on the books: the exact path charges per CDR, the bulk path per account and batch.
        for account in accounts:
            per_batch = account.entries.aggregate(s=Sum("amount"))["s"]
            assert per_cdr[account.code] == per_batch < 0


@pytest.mark.django_db
def test_importing_the_same_file_twice_stores_and_charges_it_once(in_schema, tmp_path, capsys):
    path = tmp_path / "Master.csv"
    path.write_text(_random_file(300, seed=3))
    with in_schema("demo"):
        _world()
    call_command("import_cdrs", str(path), operator="demo", format="asterisk")
    first = json.loads(capsys.readouterr().out)
    call_command("import_cdrs", str(path), operator="demo", format="asterisk")
    again = json.loads(capsys.readouterr().out)
    assert first["imported"] == 300 and first["duplicates"] == 0
    assert (again["imported"], again["duplicates"], again["charged"]) == (0, 300, {})
    with in_schema("demo"):
        assert Cdr.objects.count() == 300
        for account in Account.objects.all():
            assert account.balance == (account.entries.aggregate(s=Sum("amount"))["s"] or 0)


@pytest.mark.django_db
def test_a_file_overlapping_one_already_imported_adds_only_the_new_calls(in_schema):
    lines = _random_file(60, seed=5).splitlines(keepends=True)
    with in_schema("demo"):
        _world()
        cdrs_import_bulk(source=io.StringIO("".join(lines[:40])), tz="UTC")
        charged_before = sum(a.balance for a in Account.objects.all())
        second = cdrs_import_bulk(source=io.StringIO("".join(lines[20:])), tz="UTC")
        assert (second["imported"], second["duplicates"]) == (20, 20)
        assert Cdr.objects.count() == 60
        new = Cdr.objects.filter(source_id__in=[f"r{n}" for n in range(40, 60)], status="rated", account__isnull=False)
        assert sum(a.balance for a in Account.objects.all()) == charged_before - new.aggregate(s=Sum("price"))["s"]


@pytest.mark.django_db
def test_a_file_with_a_call_twice_imported_again_counts_each_line_once(in_schema):
    lines = _random_file(5, seed=5).splitlines(keepends=True)
    text = "".join(lines + lines[:2])  # 7 lines, 5 calls
    with in_schema("demo"):
        _world()
        first = cdrs_import_bulk(source=io.StringIO(text), tz="UTC")
        again = cdrs_import_bulk(source=io.StringIO(text), tz="UTC")
        assert (first["read"], first["imported"], first["duplicates"]) == (7, 5, 2)
        assert (again["read"], again["imported"], again["duplicates"]) == (7, 0, 7)


@pytest.mark.django_db
def test_a_batch_whose_stored_calls_the_probe_misses_takes_the_conflict_skipping_path(in_schema):
    lines = _random_file(10, seed=9).splitlines(keepends=True)
    with in_schema("demo"):
        _world()
        cdrs_import_bulk(source=io.StringIO("".join(lines[3:5])), tz="UTC")
        # r3 and r4 are stored; the probe looks at r0, r5 and r9: the plain COPY fails on r3, the batch goes
        # through INSERT … ON CONFLICT DO NOTHING and only the 8 new calls are stored and charged.
        before = sum(a.balance for a in Account.objects.all())
        second = cdrs_import_bulk(source=io.StringIO("".join(lines)), tz="UTC")
        assert (second["imported"], second["duplicates"]) == (8, 2)
        new = Cdr.objects.exclude(source_id__in=["r3", "r4"]).filter(status="rated")
        assert sum(a.balance for a in Account.objects.all()) == before - new.aggregate(s=Sum("price"))["s"]
        assert D(second["charged"]["EUR"]) == new.aggregate(s=Sum("price"))["s"]


@pytest.mark.django_db
def test_bad_lines_are_reported_with_line_and_reason_and_the_good_ones_imported(in_schema):
    good = master_line("g1", "34911234567", "2026-03-09 10:00:00", 60)
    text = (
        good
        + master_line("b1", "34911234567", "09/03/2026 10:00", 60)  # line 2: a time Asterisk never writes
        + '"acme","100","34911234567"\n'  # line 3: 3 fields
        + master_line("b2", "", "2026-03-09 10:00:00", 60)  # line 4: nobody was called
        + master_line("g2", "34911234567", "2026-03-09 11:00:00", 60)
        + master_line("g1", "34911234567", "2026-03-09 10:00:00", 60)  # line 6: the same call again
    )
    with in_schema("demo"):
        _world()
        summary = cdrs_import_bulk(source=io.StringIO(text), tz="UTC")
        assert [(r["line"], r["column"]) for r in summary["rejected"]] == [(2, "start"), (3, None), (4, "dst")]
        assert "2024-01-31 23:59:59" in summary["rejected"][0]["reason"]
        assert summary["rejected"][1]["reason"] == "expected 16 to 21 fields (Asterisk Master.csv), got 3"
        assert (summary["read"], summary["imported"], summary["duplicates"]) == (6, 2, 1)
        assert set(Cdr.objects.values_list("source_id", flat=True)) == {"g1", "g2"}


def test_the_writer_thread_commits_batch_by_batch_on_its_own_connection(world, django_db_blocker):
    """Outside a transaction the bulk path writes on a thread of its own while the caller reads the next batch."""
    text = _random_file(900, seed=11)
    with django_db_blocker.unblock():
        engine_operator()
        with in_engine():
            if not Account.objects.filter(code="acme").exists():
                _world()
            assert not connection.in_atomic_block  # so the writes go to the writer thread's own connection
            first = cdrs_import_bulk(
                source=io.StringIO(text), tz="Europe/Madrid", source_name="threaded", batch_rows=250
            )
            again = cdrs_import_bulk(
                source=io.StringIO(text), tz="Europe/Madrid", source_name="threaded", batch_rows=250
            )
            assert first["imported"] == 900 and again["duplicates"] == 900 and again["imported"] == 0
            stored = Cdr.objects.filter(source="threaded")
            assert stored.count() == 900
            charged = LedgerEntry.objects.filter(idempotency_key__contains=":threaded:").aggregate(s=Sum("amount"))
            assert -charged["s"] == stored.filter(status="rated").aggregate(s=Sum("price"))["s"]
            assert D(first["charged"]["EUR"]) == -charged["s"]
            for account in Account.objects.all():
                assert account.balance == (account.entries.aggregate(s=Sum("amount"))["s"] or 0)
        connection.set_schema_to_public()
