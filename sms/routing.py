"""Routing: the gateways a message may leave by, in failover order, with the price the client pays per part.

Pure module (no Django import): the acceptance path routes every recipient in memory against a :class:`RouteTable`
built once from the ``sms.Route`` rows (``sms.selectors.route_table_get`` caches it per operator).

The rules
    A route matches a destination when each criterion it sets matches: the number starts with ``prefix``, its
    country is ``country``, its mobile operator is ``mobile_operator`` (any case). A route that sets none matches
    every number. Candidates come in three groups, in this order:

    1. the client's own routes that match;
    2. the client's default route (one of the operator's routes the client was given), if it matches;
    3. the operator's default routes (routes of no client) that match.

    Within a group: lower ``priority`` first, then the more specific (longer prefix, then a mobile operator, then a
    country), then the older route. The chain keeps the first route of each gateway: failover moves to the next
    *gateway*, since a second route to a gateway that just refused the message would fail the same way.

Price and cost
    The client pays the first candidate's price per part (decided at acceptance, charged at submission); the cost
    is that of the route whose gateway actually carried the message, so a failover changes the cost, not the price.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["RouteRule", "RouteTable"]


@dataclass(frozen=True, slots=True)
class RouteRule:
    id: int
    client_id: int | None  # None: an operator default route
    prefix: str
    country: str
    mobile_operator: str
    priority: int
    gateway_id: int
    price_per_part: Decimal
    cost_per_part: Decimal

    def matches(self, digits: str, country: str, mobile_operator_folded: str) -> bool:
        if self.prefix and not digits.startswith(self.prefix):
            return False
        if self.country and self.country != country:
            return False
        return not self.mobile_operator or self.mobile_operator.casefold() == mobile_operator_folded

    @property
    def sort_key(self) -> tuple:
        return (self.priority, -len(self.prefix), not self.mobile_operator, not self.country, self.id)


class RouteTable:
    """Every enabled route of one operator, grouped for fast matching."""

    def __init__(self, rules: Iterable[RouteRule], *, client_defaults: dict[int, int] | None = None) -> None:
        self.by_id: dict[int, RouteRule] = {}
        self._client: dict[int, list[RouteRule]] = {}
        self._operator: list[RouteRule] = []
        for rule in sorted(rules, key=lambda r: r.sort_key):
            self.by_id[rule.id] = rule
            if rule.client_id is None:
                self._operator.append(rule)
            else:
                self._client.setdefault(rule.client_id, []).append(rule)
        # client id -> its default route id
        self._client_defaults = dict(client_defaults or {})

    def __len__(self) -> int:
        return len(self.by_id)

    def chain(self, *, client_id: int, digits: str, country: str = "", mobile_operator: str = "") -> list[RouteRule]:
        """The routes to try for one destination, one per gateway, in failover order; empty when none matches."""
        folded = mobile_operator.casefold()
        chain: list[RouteRule] = []
        gateways: set[int] = set()

        def take(rule: RouteRule) -> None:
            if rule.gateway_id not in gateways and rule.matches(digits, country, folded):
                gateways.add(rule.gateway_id)
                chain.append(rule)

        for rule in self._client.get(client_id, ()):
            take(rule)
        default_id = self._client_defaults.get(client_id)
        if default_id is not None and default_id in self.by_id:
            take(self.by_id[default_id])
        for rule in self._operator:
            take(rule)
        return chain
