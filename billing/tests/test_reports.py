"""Statements, revenue / cost / margin and unrated reports (selectors), and their console pages.

Rounding rule under test (settings.MONEY_LINE_DECIMAL_PLACES = 2): records keep 6 decimals; a line is the exact
sum of its records rounded ONCE, half-up. Five SMS of 0.005 make 0.025 → 0.03 (rounding each SMS first would give
5 × 0.01 = 0.05; banker's rounding would give 0.02); three calls of 0.0105 make 0.0315 → 0.03.
"""

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from billing.choices import EntryKind, RerateStatus
from billing.models import Cdr, LedgerEntry, Rate, RerateRun, Tariff
from billing.selectors import account_statement, account_statement_csv, money_line, revenue_report, unrated_report
from billing.services import account_create, ledger_post
from billing.tests.test_rerate import rerate_tasks_run
from conftest import login_as

pytestmark = pytest.mark.django_db

JAN = datetime(2024, 1, 1, tzinfo=UTC)
FEB = datetime(2024, 2, 1, tzinfo=UTC)


def _cdr(
    account,
    source_id,
    *,
    start,
    price,
    service="voice",
    destination="Spain",
    billed=60,
    units=0,
    status="rated",
    **fields,
):
    return Cdr.objects.create(
        source="test",
        source_id=source_id,
        service=service,
        account=account,
        account_code=account.code if account else "ghost",
        callee="+34600000000",
        start=start,
        billsec=billed,
        billed_seconds=billed,
        units=units,
        status=status,
        destination=destination,
        price=None if price is None else Decimal(price),
        currency=account.currency if account else "EUR",
        **fields,
    )


def _post(account, key, kind, amount, at, cdr=None):
    """An entry as if it had been posted at `at` (the ledger stamps entries with the time they are posted)."""
    entry, _ = ledger_post(account=account, kind=kind, amount=Decimal(amount), idempotency_key=key, cdr=cdr)
    LedgerEntry.objects.filter(pk=entry.pk).update(created_at=at)
    return entry


@pytest.fixture
def statement_books(world, in_schema):
    """The golden statement of January 2024 (see each amount worked out in the test)."""
    with in_schema("demo"):
        acme = account_create(name="Acme", code="st-acme", currency="EUR")
        other = account_create(name="Other", code="st-other", currency="EUR")
        _post(acme, "st-topup", EntryKind.TOPUP, "20", datetime(2023, 12, 15, tzinfo=UTC))
        _post(acme, "st-dec-charge", EntryKind.CHARGE, "0.004", datetime(2023, 12, 20, tzinfo=UTC))
        for n in range(5):
            day = datetime(2024, 1, 5 + n, 10, tzinfo=UTC)
            sms = _cdr(acme, f"sms{n}", start=day, price="0.005", service="sms", destination="Spain mobile", units=1)
            _post(acme, f"st-sms{n}", EntryKind.CHARGE, "0.005", day, cdr=sms)
        for n in range(3):
            day = datetime(2024, 1, 20 + n, 10, tzinfo=UTC)
            call = _cdr(acme, f"call{n}", start=day, price="0.0105", destination="Spain", billed=60)
            _post(acme, f"st-call{n}", EntryKind.CHARGE, "0.0105", day, cdr=call)
        _post(acme, "st-refund", EntryKind.REFUND, "1.005", datetime(2024, 1, 25, tzinfo=UTC))
        _post(acme, "st-adjust", EntryKind.ADJUSTMENT, "-0.0149", datetime(2024, 1, 26, tzinfo=UTC))
        _post(acme, "st-feb-topup", EntryKind.TOPUP, "5", datetime(2024, 2, 2, tzinfo=UTC))
        Cdr.objects.create(
            source="test", source_id="unrated1", account_code="st-acme", account=acme, callee="+999", start=JAN
        )
        _cdr(other, "other1", start=datetime(2024, 1, 10, tzinfo=UTC), price="7")
        yield {"acme": acme, "other": other}


def test_golden_statement_rounds_each_line_once_half_up(statement_books):
    # Given January 2024 of account st-acme
    acme = statement_books["acme"]
    # When its statement is made
    statement = account_statement(account=acme, start=JAN, end=FEB)
    # Then, line by line:
    # opening = 20 - 0.004 = 19.996 → 20.00
    assert statement["opening_balance"] == Decimal("20.00")
    # usage: SMS 5 × 0.005 = 0.025 → 0.03 (not 0.05, not 0.02); calls 3 × 0.0105 = 0.0315 → 0.03, 3 billed minutes
    assert statement["usage"] == [
        {
            "service": "sms",
            "destination": "Spain mobile",
            "count": 5,
            "billed_seconds": 300,
            "billed_minutes": Decimal("5.00"),
            "units": 5,
            "amount": Decimal("0.03"),
        },
        {
            "service": "voice",
            "destination": "Spain",
            "count": 3,
            "billed_seconds": 180,
            "billed_minutes": Decimal("3.00"),
            "units": 0,
            "amount": Decimal("0.03"),
        },
    ]
    # the usage total is rounded from the exact 0.0565 → 0.06, not added from the rounded lines (0.06 by chance)
    assert statement["usage_total"] == {"count": 8, "amount": Decimal("0.06")}
    assert statement["unrated_cdrs"] == 1
    # entries: each one its own line; -0.005 → -0.01 (half-up rounds away from zero), refund 1.005 → 1.01
    amounts = [(e["kind"], e["amount"]) for e in statement["entries"]]
    assert amounts == [("charge", Decimal("-0.01"))] * 8 + [
        ("refund", Decimal("1.01")),
        ("adjustment", Decimal("-0.01")),
    ]
    # per kind: charges -0.025 - 0.0315 = -0.0565 → -0.06; refund 1.01; adjustment -0.0149 → -0.01
    assert statement["totals_by_kind"] == [
        {"kind": "charge", "count": 8, "amount": Decimal("-0.06")},
        {"kind": "refund", "count": 1, "amount": Decimal("1.01")},
        {"kind": "adjustment", "count": 1, "amount": Decimal("-0.01")},
    ]
    # movement -0.0565 + 1.005 - 0.0149 = 0.9336 → 0.93; closing 19.996 + 0.9336 = 20.9296 → 20.93
    assert statement["entries_total"] == Decimal("0.93")
    assert statement["closing_balance"] == Decimal("20.93")
    # the February top-up and the other account's call are not on it
    assert all(e["amount"] != Decimal("5.00") for e in statement["entries"])


@override_settings(MONEY_LINE_DECIMAL_PLACES=3)
def test_the_line_rounding_follows_the_setting(statement_books):
    # Given lines rounded to 3 places: SMS 0.025 stays 0.025, calls 0.0315 → 0.032 (half-up), opening 19.996
    statement = account_statement(account=statement_books["acme"], start=JAN, end=FEB)
    assert [line["amount"] for line in statement["usage"]] == [Decimal("0.025"), Decimal("0.032")]
    assert statement["opening_balance"] == Decimal("19.996") and statement["decimal_places"] == 3
    assert money_line(Decimal("0.0005")) == Decimal("0.001")


def test_statement_csv_has_every_line(statement_books):
    # Given the golden statement; when rendered as CSV
    statement = account_statement(account=statement_books["acme"], start=JAN, end=FEB)
    rows = list(csv.DictReader(io.StringIO(account_statement_csv(statement=statement))))
    # Then it reads top to bottom: account, opening, usage, entries, totals per kind, closing
    sections = [row["section"] for row in rows]
    assert sections == (
        ["account", "balance", "usage", "usage", "usage_total"]
        + ["entry"] * 10
        + ["kind_total"] * 3
        + ["entries_total", "balance"]
    )
    usage = [r for r in rows if r["section"] == "usage"]
    assert [(r["item"], r["detail"], r["count"], r["amount"]) for r in usage] == [
        ("sms", "Spain mobile", "5", "0.03"),
        ("voice", "Spain", "3", "0.03"),
    ]
    assert (rows[1]["item"], rows[1]["amount"]) == ("opening", "20.00")
    assert (rows[-1]["item"], rows[-1]["amount"], rows[-1]["currency"]) == ("closing", "20.93", "EUR")


@pytest.fixture
def traffic(world, in_schema):
    """Calls around the Madrid midnight of 9/10 March 2024 (UTC+1) and of 31 March/1 April (UTC+2 by then)."""
    with in_schema("demo"):
        eur = account_create(name="Rev EUR", code="rev-eur", currency="EUR")
        usd = account_create(name="Rev USD", code="rev-usd", currency="USD")
        # 22:30 UTC = 23:30 Madrid on the 9th
        _cdr(eur, "a", start=datetime(2024, 3, 9, 22, 30, tzinfo=UTC), price="0.10", cost=Decimal("0.04"))
        # 23:30 UTC on the 9th = 00:30 Madrid on the 10th
        _cdr(eur, "b", start=datetime(2024, 3, 9, 23, 30, tzinfo=UTC), price="0.20", cost=Decimal("0.05"))
        _cdr(eur, "c", start=datetime(2024, 3, 10, 12, 0, tzinfo=UTC), price="0.30", billed=120)  # no cost known
        _cdr(usd, "e", start=datetime(2024, 3, 10, 12, 0, tzinfo=UTC), price="0.50", cost=Decimal("0.10"))
        # 22:30 UTC on 31 March = 00:30 Madrid on 1 April (summer time began that night)
        _cdr(eur, "d", start=datetime(2024, 3, 31, 22, 30, tzinfo=UTC), price="1.00", cost=Decimal("0.50"))
        _cdr(eur, "x", start=datetime(2024, 3, 10, 12, 0, tzinfo=UTC), price=None, status="unrated")
        yield


def _rows(report):
    return [
        (r["period"], r["currency"], r["cdrs"], r["revenue"], r["cost"], r["margin"], r["uncosted_cdrs"])
        for r in report["rows"]
    ]


def test_revenue_by_day_follows_the_operators_midnight(traffic):
    # Given calls either side of midnight in Madrid; when reported per day in the operator's zone
    madrid = "Europe/Madrid"
    start, end = datetime(2024, 3, 8, 23, tzinfo=UTC), datetime(2024, 3, 10, 23, tzinfo=UTC)  # 9 and 10 March there
    report = revenue_report(start=start, end=end, group="day", tz=madrid)
    # Then call b (23:30 UTC on the 9th) counts on the 10th; margin only over the calls with a cost (b: 0.15)
    D = Decimal
    assert _rows(report) == [
        ("2024-03-09", "EUR", 1, D("0.10"), D("0.04"), D("0.06"), 0),
        ("2024-03-10", "EUR", 2, D("0.50"), D("0.05"), D("0.15"), 1),
        ("2024-03-10", "USD", 1, D("0.50"), D("0.10"), D("0.40"), 0),
    ]
    assert [(t["currency"], t["revenue"], t["margin"]) for t in report["totals"]] == [
        ("EUR", D("0.60"), D("0.21")),
        ("USD", D("0.50"), D("0.40")),
    ]
    assert report["rows"][1]["billed_minutes"] == D("3.00")
    # In UTC the same calls fall on other days: the zone matters
    utc = revenue_report(start=datetime(2024, 3, 9, tzinfo=UTC), end=datetime(2024, 3, 11, tzinfo=UTC), tz="UTC")
    assert [(r["period"], r["cdrs"]) for r in utc["rows"] if r["currency"] == "EUR"] == [
        ("2024-03-09", 2),
        ("2024-03-10", 1),
    ]


def test_revenue_by_month_puts_the_last_night_of_march_in_april(traffic):
    # When reported per month in Madrid, then call d (22:30 UTC on 31 March) is April's
    report = revenue_report(
        start=datetime(2024, 2, 29, 23, tzinfo=UTC),
        end=datetime(2024, 4, 30, 22, tzinfo=UTC),
        group="month",
        tz="Europe/Madrid",
    )
    D = Decimal
    assert _rows(report) == [
        ("2024-03", "EUR", 3, D("0.60"), D("0.09"), D("0.21"), 1),
        ("2024-03", "USD", 1, D("0.50"), D("0.10"), D("0.40"), 0),
        ("2024-04", "EUR", 1, D("1.00"), D("0.50"), D("0.50"), 0),
    ]


def test_revenue_report_is_two_sql_aggregations(traffic):
    # Given any number of CDRs; when the report is made, then it costs the rows' query and the totals' query
    with CaptureQueriesContext(connection) as queries:
        revenue_report(start=JAN, end=datetime(2025, 1, 1, tzinfo=UTC), group="day", tz="Europe/Madrid")
    selects = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("SET search_path")]
    assert len(selects) == 2 and all("GROUP BY" in sql for sql in selects)


def test_unrated_report_counts_and_dates_each_reason(world, in_schema):
    # Given CDRs kept unrated for two reasons
    with in_schema("demo"):
        for n, (reason, day) in enumerate(
            [("unknown account 'zz'", 3), ("unknown account 'zz'", 1), ("no rate for +99912", 2)]
        ):
            Cdr.objects.create(
                source="test",
                source_id=f"u{n}",
                account_code="zz",
                callee="+99912",
                start=datetime(2024, 5, day, tzinfo=UTC),
                unrated_reason=reason,
            )
        # When the report is made
        report = unrated_report()
    # Then the reasons come most frequent first, each with its count and oldest/newest start
    mine = [r for r in report["reasons"] if r["reason"] in {"unknown account 'zz'", "no rate for +99912"}]
    assert mine == [
        {
            "reason": "unknown account 'zz'",
            "count": 2,
            "oldest": datetime(2024, 5, 1, tzinfo=UTC),
            "newest": datetime(2024, 5, 3, tzinfo=UTC),
        },
        {
            "reason": "no rate for +99912",
            "count": 1,
            "oldest": datetime(2024, 5, 2, tzinfo=UTC),
            "newest": datetime(2024, 5, 2, tzinfo=UTC),
        },
    ]
    assert report["count"] >= 3 and report["oldest"] <= datetime(2024, 5, 1, tzinfo=UTC)


# --- Console -------------------------------------------------------------------------------------------


@pytest.fixture
def console(world, demo_client):
    login_as(demo_client, "demo", "admin@demo.localhost")
    return demo_client


@pytest.fixture
def whatif_books(world, in_schema):
    """One Spain mobile call priced 0.23 under a rate since corrected to 0.20 + 0.05: +0.02 on re-rating."""
    with in_schema("demo"):
        tariff = Tariff.objects.create(name="Console retail", currency="EUR")
        Rate.objects.create(
            tariff=tariff, prefix="346", destination="Spain mobile", rate=Decimal("0.20"), connect_fee=Decimal("0.05")
        )
        account = account_create(name="Console", code="con-acme", currency="EUR", tariff=tariff)
        cdr = Cdr.objects.create(
            source="test",
            source_id="con1",
            account=account,
            account_code=account.code,
            callee="+34611111111",
            start=datetime(2024, 1, 10, 12, tzinfo=UTC),
            billsec=30,
            status="rated",
            matched_prefix="346",
            destination="Spain mobile",
            billed_seconds=60,
            price=Decimal("0.23"),
            currency="EUR",
        )
        yield {"account": account, "tariff": tariff, "cdr": cdr}


def test_console_what_if_shows_differences_and_confirms(
    console, whatif_books, in_schema, django_capture_on_commit_callbacks
):
    account = whatif_books["account"]
    # Given the what-if form
    assert console.get("/admin/billing/reraterun/add/").status_code == 200
    # When a what-if of January for the account is asked for, it is queued and its page follows it
    with django_capture_on_commit_callbacks() as callbacks:
        response = console.post(
            "/admin/billing/reraterun/add/",
            {"period_from": "2024-01-01", "period_to": "2024-01-31", "account": account.pk, "tariff": ""},
        )
    assert response.status_code == 302
    with in_schema("demo"):
        run = RerateRun.objects.get(account=account)
    queued = console.get(response["Location"]).content.decode()
    assert 'id="rerate-in-progress"' in queued and 'http-equiv="refresh"' in queued and "Spain mobile" not in queued
    # When the worker has run it
    rerate_tasks_run(callbacks)
    page = console.get(response["Location"])
    # Then its page shows the difference per destination and a confirm button, and nothing is charged yet
    content = page.content.decode()
    assert page.status_code == 200 and "Spain mobile" in content and "0.020000" in content
    assert 'id="confirm-rerate"' in content
    with in_schema("demo"):
        assert not LedgerEntry.objects.filter(account=account).exists()
    # When confirmed (and the worker has run the confirmation), then the adjustment is posted and the page says so
    with django_capture_on_commit_callbacks() as callbacks:
        response = console.post(f"/admin/billing/reraterun/{run.pk}/confirm/")
    assert response.status_code == 302
    rerate_tasks_run(callbacks)
    with in_schema("demo"):
        run.refresh_from_db()
        assert run.status == RerateStatus.CONFIRMED
        assert list(LedgerEntry.objects.filter(account=account).values_list("amount", flat=True)) == [
            Decimal("-0.020000")
        ]
    page = console.get(f"/admin/billing/reraterun/{run.pk}/change/").content.decode()
    assert 'id="rerate-confirmed"' in page and 'id="confirm-rerate"' not in page


def test_console_what_if_form_names_the_bad_field(console, whatif_books, in_schema):
    # Given a candidate tariff in another currency; when the what-if is asked for the EUR account
    with in_schema("demo"):
        dollars = Tariff.objects.create(name="Dollars", currency="USD")
    response = console.post(
        "/admin/billing/reraterun/add/",
        {
            "period_from": "2024-01-01",
            "period_to": "2024-01-31",
            "account": whatif_books["account"].pk,
            "tariff": dollars.pk,
        },
    )
    # Then the form comes back with the error on the tariff and no run is made
    assert response.status_code == 200
    assert "is in USD" in response.context["form"].errors["tariff"][0]
    with in_schema("demo"):
        assert not RerateRun.objects.exists()


def test_console_statement_page_and_csv_download(console, statement_books):
    acme = statement_books["acme"]
    query = f"account={acme.pk}&period_from=2024-01-01&period_to=2024-01-31"
    # Given the statement page of the account for January (days in Madrid, so it starts at 23:00 UTC on 31 Dec)
    page = console.get(f"/admin/billing/reraterun/statement/?{query}")
    content = page.content.decode()
    assert page.status_code == 200 and 'id="statement-usage"' in content and "Spain mobile" in content
    assert "20.93" in content and "2024-01-01 00:00" in content  # the period reads in the operator's zone
    # When the CSV is downloaded, then it is the same statement
    download = console.get(f"/admin/billing/reraterun/statement/?{query}&format=csv")
    assert download["Content-Type"].startswith("text/csv")
    assert "attachment" in download["Content-Disposition"]
    assert "usage,voice,Spain,,3,3.00,0,0.03,EUR" in download.content.decode()
    # An account link without a period opens on last month
    assert console.get(f"/admin/billing/reraterun/statement/?account={acme.pk}").status_code == 200


def test_console_revenue_page(console, traffic):
    page = console.get("/admin/billing/reraterun/revenue/?period_from=2024-03-09&period_to=2024-03-10&group=day")
    content = page.content.decode()
    assert page.status_code == 200
    assert "2024-03-10" in content and "0.50" in content and 'id="unrated-reasons"' in content
    assert console.get("/admin/billing/reraterun/").status_code == 200


def test_console_report_pages_need_a_staff_login(demo_client, world):
    response = demo_client.get("/admin/billing/reraterun/revenue/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
