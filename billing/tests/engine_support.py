"""Helpers of the rating-engine tests (test_engine_*.py): decks, Asterisk lines, a committed operator."""

from decimal import Decimal

from django.db import connection
from django_tenants.utils import schema_context

from billing.models import Tariff
from billing.services import rates_import

DECK_HEADER = "prefix,destination,rate,connect_fee,increment,min_charge,effective_from,service,time_band\n"
ENGINE_OPERATOR = "engine"  # committed, for tests a worker or another process must see


def tariff_with_deck(name: str, deck: str, *, kind: str = "price", currency: str = "EUR", **fields) -> Tariff:
    """A tariff and its rate deck (CSV rows without the header), through the rate-import service."""
    tariff = Tariff.objects.create(name=name, kind=kind, currency=currency, **fields)
    result = rates_import(tariff=tariff, source=DECK_HEADER + deck)
    assert result.ok, result.errors
    tariff.refresh_from_db()
    return tariff


def master_line(
    uniqueid: str,
    dst: str,
    start: str,
    billsec: int,
    *,
    account: str = "acme",
    dstchannel: str = "SIP/carrier1-00000a1b",
    disposition: str = "ANSWERED",
    src: str = "100",
) -> str:
    """One Asterisk Master.csv line (uniqueid and userfield logged: 18 fields)."""
    return (
        f'"{account}","{src}","{dst}","from-internal","""Office"" <{src}>","SIP/{src}-0001","{dstchannel}","Dial",'
        f'"SIP/{dst}","{start}","{start}","{start}",{billsec + 5},{billsec},"{disposition}","DOCUMENTATION",'
        f'"{uniqueid}",""\n'
    )


def money(text: str) -> Decimal:
    return Decimal(text)


def engine_operator():
    """A committed operator of its own ("engine"), made once per test session: other processes see its rows and
    they never leak into the demo operator other tests look at."""
    from tenants.models import Operator
    from tenants.services import operator_provision

    operator = Operator.objects.filter(schema_name=ENGINE_OPERATOR).first()
    if operator is None:
        operator = operator_provision(
            slug=ENGINE_OPERATOR,
            name="Engine Telecom",
            domain="engine.localhost",
            admin_email="admin@engine.localhost",
            time_zone="Europe/Madrid",
            send_welcome=False,
        ).operator
        connection.set_schema_to_public()
    return operator


def in_engine():
    return schema_context(ENGINE_OPERATOR)
