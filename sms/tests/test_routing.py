"""Routing rules (pure) and number lookup with the operator's prefix table."""

from decimal import Decimal

import pytest

from sms.numbers import InvalidNumber, PrefixEntry, PrefixTable, number_parse, sender_is_valid
from sms.routing import RouteRule, RouteTable

CLIENT = 7


def rule(id, gateway, *, client=None, prefix="", country="", operator="", priority=100, price="0.05", cost="0.02"):
    return RouteRule(id, client, prefix, country, operator, priority, gateway, Decimal(price), Decimal(cost))


def gateways(chain) -> list[int]:
    return [r.gateway_id for r in chain]


def test_client_routes_come_before_the_operators_defaults():
    table = RouteTable([rule(1, gateway=10), rule(2, gateway=20, client=CLIENT)])
    assert gateways(table.chain(client_id=CLIENT, digits="34612345678")) == [20, 10]
    assert gateways(table.chain(client_id=99, digits="34612345678")) == [10]


def test_a_route_matches_only_when_every_criterion_it_sets_matches():
    table = RouteTable(
        [
            rule(1, gateway=10, prefix="346"),
            rule(2, gateway=20, country="GB"),
            rule(3, gateway=30, operator="Vodafone"),
            rule(4, gateway=40, prefix="34", operator="Movistar"),
        ]
    )
    assert gateways(table.chain(client_id=CLIENT, digits="34612345678", country="ES", mobile_operator="vodafone")) == [
        10,
        30,
    ]
    assert gateways(table.chain(client_id=CLIENT, digits="447400123456", country="GB")) == [20]
    assert gateways(table.chain(client_id=CLIENT, digits="34912345678", country="ES", mobile_operator="Movistar")) == [
        40
    ]
    assert table.chain(client_id=CLIENT, digits="12125550100", country="US") == []


def test_priority_then_specificity_order_the_failover_chain():
    table = RouteTable(
        [
            rule(1, gateway=10, prefix="34", priority=50),
            rule(2, gateway=20, prefix="3461", priority=50),
            rule(3, gateway=30, priority=10),
        ]
    )
    assert gateways(table.chain(client_id=CLIENT, digits="34612345678")) == [30, 20, 10]


def test_one_route_per_gateway_and_the_price_of_the_first():
    table = RouteTable(
        [
            rule(1, gateway=10, prefix="346", priority=1, price="0.07"),
            rule(2, gateway=10, priority=2, price="0.01"),
            rule(3, gateway=20, priority=3, price="0.03"),
        ]
    )
    chain = table.chain(client_id=CLIENT, digits="34612345678")
    assert [(r.id, r.gateway_id) for r in chain] == [(1, 10), (3, 20)]
    assert chain[0].price_per_part == Decimal("0.07")


def test_the_clients_default_route_comes_between_its_own_and_the_operators():
    table = RouteTable(
        [
            rule(1, gateway=10, priority=1),
            rule(2, gateway=20, priority=50),
            rule(3, gateway=30, client=CLIENT, prefix="44"),
        ],
        client_defaults={CLIENT: 2},
    )
    assert gateways(table.chain(client_id=CLIENT, digits="34612345678")) == [20, 10]
    assert gateways(table.chain(client_id=CLIENT, digits="447400123456")) == [30, 20, 10]


def test_numbers_are_normalised_to_e164_with_country_and_operator():
    parsed = number_parse("0034 612-34-56-78")
    assert parsed.e164 == "+34612345678" and parsed.country == "ES" and parsed.mobile_operator
    assert number_parse("447400123456").country == "GB"


@pytest.mark.parametrize("raw", ["+1", "12", "+34 6", "abc", "+999999999999", "+3461234567890123"])
def test_invalid_numbers_are_refused(raw):
    with pytest.raises(InvalidNumber):
        number_parse(raw)


def test_the_operators_prefix_table_overrides_the_library():
    table = PrefixTable([PrefixEntry("34612", "ES", "PortedTel"), PrefixEntry("3461234", "ES", "LongerTel")])
    assert number_parse("+34612345678", prefixes=table).mobile_operator == "LongerTel"
    assert number_parse("+34612999999", prefixes=table).mobile_operator == "PortedTel"
    # A range the library does not know is valid when the operator lists it
    own = PrefixTable([PrefixEntry("88299", "", "Satellite")])
    assert number_parse("+882991234567", prefixes=own).mobile_operator == "Satellite"


@pytest.mark.parametrize(
    ("sender", "valid"),
    [
        ("TEXTCO", True),
        ("My Shop", True),
        ("+34600000001", True),
        ("4446", True),
        ("TooLongSender", False),
        ("", False),
    ],
)
def test_sender_ids(sender, valid):
    assert sender_is_valid(sender) is valid
