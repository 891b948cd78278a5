"""Cost and margin per CDR: the trunk's cost tariff, else the default cost tariff; golden cases by hand.

Each case runs through both import paths (the exact record-by-record one and the bulk Master.csv one): they must
give the same price, cost and notes.
"""

import io
from decimal import Decimal

import pytest

from billing.csvformats import parse_asterisk_master_csv
from billing.models import Account, Cdr, Tariff, Trunk
from billing.services import account_create, cdrs_import_bulk, cdrs_ingest, cdrs_rate_pending
from billing.tests.engine_support import master_line, tariff_with_deck

pytestmark = pytest.mark.django_db
D = Decimal

RETAIL = """34,Spain,0.10,,1/1,,,,
346,Spain mobile,0.20,0.05,60/60,,,,
44,United Kingdom,0.30,,30/6,0.50,,,
"""
CARRIER_ONE = """34,Spain,0.06,,1/1,,,,
346,Spain mobile,0.12,,1/1,,,,
"""
WHOLESALE = """34,Spain,0.08,,60/60,,,,
"""

CALLS = (
    master_line("c1", "34911234567", "2026-03-02 10:00:00", 180, dstchannel="SIP/carrier1-00000a1b")
    + master_line("c2", "34911234567", "2026-03-02 11:00:00", 61, dstchannel="PJSIP/nobody-0000001")
    + master_line("c3", "34611234567", "2026-03-02 12:00:00", 61, dstchannel="Local/200@from-internal-0001;2")
    + master_line("c4", "442071234567", "2026-03-02 13:00:00", 65, dstchannel="")
)


def _import(path: str, text: str, source: str) -> dict:
    if path == "exact":
        return cdrs_ingest(source=source, records=parse_asterisk_master_csv(text, tz="UTC"), tz="UTC")
    return cdrs_import_bulk(source=io.StringIO(text), tz="UTC", source_name=source)


@pytest.fixture
def tariffs(in_schema):
    with in_schema("demo"):
        retail = tariff_with_deck("Retail", RETAIL)
        carrier_one = tariff_with_deck("Carrier One", CARRIER_ONE, kind="cost")
        Trunk.objects.create(name="carrier1", cost_tariff=carrier_one)
        wholesale = tariff_with_deck("Wholesale", WHOLESALE, kind="cost", is_default_cost=True)
        account_create(name="Acme", code="acme", currency="EUR", tariff=retail)
        yield retail, carrier_one, wholesale


@pytest.mark.parametrize("path", ["exact", "bulk"])
def test_each_cdr_carries_price_cost_and_margin_from_its_trunk_or_the_default_cost_tariff(tariffs, in_schema, path):
    with in_schema("demo"):
        summary = _import(path, CALLS, source=path)
        cdrs = {c.source_id: c for c in Cdr.objects.filter(source=path)}
        # c1 leaves by trunk carrier1 (SIP/carrier1-00000a1b): price 180 s x 0.10/60 = 0.30 (1/1);
        #    cost on Carrier One 180 s x 0.06/60 = 0.18; margin 0.12.
        assert (cdrs["c1"].trunk, cdrs["c1"].price, cdrs["c1"].cost, cdrs["c1"].margin) == (
            "carrier1", D("0.3"), D("0.18"), D("0.12"))  # fmt: skip
        # c2 leaves by an unknown trunk: the default cost tariff, Wholesale 0.08 in 60/60: 61 s bill 120 s = 0.16;
        #    price 61 s x 0.10/60 = 0.1016666… = 0.101667 (half-up, micro unit); margin -0.058333.
        assert (cdrs["c2"].trunk, cdrs["c2"].price, cdrs["c2"].cost, cdrs["c2"].margin) == (
            "nobody", D("0.101667"), D("0.16"), D("-0.058333"))  # fmt: skip
        # c3 leaves by a Local channel (no trunk): default cost tariff; its longest prefix there is 34:
        #    120 s x 0.08/60 = 0.16; price: 346 in 60/60 bills 120 s x 0.20/60 = 0.40 + 0.05 connect fee = 0.45.
        assert (cdrs["c3"].trunk, cdrs["c3"].price, cdrs["c3"].cost, cdrs["c3"].margin) == (
            "", D("0.45"), D("0.16"), D("0.29"))  # fmt: skip
        # c4: no cost rate for the UK anywhere: still rated on its price (30/6: 65 s bill 66 s x 0.30/60 = 0.33,
        #    lifted to the 0.50 minimum charge); cost and margin unknown, and the CDR says why.
        assert (cdrs["c4"].status, cdrs["c4"].price, cdrs["c4"].cost, cdrs["c4"].margin) == (
            "rated", D("0.5"), None, None)  # fmt: skip
        assert cdrs["c4"].extra["cost_unknown"] == "no cost rate for 442071234567 in Wholesale"
        assert "cost_unknown" not in cdrs["c1"].extra
        assert summary["charged"] == {"EUR": "1.351667"}  # 0.30 + 0.101667 + 0.45 + 0.50
        assert summary["cost"] == {"EUR": "0.500000"}  # 0.18 + 0.16 + 0.16, the unknown one left out
        assert Account.objects.get(code="acme").balance == D("-1.351667")


@pytest.mark.parametrize("path", ["exact", "bulk"])
def test_without_a_default_cost_tariff_an_unknown_trunk_leaves_the_cost_unknown(tariffs, in_schema, path):
    _, _, wholesale = tariffs
    with in_schema("demo"):
        wholesale.is_default_cost = False
        wholesale.save()
        _import(path, CALLS, source=path)
        cdrs = {c.source_id: c for c in Cdr.objects.filter(source=path)}
        assert cdrs["c1"].cost == D("0.18")  # its trunk still has a cost tariff
        assert (cdrs["c2"].status, cdrs["c2"].cost) == ("rated", None)
        assert cdrs["c2"].extra["cost_unknown"] == "no cost tariff: trunk 'nobody' unknown and no default cost tariff"
        assert cdrs["c3"].extra["cost_unknown"] == "no default cost tariff"


@pytest.mark.parametrize("path", ["exact", "bulk"])
def test_a_cost_tariff_in_another_currency_leaves_the_margin_unknown(tariffs, in_schema, path):
    _, carrier_one, _ = tariffs
    with in_schema("demo"):
        carrier_one.currency = "USD"
        carrier_one.save()
        _import(path, CALLS, source=path)
        c1 = Cdr.objects.get(source=path, source_id="c1")
        assert (c1.price, c1.cost) == (D("0.3"), None)
        assert c1.extra["cost_unknown"] == "cost tariff Carrier One is in USD, the price in EUR"


def test_a_cost_left_unknown_is_filled_in_when_the_trunks_cost_tariff_appears(tariffs, in_schema):
    _, _, wholesale = tariffs
    with in_schema("demo"):
        wholesale.is_default_cost = False
        wholesale.save()
        Trunk.objects.all().delete()
        cdrs_import_bulk(source=io.StringIO(CALLS), tz="UTC")
        c1 = Cdr.objects.get(source_id="c1")
        assert c1.cost is None
        assert c1.extra["cost_unknown"] == "no cost tariff: trunk 'carrier1' unknown and no default cost tariff"
        balance = Account.objects.get(code="acme").balance
        # The trunk gets its cost tariff back: what the rating task runs fills in the cost, the price stays.
        Trunk.objects.create(name="carrier1", cost_tariff=Tariff.objects.get(name="Carrier One"))
        assert cdrs_rate_pending(tz="UTC") == 0
        c1.refresh_from_db()
        assert (c1.price, c1.cost, c1.margin) == (D("0.3"), D("0.18"), D("0.12"))
        assert "cost_unknown" not in c1.extra
        # Calls by no trunk still have no cost tariff, and say so.
        assert Cdr.objects.get(source_id="c3").extra["cost_unknown"] == "no default cost tariff"
        assert Account.objects.get(code="acme").balance == balance  # nothing charged again
