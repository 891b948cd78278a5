"""Freephone (8-800) calls rated on the owner's class grid: two legs, the owner pays; golden cases by hand.

The grid (per minute, 60/60), after seed 001: forwarding to another network costs about 1 more than to our own.

                      leg rate   → Own network   → Other networks
    Fixed (7495, 7499)   0.50         0.90            1.90
    Mobile (79)          0.80         1.20            2.20
    Own network (7926)   0.10         0.30            1.30

Termination classes: "Own network" = 7926 (our own range), "Other networks" = every other number (prefix "").
"""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command

from billing import rating
from billing.csvformats import parse_freephone_cdrs
from billing.models import Account, Cdr, CdrFormat, ClassRate, FreephoneNumber, Tariff, TariffClass
from billing.selectors.grid import class_grid_average, class_grid_get
from billing.services import account_create, cdrs_ingest, cdrs_rate_pending
from billing.tests.engine_support import tariff_with_deck

D = Decimal
ORIGINATION = [("Fixed", ["7495", "7499"], "0.50"), ("Mobile", ["79"], "0.80"), ("Own network", ["7926"], "0.10")]
TERMINATION = [("Own network", ["7926"]), ("Other networks", [""])]
CELLS = {
    ("Fixed", "Own network"): "0.90",
    ("Fixed", "Other networks"): "1.90",
    ("Mobile", "Own network"): "1.20",
    ("Mobile", "Other networks"): "2.20",
    ("Own network", "Own network"): "0.30",
    ("Own network", "Other networks"): "1.30",
}
COST_DECK = "7499,Moscow fixed,0.20,,60/60,,,,\n79,Mobile,0.35,,60/60,,,,\n7926,Own mobile,0,,60/60,,,,\n"


def record(record_id: str, caller: str, forwarded_to: str, seconds: int, number: str = "8001234567") -> str:
    """A freephone platform record laid out like seed 001's sample line."""
    fields = f"41,{record_id},,607,,{number},{caller},20261013112944,0,{seconds},05,,{forwarded_to}"
    return fields + ",,,,,8800,,,,,,,,,,11.05\n"


RECORDS = (
    record("r1", "74991234567", "79261234567", 30)  # fixed caller → our own network, 30 s bill 1 min
    + record("r2", "74991234567", "79031234567", 90)  # fixed caller → another network, 90 s bill 2 min
    + record("r3", "79161234567", "", 61)  # mobile caller → our own IVR, 61 s bill 2 min
    + record("r4", "74951234567", "79261234567", 30, number="8009999999")  # a number nobody owns (yet)
)


def grid_tariff(name: str = "Freephone") -> Tariff:
    tariff = Tariff.objects.create(name=name, currency="EUR")
    classes = {}
    for position, (class_name, prefixes, leg_rate) in enumerate(ORIGINATION):
        classes[("origination", class_name)] = TariffClass.objects.create(
            tariff=tariff, direction="origination", name=class_name, prefixes=prefixes, leg_rate=D(leg_rate),
            position=position,
        )  # fmt: skip
    for position, (class_name, prefixes) in enumerate(TERMINATION):
        classes[("termination", class_name)] = TariffClass.objects.create(
            tariff=tariff, direction="termination", name=class_name, prefixes=prefixes, position=position
        )
    for (row, column), rate in CELLS.items():
        ClassRate.objects.create(
            tariff=tariff,
            origination=classes[("origination", row)],
            termination=classes[("termination", column)],
            rate=D(rate),
        )
    return tariff


@pytest.fixture
def owner(in_schema):
    with in_schema("demo"):
        tariff_with_deck("Interconnect", COST_DECK, kind="cost", is_default_cost=True)
        owner = account_create(name="Pizza Express", code="pizza", currency="EUR", tariff=grid_tariff())
        FreephoneNumber.objects.create(number="8001234567", account=owner)
        # A caller who happens to have an account of ours: the freephone call must not touch it.
        account_create(name="A caller", code="74991234567", currency="EUR", tariff=owner.tariff)
        yield owner


def _ingest() -> dict:
    return cdrs_ingest(source="freephone", records=parse_freephone_cdrs(RECORDS, tz="UTC"), tz="UTC")


# --- the pure grid -------------------------------------------------------------------------------------------------


def test_the_pure_grid_prices_both_legs_and_they_add_up_to_the_cell():
    grid = rating.ClassGrid(
        origination=[rating.GridClass(name=n, prefixes=frozenset(p), leg_rate=D(r)) for n, p, r in ORIGINATION],
        termination=[rating.GridClass(name=n, prefixes=frozenset(p)) for n, p in TERMINATION],
        cells={key: D(rate) for key, rate in CELLS.items()},
        first_increment=1,
        next_increment=1,
    )
    # 100 s from a mobile to another network, per second: 100/60 x 0.80 = 1.333333; 100/60 x 1.40 = 2.333333.
    quote = grid.price(caller="+79161234567", forwarded_to="441234", billsec=100)
    assert (quote.origination_class, quote.termination_class, quote.cell_rate) == ("Mobile", "Other networks", D("2.2"))
    assert (quote.origination_amount, quote.termination_amount, quote.total) == (
        D("1.333333"), D("2.333333"), D("3.666666"))  # fmt: skip
    # The longest prefix wins: 7926… is "Own network", not "Mobile" (79).
    assert grid.price(caller="79261111111", forwarded_to="79261234567", billsec=60).origination_class == "Own network"
    with pytest.raises(rating.Unpriced, match="no origination class for caller 123"):
        grid.price(caller="123", forwarded_to="", billsec=60)
    with pytest.raises(ValueError, match="below the origination leg rate"):
        rating.ClassGrid(
            origination=[rating.GridClass(name="Fixed", prefixes=frozenset({"7"}), leg_rate=D("0.5"))],
            termination=[rating.GridClass(name="Any", prefixes=frozenset({""}))],
            cells={("Fixed", "Any"): D("0.4")},
        )


# --- in the pipeline -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_freephone_call_is_two_legs_charged_to_the_owner_not_the_caller(owner, in_schema):
    with in_schema("demo"):
        summary = _ingest()
        legs = {(c.correlation_id, c.leg): c for c in Cdr.objects.filter(source="freephone")}
        prices = {key: (leg.price, leg.cost) for key, leg in legs.items() if leg.status == "rated"}
        assert prices == {
            # r1 fixed → own network, 1 min: origination 1 x 0.50; termination 1 x (0.90 - 0.50) = 0.40.
            #    Costs: the caller's range 7499 at 0.20; our own range 7926 at 0.
            ("r1", "origination"): (D("0.50"), D("0.20")),
            ("r1", "termination"): (D("0.40"), D("0")),
            # r2 fixed → another network, 2 min: 2 x 0.50 = 1.00; 2 x (1.90 - 0.50) = 2.80. Costs 0.40; 79 x 2 = 0.70.
            ("r2", "origination"): (D("1.00"), D("0.40")),
            ("r2", "termination"): (D("2.80"), D("0.70")),
            # r3 mobile → our own IVR, 2 min: the origination leg only, 2 x 0.80 = 1.60; cost 79 x 2 = 0.70.
            ("r3", "origination"): (D("1.60"), D("0.70")),
            ("r3", "termination"): (D("0"), D("0")),
        }
        r2 = legs[("r2", "origination")]
        assert (r2.source_id, legs[("r2", "termination")].source_id) == ("r2:orig", "r2:term")
        assert {k: r2.extra[k] for k in ("origination_class", "termination_class", "cell_rate", "call_total")} == {
            "origination_class": "Fixed",
            "termination_class": "Other networks",
            "cell_rate": "1.900000",
            "call_total": "3.800000",
        }
        assert r2.extra["reported_cost"] == "11.05" and r2.extra["forwarded_to"] == "79031234567"
        assert legs[("r3", "termination")].extra["termination_class"] == "IVR"
        assert legs[("r3", "termination")].extra["cell_rate"] is None
        # The legs add up to the total: the cell rate times the billed minutes.
        totals = {call: D(legs[(call, "origination")].extra["call_total"]) for call in ("r1", "r2", "r3")}
        for call, total in totals.items():
            assert legs[(call, "origination")].price + legs[(call, "termination")].price == total
        # Forwarding to another network costs more per minute than to our own network: 3.80 / 2 > 0.90 / 1.
        assert totals["r2"] / 2 > totals["r1"] / 1
        # The owner pays for all of it; the caller, who has an account too, pays nothing.
        owner.refresh_from_db()
        assert owner.balance == D("-6.30")  # 0.90 + 3.80 + 1.60
        assert Account.objects.get(code="74991234567").balance == 0
        assert {c.account_id for c in legs.values() if c.status == "rated"} == {owner.pk}
        # The summary shows both legs and the total for the file.
        assert summary["legs"] == {
            "origination": {"cdrs": 4, "charged": {"EUR": "3.100000"}},
            "termination": {"cdrs": 4, "charged": {"EUR": "3.200000"}},
        }
        assert summary["charged"] == {"EUR": "6.300000"} and (summary["read"], summary["imported"]) == (4, 8)
        # r4's number has no owner yet: both legs kept unrated with the reason.
        assert {legs[("r4", leg)].unrated_reason for leg in ("origination", "termination")} == {
            "unknown freephone number 8009999999"
        }


@pytest.mark.django_db
def test_importing_the_freephone_file_again_charges_nothing_more(owner, in_schema):
    with in_schema("demo"):
        _ingest()
        again = _ingest()
        owner.refresh_from_db()
        assert (again["imported"], again["duplicates"], owner.balance) == (0, 8, D("-6.30"))
        assert owner.entries.count() == 5  # r1, r2 legs and r3's origination leg (the IVR leg is 0)


@pytest.mark.django_db
def test_unrated_legs_are_rated_when_their_freephone_number_appears(owner, in_schema):
    with in_schema("demo"):
        _ingest()
        FreephoneNumber.objects.create(number="+8009999999", account=owner)
        assert cdrs_rate_pending(tz="UTC") == 2
        r4 = {c.leg: c for c in Cdr.objects.filter(correlation_id="r4")}
        # A Moscow fixed caller (7495) → our own network, 1 min: 0.50 + 0.40.
        assert (r4["origination"].price, r4["termination"].price) == (D("0.50"), D("0.40"))
        assert r4["origination"].account == owner and r4["origination"].account_code == "pizza"
        owner.refresh_from_db()
        assert owner.balance == D("-7.20")


@pytest.mark.django_db
def test_the_grid_reads_as_rows_and_columns(owner, in_schema):
    with in_schema("demo"):
        grid = class_grid_get(tariff=owner.tariff)
        assert [c["name"] for c in grid["termination"]] == ["Own network", "Other networks"]
        rows = {row["origination"]: [(c["termination"], c["rate"]) for c in row["cells"]] for row in grid["rows"]}
        assert rows["Mobile"] == [("Own network", D("1.2")), ("Other networks", D("2.2"))]
        assert [row["leg_rate"] for row in grid["rows"]] == [D("0.5"), D("0.8"), D("0.1")]


@pytest.mark.django_db
def test_the_flat_per_minute_figure_is_the_traffic_weighted_average_of_the_current_cells(owner, in_schema):
    with in_schema("demo"):
        _ingest()
        period = {"start": datetime(2026, 10, 1, tzinfo=UTC), "end": datetime(2026, 11, 1, tzinfo=UTC)}
        # Origination legs: 1 min Fixed → Own (0.90), 2 min Fixed → Other (1.90), 2 min Mobile → IVR (leg 0.80):
        # (1 x 0.90 + 2 x 1.90 + 2 x 0.80) / 5 = 6.30 / 5 = 1.26.
        average = class_grid_average(tariff=owner.tariff, **period)
        assert (average["average"], average["minutes"]) == (D("1.260000"), D("5"))
        assert average["cells"][0] == {"origination": "Fixed", "termination": "Other networks", "minutes": D(2),
                                       "rate": D("1.9")}  # fmt: skip
        # The current cells weigh in: Fixed → Other at 1.60 now gives (0.90 + 3.20 + 1.60) / 5 = 1.14.
        ClassRate.objects.filter(origination__name="Fixed", termination__name="Other networks").update(rate=D("1.6"))
        assert class_grid_average(tariff=owner.tariff, **period)["average"] == D("1.140000")
        # No traffic in a period: no figure rather than a made-up one.
        empty = class_grid_average(tariff=owner.tariff, start=datetime(2026, 1, 1, tzinfo=UTC), end=period["start"])
        assert (empty["average"], empty["cells"]) == (None, [])


@pytest.mark.django_db
def test_the_command_reads_the_platform_file_through_an_edited_profile(owner, in_schema, tmp_path, capsys):
    # The operator's platform puts the caller before the freephone number: an edited copy of the default profile.
    swapped = "".join(
        line.replace(",8001234567,74991234567,", ",74991234567,8001234567,").replace(
            ",8001234567,79161234567,", ",79161234567,8001234567,"
        )
        for line in RECORDS.splitlines(keepends=True)[:3]
    )
    path = tmp_path / "freephone.csv"
    path.write_text(swapped)
    with in_schema("demo"):
        CdrFormat.objects.create(
            name="platform-b",
            kind="freephone",
            columns={"source_id": 1, "caller": 5, "callee": 6, "start": 7, "duration": 9, "forwarded_to": 12},
        )
    call_command("import_cdrs", str(path), operator="demo", format="freephone", mapping="platform-b")
    summary = json.loads(capsys.readouterr().out)
    assert summary["charged"] == {"EUR": "6.300000"} and summary["imported"] == 6
