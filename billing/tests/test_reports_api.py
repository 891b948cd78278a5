"""The rerate, statement and report endpoints: happy paths, named validation errors, customer and operator isolation.

Books (operator demo, EUR, Europe/Madrid): account api-acme of customer Acme (its key: boss@acme.example) and
account api-globex of another customer. One Spain mobile call of Acme on 10 January 2024, priced 0.23 when the rate
was wrongly 0.18/min; the deck now says 0.20/min + 0.05 connect fee: 60 billed seconds → 0.25, a +0.02 difference.
"""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from billing.choices import EntryKind, TariffKind
from billing.models import Cdr, LedgerEntry, Rate, RerateRun, Tariff
from billing.services import account_create, ledger_post
from billing.tests.test_rerate import rerate_tasks_run
from core.choices import CustomerKind
from core.models import Customer
from core.services import api_key_create, customer_create

pytestmark = pytest.mark.django_db

JANUARY = {"from": "2024-01-01", "to": "2024-02-01"}


def _key(email: str) -> dict:
    user = get_user_model().objects.get(username=email)
    return {"HTTP_AUTHORIZATION": f"Api-Key {api_key_create(user=user, name='test').raw_key}"}


@pytest.fixture
def books(world, in_schema):
    with in_schema("demo"):
        tariff = Tariff.objects.create(name="API retail", currency="EUR")
        Rate.objects.create(
            tariff=tariff, prefix="346", destination="Spain mobile", rate=Decimal("0.20"), connect_fee=Decimal("0.05")
        )
        acme_customer = Customer.objects.get(subdomain="acme")
        globex_customer = customer_create(name="Globex", kind=CustomerKind.PBX_CLIENT)
        acme = account_create(name="Acme", code="api-acme", currency="EUR", tariff=tariff, customer=acme_customer)
        globex = account_create(
            name="Globex", code="api-globex", currency="EUR", tariff=tariff, customer=globex_customer
        )
        call = Cdr.objects.create(
            source="test",
            source_id="api1",
            account=acme,
            account_code=acme.code,
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
        entry, _ = ledger_post(
            account=acme, kind=EntryKind.CHARGE, amount=Decimal("0.23"), idempotency_key="cdr:test:api1", cdr=call
        )
        LedgerEntry.objects.filter(pk=entry.pk).update(created_at=datetime(2024, 1, 10, 12, 1, tzinfo=UTC))
        yield {
            "tariff": tariff,
            "acme": acme,
            "globex": globex,
            "call": call,
            "staff": _key("admin@demo.localhost"),
            "boss": _key("boss@acme.example"),
        }


@pytest.fixture
def rival_key(world, in_schema):
    with in_schema("rival"):
        return _key("admin@rival.localhost")


def _preview(client, books, **body):
    return client.post("/api/v1/billing/rerate", {**JANUARY, **body}, content_type="application/json", **books["staff"])


# --- rerate -----------------------------------------------------------------------------------------


def _ran(client, books, run_id: int) -> dict:
    response = client.get(f"/api/v1/billing/rerate/{run_id}", **books["staff"])
    assert response.status_code == 200
    return response.json()


def test_rerate_preview_is_queued_polled_and_confirmed_in_the_background(
    demo_client, books, in_schema, django_capture_on_commit_callbacks
):
    # Given a what-if of January for the account, queued for a worker
    with django_capture_on_commit_callbacks() as callbacks:
        response = _preview(demo_client, books, account=books["acme"].pk)
    assert response.status_code == 202, response.content
    queued = response.json()
    assert (queued["status"], queued["summary"], queued["progress_done"]) == ("queued", None, 0)
    # When the worker runs it, then polling shows it ready with the differences
    assert rerate_tasks_run(callbacks) == ["ready"]
    run = _ran(demo_client, books, queued["id"])
    assert (run["status"], run["progress_done"], run["progress_total"]) == ("ready", 1, 1)
    [line] = run["summary"]["accounts"]
    assert (line["account_code"], line["old_total"], line["new_total"], line["difference"]) == (
        "api-acme",
        "0.230000",
        "0.250000",
        "0.020000",
    )
    assert line["destinations"][0]["destination"] == "Spain mobile"
    assert run["summary"]["confirmed"] is None
    listed = demo_client.get("/api/v1/billing/rerate?status=ready", **books["staff"]).json()
    assert [r["id"] for r in listed["results"]] == [run["id"]]
    # When it is confirmed (twice before the worker gets to it): queued once
    with django_capture_on_commit_callbacks() as callbacks:
        confirming = demo_client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **books["staff"])
        twice = demo_client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **books["staff"])
    assert (confirming.status_code, confirming.json()["status"]) == (202, "confirming")
    assert (twice.status_code, twice.json()["status"]) == (202, "confirming")
    assert rerate_tasks_run(callbacks) == ["confirmed"]
    # Then one adjustment of -0.02 is posted, once, and confirming again answers 200 with the same run
    confirmed = _ran(demo_client, books, run["id"])
    assert confirmed["status"] == "confirmed"
    assert confirmed["summary"]["confirmed"] == {"entries": 1, "adjusted": "-0.020000", "cdrs": 1}
    again = demo_client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **books["staff"])
    assert again.status_code == 200 and again.json()["confirmed_at"] == confirmed["confirmed_at"]
    with in_schema("demo"):
        adjustments = LedgerEntry.objects.filter(account=books["acme"], kind=EntryKind.ADJUSTMENT)
        assert list(adjustments.values_list("amount", flat=True)) == [Decimal("-0.020000")]


def test_a_run_not_ready_yet_cannot_be_confirmed(demo_client, books):
    run = _preview(demo_client, books, account=books["acme"].pk).json()
    response = demo_client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **books["staff"])
    assert response.status_code == 409 and response.json()["error"]["code"] == "rerate_not_ready"


def test_rerate_under_a_candidate_tariff(demo_client, books, in_schema, django_capture_on_commit_callbacks):
    # Given a candidate at 0.06/min per second: 30 s → 0.03
    with in_schema("demo"):
        promo = Tariff.objects.create(name="API promo", currency="EUR")
        Rate.objects.create(
            tariff=promo, prefix="34", destination="Spain", rate=Decimal("0.06"), first_increment=1, next_increment=1
        )
    with django_capture_on_commit_callbacks() as callbacks:
        response = _preview(demo_client, books, tariff=promo.pk)
    assert response.status_code == 202
    rerate_tasks_run(callbacks)
    run = _ran(demo_client, books, response.json()["id"])
    line = next(a for a in run["summary"]["accounts"] if a["account_code"] == "api-acme")
    assert (line["tariff_name"], line["new_total"], line["difference"]) == ("API promo", "0.030000", "-0.200000")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"from": None}, "from"),
        ({"from": "10/01/2024"}, "from"),
        ({"to": "2023-12-01"}, "to"),
        ({"account": 999999}, "account"),
        ({"tariff": 999999}, "tariff"),
        ({"tariff": "cost"}, "tariff"),
    ],
)
def test_rerate_validation_errors_name_the_field(demo_client, books, in_schema, body, field):
    # Given a bad request body
    payload = {**JANUARY, "account": books["acme"].pk, **body}
    if payload["from"] is None:
        del payload["from"]
    if body.get("tariff") == "cost":
        with in_schema("demo"):
            payload["tariff"] = Tariff.objects.create(name="API carrier", currency="EUR", kind=TariffKind.COST).pk
    # When posted, then 400 in the one error shape, naming the field
    response = demo_client.post("/api/v1/billing/rerate", payload, content_type="application/json", **books["staff"])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and list(error["fields"]) == [field]


def test_confirming_a_stale_rerate_fails_the_run_and_is_then_a_conflict(
    demo_client, books, in_schema, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        run = _preview(demo_client, books, account=books["acme"].pk).json()
    rerate_tasks_run(callbacks)
    with in_schema("demo"):
        Rate.objects.filter(tariff=books["tariff"]).update(rate=Decimal("0.30"))
        books["tariff"].save()
    with django_capture_on_commit_callbacks() as callbacks:
        response = demo_client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **books["staff"])
    assert response.status_code == 202
    assert rerate_tasks_run(callbacks) == ["failed"]
    failed = _ran(demo_client, books, run["id"])
    assert (failed["status"], failed["error_code"]) == ("failed", "rerate_stale")
    response = demo_client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **books["staff"])
    assert response.status_code == 409 and response.json()["error"]["code"] == "rerate_stale"
    with in_schema("demo"):
        assert not LedgerEntry.objects.filter(kind=EntryKind.ADJUSTMENT, account=books["acme"]).exists()


def test_rerate_is_for_staff_only(acme_client, demo_client, books):
    run = _preview(demo_client, books).json()
    # a customer's key may neither preview, read nor confirm
    assert (
        acme_client.post(
            "/api/v1/billing/rerate", JANUARY, content_type="application/json", **books["boss"]
        ).status_code
        == 403
    )
    assert acme_client.get(f"/api/v1/billing/rerate/{run['id']}", **books["boss"]).status_code == 403
    assert acme_client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **books["boss"]).status_code == 403
    assert demo_client.get("/api/v1/billing/rerate/999999", **books["staff"]).status_code == 404


# --- statements -------------------------------------------------------------------------------------


def test_statement_json_for_staff(demo_client, books):
    # Given January's statement (Madrid days: from 31 Dec 23:00 UTC)
    response = demo_client.get(f"/api/v1/billing/statements/{books['acme'].pk}", JANUARY, **books["staff"])
    assert response.status_code == 200
    body = response.json()
    # Then the call and its charge are on it, each line rounded to 2 places
    assert body["account"]["code"] == "api-acme" and body["decimal_places"] == 2
    assert body["usage"] == [
        {
            "service": "voice",
            "destination": "Spain mobile",
            "count": 1,
            "billed_seconds": 60,
            "billed_minutes": "1.00",
            "units": 0,
            "amount": "0.23",
        }
    ]
    assert [(e["kind"], e["amount"]) for e in body["entries"]] == [("charge", "-0.23")]
    assert (body["opening_balance"], body["closing_balance"]) == ("0.00", "-0.23")
    assert body["period"]["start"] == "2023-12-31T23:00:00Z"


def test_statement_csv(demo_client, books):
    response = demo_client.get(
        f"/api/v1/billing/statements/{books['acme'].pk}", {**JANUARY, "format": "csv"}, **books["staff"]
    )
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert 'filename="statement-api-acme-' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(r["section"], r["item"], r["amount"]) for r in rows if r["section"] in {"usage", "entry"}] == [
        ("usage", "voice", "0.23"),
        ("entry", "charge", "-0.23"),
    ]
    by_accept = demo_client.get(
        f"/api/v1/billing/statements/{books['acme'].pk}", JANUARY, HTTP_ACCEPT="text/csv", **books["staff"]
    )
    assert by_accept["Content-Type"].startswith("text/csv")


def test_a_customer_reads_its_own_statement_only(acme_client, books):
    own = acme_client.get(f"/api/v1/billing/statements/{books['acme'].pk}", JANUARY, **books["boss"])
    assert own.status_code == 200 and own.json()["usage_total"]["amount"] == "0.23"
    # another customer's account is not found, in JSON and in CSV
    other = acme_client.get(f"/api/v1/billing/statements/{books['globex'].pk}", JANUARY, **books["boss"])
    assert other.status_code == 404 and set(other.json()["error"]) == {"code", "message", "fields"}
    other_csv = acme_client.get(
        f"/api/v1/billing/statements/{books['globex'].pk}", {**JANUARY, "format": "csv"}, **books["boss"]
    )
    assert other_csv.status_code == 404 and other_csv["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "query, field",
    [({"from": "yesterday"}, "from"), ({"to": "2023-01-01"}, "to"), ({"format": "xml"}, "format")],
)
def test_statement_validation_errors_name_the_field(demo_client, books, query, field):
    response = demo_client.get(f"/api/v1/billing/statements/{books['acme'].pk}", {**JANUARY, **query}, **books["staff"])
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]


def test_statement_defaults_to_last_month(demo_client, books):
    body = demo_client.get(f"/api/v1/billing/statements/{books['acme'].pk}", **books["staff"]).json()
    madrid = ZoneInfo("Europe/Madrid")
    start = datetime.fromisoformat(body["period"]["start"]).astimezone(madrid)
    end = datetime.fromisoformat(body["period"]["end"]).astimezone(madrid)
    now = datetime.now(madrid)
    # from midnight on the 1st of last month to midnight on the 1st of this month, in the operator's zone
    assert (end.year, end.month, end.day, end.hour, end.minute) == (now.year, now.month, 1, 0, 0)
    assert (start.day, start.hour, start.minute) == (1, 0, 0) and start.month == (now.month - 2) % 12 + 1


# --- reports ----------------------------------------------------------------------------------------


def test_revenue_report_by_day_and_month(demo_client, books, in_schema):
    with in_schema("demo"):
        Cdr.objects.filter(pk=books["call"].pk).update(cost=Decimal("0.08"))
    by_day = demo_client.get("/api/v1/billing/reports/revenue", {**JANUARY, "group": "day"}, **books["staff"])
    assert by_day.status_code == 200
    body = by_day.json()
    assert body["time_zone"] == "Europe/Madrid"
    assert body["rows"] == [
        {
            "period": "2024-01-10",
            "currency": "EUR",
            "cdrs": 1,
            "billed_minutes": "1.00",
            "revenue": "0.23",
            "cost": "0.08",
            "margin": "0.15",
            "uncosted_cdrs": 0,
        }
    ]
    by_month = demo_client.get("/api/v1/billing/reports/revenue", {**JANUARY, "group": "month"}, **books["staff"])
    assert [r["period"] for r in by_month.json()["rows"]] == ["2024-01"]


def test_revenue_report_validation_names_the_field(demo_client, books):
    response = demo_client.get("/api/v1/billing/reports/revenue", {**JANUARY, "group": "week"}, **books["staff"])
    assert response.status_code == 400 and list(response.json()["error"]["fields"]) == ["group"]


def test_unrated_report(demo_client, books, in_schema):
    with in_schema("demo"):
        Cdr.objects.create(
            source="test",
            source_id="api-unrated",
            account_code="nobody",
            callee="+34600000000",
            start=datetime(2024, 1, 3, tzinfo=UTC),
            unrated_reason="unknown account 'nobody'",
        )
    body = demo_client.get("/api/v1/billing/reports/unrated", **books["staff"]).json()
    assert {"reason": "unknown account 'nobody'", "count": 1} in [
        {"reason": r["reason"], "count": r["count"]} for r in body["reasons"]
    ]
    assert body["count"] >= 1


@pytest.mark.parametrize("path", ["reports/revenue", "reports/unrated"])
def test_reports_are_for_staff_only(acme_client, books, path):
    assert acme_client.get(f"/api/v1/billing/{path}", **books["boss"]).status_code == 403


# --- another operator's key -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("post", "rerate"),
        ("get", "rerate/{run}"),
        ("post", "rerate/{run}/confirm"),
        ("get", "statements/{account}"),
        ("get", "reports/revenue"),
        ("get", "reports/unrated"),
    ],
)
def test_another_operators_key_is_refused_everywhere(demo_client, books, rival_key, method, path):
    run = _preview(demo_client, books).json()["id"]
    url = "/api/v1/billing/" + path.format(run=run, account=books["acme"].pk)
    response = getattr(demo_client, method)(url, **rival_key)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_a_run_whose_task_never_reached_a_worker_is_sent_again_when_polled(
    demo_client, books, in_schema, django_capture_on_commit_callbacks
):
    # Given a what-if whose task was lost (the broker was down at commit)
    with django_capture_on_commit_callbacks():
        run = _preview(demo_client, books, account=books["acme"].pk).json()
    # When it is polled at once, nothing is sent again: a worker may just not have got to it yet
    with django_capture_on_commit_callbacks() as callbacks:
        assert _ran(demo_client, books, run["id"])["status"] == "queued"
    assert rerate_tasks_run(callbacks) == []
    # When it is polled after a minute still queued, its task is sent again, once per minute
    with in_schema("demo"):
        RerateRun.objects.filter(pk=run["id"]).update(updated_at=timezone.now() - timedelta(minutes=2))
    with django_capture_on_commit_callbacks() as callbacks:
        _ran(demo_client, books, run["id"])
        _ran(demo_client, books, run["id"])
    assert rerate_tasks_run(callbacks) == ["ready"]
    # The same for a confirmation whose task was lost
    with django_capture_on_commit_callbacks():
        demo_client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **books["staff"])
    with in_schema("demo"):
        RerateRun.objects.filter(pk=run["id"]).update(updated_at=timezone.now() - timedelta(minutes=2))
    with django_capture_on_commit_callbacks() as callbacks:
        assert _ran(demo_client, books, run["id"])["status"] == "confirming"
    assert rerate_tasks_run(callbacks) == ["confirmed"]
    assert _ran(demo_client, books, run["id"])["summary"]["confirmed"]["entries"] == 1


def test_a_customer_cannot_list_rerate_runs(acme_client, demo_client, books):
    _preview(demo_client, books)
    assert acme_client.get("/api/v1/billing/rerate", **books["boss"]).status_code == 403
