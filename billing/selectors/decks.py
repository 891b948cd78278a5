"""Reads of the billing engine: the rate deck of a tariff, quotes."""

import hashlib
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
from django.core.cache import cache
from django.db import connection

from .. import rating
from ..models import Rate, Tariff, TimeBand, Trunk

log = logging.getLogger(__name__)

# (schema, tariff id) -> (tariff.updated_at, deck). Importing rates touches the tariff, which retires the entry.
_decks: dict[tuple[str, int], tuple[datetime, rating.RateDeck]] = {}
_bulk: dict[tuple[str, int], tuple[datetime, "BulkDeck"]] = {}


RATE_COLUMNS = (
    *("prefix", "destination", "rate", "connect_fee", "first_increment", "next_increment", "min_charge"),
    *("effective_from", "time_band", "service"),
)


def rates_read(rates) -> Iterator[rating.Rate]:
    """Stored rates (a queryset of `Rate`) as the rating engine's, streamed. The database's constraints hold what
    rating.Rate checks (billing.models.Rate): no second check per rate."""
    return (rating.Rate.stored(*row) for row in rates.values_list(*RATE_COLUMNS).iterator(chunk_size=20000))


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
    deck = rating.RateDeck(list(rates_read(Rate.objects.filter(tariff=tariff))), bands=bands)
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
        self.rater = rating.BulkRater(deck)
        self.prefixes = np.array([r.prefix for r in deck.rates] + [""], dtype=object)  # index -1: no rate
        self.destinations = np.array([r.destination for r in deck.rates] + [""], dtype=object)


class _DeckOnDemand:
    """Stands for a tariff's RateDeck in a BulkRater loaded from the shared cache: reads the deck only if a row
    needs the rater's scalar path (a number over 18 digits, a call over 10**6 s)."""

    def __init__(self, tariff: Tariff) -> None:
        self._tariff = tariff
        self._deck: rating.RateDeck | None = None

    def __getattr__(self, name: str):
        if self._deck is None:
            self._deck = rate_deck_get(tariff=self._tariff)
        return getattr(self._deck, name)


# Built BulkDecks are shared between processes (each import_cdrs is one) through the cache, under a digest of what
# the deck is made of: the tariff's rates and bands as stored (so no edit, by any path, can reuse a stale deck) and
# the code that builds it. Building one of 50,000 rates takes about a second; loading it, a tenth of that.
_SHARED_VERSION = hashlib.sha256(
    Path(rating.__file__).read_bytes() + Path(__file__).read_bytes() + np.__version__.encode()
).hexdigest()[:16]
_SHARED_SECONDS = 7 * 86_400
def _deck_digest(tariff: Tariff) -> str:
    """A digest of the tariff's rates and time bands as stored, independent of row order."""
    rates = (
        Rate.objects.filter(tariff=tariff)
        .order_by()
        .values_list(*RATE_COLUMNS)
    )
    bands = TimeBand.objects.filter(tariff=tariff).order_by().values_list("name", "weekdays", "start", "end")
    digests = []
    with connection.cursor() as cursor:
        for queryset in (rates, bands):
            sql, params = queryset.query.sql_with_params()
            cursor.execute(
                f"SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) FROM ({sql}) r",
                params,
            )
            count, digest = cursor.fetchone()
            digests.append(f"{count}-{digest}")
    return ":".join(digests)


def _shared_key(tariff: Tariff) -> str:
    database = connection.settings_dict["NAME"]
    return f"billing:bulk-deck:{_SHARED_VERSION}:{database}:{connection.schema_name}:{tariff.pk}:{_deck_digest(tariff)}"


def bulk_deck_get(*, tariff: Tariff) -> BulkDeck:
    """The tariff's deck as a :class:`BulkDeck`: built once per version of the tariff in a process (see
    rate_deck_get), and once per content of its rates and bands across processes (through the cache)."""
    key = (connection.schema_name, tariff.pk)
    cached = _bulk.get(key)
    if cached and cached[0] == tariff.updated_at:
        return cached[1]
    shared = _shared_key(tariff)
    try:
        bulk = cache.get(shared)
    except Exception:  # noqa: BLE001 - the cache only saves time: without it, build
        log.warning("bulk deck cache unavailable", exc_info=True)
        bulk = None
    if isinstance(bulk, BulkDeck):
        bulk.rater.deck = _DeckOnDemand(tariff)
    else:
        bulk = BulkDeck(rate_deck_get(tariff=tariff))
        try:
            cache.set(shared, bulk, _SHARED_SECONDS)  # pickled without its RateDeck (see BulkRater.__getstate__)
        except Exception:  # noqa: BLE001
            log.warning("bulk deck cache unavailable", exc_info=True)
    _bulk[key] = (tariff.updated_at, bulk)
    return bulk


def cost_tariffs_get() -> tuple[dict[str, Tariff], Tariff | None]:
    """The supplier cost tariffs: by trunk name (as CDRs name trunks), and the default one (None if none is set)."""
    trunks = {t.name: t.cost_tariff for t in Trunk.objects.select_related("cost_tariff")}
    return trunks, Tariff.objects.filter(is_default_cost=True).first()
