"""Reads of the billing engine: the rate deck of a tariff, quotes."""

from datetime import datetime

from django.db import connection

from .. import rating
from ..models import Rate, Tariff, TimeBand

# (schema, tariff id) -> (tariff.updated_at, deck). Importing rates touches the tariff, which retires the entry.
_decks: dict[tuple[str, int], tuple[datetime, rating.RateDeck]] = {}


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
    rates = [
        rating.Rate(
            prefix=r["prefix"],
            destination=r["destination"],
            rate=r["rate"],
            connect_fee=r["connect_fee"],
            first_increment=r["first_increment"],
            next_increment=r["next_increment"],
            min_charge=r["min_charge"],
            effective_from=r["effective_from"],
            time_band=r["time_band"] or None,
            service=r["service"],
        )
        for r in Rate.objects.filter(tariff=tariff).values().iterator(chunk_size=20000)
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
