"""Replaying a minute package's period: the prices its calls get when they are applied in the order they started.

One package period is the calls of one account in one package in one calendar month of the operator's zone. Its
counter (``PackageUsage``) starts at zero on the 1st and moves by each call's ``package_seconds`` in (start,
source id) order. :func:`package_period_replay` walks such a sequence: a call marked ``reprice`` is priced afresh
by ``rating.price_with_package`` at the position the calls before it leave; any other call keeps its stored rating
and moves the position by its stored package seconds. The final position is what the counter must hold.

Which deck prices a call: the one of the tariff it was priced with (``PackageCall.tariff_id``, from the CDR's
``extra["tariff_id"]``) when the caller hands that deck in ``decks``; otherwise the replay's ``deck`` (the
account's tariff, or a rerate's candidate). Each price says which tariff it came from (``PackagePrice.tariff_id``,
written as ``extra["tariff_id"]``), so the next replay prices the call alike. Rates are looked up at the call's
start as the deck holds them now: a rate version dated after the call never reaches it, but a rate corrected in
place (same ``effective_from``) does — editing a deck in place re-prices the past calls a later replay touches,
and future-dated rates are the way to change prices without touching past calls. Two users:

- ingestion (``ingest.py``), when a call arrives later than calls of its period that started after it
  (re-sequencing: the late call and the ones after it are priced at their true positions);
- rerating (``rerate.py``), what-if and confirm of package-priced CDRs under the current or a candidate tariff.

Neither writes a counter here: the callers do, under the counter's row lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal

from .. import rating
from ..choices import EntryKind
from ..models import PackageUsage
from .ledger import ledger_entries_post


@dataclass
class PackageCall:
    """One call of a package period: what replay needs, and what it was stored with (``cdr_id`` None: not stored)."""

    start: datetime
    source_id: str
    callee: str
    billsec: int
    package_seconds: int = 0
    reprice: bool = False
    cdr_id: int | None = None
    tariff_id: int | None = None  # the tariff it was priced with (None: unknown, the replay's deck prices it)

    @property
    def order(self) -> tuple:
        return (self.start, self.source_id)


@dataclass(frozen=True)
class PackagePrice:
    """A package call's rating: what ingestion writes on the CDR (price, billed and package seconds, parts)."""

    price: Decimal
    billed_seconds: int
    package_seconds: int
    prefix: str
    destination: str
    parts: list
    tariff_id: int | None = None  # the tariff whose deck priced it

    @property
    def extra(self) -> dict:
        extra = {"package_parts": self.parts}
        if self.tariff_id is not None:
            extra["tariff_id"] = self.tariff_id
        return extra


def package_call_price(
    rate: rating.Rate, billsec: int, used_seconds: int, package: rating.MinutePackage, *, tariff_id: int | None = None
) -> PackagePrice:
    """Price one call under ``package`` with the counter at ``used_seconds`` (parts as ``extra["package_parts"]``,
    the tariff of ``rate``, when given, as ``extra["tariff_id"]``)."""
    quote = rating.price_with_package(rate, billsec, used_seconds, package)
    return PackagePrice(
        price=quote.amount,
        billed_seconds=quote.billed_seconds,
        package_seconds=quote.package_seconds,
        prefix=rate.prefix,
        destination=rate.destination[:100],
        parts=[
            {"seconds": seconds, "rate": str(rate.rate if part_rate is None else part_rate), "from": part_from}
            for seconds, part_rate in quote.parts
            for part_from in ["deck" if part_rate is None else "package"]
        ],
        tariff_id=tariff_id,
    )


@dataclass
class Replay:
    """What a replay gives: per call (in the order given) its new rating, or None when it keeps the stored one
    (not to re-price, or the deck has no rate for it now); and the counter's final position."""

    prices: list[PackagePrice | None]
    used_seconds: int


def package_period_replay(
    calls: Sequence[PackageCall],
    *,
    package: rating.MinutePackage,
    deck: rating.RateDeck,
    tz: str,
    used_before: int = 0,
    tariff_id: int | None = None,
    decks: Mapping[int, rating.RateDeck] | None = None,
) -> Replay:
    """Apply ``calls`` (sorted by :attr:`PackageCall.order`) to a counter starting at ``used_before``.

    A call to re-price is priced with ``decks[call.tariff_id]`` (the deck of the tariff it was priced with) when
    there is one, else with ``deck``, the deck of ``tariff_id``.
    """
    decks = decks or {}
    position = used_before
    prices: list[PackagePrice | None] = []
    for call in calls:
        price = None
        if call.reprice:
            own = decks.get(call.tariff_id) if call.tariff_id is not None else None
            call_deck, call_tariff = (deck, tariff_id) if own is None else (own, call.tariff_id)
            rate = call_deck.lookup(number=call.callee, at=call.start, tz=tz)
            if rate is not None:
                price = package_call_price(rate, call.billsec, position, package, tariff_id=call_tariff)
        prices.append(price)
        position += call.package_seconds if price is None else price.package_seconds
    return Replay(prices=prices, used_seconds=position)


@dataclass(frozen=True)
class Adjustment:
    """One adjustment entry: ``amount`` is signed as the ledger keeps it (old price - new price)."""

    account_id: int
    amount: Decimal
    idempotency_key: str
    description: str
    cdr_id: int


def package_month(moment: datetime, zone: tzinfo) -> date:
    """The package period of ``moment``: the first day of its calendar month in the operator's time zone."""
    return moment.astimezone(zone).date().replace(day=1)


def package_months_bounds(first: date, last: date, zone: tzinfo) -> tuple[datetime, datetime]:
    """From the start of the period ``first`` to the end (excluded) of the period ``last``, as instants."""
    following = (last.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime.combine(first, time.min, tzinfo=zone), datetime.combine(following, time.min, tzinfo=zone)


def package_counters_lock(keys) -> dict[tuple[int, int, date], PackageUsage]:
    """Create (if missing) and lock the counters ``(account id, package id, month)``, in id order in one statement:
    every writer of counters (import, re-sequencing, rerate confirm) takes them so, before any account, so none
    deadlocks with another. Returns them by key."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    PackageUsage.objects.bulk_create(
        [PackageUsage(account_id=a, package_id=p, period_start=d) for a, p, d in keys], ignore_conflicts=True
    )
    rows = PackageUsage.objects.select_for_update().filter(
        account_id__in={k[0] for k in keys}, package_id__in={k[1] for k in keys}, period_start__in={k[2] for k in keys}
    )
    return {(u.account_id, u.package_id, u.period_start): u for u in rows.order_by("pk")}


def adjustments_post(adjustments: list[Adjustment]) -> int:
    """Post adjustment entries (keys seen before are skipped) and move the balances by what was inserted, in the
    caller's transaction, with the accounts locked in id order first. Returns how many were new."""
    return ledger_entries_post(
        kind=EntryKind.ADJUSTMENT,
        entries=[(a.account_id, a.amount, a.idempotency_key, a.description, a.cdr_id) for a in adjustments if a.amount],
    )
