"""Reads of the billing engine: the rate deck of a tariff, quotes."""

from datetime import datetime

import numpy as np
from django.db import connection

from .. import rating
from ..models import Rate, Tariff, TimeBand, Trunk

# (schema, tariff id) -> (tariff.updated_at, deck). Importing rates touches the tariff, which retires the entry.
_decks: dict[tuple[str, int], tuple[datetime, rating.RateDeck]] = {}
_bulk: dict[tuple[str, int], tuple[rating.RateDeck, "BulkDeck"]] = {}


def rate_deck_get(*, tariff: Tariff) -> rating.RateDeck:
    """The tariff's rate deck as the pure rating engine wants it, built once per version of the tariff."""
    key = (connection.schema_name, tariff.pk)
    cached = _decks.get(key)
    if cached and cached[0] == tariff.updated_at:
        return cached[1]
    bands = [
        rating.TimeBand(name=b.name, weekdays=frozenset(b.weekdays), start=b.start, end=b.end)
        for b in TimeBand.objects.filter(tariff=tariff)
    ]
    columns = ("prefix", "destination", "rate", "connect_fee", "first_increment", "next_increment", "min_charge")
    # The database's constraints hold what rating.Rate checks (billing.models.Rate): no second check per rate.
    rates = [
        rating.Rate.stored(*row)
        for row in Rate.objects.filter(tariff=tariff)
        .values_list(*columns, "effective_from", "time_band", "service")
        .iterator(chunk_size=20000)
    ]
    deck = rating.RateDeck(rates, bands=bands)
    _decks[key] = (tariff.updated_at, deck)
    return deck


def quote_as_dict(quote: rating.Quote, *, currency: str) -> dict:
    return {
        "matched_prefix": quote.prefix,
        "destination": quote.destination,
        "service": quote.service,
        "billed_seconds": quote.billed_seconds,
        "units": quote.units,
        "rate": str(quote.rate.rate),
        "increment": quote.rate.increment,
        "connect_fee": str(quote.connect_fee),
        "total": str(quote.amount),
        "currency": currency,
    }


def tariff_quote(
    *, tariff: Tariff, number: str, seconds: int, at: datetime, tz: str, service: str = "voice", units: int = 1
) -> dict | None:
    """The price of one call or message under a tariff, with its breakdown; None when no rate applies."""
    quote = rating.rate_one(
        rate_deck_get(tariff=tariff), number=number, seconds=seconds, at=at, tz=tz, service=service, units=units
    )
    return None if quote is None else quote_as_dict(quote, currency=tariff.currency)


class BulkDeck:
    """A tariff's deck ready for vectorised rating: the BulkRater and, per rate index, its prefix and destination."""

    def __init__(self, deck: rating.RateDeck) -> None:
        self.deck = deck
        self.rater = rating.BulkRater(deck)
        self.prefixes = np.array([r.prefix for r in deck.rates] + [""], dtype=object)  # index -1: no rate
        self.destinations = np.array([r.destination for r in deck.rates] + [""], dtype=object)


def bulk_deck_get(*, tariff: Tariff) -> BulkDeck:
    """The tariff's deck as a :class:`BulkDeck`, built once per version of the tariff (see rate_deck_get)."""
    deck = rate_deck_get(tariff=tariff)
    key = (connection.schema_name, tariff.pk)
    cached = _bulk.get(key)
    if cached and cached[0] is deck:
        return cached[1]
    bulk = BulkDeck(deck)
    _bulk[key] = (deck, bulk)
    return bulk


def cost_tariffs_get() -> tuple[dict[str, Tariff], Tariff | None]:
    """The supplier cost tariffs: by trunk name (as CDRs name trunks), and the default one (None if none is set)."""
    trunks = {t.name: t.cost_tariff for t in Trunk.objects.select_related("cost_tariff")}
    return trunks, Tariff.objects.filter(is_default_cost=True).first()
