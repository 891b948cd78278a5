"""The demo's billing set-up: made once, through the services, and every sample call rated."""

import pytest
from django_tenants.utils import schema_context

from billing.demo import billing_demo_load
from billing.models import Account, Cdr, LedgerEntry

pytestmark = pytest.mark.django_db


def test_the_billing_demo_rates_and_charges_its_calls_once(world):
    with schema_context("demo"):
        billing_demo_load(operator=world.demo)
        billing_demo_load(operator=world.demo)  # a second run changes nothing

        account = Account.objects.get(code="acme")
        calls = Cdr.objects.filter(source="demo")
        assert calls.count() == 300
        assert not calls.filter(status="unrated").exists()
        assert calls.filter(cost__isnull=False).count() == 300  # the default cost tariff prices every call
        assert calls.filter(package_seconds__gt=0).exists()  # Spain-mobile calls use the package first
        entries = LedgerEntry.objects.filter(account=account)
        assert account.balance == sum(e.amount for e in entries)
        assert 0 < account.balance < 100  # the 100 top-up minus the calls
