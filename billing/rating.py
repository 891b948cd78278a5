"""Pure rating engine: prices one call, message or USSD event against a rate deck.

No Django import here on purpose: the same code rates CDRs in Celery workers, answers
"how much would this call cost" in the API, and is benchmarked alone (``make bench``).

Rules, in telecom terms (the tests in ``billing/tests/test_rating.py`` pin each one):

* **Longest prefix wins.** The called number (E.164 digits, a leading ``+`` is ignored) is
  matched against the deck's prefixes, longest first. A prefix only counts if it has a rate
  *applicable at the call's start*: effective (``effective_from <= start``) and, for a
  time-banded rate, inside its band. If the longest prefix has nothing applicable (every
  version is future-dated, or it only has banded rates and none of the bands is open), the
  next shorter prefix is tried, and so on. A number with no applicable prefix is unrated.
* **Versions.** Each (prefix, service, time band) is a series of versions; the one with the
  latest ``effective_from <= start`` applies, so a future-dated rate takes over on its date
  without anyone touching the deck. ``effective_from=None`` means "since forever". A series
  has no end date: a band is retired by deleting its rows, not by a newer unbanded version.
* **Time bands** are judged in the operator's time zone at the call's START: a call that
  starts at 17:59 on peak is billed entirely at peak even if it ends off-peak. A rate whose
  band is open beats the same prefix's rate without a band; if several bands are open at
  once, the band listed first in the deck wins.
* **Increments.** ``first/next``: the first block is billed whole, then whole next-blocks:
  ``billed = first if d <= first else first + ceil((d - first) / next) * next``.
* **Unanswered calls cost nothing.** ``billsec == 0`` bills 0 s with no connect fee and no
  minimum charge (the switch reports failed and unanswered attempts; nobody pays for those).
* **Connect fee and minimum charge.** For an answered call
  ``amount = max(min_charge, connect_fee + usage)``: the minimum charge is a floor on the
  whole call, connect fee included (it is not added on top of the connect fee).
* **Usage** is ``rate * billed_seconds / 60`` rounded half-up to the micro unit (1e-6). All
  money is ``Decimal``; prices may have at most 6 decimal places, so every amount is exact
  to the micro unit and the vectorised :class:`BulkRater` can compute in int64 micro-units
  and agree with :func:`rate_one` to the last digit. Amounts are never rounded to cents here:
  invoices round, ledger entries keep micro units.
* **SMS and USSD** are priced per unit (message parts, USSD events): ``amount = rate * units``,
  with no increments, connect fee or minimum charge.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal, localcontext
from zoneinfo import ZoneInfo

import numpy as np

SERVICES = frozenset({"voice", "sms", "ussd"})
MICRO = Decimal("0.000001")
MICROS_PER_UNIT = 1_000_000
# E.164 numbers have at most 15 digits; a prefix longer than a number makes no sense.
MAX_PREFIX_DIGITS = 15
# Prices at or above this are treated as typos; the bound also keeps bulk int64 maths far from overflow.
MAX_PRICE = Decimal(1_000_000)
MAX_INCREMENT_SECONDS = 86_400
# Numbers are bulk-encoded as 18 digits in an int64 (10**18 < 2**63); longer ones take the scalar path.
_BULK_DIGITS = 18
# Numbers are first looked up in a direct table by their first digits (10**6 int32 = 4 MB at most).
_BLOCK_DIGITS = 6
_MIXED_BLOCK = -2
# Calls longer than this (11.5 days) take the scalar path in bulk so int64 micro-units never overflow.
_BULK_MAX_SECONDS = 1_000_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_IMMEDIATE = -(2**62)  # effective_from=None sorts before every real instant
_US_PER_DAY = 86_400 * MICROS_PER_UNIT


# ---------------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------------


def _money(value: object, name: str) -> Decimal:
    """Return ``value`` as a Decimal price, refusing floats and anything finer than a micro unit."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise TypeError(f"{name} must be a Decimal, got {type(value).__name__}")
    amount = Decimal(value)
    if amount.is_zero():
        amount = amount.copy_abs()  # -0 would be written back as "-0" and read as negative
    if not amount.is_finite():
        raise ValueError(f"{name} must be a finite number")
    if amount < 0:
        raise ValueError(f"{name} must not be negative")
    if amount >= MAX_PRICE:
        raise ValueError(f"{name} must be below {MAX_PRICE}")
    if amount != amount.quantize(MICRO):
        raise ValueError(f"{name} must have at most 6 decimal places")
    return amount


def _to_micro(amount: Decimal) -> int:
    """Exact integer number of micro units in a validated price."""
    return int(amount.scaleb(6))


def _epoch_us(moment: datetime) -> int:
    """Microseconds since 1970-01-01 UTC of an aware datetime, exactly (no float)."""
    return (moment - _EPOCH) // _ONE_US


def _from_epoch_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _zone(tz: str | tzinfo) -> tzinfo:
    if tz in ("UTC", "Etc/UTC"):
        return UTC
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _digits(number: str) -> str | None:
    """The E.164 digits of a dialled number (one leading ``+`` allowed), or None if it is not one."""
    if number.startswith("+"):
        number = number[1:]
    if number and number.isascii() and number.isdigit():
        return number
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    """One row of a rate deck: the price of calls (or messages) to numbers starting with ``prefix``.

    ``rate`` is per minute for voice and per unit (message part, USSD event) for sms/ussd.
    ``first_increment``/``next_increment`` are the billing blocks in seconds (``60/60``, ``30/6``,
    ``1/1``). ``effective_from`` (aware, stored as UTC) is when this version starts to apply;
    None means immediately. ``time_band`` names a :class:`TimeBand` of the deck; None means
    all times.
    """

    prefix: str
    destination: str = ""
    rate: Decimal
    connect_fee: Decimal = Decimal(0)
    first_increment: int = 60
    next_increment: int = 60
    min_charge: Decimal = Decimal(0)
    effective_from: datetime | None = None
    time_band: str | None = None
    service: str = "voice"

    def __post_init__(self) -> None:
        if not (isinstance(self.prefix, str) and self.prefix.isascii() and self.prefix.isdigit()):
            raise ValueError(f"prefix must be digits only, got {self.prefix!r}")
        if len(self.prefix) > MAX_PREFIX_DIGITS:
            raise ValueError(f"prefix must have at most {MAX_PREFIX_DIGITS} digits")
        if not isinstance(self.destination, str):
            raise TypeError("destination must be a string")
        # Labels are compared and written back to CSV; stray spaces from spreadsheets are noise.
        object.__setattr__(self, "destination", self.destination.strip())
        # Frozen dataclass: normalising values in place needs object.__setattr__.
        for name in ("rate", "connect_fee", "min_charge"):
            object.__setattr__(self, name, _money(getattr(self, name), name))
        _check_increment(self.first_increment, self.next_increment)
        if self.effective_from is not None:
            if not isinstance(self.effective_from, datetime) or self.effective_from.utcoffset() is None:
                raise ValueError("effective_from must be a timezone-aware datetime or None")
            object.__setattr__(self, "effective_from", self.effective_from.astimezone(UTC))
        if self.time_band is not None:
            if not (isinstance(self.time_band, str) and self.time_band.strip()):
                raise ValueError("time_band must be a non-empty name or None")
            object.__setattr__(self, "time_band", self.time_band.strip())
        if self.service not in SERVICES:
            raise ValueError(f"service must be one of {sorted(SERVICES)}, got {self.service!r}")

    @property
    def increment(self) -> str:
        """The billing increment as written in rate decks, e.g. ``"60/60"``."""
        return f"{self.first_increment}/{self.next_increment}"

    @classmethod
    def stored(
        cls,
        prefix: str,
        destination: str,
        rate: Decimal,
        connect_fee: Decimal,
        first_increment: int,
        next_increment: int,
        min_charge: Decimal,
        effective_from: datetime | None,
        time_band: str | None,
        service: str,
    ) -> Rate:
        """A rate read back from storage that checked it when it was written (the database's constraints hold
        every rule :meth:`__post_init__` checks): built without checking again, 5x faster, for loading big decks."""
        made = object.__new__(cls)
        for name, value in (
            ("prefix", prefix),
            ("destination", destination),
            ("rate", rate),
            ("connect_fee", connect_fee),
            ("first_increment", first_increment),
            ("next_increment", next_increment),
            ("min_charge", min_charge),
            ("effective_from", None if effective_from is None else effective_from.astimezone(UTC)),
            ("time_band", time_band or None),
            ("service", service),
        ):
            object.__setattr__(made, name, value)
        return made


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeBand:
    """A named period of the week (peak, off-peak, weekend) in the operator's local time.

    ``weekdays`` uses Python's numbering (Monday 0 … Sunday 6). The band is open from ``start``
    (inclusive) to ``end`` (exclusive). ``end <= start`` wraps past midnight (22:00-07:00); the
    hours after midnight then belong to the weekday on which the band opened, so a Mon-Fri
    night band covers Friday 23:00 and Saturday 01:00 but not Monday 01:00.
    ``start == end`` means the whole day.
    """

    name: str
    weekdays: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name):
            raise ValueError("time band name must not be empty")
        weekdays = frozenset(self.weekdays)
        if not weekdays or not weekdays <= frozenset(range(7)):
            raise ValueError("weekdays must be a non-empty set of 0 (Monday) .. 6 (Sunday)")
        object.__setattr__(self, "weekdays", weekdays)
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, time) or value.tzinfo is not None:
                raise ValueError(f"{name} must be a naive time (local to the operator)")

    def contains(self, local: datetime) -> bool:
        """Whether the band is open at ``local``, a wall-clock time in the operator's zone."""
        moment = local.time().replace(tzinfo=None)
        weekday = local.weekday()
        if self.start < self.end:
            return weekday in self.weekdays and self.start <= moment < self.end
        if self.start == self.end:
            return weekday in self.weekdays
        if moment >= self.start:
            return weekday in self.weekdays
        return moment < self.end and (weekday - 1) % 7 in self.weekdays


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """The price of one call or message: which rate applied and what it costs.

    ``amount`` is exact to the micro unit (6 decimal places) and includes ``connect_fee``;
    ``billed_seconds`` is 0 for sms/ussd, ``units`` is 0 for voice.
    """

    prefix: str
    destination: str
    service: str
    billed_seconds: int
    units: int
    connect_fee: Decimal
    amount: Decimal
    rate: Rate


# ---------------------------------------------------------------------------------------------
# Increments and prices
# ---------------------------------------------------------------------------------------------


def _check_increment(first: int, next_: int) -> None:
    for name, value, low in (("first increment", first, 0), ("next increment", next_, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer number of seconds")
        if not low <= value <= MAX_INCREMENT_SECONDS:
            raise ValueError(f"{name} must be {low}..{MAX_INCREMENT_SECONDS} seconds, got {value}")


def parse_increment(text: str) -> tuple[int, int]:
    """Parse a billing increment such as ``"60/60"``, ``"30/6"`` or ``"1/1"`` into (first, next) seconds."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ValueError(f"increment must look like 60/60 (first/next seconds), got {text!r}")
    first, next_ = (int(p) for p in parts)
    _check_increment(first, next_)
    return first, next_


def billed_seconds(billsec: int, first_increment: int, next_increment: int) -> int:
    """Seconds a call of ``billsec`` answered seconds is billed for under a first/next increment.

    An unanswered call (``billsec == 0``) is billed 0 s.
    """
    if billsec < 0:
        raise ValueError("billsec must not be negative")
    if billsec == 0:
        return 0
    if billsec <= first_increment:
        return first_increment
    return first_increment + math.ceil((billsec - first_increment) / next_increment) * next_increment


def usage_charge(rate_per_minute: Decimal, seconds: int) -> Decimal:
    """``rate_per_minute * seconds / 60``, rounded half-up to the micro unit."""
    # Enough precision that the division is exact before the single half-up rounding.
    with localcontext() as ctx:
        ctx.prec = 60
        return (rate_per_minute * seconds / 60).quantize(MICRO, rounding=ROUND_HALF_UP)


def price_voice(rate: Rate, billsec: int) -> tuple[int, Decimal, Decimal]:
    """Price an answered (or not) call on one rate: (billed seconds, connect fee charged, amount)."""
    billed = billed_seconds(billsec, rate.first_increment, rate.next_increment)
    if billed == 0:
        return 0, Decimal(0).quantize(MICRO), Decimal(0).quantize(MICRO)
    amount = max(rate.min_charge, rate.connect_fee + usage_charge(rate.rate, billed))
    return billed, rate.connect_fee, amount.quantize(MICRO)


# ---------------------------------------------------------------------------------------------
# The rate deck (scalar path)
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Series:
    """The versions of one (prefix, service, band), oldest first."""

    starts: list[int] = field(default_factory=list)  # epoch µs, _IMMEDIATE for None
    rates: list[int] = field(default_factory=list)  # indexes into RateDeck.rates

    def latest(self, at_us: int) -> int:
        position = bisect.bisect_right(self.starts, at_us)
        return self.rates[position - 1] if position else -1


@dataclass(slots=True)
class _PrefixEntry:
    unbanded: _Series | None = None
    banded: list[tuple[TimeBand, _Series]] = field(default_factory=list)  # in deck band order


class RateDeck:
    """An operator's rate deck: rates by prefix, service, time band and effective date.

    Build it once per deck version and reuse it; lookups are dictionary probes, one per
    distinct prefix length. See the module docstring for the selection rules: longest prefix
    with an applicable rate, latest effective version, open time band before no band.
    Raises ValueError for a rate naming an unknown band or for two rates with the same
    (prefix, service, time band, effective_from).
    """

    def __init__(self, rates: Iterable[Rate], *, bands: Iterable[TimeBand] = ()) -> None:
        self.rates: tuple[Rate, ...] = tuple(rates)
        self.bands: tuple[TimeBand, ...] = tuple(bands)
        band_order = {band.name: position for position, band in enumerate(self.bands)}
        if len(band_order) != len(self.bands):
            raise ValueError("time band names must be unique")
        series: dict[tuple[str, str, str | None], list[tuple[int, int]]] = {}
        for index, rate in enumerate(self.rates):
            if not isinstance(rate, Rate):
                raise TypeError("a rate deck holds Rate objects")
            if rate.time_band is not None and rate.time_band not in band_order:
                raise ValueError(f"rate for prefix {rate.prefix} names unknown time band {rate.time_band!r}")
            start = _IMMEDIATE if rate.effective_from is None else _epoch_us(rate.effective_from)
            series.setdefault((rate.service, rate.prefix, rate.time_band), []).append((start, index))
        # service -> prefix -> entry; and service -> prefix lengths present, longest first
        self._entries: dict[str, dict[str, _PrefixEntry]] = {}
        by_service = self._entries
        for (service, prefix, band), versions in series.items():
            if len(versions) == 1:  # most prefixes have one version: no sorting, no pairs to compare
                (start, index), *_ = versions
                built = _Series([start], [index])
            else:
                versions.sort()
                for (start_a, index_a), (start_b, _) in itertools.pairwise(versions):
                    if start_a == start_b:
                        rate = self.rates[index_a]
                        raise ValueError(
                            f"two {service} rates for prefix {prefix}, band {band or '-'}, "
                            f"effective from {rate.effective_from or 'immediately'}"
                        )
                built = _Series([s for s, _ in versions], [i for _, i in versions])
            entries = by_service.get(service)
            if entries is None:
                entries = by_service[service] = {}
            entry = entries.get(prefix)
            if entry is None:
                entry = entries[prefix] = _PrefixEntry()
            if band is None:
                entry.unbanded = built
            else:
                entry.banded.append((self.bands[band_order[band]], built))
                if len(entry.banded) > 1:
                    entry.banded.sort(key=lambda pair: band_order[pair[0].name])
        self._lengths = {
            service: sorted({len(p) for p in entries}, reverse=True) for service, entries in self._entries.items()
        }

    def __len__(self) -> int:
        return len(self.rates)

    def lookup_index(self, *, number: str, at: datetime, tz: str | tzinfo, service: str = "voice") -> int:
        """Index in :attr:`rates` of the rate for a call to ``number`` starting at ``at``, or -1."""
        digits = _digits(number)
        entries = self._entries.get(service)
        if digits is None or entries is None:
            return -1
        at_us = _epoch_us(at)
        local: datetime | None = None
        for length in self._lengths[service]:
            if length > len(digits):
                continue
            entry = entries.get(digits[:length])
            if entry is None:
                continue
            if entry.banded:
                if local is None:
                    local = at.astimezone(_zone(tz))
                for band, versions in entry.banded:
                    if band.contains(local):
                        found = versions.latest(at_us)
                        if found >= 0:
                            return found
            if entry.unbanded is not None:
                found = entry.unbanded.latest(at_us)
                if found >= 0:
                    return found
        return -1

    def lookup(self, *, number: str, at: datetime, tz: str | tzinfo, service: str = "voice") -> Rate | None:
        """The rate that applies to a call (or message) to ``number`` starting at ``at``, or None."""
        index = self.lookup_index(number=number, at=at, tz=tz, service=service)
        return None if index < 0 else self.rates[index]


def rate_one(
    deck: RateDeck,
    *,
    number: str,
    seconds: int,
    at: datetime,
    tz: str | tzinfo,
    service: str = "voice",
    units: int = 1,
) -> Quote | None:
    """Rate one CDR: a call of ``seconds`` answered seconds (billsec), or ``units`` sms parts / USSD events.

    ``at`` is the call's start (timezone-aware); ``tz`` the operator's time zone, used for time
    bands. Returns None when the deck has no rate for the number at that moment; the caller
    then records the CDR as unrated ("no rate for <number>").
    """
    if at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")
    if seconds < 0 or units < 0:
        raise ValueError("seconds and units must not be negative")
    if service not in SERVICES:
        raise ValueError(f"service must be one of {sorted(SERVICES)}, got {service!r}")
    index = deck.lookup_index(number=number, at=at, tz=tz, service=service)
    return None if index < 0 else _quote(deck.rates[index], service=service, seconds=seconds, units=units)


def _quote(rate: Rate, *, service: str, seconds: int, units: int) -> Quote:
    if service == "voice":
        billed, connect_fee, amount = price_voice(rate, seconds)
        units = 0
    else:
        billed, connect_fee = 0, Decimal(0).quantize(MICRO)
        amount = (rate.rate * units).quantize(MICRO)
    return Quote(
        prefix=rate.prefix,
        destination=rate.destination,
        service=service,
        billed_seconds=billed,
        units=units,
        connect_fee=connect_fee,
        amount=amount,
        rate=rate,
    )


# ---------------------------------------------------------------------------------------------
# Minute packages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageTier:
    """One step of a volume-priced minute package.

    ``up_to_minutes`` is the cumulative number of minutes used in the period up to which this
    tier's ``rate`` (per minute) applies; None means no upper bound. Bounds must be whole seconds.
    """

    up_to_minutes: Decimal | None
    rate: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _money(self.rate, "tier rate"))
        if self.up_to_minutes is not None:
            if isinstance(self.up_to_minutes, bool) or not isinstance(self.up_to_minutes, (Decimal, int)):
                raise TypeError("tier bound must be a Decimal number of minutes or None")
            minutes = Decimal(self.up_to_minutes)
            seconds = minutes * 60
            if not seconds.is_finite() or seconds <= 0 or seconds != seconds.to_integral_value():
                raise ValueError("tier bound must be a positive number of minutes in whole seconds")
            object.__setattr__(self, "up_to_minutes", minutes)

    @property
    def up_to_seconds(self) -> int | None:
        return None if self.up_to_minutes is None else int(self.up_to_minutes * 60)


@dataclass(frozen=True, slots=True, kw_only=True)
class MinutePackage:
    """Included and volume-discounted minutes per period for calls to a set of destination prefixes.

    Tier bounds count from the start of the period and include the free minutes: with 100
    included minutes and tiers ``(1000, 0.05), (None, 0.03)`` minutes 0-100 are free,
    100-1000 cost 0.05 and the rest 0.03. The counter of seconds used per (package, customer,
    period) is kept by the caller (the ledger); this class only prices.
    """

    name: str
    prefixes: frozenset[str]
    included_minutes: Decimal = Decimal(0)
    tiers: tuple[PackageTier, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefixes", frozenset(self.prefixes))
        object.__setattr__(self, "tiers", tuple(self.tiers))
        _check_tiers(self.all_tiers())

    def covers(self, number: str) -> bool:
        """Whether calls to ``number`` count against this package."""
        digits = _digits(number)
        return digits is not None and any(digits.startswith(p) for p in self.prefixes)

    def all_tiers(self) -> list[PackageTier]:
        """The tiers with the included minutes as a leading free tier."""
        if not self.included_minutes:
            return list(self.tiers)
        return [PackageTier(up_to_minutes=Decimal(self.included_minutes), rate=Decimal(0)), *self.tiers]


def _check_tiers(tiers: Sequence[PackageTier]) -> None:
    previous = 0
    for position, tier in enumerate(tiers):
        bound = tier.up_to_seconds
        if bound is None:
            if position != len(tiers) - 1:
                raise ValueError("only the last tier may be unbounded")
        elif bound <= previous:
            raise ValueError("tier bounds must increase")
        else:
            previous = bound


def split_by_tiers(
    used_seconds_before: int, billsec: int, tiers: Sequence[PackageTier]
) -> list[tuple[int, Decimal | None]]:
    """Split a call across package tiers: ``[(seconds, rate per minute), ...]`` in tier order.

    ``used_seconds_before`` is what the period's counter held before this call. A call that
    crosses a tier boundary is split there and each part priced at its tier's rate. Seconds
    beyond the last (bounded) tier come back with rate None: the package does not cover them
    and the caller prices them from the rate deck. The parts' seconds always sum to
    ``billsec``; zero-second parts are left out.
    """
    if used_seconds_before < 0 or billsec < 0:
        raise ValueError("used seconds and billsec must not be negative")
    _check_tiers(tiers)
    parts: list[tuple[int, Decimal | None]] = []
    position, remaining = used_seconds_before, billsec
    for tier in tiers:
        if remaining == 0:
            break
        bound = tier.up_to_seconds
        if bound is not None and position >= bound:
            continue
        take = remaining if bound is None else min(remaining, bound - position)
        parts.append((take, tier.rate))
        position += take
        remaining -= take
    if remaining:
        parts.append((remaining, None))
    return parts


def price_tier_parts(parts: Iterable[tuple[int, Decimal | None]]) -> Decimal:
    """Total price of the covered parts from :func:`split_by_tiers`, rounded once, half-up, to the micro unit."""
    with localcontext() as ctx:
        ctx.prec = 60
        total = sum((rate * seconds / 60 for seconds, rate in parts if rate is not None), Decimal(0))
        return total.quantize(MICRO, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True, kw_only=True)
class PackagedQuote:
    """The price of one call to a destination a minute package covers.

    ``parts`` are the :func:`split_by_tiers` parts of the billed seconds (rate None: beyond the
    package, priced from the deck); ``package_seconds`` is what the package priced (included or
    tier minutes) and what its counter advances by.
    """

    billed_seconds: int
    package_seconds: int
    parts: tuple[tuple[int, Decimal | None], ...]
    connect_fee: Decimal
    amount: Decimal


def price_with_package(rate: Rate, billsec: int, used_seconds_before: int, package: MinutePackage) -> PackagedQuote:
    """Price a call under a minute package, given what the period's counter held before it.

    The rules (a billing team's usual reading; ``billing/tests/test_engine_packages.py`` pins them):

    * **Increments first.** The deck rate that applies to the call decides its billed seconds
      (``first/next``) exactly as without a package; the package then prices those billed seconds.
    * **Parts.** The billed seconds are split at the package's bounds (:func:`split_by_tiers` over
      the included minutes then the tiers): included seconds cost 0, tier seconds their tier rate,
      seconds beyond a bounded last tier the deck rate. Package parts are summed and rounded once
      (:func:`price_tier_parts`), the deck part on its own (:func:`usage_charge`), both half-up.
    * **Connect fee** still applies to every answered call (the package sells minutes, not set-ups).
    * **Minimum charge** applies only to a call the package does not touch at all (counter already
      past a bounded last tier): minutes the customer already paid for are never lifted to a minimum.
    * An unanswered call costs nothing and does not move the counter.
    """
    billed = billed_seconds(billsec, rate.first_increment, rate.next_increment)
    zero = Decimal(0).quantize(MICRO)
    if billed == 0:
        return PackagedQuote(billed_seconds=0, package_seconds=0, parts=(), connect_fee=zero, amount=zero)
    parts = tuple(split_by_tiers(used_seconds_before, billed, package.all_tiers()))
    covered = sum(seconds for seconds, part_rate in parts if part_rate is not None)
    uncovered = billed - covered
    if covered == 0:
        _, connect_fee, amount = price_voice(rate, billsec)
        return PackagedQuote(
            billed_seconds=billed, package_seconds=0, parts=parts, connect_fee=connect_fee, amount=amount
        )
    amount = rate.connect_fee + price_tier_parts(parts) + usage_charge(rate.rate, uncovered)
    return PackagedQuote(
        billed_seconds=billed,
        package_seconds=covered,
        parts=parts,
        connect_fee=rate.connect_fee,
        amount=amount.quantize(MICRO),
    )


# ---------------------------------------------------------------------------------------------
# Freephone (8-800) calls on a tariff-class grid
# ---------------------------------------------------------------------------------------------


class Unpriced(ValueError):
    """A call the grid cannot price; the message is the reason an operator reads (kept on the CDR)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GridClass:
    """One origination or termination class of a grid: a name and the number prefixes it covers.

    A number falls in the class with the longest matching prefix; the empty prefix ``""`` covers
    every number (a catch-all such as "other networks"). ``leg_rate`` (origination classes) is
    what the origination leg alone costs per minute.
    """

    name: str
    prefixes: frozenset[str]
    leg_rate: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        prefixes = frozenset(p.removeprefix("+").strip() for p in self.prefixes)
        for prefix in prefixes:
            if prefix and not (prefix.isascii() and prefix.isdigit()):
                raise ValueError(f"class {self.name}: prefix must be digits, got {prefix!r}")
        object.__setattr__(self, "prefixes", prefixes)
        object.__setattr__(self, "leg_rate", _money(self.leg_rate, f"leg rate of {self.name}"))


def _classify(number: str, classes: Sequence[GridClass]) -> tuple[GridClass, str] | None:
    digits = _digits(number)
    if digits is None:
        return None
    best: tuple[GridClass, str] | None = None
    for grid_class in classes:
        for prefix in grid_class.prefixes:
            if digits.startswith(prefix) and (best is None or len(prefix) > len(best[1])):
                best = (grid_class, prefix)
    return best


@dataclass(frozen=True, slots=True, kw_only=True)
class GridQuote:
    """Both legs of one freephone call priced on a grid.

    ``termination_class`` is None when the call ended on the operator's own IVR (no forwarded-to
    number): then ``cell_rate`` is None and the termination leg costs 0. ``total`` is always
    ``origination_amount + termination_amount``.
    """

    origination_class: str
    origination_prefix: str
    termination_class: str | None
    termination_prefix: str
    leg_rate: Decimal
    cell_rate: Decimal | None
    billed_seconds: int
    origination_amount: Decimal
    termination_amount: Decimal

    @property
    def total(self) -> Decimal:
        return self.origination_amount + self.termination_amount


class ClassGrid:
    """A tariff's class grid: origination classes × termination classes, a total per-minute price per cell.

    Pricing one freephone call (reverse charging: the freephone number's owner pays):

    * the caller falls in the origination class with the longest matching prefix, the
      forwarded-to number in the termination class with the longest matching prefix;
    * billed seconds follow the grid's ``first/next`` increment (an unanswered call bills 0 s);
    * origination leg = billed minutes × the origination class's ``leg_rate``; termination leg =
      billed minutes × (cell − ``leg_rate``); each leg is rounded half-up to the micro unit and the
      total is their sum, so the legs always add up to the total (the cell rate times the minutes,
      to within one micro unit per leg);
    * no forwarded-to number means the call ended on the operator's own IVR: it still costs the
      origination leg, and the termination leg is 0.

    Raises :class:`Unpriced` with the reason when a number falls in no class or a cell is missing.
    """

    def __init__(
        self,
        *,
        origination: Iterable[GridClass],
        termination: Iterable[GridClass],
        cells: Mapping[tuple[str, str], Decimal],
        first_increment: int = 60,
        next_increment: int = 60,
    ) -> None:
        self.origination = tuple(origination)
        self.termination = tuple(termination)
        _check_increment(first_increment, next_increment)
        self.first_increment, self.next_increment = first_increment, next_increment
        by_name = {c.name: c for c in self.origination}
        self.cells: dict[tuple[str, str], Decimal] = {}
        for (origination_name, termination_name), rate in cells.items():
            rate = _money(rate, f"cell {origination_name} → {termination_name}")
            leg = by_name.get(origination_name)
            if leg is not None and rate < leg.leg_rate:
                raise ValueError(
                    f"cell {origination_name} → {termination_name} ({rate}) is below the origination leg rate "
                    f"({leg.leg_rate})"
                )
            self.cells[(origination_name, termination_name)] = rate

    def price(self, *, caller: str, forwarded_to: str | None, billsec: int) -> GridQuote:
        """Price both legs of one call (see the class docstring)."""
        if billsec < 0:
            raise ValueError("billsec must not be negative")
        found = _classify(caller, self.origination)
        if found is None:
            raise Unpriced(f"no origination class for caller {caller or '(none)'}")
        origination, origination_prefix = found
        billed = billed_seconds(billsec, self.first_increment, self.next_increment)
        origination_amount = usage_charge(origination.leg_rate, billed)
        if not forwarded_to:
            return GridQuote(
                origination_class=origination.name,
                origination_prefix=origination_prefix,
                termination_class=None,
                termination_prefix="",
                leg_rate=origination.leg_rate,
                cell_rate=None,
                billed_seconds=billed,
                origination_amount=origination_amount,
                termination_amount=Decimal(0).quantize(MICRO),
            )
        found = _classify(forwarded_to, self.termination)
        if found is None:
            raise Unpriced(f"no termination class for forwarded-to number {forwarded_to}")
        termination, termination_prefix = found
        cell = self.cells.get((origination.name, termination.name))
        if cell is None:
            raise Unpriced(f"no grid cell for {origination.name} → {termination.name}")
        return GridQuote(
            origination_class=origination.name,
            origination_prefix=origination_prefix,
            termination_class=termination.name,
            termination_prefix=termination_prefix,
            leg_rate=origination.leg_rate,
            cell_rate=cell,
            billed_seconds=billed,
            origination_amount=origination_amount,
            termination_amount=usage_charge(cell - origination.leg_rate, billed),
        )


# ---------------------------------------------------------------------------------------------
# Vectorised bulk rating
# ---------------------------------------------------------------------------------------------


def encode_numbers(numbers: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode dialled numbers for bulk lookup: (18-digit right-zero-padded int64, digit count).

    ``"74951234567"`` becomes ``749512345670000000`` with 11 digits, so the number lies inside
    the integer interval of every prefix it starts with. A leading ``+`` is skipped. Numbers
    that are not digits get digit count 0; numbers longer than 18 digits get their true length
    (> 18) and a meaningless value.
    """
    raw = _as_bytes_array(numbers)
    count = len(raw)
    padded = np.zeros(count, np.int64)
    ndigits = np.zeros(count, np.int64)
    if count == 0 or raw.dtype.itemsize == 0:
        return padded, ndigits
    # Work in chunks that stay in cache: this halves the time of the column-by-column Horner loop.
    chunk = 1 << 16
    for begin in range(0, count, chunk):
        end = min(begin + chunk, count)
        padded[begin:end], ndigits[begin:end] = _encode_chunk(raw[begin:end])
    return padded, ndigits


def _as_bytes_array(numbers: Sequence[str] | np.ndarray) -> np.ndarray:
    if isinstance(numbers, np.ndarray) and numbers.dtype.kind == "S":
        return numbers
    items = numbers.tolist() if isinstance(numbers, np.ndarray) else list(numbers)
    try:
        return np.array(items, dtype="S")
    except UnicodeEncodeError:
        # Non-ASCII can never be E.164 digits: blank it so it comes out unrated, as rate_one does.
        return np.array([n if n.isascii() else "" for n in items], dtype="S")


_POW10 = 10 ** np.arange(0, 19, dtype=np.int64)


def _encode_chunk(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = raw.dtype.itemsize
    matrix = raw.view(np.uint8).reshape(len(raw), width)
    length = np.strings.str_len(raw).astype(np.int64)
    plus = matrix[:, 0] == ord("+")
    digit_values = matrix - np.uint8(ord("0"))  # non-digits wrap around to values > 9
    is_digit = digit_values <= 9
    ndigits = is_digit.sum(axis=1, dtype=np.int64)
    # Valid: every character is a digit except one optional leading '+', and there is at least one digit.
    valid = (ndigits == length - plus) & (ndigits > 0)
    columns = min(width, _BULK_DIGITS + 1)
    digit_values = np.where(is_digit[:, :columns], digit_values[:, :columns], 0).astype(np.int64)
    horner = np.zeros(len(raw), np.int64)
    for column in range(columns):  # the leading '+' and the trailing padding count as zeros
        horner *= 10
        horner += digit_values[:, column]
    # horner now holds the digits left-aligned in `columns` (minus one for a '+') digit positions.
    shift = _BULK_DIGITS - columns + plus.astype(np.int64)
    padded = np.where(shift >= 0, horner * _POW10[np.clip(shift, 0, 18)], horner // 10)
    return np.where(valid, padded, 0), np.where(valid, ndigits, 0)


def _as_epoch_us(at: np.ndarray | Sequence) -> np.ndarray:
    """Call start times as int64 epoch microseconds; accepts datetime64 or epoch seconds (int or float)."""
    values = np.asarray(at)
    if values.dtype.kind == "M":
        return values.astype("datetime64[us]").view(np.int64)
    if values.dtype.kind in "iu":
        return values.astype(np.int64) * MICROS_PER_UNIT
    if values.dtype.kind == "f":
        return np.round(values * MICROS_PER_UNIT).astype(np.int64)
    if values.dtype.kind == "O":
        return np.array([_epoch_us(v) for v in values.tolist()], dtype=np.int64)
    raise TypeError("at must be datetime64, epoch seconds or aware datetimes")


@dataclass(frozen=True, slots=True)
class BulkQuotes:
    """Prices of a batch of CDRs, one row per CDR, as numpy arrays.

    ``rate_index`` indexes ``deck.rates`` (-1: no rate, record the CDR as unrated);
    ``amount_micro`` is the amount in millionths of the currency unit (exact: the amount is
    ``Decimal(amount_micro) / 10**6``). ``scalar_rows`` counts rows that took the scalar path.
    """

    rate_index: np.ndarray
    billed_seconds: np.ndarray
    amount_micro: np.ndarray
    scalar_rows: int = 0

    def __len__(self) -> int:
        return len(self.rate_index)

    def amount(self, row: int) -> Decimal:
        """The amount of one row as a Decimal with 6 decimal places."""
        return Decimal(int(self.amount_micro[row])).scaleb(-6)

    def amounts(self) -> list[Decimal]:
        """All amounts as Decimals with 6 decimal places."""
        return [Decimal(v).scaleb(-6) for v in self.amount_micro.tolist()]


class BulkRater:
    """Vectorised rating of many CDRs against one deck, exactly equal to :func:`rate_one` row by row.

    Built once per deck (precomputation is O(deck)), then :meth:`rate_bulk` prices millions of
    CDRs per second. How:

    * Each prefix of length L is the integer interval ``[p * 10**(18-L), (p+1) * 10**(18-L))``
      in the space of 18-digit right-padded numbers. Prefix intervals are nested or disjoint,
      so the line splits into elementary segments, each owned by its longest covering prefix.
      A direct table indexed by a number's first six digits (4 MB of int32) names the owner
      for most numbers; the rest (blocks cut by longer prefixes) take one ``np.searchsorted``
      over the segments. Either way this is the longest matching prefix. A prefix that has no
      applicable rate (future-dated only, closed band) or is longer than the number hands the
      row to its parent prefix (the next shorter one in the deck), as the scalar path does.
    * Versions: distinct ``effective_from`` instants are ranked; every (prefix, band) series
      keeps its versions sorted under the key ``series * (ranks + 1) + rank`` so one
      ``searchsorted`` finds the latest version effective at each call's start.
    * Time bands are evaluated vectorised in the operator's zone: UTC offsets are computed once
      per distinct minute of call start (zone transitions fall on minute boundaries; a minute
      that straddles one is computed call by call).
    * Money is int64 micro-units: ``usage = (rate_micro * billed + 30) // 60`` is exactly
      ``rate * billed / 60`` rounded half-up at 1e-6, which is what :func:`usage_charge` does.

    Rows the vectorised path cannot represent (numbers over 18 digits, calls over 10**6 s)
    are rated one by one with :func:`rate_one`; :attr:`BulkQuotes.scalar_rows` counts them.
    """

    def __init__(self, deck: RateDeck) -> None:
        self.deck = deck
        self.bands = deck.bands
        rates = deck.rates
        self._rate_micro = np.array([_to_micro(r.rate) for r in rates], dtype=np.int64)
        self._connect_micro = np.array([_to_micro(r.connect_fee) for r in rates], dtype=np.int64)
        self._min_micro = np.array([_to_micro(r.min_charge) for r in rates], dtype=np.int64)
        self._first = np.array([r.first_increment for r in rates], dtype=np.int64)
        self._next = np.array([r.next_increment for r in rates], dtype=np.int64)
        starts = sorted({_epoch_us(r.effective_from) for r in rates if r.effective_from is not None})
        self._version_starts = np.array(starts, dtype=np.int64)
        rank_of = {start: position + 1 for position, start in enumerate(starts)}
        self._rank_span = len(starts) + 1
        self._band_count = len(deck.bands)
        self._tables = {service: self._build_table(entries, rank_of) for service, entries in deck._entries.items()}

    def __getstate__(self) -> dict:
        """Pickled without its RateDeck (most of the pickle and of the time to load it): only rows the vectorised
        path cannot represent need it, and whoever loads the rater sets ``deck`` again (a deck, or an object that
        reads it when first used)."""
        return {**self.__dict__, "deck": None}

    def _build_table(self, entries: dict[str, _PrefixEntry], rank_of: dict[int, int]) -> _BulkTable:
        prefixes = sorted(entries)
        pid_of = {prefix: pid for pid, prefix in enumerate(prefixes)}
        lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
        parents_list = [-1] * len(prefixes)
        for pid, prefix in enumerate(prefixes):
            for cut in range(len(prefix) - 1, 0, -1):
                parent = pid_of.get(prefix[:cut])
                if parent is not None:
                    parents_list[pid] = parent
                    break
        parents = np.array(parents_list, dtype=np.int64)
        # Series ids: column 0 is the unbanded series, column 1 + k the deck's k-th band.
        band_column = {band.name: column + 1 for column, band in enumerate(self.deck.bands)}
        series_of = np.full((len(prefixes), self._band_count + 1), -1, dtype=np.int64)
        keys: list[int] = []
        version_rates: list[int] = []
        series_start: list[int] = []
        series_count: list[int] = []
        series_last_rank: list[int] = []

        owners: list[int] = []  # per series: pid * (bands + 1) + column, set into series_of in one go
        width = self._band_count + 1

        def add_series(pid: int, column: int, series: _Series) -> None:
            sid = len(series_start)
            owners.append(pid * width + column)
            series_start.append(len(keys))
            series_count.append(len(series.starts))
            for start, index in zip(series.starts, series.rates, strict=True):
                rank = 0 if start == _IMMEDIATE else rank_of[start]
                keys.append(sid * self._rank_span + rank)
                version_rates.append(index)
            series_last_rank.append(rank)

        for pid, prefix in enumerate(prefixes):
            entry = entries[prefix]
            if entry.unbanded is not None:
                add_series(pid, 0, entry.unbanded)
            for band, series in entry.banded:
                add_series(pid, band_column[band.name], series)
        series_of.reshape(-1)[np.array(owners, dtype=np.int64)] = np.arange(len(owners), dtype=np.int64)
        segment_starts, segment_owners = _prefix_segments(prefixes)
        block_digits = min(_BLOCK_DIGITS, int(lengths.max()))
        series_start_arr = np.array(series_start, dtype=np.int64)
        series_count_arr = np.array(series_count, dtype=np.int64)
        version_rates_arr = np.array(version_rates, dtype=np.int64)
        return _BulkTable(
            segment_starts=segment_starts,
            segment_owners=segment_owners,
            block_size=10 ** (_BULK_DIGITS - block_digits),
            block_owners=_block_owners(segment_starts, segment_owners, block_digits),
            lengths=lengths,
            parents=parents,
            banded=(series_of[:, 1:] >= 0).any(axis=1),
            series_of=series_of,
            version_keys=np.array(keys, dtype=np.int64),
            version_rates=version_rates_arr,
            series_start=series_start_arr,
            series_count=series_count_arr,
            series_last_rank=np.array(series_last_rank, dtype=np.int64),
            series_last_rate=version_rates_arr[series_start_arr + series_count_arr - 1],
        )

    def rate_bulk(
        self,
        numbers: Sequence[str] | np.ndarray,
        seconds: Sequence[int] | np.ndarray,
        at: Sequence | np.ndarray,
        *,
        tz: str | tzinfo = "UTC",
        service: str = "voice",
        units: Sequence[int] | np.ndarray | int = 1,
        encoded: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> BulkQuotes:
        """Rate a batch of CDRs of one service; row ``i`` equals ``rate_one`` on the i-th CDR.

        ``numbers`` are the dialled numbers (list of str or a numpy str/bytes array), ``seconds``
        the answered seconds (billsec), ``at`` the start times (datetime64 in UTC, or epoch seconds),
        ``units`` message parts or USSD events for sms/ussd (ignored for voice). ``encoded``:
        :func:`encode_numbers` of ``numbers`` when the caller has it already (rating the same
        numbers under several decks).
        """
        if service not in SERVICES:
            raise ValueError(f"service must be one of {sorted(SERVICES)}, got {service!r}")
        padded, ndigits = encode_numbers(numbers) if encoded is None else encoded
        count = len(padded)
        seconds_arr = np.asarray(seconds, dtype=np.int64).reshape(-1)
        at_us = _as_epoch_us(at).reshape(-1)
        units_arr = np.broadcast_to(np.asarray(units, dtype=np.int64), (count,))
        if len(seconds_arr) != count or len(at_us) != count:
            raise ValueError("numbers, seconds and at must have the same length")
        if count and (seconds_arr.min() < 0 or units_arr.min() < 0):
            raise ValueError("seconds and units must not be negative")
        rate_index = np.full(count, -1, dtype=np.int64)
        billed = np.zeros(count, dtype=np.int64)
        amount = np.zeros(count, dtype=np.int64)
        table = self._tables.get(service)
        scalar = (ndigits > _BULK_DIGITS) | (seconds_arr > _BULK_MAX_SECONDS) | (units_arr > _BULK_MAX_SECONDS)
        if table is not None and count:
            vector = ~scalar & (ndigits > 0)
            rate_index = self._resolve(table, padded, ndigits, at_us, vector, _zone(tz))
            self._price(rate_index, seconds_arr, units_arr, service, billed, amount)
        scalar_rows = np.flatnonzero(scalar)
        if scalar_rows.size:
            self._rate_scalar(
                scalar_rows, numbers, seconds_arr, units_arr, at_us, tz, service, rate_index, billed, amount
            )
        return BulkQuotes(rate_index, billed, amount, int(scalar_rows.size))

    def _resolve(
        self,
        table: _BulkTable,
        padded: np.ndarray,
        ndigits: np.ndarray,
        at_us: np.ndarray,
        vector: np.ndarray,
        zone: tzinfo,
    ) -> np.ndarray:
        """Longest prefix with an applicable rate, for every row where ``vector`` is set."""
        count = len(padded)
        rate_index = np.full(count, -1, dtype=np.int64)
        owner = table.owners(padded)
        rows = np.flatnonzero(vector & (owner >= 0))
        pids = owner[rows]
        ranks = np.searchsorted(self._version_starts, at_us, side="right") if len(self._version_starts) else None
        local: _LocalTimes | None = None
        while rows.size:
            row_ranks = ranks[rows] if ranks is not None else np.zeros(rows.size, dtype=np.int64)
            found = np.full(rows.size, -1, dtype=np.int64)
            fits = table.lengths[pids] <= ndigits[rows]
            banded = fits & table.banded[pids]
            if banded.any():
                if local is None:
                    local = _LocalTimes(at_us, zone)
                positions = np.flatnonzero(banded)
                for column, band in enumerate(self.bands, start=1):
                    sids = table.series_of[pids[positions], column]
                    use = (sids >= 0) & local.in_band(band, rows[positions]) & (found[positions] < 0)
                    if use.any():
                        found[positions[use]] = self._latest(table, sids[use], row_ranks[positions[use]])
            plain = fits & (found < 0)
            sids = table.series_of[pids[plain], 0]
            have = sids >= 0
            plain_positions = np.flatnonzero(plain)[have]
            found[plain_positions] = self._latest(table, sids[have], row_ranks[plain_positions])
            done = found >= 0
            rate_index[rows[done]] = found[done]
            # Not found at this prefix: try the next shorter prefix of the deck.
            pids = table.parents[pids[~done]]
            rows = rows[~done]
            keep = pids >= 0
            rows, pids = rows[keep], pids[keep]
        return rate_index

    def _latest(self, table: _BulkTable, sids: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """For each series, the rate index of its latest version effective at the row's time rank, or -1."""
        # Usually the newest version already applies: one comparison, no search.
        last_rank = table.series_last_rank[sids]
        found = np.where(last_rank <= ranks, table.series_last_rate[sids], -1)
        older = np.flatnonzero((last_rank > ranks) & (table.series_count[sids] > 1))
        if older.size:
            query = sids[older] * self._rank_span + ranks[older]
            position = np.searchsorted(table.version_keys, query, side="right") - 1
            effective = position >= table.series_start[sids[older]]
            found[older] = np.where(effective, table.version_rates[position], -1)
        return found

    def _price(
        self,
        rate_index: np.ndarray,
        seconds: np.ndarray,
        units: np.ndarray,
        service: str,
        billed: np.ndarray,
        amount: np.ndarray,
    ) -> None:
        rated = np.flatnonzero(rate_index >= 0)
        index = rate_index[rated]
        if service != "voice":
            amount[rated] = self._rate_micro[index] * units[rated]
            return
        answered = seconds[rated]
        first = self._first[index]
        step = self._next[index]
        over = np.maximum(answered - first, 0)
        blocks = (over + step - 1) // step  # ceil division of non-negative integers
        billed_rows = np.where(answered > 0, first + blocks * step, 0)
        usage = (self._rate_micro[index] * billed_rows + 30) // 60  # half-up at the micro unit
        charged = np.maximum(self._min_micro[index], self._connect_micro[index] + usage)
        billed[rated] = billed_rows
        amount[rated] = np.where(billed_rows > 0, charged, 0)

    def _rate_scalar(
        self,
        rows: np.ndarray,
        numbers: Sequence[str] | np.ndarray,
        seconds: np.ndarray,
        units: np.ndarray,
        at_us: np.ndarray,
        tz: str | tzinfo,
        service: str,
        rate_index: np.ndarray,
        billed: np.ndarray,
        amount: np.ndarray,
    ) -> None:
        for row in rows.tolist():
            number = numbers[row]
            if isinstance(number, bytes):
                number = number.decode("ascii", "replace")
            index = self.deck.lookup_index(
                number=str(number), at=_from_epoch_us(int(at_us[row])), tz=tz, service=service
            )
            if index < 0:
                continue
            quote = _quote(self.deck.rates[index], service=service, seconds=int(seconds[row]), units=int(units[row]))
            rate_index[row] = index
            billed[row] = quote.billed_seconds
            amount[row] = _to_micro(quote.amount)


@dataclass(frozen=True, slots=True, kw_only=True)
class _BulkTable:
    """Precomputed arrays for one service of a deck (see BulkRater)."""

    segment_starts: np.ndarray
    segment_owners: np.ndarray
    block_size: int
    block_owners: np.ndarray
    lengths: np.ndarray
    parents: np.ndarray
    banded: np.ndarray
    series_of: np.ndarray
    version_keys: np.ndarray
    version_rates: np.ndarray
    series_start: np.ndarray
    series_count: np.ndarray
    series_last_rank: np.ndarray
    series_last_rate: np.ndarray

    def owners(self, padded: np.ndarray) -> np.ndarray:
        """Longest deck prefix (id) covering each padded number, ignoring the numbers' lengths; -1 if none."""
        owner = self.block_owners[padded // self.block_size].astype(np.int64)
        mixed = np.flatnonzero(owner == _MIXED_BLOCK)
        if mixed.size:
            segment = np.searchsorted(self.segment_starts, padded[mixed], side="right") - 1
            owner[mixed] = self.segment_owners[segment]
        return owner


def _block_owners(segment_starts: np.ndarray, segment_owners: np.ndarray, block_digits: int) -> np.ndarray:
    """Owner of every block of numbers sharing their first ``block_digits`` digits, or _MIXED_BLOCK.

    A direct table lookup answers most numbers; only blocks cut by a longer prefix need the
    binary search over segments.
    """
    block_size = 10 ** (_BULK_DIGITS - block_digits)
    block_starts = np.arange(10**block_digits, dtype=np.int64) * block_size
    segment = np.searchsorted(segment_starts, block_starts, side="right") - 1
    owners = segment_owners[segment].astype(np.int32)
    following = np.append(segment_starts, np.iinfo(np.int64).max)[segment + 1]
    owners[following < block_starts + block_size] = _MIXED_BLOCK
    return owners


def _prefix_segments(prefixes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cut the 18-digit number line into segments owned by their longest covering prefix.

    Returns sorted segment starts (the first is -1, owned by nobody) and the owning prefix id
    of each segment (-1 where no prefix covers it).
    """
    intervals = sorted(
        (int(prefix) * 10 ** (_BULK_DIGITS - len(prefix)), len(prefix), pid) for pid, prefix in enumerate(prefixes)
    )
    starts: list[int] = [-1]
    owners: list[int] = [-1]

    def emit(position: int, owner: int) -> None:
        if starts[-1] == position:
            owners[-1] = owner  # a later, inner interval starting at the same point takes over
        else:
            starts.append(position)
            owners.append(owner)

    open_intervals: list[tuple[int, int]] = []  # (end, pid), innermost last; prefixes nest
    for low, length, pid in intervals:
        while open_intervals and open_intervals[-1][0] <= low:
            end, _ = open_intervals.pop()
            emit(end, open_intervals[-1][1] if open_intervals else -1)
        emit(low, pid)
        open_intervals.append((low + 10 ** (_BULK_DIGITS - length), pid))
    while open_intervals:
        end, _ = open_intervals.pop()
        emit(end, open_intervals[-1][1] if open_intervals else -1)
    return np.array(starts, dtype=np.int64), np.array(owners, dtype=np.int64)


class _LocalTimes:
    """Operator-local weekday and time of day of call starts, computed lazily for banded rows."""

    def __init__(self, at_us: np.ndarray, zone: tzinfo) -> None:
        self._at_us = at_us
        self._zone = zone
        self._weekday: np.ndarray | None = None
        self._time_us: np.ndarray | None = None

    def _compute(self) -> None:
        at_us = self._at_us
        minute_us = 60 * MICROS_PER_UNIT
        minutes, inverse = np.unique(at_us // minute_us, return_inverse=True)
        offsets = np.empty(minutes.size, dtype=np.int64)
        straddles = np.zeros(minutes.size, dtype=bool)
        for position, minute in enumerate(minutes.tolist()):
            start = _from_epoch_us(minute * minute_us)
            before = _offset_us(start, self._zone)
            offsets[position] = before
            straddles[position] = before != _offset_us(start + timedelta(microseconds=minute_us - 1), self._zone)
        local_us = at_us + offsets[inverse]
        for row in np.flatnonzero(straddles[inverse]).tolist():  # a zone transition inside that minute
            local_us[row] = at_us[row] + _offset_us(_from_epoch_us(int(at_us[row])), self._zone)
        days = local_us // _US_PER_DAY
        self._weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
        self._time_us = local_us - days * _US_PER_DAY

    def in_band(self, band: TimeBand, rows: np.ndarray) -> np.ndarray:
        if self._weekday is None:
            self._compute()
        weekday = self._weekday[rows]
        moment = self._time_us[rows]
        open_days = np.zeros(7, dtype=bool)
        open_days[list(band.weekdays)] = True
        start, end = _time_us(band.start), _time_us(band.end)
        if start < end:
            return open_days[weekday] & (moment >= start) & (moment < end)
        if start == end:
            return open_days[weekday]
        return (open_days[weekday] & (moment >= start)) | (open_days[(weekday - 1) % 7] & (moment < end))


def _offset_us(moment: datetime, zone: tzinfo) -> int:
    return moment.astimezone(zone).utcoffset() // _ONE_US


def _time_us(moment: time) -> int:
    return ((moment.hour * 60 + moment.minute) * 60 + moment.second) * MICROS_PER_UNIT + moment.microsecond
