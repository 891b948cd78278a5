"""SMS test fixtures: an SMS client of operator demo with credit, a gateway and a default route, API keys.

Most tests run inside the test transaction (`sms_world`); tests that need a real worker, web server or gateway
threads to see the rows use `committed_sms_world`, which commits them and removes them afterwards.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django_tenants.utils import schema_context

from core.services import api_key_create
from sms import selectors
from sms.models import Gateway, Route, SmsClient
from sms.services import sms_client_create


@dataclass
class SmsWorld:
    client: SmsClient
    other: SmsClient
    gateway: Gateway
    route: Route
    key: str  # the client's API key
    other_key: str  # another SMS client's key, same operator
    staff_key: str  # demo staff
    rival_key: str  # rival staff: another operator

    @property
    def auth(self) -> dict:
        return {"HTTP_AUTHORIZATION": f"Api-Key {self.key}"}

    @property
    def other_auth(self) -> dict:
        return {"HTTP_AUTHORIZATION": f"Api-Key {self.other_key}"}

    @property
    def staff_auth(self) -> dict:
        return {"HTTP_AUTHORIZATION": f"Api-Key {self.staff_key}"}

    @property
    def rival_auth(self) -> dict:
        return {"HTTP_AUTHORIZATION": f"Api-Key {self.rival_key}"}


@pytest.fixture(autouse=True)
def _fresh_sms_config():
    """Each test starts from the database, not from another test's cached (and rolled back) configuration."""
    selectors._configs.clear()
    yield
    selectors._configs.clear()


_counter = iter(range(1, 1_000_000))


def sms_world_make(
    *,
    schema: str = "demo",
    staff: str = "admin@demo.localhost",
    port: int = 2775,
    credit: Decimal = Decimal("100"),
    gateway_settings: dict | None = None,
    **client_settings,
) -> SmsWorld:
    """Build the SMS world in an operator's schema (the caller chooses the transaction)."""
    n = next(_counter)
    with schema_context(schema):
        gateway = Gateway.objects.create(
            **{
                "name": f"upstream-{n}",
                "host": "127.0.0.1",
                "port": port,
                "system_id": "esme",
                "password": "secret",
                "tps": 500,
                "window": 50,
                **(gateway_settings or {}),
            }
        )
        route = Route.objects.create(
            name="default", gateway=gateway, price_per_part=Decimal("0.05"), cost_per_part=Decimal("0.02")
        )
        settings = {"sender_ids": ["TEXTCO", "+34600000001"], "duplicate_window_s": 0, **client_settings}
        client = sms_client_create(
            name=f"Textco {n}",
            currency="EUR",
            admin_email=f"ops{n}@textco.example",
            credit=credit,
            **settings,
        )
        other = sms_client_create(
            name=f"Othertel {n}",
            currency="EUR",
            admin_email=f"ops{n}@othertel.example",
            credit=Decimal("10"),
            sender_ids=["OTHER"],
            duplicate_window_s=0,
        )
        User = get_user_model()
        key = api_key_create(user=User.objects.get(username=f"ops{n}@textco.example"), name="t").raw_key
        other_key = api_key_create(user=User.objects.get(username=f"ops{n}@othertel.example"), name="t").raw_key
        staff_key = api_key_create(user=User.objects.get(username=staff), name="t").raw_key
    with schema_context("rival"):
        rival_key = api_key_create(
            user=get_user_model().objects.get(username="admin@rival.localhost"), name="t"
        ).raw_key
    return SmsWorld(client, other, gateway, route, key, other_key, staff_key, rival_key)


@pytest.fixture
def sms_world(db, world) -> SmsWorld:
    return sms_world_make()


@contextmanager
def operator_for_tests(slug: str):
    """A committed operator of its own (schema, domain ``<slug>.localhost``, staff ``admin@<slug>.localhost``) for
    tests whose rows other processes must see; dropped with its schema afterwards."""
    from django.db import connection

    from tenants.models import Operator
    from tenants.services import operator_provision

    if not connection.settings_dict["NAME"].startswith("test_"):
        # pytest-django sets the test database up only if a collected test uses `db`: each module of committed
        # tests therefore has one, so it never writes to the developer's database when run alone.
        pytest.fail(f"not on a test database ({connection.settings_dict['NAME']}); add a `db` test to the module")
    Operator.objects.filter(schema_name=slug).delete()
    operator_provision(
        slug=slug,
        name=f"SMS test {slug}",
        domain=f"{slug}.localhost",
        admin_email=f"admin@{slug}.localhost",
        send_welcome=False,
    )
    connection.set_schema_to_public()
    try:
        yield Operator.objects.get(schema_name=slug)
    finally:
        connection.set_schema_to_public()
        Operator.objects.filter(schema_name=slug).delete()
