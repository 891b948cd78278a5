"""Isolation of every billing API endpoint: another operator's key is 401 everywhere, another customer's object is
404, the operator's configuration is staff-only (403 for customers and for logins that are neither)."""

from decimal import Decimal

import pytest

from billing.models import CdrFormat, FreephoneNumber, MinutePackage, Tariff, TariffClass, TimeBand, Trunk
from billing.tests.test_api import BASE, Api, books, keys  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture
def ids(books, in_schema) -> dict:  # noqa: F811
    """Ids of one object of each kind in schema demo; acme's and beta's where objects belong to a customer."""
    with in_schema("demo"):
        cost = Tariff.objects.create(name="B1 iso cost", kind="cost", currency="EUR")
        return {
            "tariff": books.tariff.pk,
            "rate": books.tariff.rates.first().pk,
            "band": TimeBand.objects.create(
                tariff=books.tariff, name="peak", weekdays=[0], start="08:00", end="18:00"
            ).pk,
            "class": TariffClass.objects.create(tariff=books.tariff, direction="origination", name="Fixed").pk,
            "trunk": Trunk.objects.create(name="b1iso", cost_tariff=cost).pk,
            "package": MinutePackage.objects.create(name="B1 iso", prefixes=["34"]).pk,
            "freephone": FreephoneNumber.objects.create(number="8800777000", account=books.acme).pk,
            "format": CdrFormat.objects.create(name="B1 iso", kind="generic", columns={"callee": "to"}).pk,
            "acme_account": books.acme.pk,
            "beta_account": books.beta.pk,
            "acme_entry": books.acme_entry.pk,
            "beta_entry": books.beta_entry.pk,
            "acme_reservation": books.acme_reservation.pk,
            "beta_reservation": books.beta_reservation.pk,
            "acme_cdr": books.acme_cdr.pk,
            "beta_cdr": books.beta_cdr.pk,
        }


STAFF_ONLY_GETS = [
    "/tariffs",
    "/tariffs/{tariff}",
    "/tariffs/{tariff}/rates",
    "/tariffs/{tariff}/rates/{rate}",
    "/tariffs/{tariff}/rates/export",
    "/tariffs/{tariff}/grid",
    "/tariffs/{tariff}/grid/average",
    "/time-bands",
    "/time-bands/{band}",
    "/tariff-classes",
    "/tariff-classes/{class}",
    "/trunks",
    "/trunks/{trunk}",
    "/packages",
    "/packages/{package}",
    "/freephone-numbers",
    "/freephone-numbers/{freephone}",
    "/cdr-formats",
    "/cdr-formats/{format}",
]
CUSTOMER_GETS = [
    "/accounts",
    "/accounts/{acme_account}",
    "/ledger-entries",
    "/ledger-entries/{acme_entry}",
    "/reservations",
    "/reservations/{acme_reservation}",
    "/cdrs",
    "/cdrs/{acme_cdr}",
]
OTHER_CUSTOMERS_OBJECTS = [
    "/accounts/{beta_account}",
    "/ledger-entries/{beta_entry}",
    "/reservations/{beta_reservation}",
    "/cdrs/{beta_cdr}",
]
POSTS = [
    ("/quote", {"account": "{acme_account}", "to": "34911234567", "duration": 60}),
    (
        "/cdrs",
        {"records": [{"source_id": "iso", "callee": "34911234567", "start": "2026-03-02T10:00:00", "billsec": 1}]},
    ),
    ("/accounts/{acme_account}/topup", {"amount": "1", "idempotency_key": "iso"}),
    ("/tariffs", {"name": "B1 iso new", "currency": "EUR"}),
    ("/accounts", {"name": "iso", "code": "b1-iso"}),
]
STAFF_ONLY_POSTS = POSTS[1:]


def _fill(path: str, ids: dict) -> str:
    return path.format(**ids)


def _body(body: dict, ids: dict) -> dict:
    return {k: (int(_fill(v, ids)) if isinstance(v, str) and v.startswith("{") else v) for k, v in body.items()}


@pytest.mark.parametrize("path", STAFF_ONLY_GETS + CUSTOMER_GETS + OTHER_CUSTOMERS_OBJECTS)
def test_another_operators_key_is_401_on_every_read(demo_client, keys, ids, path):  # noqa: F811
    response = Api(demo_client, keys.rival).get(_fill(path, ids))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


@pytest.mark.parametrize("path,body", POSTS)
def test_another_operators_key_is_401_on_every_write(demo_client, keys, ids, path, body):  # noqa: F811
    assert Api(demo_client, keys.rival).post(_fill(path, ids), _body(body, ids)).status_code == 401


@pytest.mark.parametrize("path", STAFF_ONLY_GETS[:3] + CUSTOMER_GETS[:2])
def test_the_operators_key_is_401_on_another_operators_domain(rival_client, keys, ids, path):  # noqa: F811
    assert Api(rival_client, keys.staff).get(_fill(path, ids)).status_code == 401


@pytest.mark.parametrize("path", STAFF_ONLY_GETS[:2] + CUSTOMER_GETS[:2])
def test_no_key_is_401(demo_client, ids, path):
    assert demo_client.get(BASE + _fill(path, ids)).status_code == 401


@pytest.mark.parametrize("path", OTHER_CUSTOMERS_OBJECTS)
def test_another_customers_object_is_404(demo_client, keys, ids, path):  # noqa: F811
    response = Api(demo_client, keys.acme).get(_fill(path, ids))
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_quoting_with_another_customers_account_is_404(demo_client, keys, ids):  # noqa: F811
    body = {"account": ids["beta_account"], "to": "34911234567", "duration": 60}
    assert Api(demo_client, keys.acme).post("/quote", body).status_code == 404


@pytest.mark.parametrize("path", CUSTOMER_GETS)
def test_a_customer_reads_its_own_objects(demo_client, keys, ids, path):  # noqa: F811
    assert Api(demo_client, keys.acme).get(_fill(path, ids)).status_code == 200


@pytest.mark.parametrize("path", STAFF_ONLY_GETS)
def test_the_operators_configuration_is_403_for_customers(demo_client, keys, ids, path):  # noqa: F811
    response = Api(demo_client, keys.acme).get(_fill(path, ids))
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize("path,body", STAFF_ONLY_POSTS)
def test_writes_are_403_for_customers(demo_client, keys, ids, path, body):  # noqa: F811
    assert Api(demo_client, keys.acme).post(_fill(path, ids), _body(body, ids)).status_code == 403


@pytest.mark.parametrize("path", STAFF_ONLY_GETS[:1] + CUSTOMER_GETS)
def test_a_login_that_is_neither_staff_nor_a_customers_sees_nothing(demo_client, keys, ids, path):  # noqa: F811
    assert Api(demo_client, keys.watcher).get(_fill(path, ids)).status_code == 403


@pytest.mark.parametrize("path", STAFF_ONLY_GETS + CUSTOMER_GETS + OTHER_CUSTOMERS_OBJECTS)
def test_staff_read_every_object_of_their_operator(demo_client, keys, ids, path):  # noqa: F811
    assert Api(demo_client, keys.staff).get(_fill(path, ids)).status_code == 200


def test_a_customer_session_on_its_own_subdomain_is_scoped_too(acme_client, ids):
    from conftest import login_as

    login_as(acme_client, "demo", "boss@acme.example")
    assert acme_client.get(f"{BASE}/accounts/{ids['beta_account']}").status_code == 404
    codes = {a["code"] for a in acme_client.get(f"{BASE}/accounts").json()["results"]}
    assert "b1-acme" in codes and "b1-beta" not in codes
    assert Decimal(acme_client.get(f"{BASE}/accounts/{ids['acme_account']}").json()["balance"]) == Decimal("49.7")
