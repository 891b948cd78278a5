"""Billing in the operator console (Django admin on demo.localhost), logged in as demo's staff."""

import io
from decimal import Decimal

import pytest
from django.db.models import Sum

from billing.models import Account, Cdr, ClassRate, LedgerEntry, Rate, Tariff, TariffClass
from billing.services import account_create, cdrs_ingest
from billing.tests.test_api import DECK, _call
from conftest import login_as

pytestmark = pytest.mark.django_db

CONSOLE = "/admin/billing"


@pytest.fixture
def console(demo_client, world):
    login_as(demo_client, "demo", "admin@demo.localhost")
    return demo_client


@pytest.fixture
def tariff(in_schema):
    from billing.services import rates_import

    with in_schema("demo"):
        tariff = Tariff.objects.create(name="B1 Console", currency="EUR")
        rates_import(tariff=tariff, source=DECK)
        return tariff


def _upload(text: str, name: str = "deck.csv") -> io.BytesIO:
    upload = io.BytesIO(text.encode())
    upload.name = name
    return upload


def test_tariff_page_offers_import_export_and_grid(console, tariff):
    page = console.get(f"{CONSOLE}/tariff/{tariff.pk}/change/").content.decode()
    assert "Import rate deck" in page and "Export CSV" in page and "Class grid" in page
    assert f"{CONSOLE}/tariff/{tariff.pk}/rates/export/" in page


def test_rate_deck_upload_imports(console, tariff, in_schema):
    response = console.post(
        f"{CONSOLE}/tariff/{tariff.pk}/rates/import/", {"file": _upload("prefix,destination,rate\n39,Italy,0.04\n")}
    )
    assert response.status_code == 302 and response["Location"].endswith(f"/tariff/{tariff.pk}/change/")
    with in_schema("demo"):
        assert Rate.objects.get(tariff=tariff, prefix="39").rate == Decimal("0.04")


def test_rate_deck_upload_with_bad_lines_lists_them_and_writes_nothing(console, tariff, in_schema):
    deck = "prefix,destination,rate,increment\n39,Italy,0.04,60/60\n3x,Bad,0.1,60/60\n40,Romania,-1,60/60\n"
    response = console.post(f"{CONSOLE}/tariff/{tariff.pk}/rates/import/", {"file": _upload(deck)})
    assert response.status_code == 200
    errors = [(e.line, e.column) for e in response.context["result"].errors]
    assert errors == [(3, "prefix"), (4, "rate")]
    page = response.content.decode()
    assert 'id="rate-deck-errors"' in page and "nothing was written" in page
    with in_schema("demo"):
        assert not Rate.objects.filter(tariff=tariff, prefix="39").exists()


def test_rate_deck_dry_run_checks_without_writing(console, tariff, in_schema):
    response = console.post(
        f"{CONSOLE}/tariff/{tariff.pk}/rates/import/",
        {"file": _upload("prefix,destination,rate\n39,Italy,0.04\n"), "dry_run": "on"},
    )
    assert response.status_code == 200 and 'id="rate-deck-dry-run"' in response.content.decode()
    with in_schema("demo"):
        assert not Rate.objects.filter(tariff=tariff, prefix="39").exists()


def test_rate_deck_exports_as_csv(console, tariff):
    response = console.get(f"{CONSOLE}/tariff/{tariff.pk}/rates/export/")
    assert response["Content-Type"].startswith("text/csv")
    lines = response.content.decode().splitlines()
    assert lines[0].startswith("prefix,destination,rate,connect_fee,increment,min_charge,effective_from")
    assert lines[2] == "346,Spain mobile,0.200000,0.050000,60/60,0.000000,,voice,"


@pytest.fixture
def classes(tariff, in_schema):
    with in_schema("demo"):
        make = TariffClass.objects.create
        return {
            "fixed": make(
                tariff=tariff, direction="origination", name="Fixed", prefixes=["349"], leg_rate=Decimal("0.03")
            ),
            "own": make(tariff=tariff, direction="termination", name="Own network", prefixes=["34622"], position=0),
            "other": make(tariff=tariff, direction="termination", name="Other networks", prefixes=["34"], position=1),
        }


def test_grid_page_is_a_table_with_an_input_per_cell_and_the_flat_figure(console, tariff, classes):
    response = console.get(f"{CONSOLE}/tariff/{tariff.pk}/grid/")
    page = response.content.decode()
    fixed, own, other = classes["fixed"], classes["own"], classes["other"]
    assert f'name="cell-{fixed.pk}-{own.pk}"' in page and f'name="cell-{fixed.pk}-{other.pk}"' in page
    assert 'id="grid-average"' in page and "no freephone traffic" in page
    assert response.context["average"]["average"] is None


def test_grid_page_saves_every_cell(console, tariff, classes, in_schema):
    fixed, own, other = classes["fixed"], classes["own"], classes["other"]
    response = console.post(
        f"{CONSOLE}/tariff/{tariff.pk}/grid/",
        {f"cell-{fixed.pk}-{own.pk}": "0.04", f"cell-{fixed.pk}-{other.pk}": "0.055"},
    )
    assert response.status_code == 302
    with in_schema("demo"):
        cells = {(c.termination_id, c.rate) for c in ClassRate.objects.filter(tariff=tariff)}
    assert cells == {(own.pk, Decimal("0.04")), (other.pk, Decimal("0.055"))}


def test_grid_page_with_a_bad_cell_saves_nothing_and_shows_the_error_at_the_cell(console, tariff, classes, in_schema):
    fixed, own, other = classes["fixed"], classes["own"], classes["other"]
    response = console.post(
        f"{CONSOLE}/tariff/{tariff.pk}/grid/",
        {f"cell-{fixed.pk}-{own.pk}": "0.04", f"cell-{fixed.pk}-{other.pk}": "0.01"},  # below the 0.03 leg
    )
    assert response.status_code == 200
    cells = response.context["rows"][0]["cells"]
    assert cells[0]["error"] is None and "below the origination leg rate" in cells[1]["error"]
    assert cells[1]["value"] == "0.01"  # what was typed stays in the input
    with in_schema("demo"):
        assert not ClassRate.objects.filter(tariff=tariff).exists()


def test_grid_page_shows_last_months_flat_average(console, tariff, classes, in_schema):
    from datetime import timedelta

    from django.utils import timezone

    from billing.csvformats import ParsedCdr
    from billing.models import FreephoneNumber

    fixed, own = classes["fixed"], classes["own"]
    with in_schema("demo"):
        ClassRate.objects.create(tariff=tariff, origination=fixed, termination=own, rate=Decimal("0.04"))
        owner = account_create(name="FP owner", code="b1-fp-owner", currency="EUR", tariff=tariff)
        FreephoneNumber.objects.create(number="8800444000", account=owner)
        last_month = timezone.now().replace(day=1, hour=12) - timedelta(days=10)
        cdrs_ingest(
            source="t",
            records=[
                ParsedCdr(
                    line=1,
                    source_id="fp",
                    caller="34911000000",
                    callee="8800444000",
                    start=last_month,
                    duration=120,
                    billsec=120,
                    forwarded_to="34622000000",
                    leg="combined",
                )
            ],
            tz="Europe/Madrid",
        )
    response = console.get(f"{CONSOLE}/tariff/{tariff.pk}/grid/")
    assert response.context["average"]["average"] == Decimal("0.04")
    assert "0.040000 EUR per minute from anywhere" in response.content.decode()


@pytest.fixture
def account(tariff, in_schema):
    with in_schema("demo"):
        return account_create(
            name="B1 console", code="b1-console", currency="EUR", tariff=tariff, credit_limit=Decimal(5)
        )


def test_account_page_shows_balance_reserved_available_and_a_top_up_link(console, account):
    page = console.get(f"{CONSOLE}/account/{account.pk}/change/").content.decode()
    assert 'id="account-money"' in page and "available" in page
    assert f"{CONSOLE}/account/{account.pk}/topup/" in page


def test_a_top_up_form_sent_twice_tops_up_once(console, account, in_schema):
    form = console.get(f"{CONSOLE}/account/{account.pk}/topup/").context["form"]
    key = form.initial["idempotency_key"]
    data = {"amount": "25", "description": "Cash", "idempotency_key": key}
    first = console.post(f"{CONSOLE}/account/{account.pk}/topup/", data)
    again = console.post(f"{CONSOLE}/account/{account.pk}/topup/", data)
    assert first.status_code == again.status_code == 302
    with in_schema("demo"):
        entries = LedgerEntry.objects.filter(account=account)
        assert entries.count() == 1
        assert Account.objects.get(pk=account.pk).balance == entries.aggregate(s=Sum("amount"))["s"] == Decimal(25)
    another = console.get(f"{CONSOLE}/account/{account.pk}/topup/").context["form"].initial["idempotency_key"]
    assert another != key  # a new form is a new top-up


def test_a_top_up_with_a_negative_amount_is_refused(console, account, in_schema):
    response = console.post(
        f"{CONSOLE}/account/{account.pk}/topup/", {"amount": "-5", "idempotency_key": "k", "description": ""}
    )
    assert response.status_code == 200 and "amount" in response.context["form"].errors
    with in_schema("demo"):
        assert not LedgerEntry.objects.filter(account=account).exists()


def test_adding_an_account_in_the_console_opens_it_through_the_service(console, tariff, in_schema):
    response = console.post(
        f"{CONSOLE}/account/add/",
        {
            "name": "Walk-in",
            "code": "b1-walkin",
            "currency": "EUR",
            "kind": "prepaid",
            "credit_limit": "0",
            "tariff": tariff.pk,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    with in_schema("demo"):
        assert Account.objects.get(code="b1-walkin").tariff_id == tariff.pk


def test_unrated_cdrs_are_listed_with_their_reason(console, tariff, in_schema):
    with in_schema("demo"):
        cdrs_ingest(source="t", records=[_call("u-console", "b1-nobody")], tz="UTC")
        assert Cdr.objects.get(source_id="u-console").status == "unrated"
    page = console.get(f"{CONSOLE}/cdr/", {"status": "unrated"}).content.decode()
    assert "u-console" in page and "unknown account" in page and "Unrated (needs a rate or account)" in page


@pytest.mark.parametrize("model", ["trunk", "tariffclass", "minutepackage", "freephonenumber", "cdrformat"])
def test_configuration_pages_list_and_add(console, model):
    assert console.get(f"{CONSOLE}/{model}/").status_code == 200
    assert console.get(f"{CONSOLE}/{model}/add/").status_code == 200


def test_a_minute_package_with_bad_tiers_is_refused(console, in_schema):
    response = console.post(
        f"{CONSOLE}/minutepackage/add/",
        {
            "name": "B1 bad",
            "prefixes": "346",
            "included_minutes": "0",
            "tiers": '[{"up_to_minutes": "1000", "rate": "0.03"}, {"up_to_minutes": "500", "rate": "0.02"}]',
        },
    )
    assert response.status_code == 200 and "tiers" in response.context["adminform"].form.errors


def test_a_cdr_format_with_an_unknown_field_is_refused(console):
    response = console.post(
        f"{CONSOLE}/cdrformat/add/",
        {"name": "B1 bad", "kind": "freephone", "columns": '{"callee": 1, "nonsense": 2}', "delimiter": ","},
    )
    assert response.status_code == 200 and "columns" in response.context["adminform"].form.errors


def test_customers_cannot_open_the_console(acme_client, tariff):
    login_as(acme_client, "demo", "boss@acme.example")
    response = acme_client.get(f"{CONSOLE}/tariff/{tariff.pk}/rates/import/")
    assert response.status_code == 302 and "/login/" in response["Location"]
