"""The billing REST API (/api/v1/billing/) on an operator's domain: each endpoint's happy path and its validation.

Cross-customer and cross-operator isolation of every endpoint is in test_api_isolation.py.
"""

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Sum
from django.utils import timezone

from billing.csvformats import ParsedCdr
from billing.models import Account, Cdr, ClassRate, LedgerEntry, Rate, Reservation, Tariff, TariffClass, TimeBand
from billing.services import account_create, account_topup, cdrs_ingest, rates_import, reservation_hold
from core.models import ApiKey
from core.services import api_key_create, customer_create

pytestmark = pytest.mark.django_db

BASE = "/api/v1/billing"
DECK = """prefix,destination,rate,connect_fee,increment,min_charge,effective_from
34,Spain,0.10,,1/1,,
346,Spain mobile,0.20,0.05,60/60,,
44,United Kingdom,0.30,,30/6,0.50,
"""


@dataclass
class Keys:
    staff: str
    acme: str
    beta: str
    rival: str
    watcher: str  # a login of the operator that is neither staff nor a customer's


@dataclass
class Books:
    """A tariff and two customers' accounts with entries, reservations and CDRs, in schema demo."""

    tariff: Tariff
    acme: Account
    beta: Account
    acme_cdr: Cdr
    beta_cdr: Cdr
    unrated_cdr: Cdr
    acme_entry: LedgerEntry
    beta_entry: LedgerEntry
    acme_reservation: Reservation
    beta_reservation: Reservation


@pytest.fixture
def keys(world, in_schema) -> Keys:
    User = get_user_model()
    with in_schema("demo"):
        customer_create(name="Beta Ltd", kind="pbx_client", admin_email="boss@beta.example")
        issued = {
            name: api_key_create(user=User.objects.get(username=email), name="test").raw_key
            for name, email in [
                ("staff", "admin@demo.localhost"),
                ("acme", "boss@acme.example"),
                ("beta", "boss@beta.example"),
                ("watcher", "watcher@demo.localhost"),
            ]
        }
    with in_schema("rival"):
        issued["rival"] = api_key_create(user=User.objects.get(username="admin@rival.localhost"), name="t").raw_key
    return Keys(**issued)


def _call(source_id: str, account: str, callee: str = "34911234567", billsec: int = 180) -> ParsedCdr:
    start = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    return ParsedCdr(
        line=1,
        source_id=source_id,
        caller="100",
        callee=callee,
        start=start,
        duration=billsec,
        billsec=billsec,
        account=account,
    )


@pytest.fixture
def books(keys, in_schema) -> Books:
    from core.models import Customer

    with in_schema("demo"):
        tariff = Tariff.objects.create(name="B1 Retail", currency="EUR")
        rates_import(tariff=tariff, source=DECK)
        acme = account_create(
            name="Acme main",
            code="b1-acme",
            currency="EUR",
            tariff=tariff,
            customer=Customer.objects.get(subdomain="acme"),
            credit_limit=Decimal(5),
        )
        beta = account_create(
            name="Beta main",
            code="b1-beta",
            currency="EUR",
            tariff=tariff,
            customer=Customer.objects.get(name="Beta Ltd"),
        )
        acme_entry, _ = account_topup(account=acme, amount=Decimal(50), idempotency_key="t:acme:1")
        beta_entry, _ = account_topup(account=beta, amount=Decimal(30), idempotency_key="t:beta:1")
        acme_reservation = reservation_hold(account=acme, amount=Decimal(2), idempotency_key="t:acme:r")
        beta_reservation = reservation_hold(account=beta, amount=Decimal(2), idempotency_key="t:beta:r")
        cdrs_ingest(
            source="t",
            records=[_call("a1", "b1-acme"), _call("b1", "b1-beta"), _call("u1", "b1-nobody")],
            tz="Europe/Madrid",
        )
        return Books(
            tariff=tariff,
            acme=acme,
            beta=beta,
            acme_cdr=Cdr.objects.get(source="t", source_id="a1"),
            beta_cdr=Cdr.objects.get(source="t", source_id="b1"),
            unrated_cdr=Cdr.objects.get(source="t", source_id="u1"),
            acme_entry=acme_entry,
            beta_entry=beta_entry,
            acme_reservation=acme_reservation,
            beta_reservation=beta_reservation,
        )


class Api:
    """A test client on demo.localhost that sends one API key."""

    def __init__(self, client, key: str):
        self.client, self.auth = client, {"HTTP_AUTHORIZATION": f"Api-Key {key}"}

    def get(self, path: str, **params):
        return self.client.get(BASE + path, params, **self.auth)

    def post(self, path: str, data=None, **extra):
        extra.setdefault("content_type", "application/json")
        if extra["content_type"] is None:
            del extra["content_type"]  # multipart, as a browser form sends files
        return self.client.post(BASE + path, data, **self.auth, **extra)

    def put(self, path: str, data):
        return self.client.put(BASE + path, data, content_type="application/json", **self.auth)

    def patch(self, path: str, data):
        return self.client.patch(BASE + path, data, content_type="application/json", **self.auth)

    def delete(self, path: str):
        return self.client.delete(BASE + path, **self.auth)


@pytest.fixture
def staff(demo_client, keys) -> Api:
    return Api(demo_client, keys.staff)


@pytest.fixture
def acme(demo_client, keys) -> Api:
    return Api(demo_client, keys.acme)


def fields_of(response) -> dict:
    return response.json()["error"]["fields"]


# --- Tariffs ---


def test_staff_create_a_tariff_and_read_it_back(staff):
    response = staff.post("/tariffs", {"name": "B1 Wholesale", "kind": "price", "currency": "USD"})
    assert response.status_code == 201, response.content
    tariff = staff.get(f"/tariffs/{response.json()['id']}").json()
    assert tariff["name"] == "B1 Wholesale" and tariff["currency"] == "USD" and tariff["rates_count"] == 0


def test_tariff_with_a_bad_currency_names_the_field(staff):
    response = staff.post("/tariffs", {"name": "B1 Bad", "currency": "euro"})
    assert response.status_code == 400
    assert list(fields_of(response)) == ["currency"]


def test_only_a_cost_tariff_can_be_the_default_cost(staff):
    response = staff.post("/tariffs", {"name": "B1 P", "currency": "EUR", "kind": "price", "is_default_cost": True})
    assert response.status_code == 400 and "is_default_cost" in fields_of(response)


def test_a_tariff_accounts_use_cannot_be_deleted(staff, books):
    response = staff.delete(f"/tariffs/{books.tariff.pk}")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_customers_see_nothing_of_tariffs(acme, books):
    assert acme.get("/tariffs").status_code == 403
    assert acme.get(f"/tariffs/{books.tariff.pk}/rates").status_code == 403


# --- Rates: list, import, export ---


def test_rates_list_filters_by_prefix_and_service(staff, books):
    response = staff.get(f"/tariffs/{books.tariff.pk}/rates", prefix="34")
    assert [r["prefix"] for r in response.json()["results"]] == ["34", "346"]
    assert staff.get(f"/tariffs/{books.tariff.pk}/rates", service="sms").json()["count"] == 0


def test_rates_effective_at_shows_the_version_in_force(staff, books, in_schema):
    with in_schema("demo"):
        rates_import(tariff=books.tariff, source="prefix,destination,rate,effective_from\n34,Spain,0.05,2030-01-01\n")
    url = f"/tariffs/{books.tariff.pk}/rates"
    now = staff.get(url, prefix="34", effective_at="2026-06-01T00:00:00Z").json()["results"]
    later = staff.get(url, prefix="34", effective_at="2030-06-01T00:00:00Z").json()["results"]
    assert [(r["prefix"], r["rate"]) for r in now] == [("34", "0.100000"), ("346", "0.200000")]
    assert [(r["prefix"], r["rate"]) for r in later] == [("34", "0.050000"), ("346", "0.200000")]
    assert staff.get(url, effective_at="yesterday").status_code == 400


def test_rate_deck_import_by_multipart_upload(staff, books, in_schema):
    deck = io.BytesIO(b"prefix,destination,rate,increment\n33,France,0.07,60/60\n331,Paris,0.06,1/1\n")
    deck.name = "france.csv"
    response = staff.post(f"/tariffs/{books.tariff.pk}/rates/import", {"file": deck}, content_type=None)
    assert response.status_code == 200, response.content
    assert response.json() == {"imported": 2, "valid_rates": 2, "dry_run": False, "errors": []}
    with in_schema("demo"):
        assert Rate.objects.get(tariff=books.tariff, prefix="331").first_increment == 1


def test_rate_deck_import_by_text_csv_body(staff, books, in_schema):
    response = staff.post(
        f"/tariffs/{books.tariff.pk}/rates/import", "prefix,destination,rate\n39,Italy,0.04\n", content_type="text/csv"
    )
    assert response.status_code == 200 and response.json()["imported"] == 1
    with in_schema("demo"):
        assert Rate.objects.filter(tariff=books.tariff, prefix="39").exists()


def test_rate_deck_dry_run_writes_nothing(staff, books, in_schema):
    url = f"/tariffs/{books.tariff.pk}/rates/import?dry_run=1"
    response = staff.post(url, "prefix,destination,rate\n39,Italy,0.04\n", content_type="text/csv")
    assert response.json() == {"imported": 0, "valid_rates": 1, "dry_run": True, "errors": []}
    with in_schema("demo"):
        assert not Rate.objects.filter(tariff=books.tariff, prefix="39").exists()


def test_a_deck_with_bad_lines_is_refused_whole_with_every_bad_line(staff, books, in_schema):
    deck = (
        "prefix,destination,rate,increment\n39,Italy,0.04,60/60\n3x,Bad,0.1,60/60\n40,Romania,-1,60/60\n41,Ok,0.1,6-6\n"
    )
    response = staff.post(f"/tariffs/{books.tariff.pk}/rates/import", deck, content_type="text/csv")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_rate_deck"
    assert [(e["line"], e["column"]) for e in error["lines"]] == [(3, "prefix"), (4, "rate"), (5, "increment")]
    assert all(e["reason"] for e in error["lines"]) and "file" in error["fields"]
    with in_schema("demo"):
        assert not Rate.objects.filter(tariff=books.tariff, prefix__in=["39", "41"]).exists()


def test_rate_deck_import_without_a_file_names_the_field(staff, books):
    response = staff.post(f"/tariffs/{books.tariff.pk}/rates/import", {})
    assert response.status_code == 400 and "file" in fields_of(response)


def test_rate_deck_exports_as_csv_that_imports_back(staff, books):
    response = staff.get(f"/tariffs/{books.tariff.pk}/rates/export")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(r["prefix"], r["rate"], r["increment"], r["connect_fee"]) for r in rows] == [
        ("34", "0.100000", "1/1", "0.000000"),
        ("346", "0.200000", "60/60", "0.050000"),
        ("44", "0.300000", "30/6", "0.000000"),
    ]
    dry = staff.post(
        f"/tariffs/{books.tariff.pk}/rates/import?dry_run=1", response.content.decode(), content_type="text/csv"
    )
    assert dry.json()["valid_rates"] == 3 and dry.json()["errors"] == []


def test_rates_of_a_missing_tariff_are_404(staff, books):
    assert staff.get("/tariffs/999999/rates").status_code == 404


# --- Time bands ---


def test_a_time_band_prices_calls_at_its_hours(staff, books):
    band = staff.post(
        "/time-bands",
        {
            "tariff": books.tariff.pk,
            "name": "night",
            "weekdays": [0, 1, 2, 3, 4, 5, 6],
            "start": "22:00",
            "end": "07:00",
        },
    )
    assert band.status_code == 201, band.content
    staff.post(
        f"/tariffs/{books.tariff.pk}/rates/import",
        "prefix,destination,rate,time_band,increment\n34,Spain night,0.01,night,1/1\n",
        content_type="text/csv",
    )
    # 23:00 in Madrid (the operator's zone) is in the night band: 60 s at 0.01/min.
    quote = staff.post(
        "/quote", {"tariff": books.tariff.pk, "to": "34911234567", "duration": 60, "at": "2026-03-02T23:00:00"}
    )
    assert quote.json()["total"] == "0.010000"
    day = staff.post(
        "/quote", {"tariff": books.tariff.pk, "to": "34911234567", "duration": 60, "at": "2026-03-02T12:00:00"}
    )
    assert day.json()["total"] == "0.100000"


def test_a_time_band_with_a_bad_weekday_names_the_field(staff, books):
    response = staff.post(
        "/time-bands", {"tariff": books.tariff.pk, "name": "x", "weekdays": [7], "start": "08:00", "end": "18:00"}
    )
    assert response.status_code == 400 and list(fields_of(response)) == ["weekdays"]


# --- Tariff classes and the grid ---


@pytest.fixture
def grid_classes(books, in_schema):
    with in_schema("demo"):
        make = TariffClass.objects.create
        fixed = make(
            tariff=books.tariff, direction="origination", name="Fixed", prefixes=["349"], leg_rate=Decimal("0.03")
        )
        mobile = make(
            tariff=books.tariff, direction="origination", name="Mobile", prefixes=["346"], leg_rate=Decimal("0.06")
        )
        own = make(tariff=books.tariff, direction="termination", name="Own network", prefixes=["34622"], position=0)
        other = make(tariff=books.tariff, direction="termination", name="Other networks", prefixes=["34"], position=1)
        return {"fixed": fixed, "mobile": mobile, "own": own, "other": other}


def test_a_tariff_class_with_a_bad_prefix_names_the_field(staff, books):
    response = staff.post(
        "/tariff-classes", {"tariff": books.tariff.pk, "direction": "origination", "name": "X", "prefixes": ["34a"]}
    )
    assert response.status_code == 400 and list(fields_of(response)) == ["prefixes"]


def test_tariff_classes_are_created_and_listed_per_tariff(staff, books):
    created = staff.post(
        "/tariff-classes",
        {"tariff": books.tariff.pk, "direction": "termination", "name": "Mobile", "prefixes": ["+346", "347"]},
    )
    assert created.status_code == 201 and created.json()["prefixes"] == ["346", "347"]
    listed = staff.get("/tariff-classes", tariff=books.tariff.pk, direction="termination").json()["results"]
    assert [c["name"] for c in listed] == ["Mobile"]


def test_grid_is_saved_whole_and_read_back_as_rows_and_columns(staff, books, grid_classes, in_schema):
    c = grid_classes
    cells = [
        {"origination": c["fixed"].pk, "termination": c["own"].pk, "rate": "0.04"},
        {"origination": c["fixed"].pk, "termination": c["other"].pk, "rate": "0.055"},
        {"origination": c["mobile"].pk, "termination": c["other"].pk, "rate": "0.085"},
    ]
    response = staff.put(f"/tariffs/{books.tariff.pk}/grid", {"cells": cells})
    assert response.status_code == 200, response.content
    grid = staff.get(f"/tariffs/{books.tariff.pk}/grid").json()
    assert response.json() == grid
    assert [t["name"] for t in grid["termination"]] == ["Own network", "Other networks"]
    assert [(r["origination"], [c["rate"] for c in r["cells"]]) for r in grid["rows"]] == [
        ("Fixed", ["0.040000", "0.055000"]),
        ("Mobile", [None, "0.085000"]),
    ]


def test_a_grid_with_bad_cells_saves_nothing_and_names_each_cell(staff, books, grid_classes, in_schema):
    c = grid_classes
    with in_schema("demo"):
        ClassRate.objects.create(
            tariff=books.tariff, origination=c["fixed"], termination=c["own"], rate=Decimal("0.04")
        )
    cells = [
        {"origination": c["fixed"].pk, "termination": c["own"].pk, "rate": "0.05"},  # fine on its own
        {"origination": c["fixed"].pk, "termination": c["other"].pk, "rate": "-0.01"},  # negative
        {"origination": c["mobile"].pk, "termination": c["own"].pk, "rate": "0.05"},  # below Mobile's leg 0.06
        {"origination": c["mobile"].pk, "termination": c["other"].pk, "rate": "abc"},  # not a number
    ]
    response = staff.put(f"/tariffs/{books.tariff.pk}/grid", {"cells": cells})
    assert response.status_code == 400
    bad = fields_of(response)["cells"]
    assert set(bad) == {
        f"{c['fixed'].pk}:{c['other'].pk}",
        f"{c['mobile'].pk}:{c['own'].pk}",
        f"{c['mobile'].pk}:{c['other'].pk}",
    }
    assert "below the origination leg rate" in bad[f"{c['mobile'].pk}:{c['own'].pk}"][0]
    with in_schema("demo"):
        assert list(ClassRate.objects.filter(tariff=books.tariff).values_list("rate", flat=True)) == [Decimal("0.04")]


def test_grid_cells_of_another_tariffs_classes_are_refused(staff, books, grid_classes, in_schema):
    with in_schema("demo"):
        other = Tariff.objects.create(name="B1 Other", currency="EUR")
    response = staff.put(
        f"/tariffs/{other.pk}/grid",
        {"cells": [{"origination": grid_classes["fixed"].pk, "termination": grid_classes["own"].pk, "rate": "1"}]},
    )
    assert response.status_code == 400


def test_grid_average_without_traffic_is_null_for_last_month(staff, books, grid_classes):
    response = staff.get(f"/tariffs/{books.tariff.pk}/grid/average")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["average"] is None
    # The first day of last month, at midnight in the operator's zone (Madrid).
    start = datetime.fromisoformat(body["start"]).astimezone(ZoneInfo("Europe/Madrid"))
    assert (start.day, start.hour) == (1, 0) and start < timezone.now() - timedelta(days=27)
    assert datetime.fromisoformat(body["end"]).astimezone(ZoneInfo("Europe/Madrid")).day == 1


def test_freephone_records_are_posted_as_two_legs_and_weight_the_grid_average(staff, books, grid_classes, in_schema):
    c = grid_classes
    staff.put(
        f"/tariffs/{books.tariff.pk}/grid",
        {
            "cells": [
                {"origination": c["fixed"].pk, "termination": c["own"].pk, "rate": "0.04"},
                {"origination": c["fixed"].pk, "termination": c["other"].pk, "rate": "0.055"},
            ]
        },
    )
    staff.post("/freephone-numbers", {"number": "8800555777", "account": books.acme.pk})
    call = {"callee": "8800555777", "caller": "34911000000", "leg": "combined", "start": "2026-02-10T10:00:00Z"}
    records = [
        call | {"source_id": "fp-1", "forwarded_to": "34622000000", "billsec": 180, "duration": 180},  # 3 min own
        call | {"source_id": "fp-2", "forwarded_to": "34911999999", "billsec": 60, "duration": 60},  # 1 min other
    ]
    response = staff.post("/cdrs", {"records": records})
    assert response.status_code == 200, response.content
    # Two records, two legs each; owner acme pays 3 x 0.04 + 1 x 0.055 = 0.175 in all.
    assert response.json()["imported"] == 4 and response.json()["charged"] == {"EUR": "0.175000"}
    legs = staff.get("/cdrs", correlation_id="fp-1", ordering="source_id").json()["results"]
    assert [(cdr["leg"], cdr["account"]) for cdr in legs] == [("origination", books.acme.pk)] * 1 + [
        ("termination", books.acme.pk)
    ]
    average = staff.get(f"/tariffs/{books.tariff.pk}/grid/average", **{"from": "2026-02-01", "to": "2026-03-01"}).json()
    # (3 min x 0.04 + 1 min x 0.055) / 4 min = 0.04375 per minute from anywhere.
    assert (average["average"], average["minutes"]) == ("0.043750", "4.000000")


def test_grid_average_with_a_bad_period_names_the_field(staff, books):
    response = staff.get(f"/tariffs/{books.tariff.pk}/grid/average", **{"from": "2026-02-01", "to": "2026-01-01"})
    assert response.status_code == 400 and list(fields_of(response)) == ["to"]


# --- Trunks, packages, freephone numbers, CDR formats ---


def test_a_trunk_is_priced_by_a_cost_tariff(staff, books, in_schema):
    with in_schema("demo"):
        cost = Tariff.objects.create(name="B1 Carrier cost", kind="cost", currency="EUR")
    assert staff.post("/trunks", {"name": "b1carrier", "cost_tariff": cost.pk}).status_code == 201
    refused = staff.post("/trunks", {"name": "b1other", "cost_tariff": books.tariff.pk})
    assert refused.status_code == 400 and list(fields_of(refused)) == ["cost_tariff"]


def test_a_minute_package_with_tiers(staff):
    body = {
        "name": "B1 Spain mobile",
        "prefixes": ["346"],
        "included_minutes": "100",
        "tiers": [{"up_to_minutes": "1000", "rate": "0.03"}, {"up_to_minutes": None, "rate": "0.02"}],
    }
    response = staff.post("/packages", body)
    assert response.status_code == 201, response.content
    assert response.json()["tiers"] == [
        {"up_to_minutes": "1000.00", "rate": "0.030000"},
        {"up_to_minutes": None, "rate": "0.020000"},
    ]


def test_a_minute_package_with_decreasing_tiers_names_the_field(staff):
    body = {
        "name": "B1 Bad",
        "prefixes": ["346"],
        "tiers": [{"up_to_minutes": "1000", "rate": "0.03"}, {"up_to_minutes": "500", "rate": "0.02"}],
    }
    response = staff.post("/packages", body)
    assert response.status_code == 400 and list(fields_of(response)) == ["tiers"]


def test_a_freephone_number_belongs_to_an_account(staff, books):
    response = staff.post("/freephone-numbers", {"number": "+8800555001", "account": books.acme.pk})
    assert response.status_code == 201 and response.json()["number"] == "8800555001"
    refused = staff.post("/freephone-numbers", {"number": "8800-555", "account": books.acme.pk})
    assert refused.status_code == 400 and list(fields_of(refused)) == ["number"]


def test_cdr_formats_check_their_column_mapping(staff):
    good = staff.post(
        "/cdr-formats",
        {
            "name": "B1 platform",
            "kind": "freephone",
            "columns": {"source_id": 0, "callee": 1, "caller": 2, "start": 3, "duration": 4},
        },
    )
    assert good.status_code == 201, good.content
    bad = staff.post("/cdr-formats", {"name": "B1 bad", "kind": "freephone", "columns": {"callee": 1, "nonsense": 2}})
    assert bad.status_code == 400 and list(fields_of(bad)) == ["columns"]
    generic = staff.post(
        "/cdr-formats",
        {
            "name": "B1 generic",
            "kind": "generic",
            "has_header": True,
            "columns": {"caller": "from", "callee": "to", "start": "time", "billsec": "secs"},
        },
    )
    assert generic.status_code == 201, generic.content


# --- Quotes ---


def test_staff_quote_a_tariff_exactly(staff, books):
    response = staff.post("/quote", {"tariff": books.tariff.pk, "to": "+34911234567", "duration": 180})
    assert response.status_code == 200
    # 180 s at 0.10/min in 1/1 increments is exactly 0.3.
    assert response.json() | {} == {
        "tariff": books.tariff.pk,
        "matched_prefix": "34",
        "destination": "Spain",
        "service": "voice",
        "billed_seconds": 180,
        "units": 0,
        "rate": "0.100000",
        "increment": "1/1",
        "connect_fee": "0.000000",
        "total": "0.300000",
        "currency": "EUR",
    }


def test_a_customer_quotes_with_its_own_account(acme, books):
    response = acme.post("/quote", {"account": books.acme.pk, "to": "34611234567", "duration": 61})
    # 61 s in 60/60 bills 120 s: 2 x 0.20 + 0.05 connect fee = 0.45; the longer prefix 346 wins.
    assert response.status_code == 200 and response.json()["total"] == "0.450000"


def test_a_customer_cannot_quote_a_tariff_or_another_customers_account(acme, books):
    assert acme.post("/quote", {"tariff": books.tariff.pk, "to": "34911234567", "duration": 60}).status_code == 403
    assert acme.post("/quote", {"account": books.beta.pk, "to": "34911234567", "duration": 60}).status_code == 404


def test_a_quote_with_no_rate_is_404(staff, books):
    response = staff.post("/quote", {"tariff": books.tariff.pk, "to": "99912345", "duration": 60})
    assert response.status_code == 404 and response.json()["error"]["code"] == "no_rate"


def test_a_quote_without_a_number_names_the_field(staff, books):
    response = staff.post("/quote", {"tariff": books.tariff.pk, "duration": 60})
    assert response.status_code == 400 and list(fields_of(response)) == ["to"]


def test_a_quote_needs_a_tariff_or_an_account(staff):
    response = staff.post("/quote", {"to": "34911234567", "duration": 60})
    assert response.status_code == 400 and "tariff" in fields_of(response)


# --- Accounts and top-ups ---


def test_staff_open_an_account_in_the_operators_currency(staff, books, in_schema):
    response = staff.post("/accounts", {"name": "Walk-in", "code": "b1-walkin", "tariff": books.tariff.pk})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["currency"] == "EUR" and body["balance"] == "0.000000" and body["customer"] is None
    with in_schema("demo"):
        assert Account.objects.get(code="b1-walkin").tariff_id == books.tariff.pk


def test_an_account_with_a_duplicate_code_names_the_field(staff, books):
    response = staff.post("/accounts", {"name": "Again", "code": "b1-acme"})
    assert response.status_code == 400 and list(fields_of(response)) == ["code"]


def test_an_accounts_currency_cannot_change(staff, books):
    response = staff.patch(f"/accounts/{books.acme.pk}", {"currency": "USD"})
    assert response.status_code == 400 and "currency" in fields_of(response)


def test_account_shows_balance_reserved_and_available(staff, books):
    body = staff.get(f"/accounts/{books.acme.pk}").json()
    # 50 topped up, 0.3 charged for a 3-minute call, 2 held; credit limit 5: available 50 - 0.3 + 5 - 2.
    assert (body["balance"], body["reserved"], body["available"]) == ("49.700000", "2.000000", "52.700000")


def test_a_customer_lists_only_its_own_accounts_and_cannot_write(acme, books):
    listed = acme.get("/accounts").json()["results"]
    codes = {a["code"] for a in listed}
    assert "b1-acme" in codes and "b1-beta" not in codes
    assert {a["customer"] for a in listed} == {books.acme.customer_id}
    assert acme.post("/accounts", {"name": "Mine", "code": "b1-mine"}).status_code == 403
    assert acme.patch(f"/accounts/{books.acme.pk}", {"name": "Renamed"}).status_code == 403


def test_a_top_up_happens_once_per_idempotency_key(staff, books, in_schema):
    url = f"/accounts/{books.acme.pk}/topup"
    first = staff.post(url, {"amount": "10.5", "idempotency_key": "pay-123"})
    again = staff.post(url, {"amount": "10.5", "idempotency_key": "pay-123"})
    assert (first.status_code, first.json()["created"]) == (201, True)
    assert (again.status_code, again.json()["created"]) == (200, False)
    assert again.json()["entry"]["id"] == first.json()["entry"]["id"]
    assert again.json()["account"]["balance"] == "60.200000"
    with in_schema("demo"):
        total = LedgerEntry.objects.filter(account=books.acme).aggregate(s=Sum("amount"))["s"]
        assert Account.objects.get(pk=books.acme.pk).balance == total == Decimal("60.2")


def test_a_reused_top_up_key_with_another_amount_is_a_conflict(staff, books):
    url = f"/accounts/{books.acme.pk}/topup"
    staff.post(url, {"amount": "10", "idempotency_key": "pay-9"})
    assert staff.post(url, {"amount": "11", "idempotency_key": "pay-9"}).status_code == 409


def test_a_top_up_needs_an_idempotency_key_and_a_positive_amount(staff, books):
    response = staff.post(f"/accounts/{books.acme.pk}/topup", {"amount": "-1"})
    assert response.status_code == 400 and set(fields_of(response)) == {"amount", "idempotency_key"}


def test_customers_cannot_top_up(acme, books):
    assert acme.post(f"/accounts/{books.acme.pk}/topup", {"amount": "1", "idempotency_key": "x"}).status_code == 403


# --- Ledger entries and reservations ---


def test_ledger_entries_filter_by_account_and_kind(staff, books):
    entries = staff.get("/ledger-entries", account=books.acme.pk).json()["results"]
    assert sorted(e["kind"] for e in entries) == ["charge", "topup"]
    charges = staff.get("/ledger-entries", account=books.acme.pk, kind="charge").json()["results"]
    assert [(e["amount"], e["cdr"]) for e in charges] == [("-0.300000", books.acme_cdr.pk)]
    assert staff.get("/ledger-entries", kind="bogus").status_code == 400


def test_ledger_entries_filter_by_date(staff, books):
    today = timezone.now().date().isoformat()
    assert staff.get("/ledger-entries", account=books.acme.pk, date=today).json()["count"] == 2
    assert staff.get("/ledger-entries", account=books.acme.pk, date="2001-01-01").json()["count"] == 0


def test_a_customer_reads_only_its_own_entries_and_reservations(acme, books):
    assert {e["account"] for e in acme.get("/ledger-entries").json()["results"]} == {books.acme.pk}
    assert [r["id"] for r in acme.get("/reservations").json()["results"]] == [books.acme_reservation.pk]


def test_reservations_filter_by_status(staff, books):
    held = staff.get("/reservations", account=books.beta.pk, status="held").json()["results"]
    assert [(r["amount"], r["status"]) for r in held] == [("2.000000", "held")]
    assert staff.get("/reservations", account=books.beta.pk, status="committed").json()["count"] == 0


# --- CDRs: list and ingestion ---


def test_unrated_cdrs_are_listed_with_their_reason(staff, books):
    unrated = staff.get("/cdrs", status="unrated", source="t").json()["results"]
    assert [(c["source_id"], c["unrated_reason"]) for c in unrated] == [("u1", "unknown account 'b1-nobody'")]


def test_cdrs_show_price_and_filter_by_account_and_start(staff, books):
    rated = staff.get("/cdrs", account=books.acme.pk).json()["results"]
    assert [(c["source_id"], c["price"], c["billed_seconds"]) for c in rated] == [("a1", "0.300000", 180)]
    assert "margin" in rated[0] and "cost" in rated[0]
    window = {"start_from": "2026-03-02T09:00:00Z", "start_to": "2026-03-02T10:00:00Z"}
    assert staff.get("/cdrs", account=books.acme.pk, **window).json()["count"] == 0


def test_a_customer_reads_only_its_own_cdrs_and_cannot_post(acme, books):
    assert [c["source_id"] for c in acme.get("/cdrs").json()["results"]] == ["a1"]
    assert acme.post("/cdrs", {"records": [_record("x1")]}).status_code == 403


def _record(source_id: str, **fields) -> dict:
    return {
        "source_id": source_id,
        "account": "b1-acme",
        "caller": "100",
        "callee": "34911234567",
        "start": "2026-03-02T11:00:00",
        "duration": 65,
        "billsec": 60,
    } | fields


def test_a_cdr_batch_is_stored_rated_and_charged(staff, books, in_schema):
    response = staff.post(
        "/cdrs", {"records": [_record("api-1"), _record("api-2", callee="34611234567", billsec=61, duration=61)]}
    )
    assert response.status_code == 200, response.content
    # 60 s at 0.10/min = 0.1; 61 s to 346 in 60/60 = 2 x 0.20 + 0.05 = 0.45.
    body = response.json()
    assert set(body.pop("cost")) <= {"EUR"}  # the supplier cost, when the operator has a cost tariff
    assert body == {
        "received": 2,
        "imported": 2,
        "duplicates": 0,
        "unrated": 0,
        "rejected": [],
        "charged": {"EUR": "0.550000"},
        "legs": {"origination": {"cdrs": 2, "charged": {"EUR": "0.550000"}}},
    }
    with in_schema("demo"):
        cdr = Cdr.objects.get(source="api", source_id="api-1")
        # Without an offset the start is the operator's local time (Madrid, UTC+1 in March).
        assert cdr.start == datetime(2026, 3, 2, 10, 0, tzinfo=UTC) and cdr.price == Decimal("0.1")
        assert LedgerEntry.objects.get(cdr=cdr).amount == Decimal("-0.1")


def test_a_cdr_sent_twice_is_stored_and_charged_once(staff, books, in_schema):
    staff.post("/cdrs", {"records": [_record("api-dup")]})
    again = staff.post("/cdrs", {"records": [_record("api-dup"), _record("api-dup")]})
    assert (again.json()["imported"], again.json()["duplicates"]) == (0, 2)
    with in_schema("demo"):
        assert LedgerEntry.objects.filter(cdr__source="api", cdr__source_id="api-dup").count() == 1


def test_bad_records_are_named_by_position_and_field_and_good_ones_imported(staff, books, in_schema):
    records = [
        _record("ok-1"),
        _record("bad-1", start="yesterday"),
        _record("bad-2", billsec=-5, service="fax"),
        {"source_id": "bad-3", "callee": "34911234567"},
        "not an object",
    ]
    response = staff.post("/cdrs", {"records": records})
    assert response.status_code == 200
    body = response.json()
    assert body["imported"] == 1 and body["received"] == 5
    assert sorted((r["position"], r["field"]) for r in body["rejected"]) == [
        (1, "start"),
        (2, "billsec"),
        (2, "service"),
        (3, "billsec"),
        (3, "start"),
        (4, None),
    ]
    with in_schema("demo"):
        assert list(Cdr.objects.filter(source="api").values_list("source_id", flat=True)) == ["ok-1"]


def test_a_batch_where_every_record_is_bad_is_a_400_naming_the_fields(staff, books):
    response = staff.post("/cdrs", {"records": [_record("b", callee=""), _record("c", bilsec=3)]})
    assert response.status_code == 400
    assert set(fields_of(response)) == {"records[0].callee", "records[1].bilsec"}


def test_a_malformed_or_oversized_batch_is_refused(staff, books):
    assert list(fields_of(staff.post("/cdrs", {"records": []}))) == ["records"]
    assert list(fields_of(staff.post("/cdrs", [_record("x")]))) == ["records"]
    too_many = {"records": [_record(f"n{i}") for i in range(10_001)]}
    response = staff.post("/cdrs", too_many)
    assert response.status_code == 400 and "10000" in fields_of(response)["records"][0]


def test_an_api_cdr_for_an_unknown_account_is_kept_unrated(staff, books):
    response = staff.post("/cdrs", {"records": [_record("api-ghost", account="b1-ghost")]})
    assert response.json()["unrated"] == 1
    listed = staff.get("/cdrs", source="api", status="unrated").json()["results"]
    assert [c["unrated_reason"] for c in listed] == ["unknown account 'b1-ghost'"]


# --- Query counts of the list endpoints ---


@pytest.fixture
def many(books, in_schema):
    """Enough rows that an N+1 would show: 30 accounts, CDRs and entries."""
    with in_schema("demo"):
        from billing.models import CdrFormat, FreephoneNumber, MinutePackage, Trunk

        cost = Tariff.objects.create(name="B1 many cost", kind="cost", currency="EUR")
        for n in range(30):
            account = account_create(name=f"Many {n}", code=f"b1-many-{n}", currency="EUR", tariff=books.tariff)
            account_topup(account=account, amount=Decimal(1), idempotency_key=f"t:many:{n}")
            reservation_hold(account=account, amount=Decimal("0.1"), idempotency_key=f"t:many:r:{n}")
            FreephoneNumber.objects.create(number=f"88005550{n:02d}", account=account)
            Trunk.objects.create(name=f"b1trunk{n}", cost_tariff=cost)
            TariffClass.objects.create(
                tariff=books.tariff, direction="origination", name=f"Class {n}", prefixes=[str(n)]
            )
            TimeBand.objects.create(tariff=books.tariff, name=f"band{n}", weekdays=[0], start="08:00", end="09:00")
            MinutePackage.objects.create(name=f"B1 pkg {n}", prefixes=["34"])
            account.packages.add(MinutePackage.objects.get(name=f"B1 pkg {n}"))
            CdrFormat.objects.create(name=f"B1 fmt {n}", kind="generic", columns={"callee": "to"})
        cdrs_ingest(source="many", records=[_call(f"m{n}", f"b1-many-{n}") for n in range(30)], tz="UTC")


@pytest.mark.parametrize(
    "path",
    [
        "/tariffs",
        "/time-bands",
        "/tariff-classes",
        "/trunks",
        "/packages",
        "/freephone-numbers",
        "/cdr-formats",
        "/accounts",
        "/ledger-entries",
        "/reservations",
        "/cdrs",
        "RATES",
    ],
)
def test_list_endpoints_take_a_fixed_number_of_queries(staff, many, books, path, django_assert_max_num_queries):
    path = f"/tariffs/{books.tariff.pk}/rates" if path == "RATES" else path
    staff.get(path)  # warm caches that are not per request
    # domain, API key, count, page, and one more (account packages' prefetch, the rates' tariff); django-tenants
    # sends a SET search_path before each of them. Thirty rows with an N+1 would take 30 more.
    with django_assert_max_num_queries(10):
        response = staff.get(path, page_size=100)
    assert response.status_code == 200 and response.json()["count"] >= 2


# --- The single-CDR lean path, through the real ASGI server (config.asgi under uvicorn) ---
# The server is another process: its data is committed (with names of their own), not rolled back with a test.

FAST_DECK = "prefix,destination,rate,connect_fee,increment,min_charge,effective_from\n34,Spain,0.10,,1/1,,\n"


@dataclass
class Served:
    port: int
    staff: str
    acme: str
    rival: str
    throttled: str  # a staff key of its own, for the throttling test
    account_id: int


@pytest.fixture(scope="module")
def served(django_db_setup, django_db_blocker):
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from django_tenants.utils import schema_context

    from core.models import Customer
    from tests.celery_worker import worker_database_url

    User = get_user_model()
    with django_db_blocker.unblock():
        with schema_context("demo"):
            tariff = Tariff.objects.create(name="B1 Fast", currency="EUR")
            rates_import(tariff=tariff, source=FAST_DECK)
            account = account_create(
                name="Fast",
                code="b1-fast",
                currency="EUR",
                tariff=tariff,
                customer=Customer.objects.get(subdomain="acme"),
            )
            staff = api_key_create(user=User.objects.get(username="admin@demo.localhost"), name="fast").raw_key
            acme_key = api_key_create(user=User.objects.get(username="boss@acme.example"), name="fast").raw_key
            throttled = api_key_create(user=User.objects.get(username="admin@demo.localhost"), name="t").raw_key
        with schema_context("rival"):
            rival = api_key_create(user=User.objects.get(username="admin@rival.localhost"), name="fast").raw_key
        database_url = worker_database_url()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "API_THROTTLE_RATE": "100/hour",  # an hour: a slow machine cannot let the window slide mid-test
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.2)
        yield Served(port=port, staff=staff, acme=acme_key, rival=rival, throttled=throttled, account_id=account.pk)
    finally:
        server.terminate()
        server.wait(timeout=15)
        # What this module committed must not leak into later tests' demo schema.
        with django_db_blocker.unblock():
            with schema_context("demo"):
                LedgerEntry.objects.filter(account=account).delete()  # queryset delete: the rows are test-only
                Cdr.objects.filter(account_code="b1-fast").delete()
                Cdr.objects.filter(account=account).delete()
                account.reservations.all().delete()
                Account.objects.filter(pk=account.pk).delete()
                Tariff.objects.filter(pk=tariff.pk).delete()
                ApiKey.objects.filter(name__in=["fast", "t"]).delete()
            with schema_context("rival"):
                ApiKey.objects.filter(name="fast").delete()


def _http(served: Served, body, key: str | None, host: str = "demo.localhost", content_type="application/json"):
    """POST /api/v1/billing/cdrs over real HTTP; (status, JSON body, headers)."""
    import http.client
    import json

    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    headers = {"Host": host, "Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Api-Key {key}"
    connection.request("POST", f"{BASE}/cdrs", body=json.dumps(body), headers=headers)
    response = connection.getresponse()
    payload = json.loads(response.read() or b"null")
    connection.close()
    return response.status, payload, dict(response.getheaders())


def _committed(source_id: str):
    from django_tenants.utils import schema_context

    with schema_context("demo"):
        return list(Cdr.objects.filter(source="api", source_id=source_id)), list(
            LedgerEntry.objects.filter(cdr__source="api", cdr__source_id=source_id)
        )


def _fast(source_id: str, **fields) -> dict:
    return _record(source_id, account="b1-fast", **fields)


def test_one_cdr_over_http_is_stored_rated_and_charged_once(served, django_db_blocker):
    status, body, _ = _http(served, {"records": [_fast("fast-1")]}, served.staff)
    assert status == 200, body
    # 60 s at 0.10/min = 0.1, and the answer has the batch path's shape.
    assert set(body.pop("cost")) <= {"EUR"}  # the supplier cost, when the operator has a cost tariff
    assert body == {
        "received": 1,
        "imported": 1,
        "duplicates": 0,
        "unrated": 0,
        "rejected": [],
        "charged": {"EUR": "0.100000"},
        "legs": {"origination": {"cdrs": 1, "charged": {"EUR": "0.100000"}}},
    }
    again = _http(served, {"records": [_fast("fast-1")]}, served.staff)[1]
    assert (again["imported"], again["duplicates"], again["charged"]) == (0, 1, {})
    with django_db_blocker.unblock():
        cdrs, entries = _committed("fast-1")
    assert len(cdrs) == 1 and cdrs[0].price == Decimal("0.1") and [e.amount for e in entries] == [Decimal("-0.1")]


def test_the_lean_path_answers_what_the_batch_path_answers(served, staff, books, in_schema):
    with in_schema("demo"):
        account_create(name="Twin", code="b1-twin", currency="EUR", tariff=books.tariff)
    # Different source ids: the test's own transaction is not committed, and the server must not wait on its rows.
    record = _record("twin-django", account="b1-twin", callee="34611234567", billsec=61, duration=61)
    through_django = staff.post("/cdrs", {"records": [record]}).json()
    status, over_http, _ = _http(served, {"records": [_fast("twin-http", callee="34911234567")]}, served.staff)
    assert status == 200 and set(over_http) == set(through_django)
    assert over_http["legs"].keys() == through_django["legs"].keys()


def test_a_bad_cdr_over_http_is_400_naming_the_field(served):
    status, body, _ = _http(served, {"records": [_fast("fast-bad", callee="", start="tomorrow")]}, served.staff)
    assert status == 400
    assert body["error"]["code"] == "invalid"
    assert set(body["error"]["fields"]) == {"records[0].callee", "records[0].start"}


def test_the_lean_path_keeps_tenancy_and_authentication(served):
    record = {"records": [_fast("fast-auth")]}
    assert _http(served, record, served.rival)[0] == 401  # another operator's key
    assert _http(served, record, "not-a-key")[0] == 401
    assert _http(served, record, served.acme)[:2] == (
        403,
        {"error": {"code": "permission_denied", "message": "Only the operator's staff may do this.", "fields": {}}},
    )
    assert _http(served, record, served.staff, host="nowhere.localhost")[0] == 404
    assert _http(served, record, None)[0] == 401  # no key: the regular path answers


def test_batches_and_other_requests_take_the_regular_path_on_the_same_server(served):
    status, body, _ = _http(served, {"records": [_fast("fast-b1"), _fast("fast-b2")]}, served.staff)
    assert status == 200 and (body["received"], body["imported"]) == (2, 2)
    status, body, _ = _http(served, {"records": []}, served.staff)
    assert status == 400 and list(body["error"]["fields"]) == ["records"]


def test_concurrent_single_cdrs_are_each_stored_and_charged_once(served, django_db_blocker):
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"fast-c{n}" for n in range(24)] * 2  # every CDR sent twice, at the same time
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda s: _http(served, {"records": [_fast(s)]}, served.staff), ids))
    assert all(status == 200 for status, _, _ in answers)
    assert sum(body["imported"] for _, body, _ in answers) == 24
    assert sum(body["duplicates"] for _, body, _ in answers) == 24
    with django_db_blocker.unblock():
        from django_tenants.utils import schema_context

        with schema_context("demo"):
            assert Cdr.objects.filter(source="api", source_id__startswith="fast-c").count() == 24
            assert LedgerEntry.objects.filter(cdr__source_id__startswith="fast-c").count() == 24
            account = Account.objects.get(code="b1-fast")
            assert account.balance == LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]


def test_the_lean_path_is_throttled_per_key(served):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda n: _http(served, {"records": [_fast(f"fast-t{n}")]}, served.throttled), range(103))
        )
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 100 + [429] * 3  # API_THROTTLE_RATE=100/hour for this server
    status, body, headers = next(answer for answer in answers if answer[0] == 429)
    assert body["error"]["code"] == "throttled" and int(headers["retry-after"]) >= 1
