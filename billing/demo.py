"""Billing sample data for `make run`'s demo operator: a retail and a supplier tariff, acme's account, a freephone
grid, a minute package and a week of calls, all made through the billing services as an operator would."""

import random
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from core.models import Customer

from .csvformats import ParsedCdr
from .models import ClassRate, FreephoneNumber, MinutePackage, Tariff, TariffClass, Trunk
from .services import account_create, account_topup, cdrs_ingest, rates_import

RETAIL_DECK = """prefix,destination,rate,connect_fee,increment,min_charge,effective_from
34,Spain,0.020,0,60/60,0,
349,Spain fixed,0.015,0,60/60,0,
346,Spain mobile,0.045,0.01,30/6,0,
347,Spain mobile,0.045,0.01,30/6,0,
44,United Kingdom,0.030,0,1/1,0,
447,United Kingdom mobile,0.080,0,1/1,0.02,
1,USA and Canada,0.012,0,6/6,0,
"""

CARRIER_DECK = """prefix,destination,rate,connect_fee,increment,min_charge,effective_from
34,Spain,0.008,0,1/1,0,
346,Spain mobile,0.018,0,1/1,0,
347,Spain mobile,0.018,0,1/1,0,
44,United Kingdom,0.010,0,1/1,0,
447,United Kingdom mobile,0.030,0,1/1,0,
1,USA and Canada,0.004,0,1/1,0,
"""

# Origination classes (where the caller is) × termination classes (where the call is forwarded), per minute.
GRID_ORIGINATION = [("Fixed", ["349"], "0.030"), ("Mobile", ["346", "347"], "0.060"), ("Own network", ["34622"], "0")]
GRID_TERMINATION = [("Own network", ["34622"]), ("Other networks", ["34"])]
GRID_CELLS = {
    ("Fixed", "Own network"): "0.040",
    ("Fixed", "Other networks"): "0.055",
    ("Mobile", "Own network"): "0.070",
    ("Mobile", "Other networks"): "0.085",
    ("Own network", "Own network"): "0.010",
    ("Own network", "Other networks"): "0.025",
}


def billing_demo_load(*, operator) -> None:
    """Idempotent: a second run finds the demo tariff and changes nothing."""
    if Tariff.objects.filter(name="Retail").exists():
        return
    currency = operator.currency
    retail = Tariff.objects.create(name="Retail", currency=currency)
    rates_import(tariff=retail, source=RETAIL_DECK)
    carrier = Tariff.objects.create(name="Carrier One cost", kind="cost", currency=currency, is_default_cost=True)
    rates_import(tariff=carrier, source=CARRIER_DECK)
    Trunk.objects.create(name="carrier1", cost_tariff=carrier)

    for position, (name, prefixes, leg_rate) in enumerate(GRID_ORIGINATION):
        TariffClass.objects.create(
            tariff=retail,
            direction="origination",
            name=name,
            prefixes=prefixes,
            leg_rate=Decimal(leg_rate),
            position=position,
        )
    for position, (name, prefixes) in enumerate(GRID_TERMINATION):
        TariffClass.objects.create(
            tariff=retail, direction="termination", name=name, prefixes=prefixes, position=position
        )
    classes = {(c.direction, c.name): c for c in TariffClass.objects.filter(tariff=retail)}
    ClassRate.objects.bulk_create(
        ClassRate(
            tariff=retail,
            origination=classes[("origination", origination)],
            termination=classes[("termination", termination)],
            rate=Decimal(rate),
        )
        for (origination, termination), rate in GRID_CELLS.items()
    )

    acme = Customer.objects.filter(subdomain="acme").first()
    account = account_create(
        name="Acme Corp",
        code="acme",
        currency=currency,
        tariff=retail,
        customer=acme,
        kind="prepaid",
        credit_limit=Decimal(20),
    )
    account_topup(account=account, amount=Decimal(100), idempotency_key="demo:acme:welcome", description="Welcome")
    package = MinutePackage.objects.create(
        name="Spain mobile 100",
        prefixes=["346", "347"],
        included_minutes=Decimal(100),
        tiers=[{"up_to_minutes": "1000", "rate": "0.030"}],
    )
    account.packages.add(package)
    FreephoneNumber.objects.create(number="34800123456", account=account)

    cdrs_ingest(source="demo", records=_sample_calls(), tz=operator.time_zone)


def _sample_calls(count: int = 300) -> list[ParsedCdr]:
    """A week of acme's calls; seeded so every demo looks the same."""
    pick = random.Random(800)
    now = timezone.now().replace(microsecond=0)
    destinations = ["34912345678", "34612345678", "34712345678", "447700900123", "442079460000", "12125550100"]
    calls = []
    for n in range(count):
        billsec = pick.choice([0, 12, 45, 60, 95, 180, 600])
        calls.append(
            ParsedCdr(
                line=n + 1,
                source_id=f"demo-{n}",
                caller="34910000001",
                callee=pick.choice(destinations),
                start=now - timedelta(minutes=pick.randint(5, 7 * 24 * 60)),
                duration=billsec + pick.randint(3, 20),
                billsec=billsec,
                account="acme",
                disposition="ANSWERED" if billsec else "NO ANSWER",
            )
        )
    return calls
