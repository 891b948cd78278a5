"""CDRs record by record (the exact path): store, rate and charge them; rate the unrated ones once what they missed
appears.

Every import path ends here or agrees with it: the bulk Master.csv importer (``bulk_import.py``) computes the same
prices vectorised (a test checks both give the same) and hands it the CDRs of accounts with minute packages.

What a rated CDR carries:

* **price**, under its account's tariff (the account named by the CDR's account code); freephone legs under the
  class grid of the tariff of the freephone number's owner (see ``rating.ClassGrid``);
* **cost**, under the supplier's cost tariff: the one of the trunk the call left by (``Cdr.trunk``, a
  ``billing.Trunk`` name), else the tariff marked ``is_default_cost``. No cost tariff, a cost tariff in another
  currency or no cost rate for the number leaves the cost empty (margin unknown) and says why in
  ``extra["cost_unknown"]``; the CDR is still rated and charged on its price;
* **currency**, the price tariff's; ``margin`` = price - cost (``Cdr.margin``).

A CDR that cannot be priced (unknown account or freephone number, no tariff, no rate, no grid class) is stored
unrated with the reason, and rated by :func:`cdrs_rate_pending` (a Celery task, see :func:`cdrs_rate_pending_schedule`)
when the missing piece appears. Charges: one ledger entry per rated CDR with a price, idempotency key
``cdr:<source>:<source_id>``; the CDR and its charge are written in one transaction.

**Minute packages.** A voice CDR whose account has a package covering the number is priced by
``rating.price_with_package`` against the account's counter (``PackageUsage``) for the calendar month of the call's
start in the operator's time zone: increments of the deck rate decide the billed seconds, the package prices them
(included minutes, then tiers; beyond a bounded last tier the deck rate), the connect fee still applies. Calls are
applied in the order they started (start, then source id), across imports too: a call that arrives after calls of
its period that started later re-sequences the period (``packages.package_period_replay``): it is priced at its true
position, the already-charged calls after it are re-priced at theirs and corrected by adjustment entries
(``resequence:<cdr id>:<late call's source>:<source id>``, once each; past entries are never edited), and the
counter is set to the sum of the period's package seconds. A package CDR keeps the tariff it was priced with in
``extra["tariff_id"]`` (the account's tariff at import; a confirmed rerate run's tariff, candidate or current), and
the later calls are re-priced each under that tariff, so a tariff switched since the call, or a candidate a rerate
run confirmed on it, stays; CDRs from before the key was kept (or whose tariff was deleted since) are re-priced under
the account's current tariff. Rates are looked up at each call's own start as the deck holds them now: versioned by
``effective_from``, a price dated after a call never reaches it; a rate corrected in place (same ``effective_from``)
does — a re-sequence re-prices the calls after the late one with the corrected rate, and its adjustment carries that
change too. Editing a deck in place is the operator's choice to re-price the past; future-dated rates change prices
without touching past calls. The counter rows are locked (``SELECT … FOR UPDATE``, in a fixed order) in the
transaction that stores the CDRs, and the duplicate check runs under that lock, so concurrent imports for one
account stay right and a CDR seen twice never counts twice. When a package covers the number through several
packages of the account, the one with the longest matching prefix (then by name) applies.

**Freephone (8-800).** A record with ``leg="combined"`` (the freephone platform's resulting CDR) is stored as two
CDRs, origination and termination, with ``correlation_id`` = the platform's record id, source ids ``<id>:orig`` and
``<id>:term``, both charged to the owner of the freephone number (``billing.FreephoneNumber``), never to the caller.
``extra`` keeps ``freephone_number``, ``forwarded_to``, ``origination_class``, ``termination_class`` ("IVR" when the
call ended on the own IVR), ``cell_rate``, ``leg_rate``, ``call_total`` and the switch's ``reported_cost``. Leg
costs: the origination leg under the cost tariff's rate for the caller's number, the termination leg for the
forwarded-to number (a call to the own IVR has no termination cost).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef, Sum
from django.utils import timezone

from .. import rating
from ..choices import CdrStatus, Leg, Service
from ..models import Account, Cdr, FreephoneNumber, MinutePackage, PackageUsage, Tariff
from ..selectors.decks import cost_tariffs_get, rate_deck_get
from ..selectors.grid import IVR, class_grid_pricer_get
from .ledger import BulkCharge, accounts_lock, ledger_charge_many
from .packages import (
    Adjustment,
    PackageCall,
    PackagePrice,
    adjustments_post,
    package_counters_lock,
    package_month,
    package_months_bounds,
    package_period_replay,
)

log = logging.getLogger(__name__)

RATED_FIELDS = [
    "account",
    "account_code",
    "status",
    "unrated_reason",
    "matched_prefix",
    "destination",
    "billed_seconds",
    "package_seconds",
    "price",
    "cost",
    "currency",
    "extra",
    "updated_at",
]
# Keys of `extra` that rating writes (and clears before rating again); the rest is what the source reported.
_RATING_KEYS = (
    "cost_unknown",
    "package",
    "package_parts",
    "origination_class",
    "termination_class",
    "cell_rate",
    "leg_rate",
    "call_total",
    "tariff_id",
)
FREEPHONE_SUFFIX = {Leg.ORIGINATION: "orig", Leg.TERMINATION: "term"}


# --- reasons an operator reads (the bulk importer writes the very same words) ------------------------------------


def unknown_account_reason(code: str) -> str:
    return f"unknown account {code!r}"


def no_tariff_reason(code: str) -> str:
    return f"account {code} has no tariff"


def no_rate_reason(number: str) -> str:
    return f"no rate for {number}"


def no_cost_tariff_note(trunk: str) -> str:
    return f"no cost tariff: trunk {trunk!r} unknown and no default cost tariff" if trunk else "no default cost tariff"


def no_cost_rate_note(number: str, tariff: Tariff) -> str:
    return f"no cost rate for {number} in {tariff.name}"


def cost_currency_note(tariff: Tariff, currency: str) -> str:
    return f"cost tariff {tariff.name} is in {tariff.currency}, the price in {currency}"


def operator_time_zone() -> str:
    """The time zone of the operator whose schema the connection uses (UTC outside any operator)."""
    tenant = getattr(connection, "tenant", None)
    zone = getattr(tenant, "time_zone", None)
    if zone:
        return zone
    from tenants.models import Operator

    found = Operator.objects.filter(schema_name=connection.schema_name).values_list("time_zone", flat=True).first()
    return found or "UTC"


# --- what rating needs, read once per batch -----------------------------------------------------------------------


def _number_key(number: str) -> str:
    return number.strip().removeprefix("+")


@dataclass
class _Package:
    model: MinutePackage
    pure: rating.MinutePackage | None
    error: str = ""


class RatingContext:
    """What rating a batch of CDRs needs, read once and kept for the whole import: accounts by code (with tariff
    and minute packages), freephone numbers and their owners, cost tariffs, decks and class grids."""

    def __init__(self, *, tz: str) -> None:
        self.tz = tz
        self.zone = ZoneInfo(tz)
        self.accounts: dict[str, Account | None] = {}
        self.packages: dict[int, list[_Package]] = {}
        self.freephone: dict[str, Account | None] = {}
        self.trunk_tariffs, self.default_cost = cost_tariffs_get()
        self._grids: dict[int, rating.ClassGrid | None] = {}

    def load(self, cdrs: list[Cdr]) -> None:
        """Read the accounts and freephone numbers these CDRs name that are not known yet (two queries at most)."""
        numbers = {_number_key(c.extra["freephone_number"]) for c in cdrs if "freephone_number" in c.extra}
        self._freephone_load(numbers)
        self.accounts_load({c.account_code for c in cdrs if "freephone_number" not in c.extra})

    def accounts_load(self, codes: set[str]) -> None:
        missing = codes - self.accounts.keys()
        if not missing:
            return
        found = {a.code: a for a in _accounts().filter(code__in=missing)}
        for code in missing:
            self.accounts[code] = found.get(code)
        self._packages_load(found.values())

    def _packages_load(self, accounts) -> None:
        fresh = [a for a in accounts if a.pk not in self.packages]
        for account in fresh:
            self.packages[account.pk] = []
        ids = [a.pk for a in fresh if a.has_packages]  # most accounts have none: no query for them
        if not ids:
            return
        links = Account.packages.through.objects.filter(account_id__in=ids).select_related("minutepackage")
        for link in links:
            self.packages[link.account_id].append(_package_pure(link.minutepackage))
        for account_id in ids:
            self.packages[account_id].sort(key=lambda p: p.model.name)

    def _freephone_load(self, numbers: set[str]) -> None:
        missing = numbers - self.freephone.keys()
        if not missing:
            return
        candidates = missing | {"+" + n for n in missing}
        owners = dict(FreephoneNumber.objects.filter(number__in=candidates).values_list("number", "account_id"))
        accounts = _accounts().in_bulk(set(owners.values()))
        for number in missing:
            self.freephone[number] = None
        for number, account_id in owners.items():
            account = accounts[account_id]
            self.freephone[_number_key(number)] = account
            self.accounts.setdefault(account.code, account)
        self._packages_load(accounts.values())

    def freephone_owner(self, number: str) -> Account | None:
        return self.freephone.get(_number_key(number))

    def package_for(self, account: Account, number: str) -> _Package | None:
        """The account's package covering calls to ``number`` (longest matching prefix, then name), or None."""
        digits = _number_key(number)
        best, best_length = None, -1
        for package in self.packages.get(account.pk, ()):
            for prefix in package.model.prefixes:
                if digits.startswith(prefix) and len(prefix) > best_length:
                    best, best_length = package, len(prefix)
        return best

    def grid(self, tariff: Tariff) -> rating.ClassGrid | None:
        if tariff.pk not in self._grids:
            self._grids[tariff.pk] = class_grid_pricer_get(tariff=tariff)
        return self._grids[tariff.pk]

    def cost_tariff(self, trunk: str) -> Tariff | None:
        return self.trunk_tariffs.get(trunk) or self.default_cost

    def cost(
        self, *, number: str, seconds: int, at: datetime, trunk: str, currency: str, service: str = "voice", units=1
    ) -> tuple[Decimal | None, str]:
        """(cost, "") of a call under the supplier's cost tariff, or (None, why it is unknown)."""
        tariff = self.cost_tariff(trunk)
        if tariff is None:
            return None, no_cost_tariff_note(trunk)
        if tariff.currency != currency:
            return None, cost_currency_note(tariff, currency)
        quote = rating.rate_one(
            rate_deck_get(tariff=tariff),
            number=number,
            seconds=seconds,
            at=at,
            tz=self.tz,
            service=service,
            units=units,
        )
        if quote is None:
            return None, no_cost_rate_note(number, tariff)
        return quote.amount, ""

    def period_start(self, moment: datetime) -> date:
        return package_month(moment, self.zone)


def _accounts():
    """Accounts with their tariff, and whether they have minute packages (read only for those that do)."""
    links = Account.packages.through.objects.filter(account_id=OuterRef("pk"))
    return Account.objects.select_related("tariff").annotate(has_packages=Exists(links))


def _package_pure(package: MinutePackage) -> _Package:
    try:
        tiers = tuple(
            rating.PackageTier(
                up_to_minutes=None if tier.get("up_to_minutes") in (None, "") else Decimal(str(tier["up_to_minutes"])),
                rate=Decimal(str(tier["rate"])),
            )
            for tier in package.tiers or ()
        )
        pure = rating.MinutePackage(
            name=package.name,
            prefixes=frozenset(package.prefixes),
            included_minutes=Decimal(package.included_minutes),
            tiers=tiers,
        )
    except (ArithmeticError, KeyError, TypeError, ValueError, AttributeError) as error:
        return _Package(model=package, pure=None, error=f"minute package {package.name} is invalid: {error}")
    return _Package(model=package, pure=pure)


# --- pricing one CDR in place ---------------------------------------------------------------------------------------


def _reset(cdr: Cdr) -> None:
    cdr.status, cdr.unrated_reason = CdrStatus.UNRATED, ""
    cdr.matched_prefix = cdr.destination = cdr.currency = ""
    cdr.billed_seconds = cdr.package_seconds = 0
    cdr.price = cdr.cost = None
    cdr.extra = {k: v for k, v in (cdr.extra or {}).items() if k not in _RATING_KEYS}


def _unrated(cdr: Cdr, reason: str) -> None:
    cdr.status, cdr.unrated_reason = CdrStatus.UNRATED, reason[:200]


def _rated(cdr: Cdr, *, price: Decimal, currency: str, billed: int, prefix: str, destination: str) -> None:
    cdr.status, cdr.unrated_reason = CdrStatus.RATED, ""
    cdr.price, cdr.currency, cdr.billed_seconds = price, currency, billed
    cdr.matched_prefix, cdr.destination = prefix, destination[:100]


def _cost(cdr: Cdr, ctx: RatingContext, *, number: str) -> None:
    cost, note = ctx.cost(
        number=number,
        seconds=cdr.billsec,
        at=cdr.start,
        trunk=cdr.trunk,
        currency=cdr.currency,
        service=cdr.service,
        units=cdr.units or 1,
    )
    cdr.cost = cost
    if note:
        cdr.extra["cost_unknown"] = note


def cdr_price(cdr: Cdr, ctx: RatingContext) -> bool:
    """Rate one CDR in place: priced (with its cost), or unrated with the reason.

    Returns False for a voice CDR a minute package covers: it is priced by :func:`_price_packaged` instead, under
    its counter's lock.
    """
    _reset(cdr)
    if "freephone_number" in cdr.extra:
        _price_freephone_leg(cdr, ctx)
        return True
    account = ctx.accounts.get(cdr.account_code)
    cdr.account = account
    if account is None:
        _unrated(cdr, unknown_account_reason(cdr.account_code))
        return True
    if account.tariff is None:
        _unrated(cdr, no_tariff_reason(account.code))
        return True
    if cdr.service == Service.VOICE and ctx.package_for(account, cdr.callee) is not None:
        return False
    quote = rating.rate_one(
        rate_deck_get(tariff=account.tariff),
        number=cdr.callee,
        seconds=cdr.billsec,
        at=cdr.start,
        tz=ctx.tz,
        service=cdr.service,
        units=cdr.units or 1,
    )
    if quote is None:
        _unrated(cdr, no_rate_reason(cdr.callee))
        return True
    _rated(
        cdr,
        price=quote.amount,
        currency=account.tariff.currency,
        billed=quote.billed_seconds,
        prefix=quote.prefix,
        destination=quote.destination,
    )
    _cost(cdr, ctx, number=cdr.callee)
    return True


@dataclass(frozen=True)
class FreephoneLegPrice:
    """What one leg of a freephone call is charged, from the call's quote on the class grid."""

    amount: Decimal
    billed_seconds: int
    prefix: str
    destination: str
    extra: dict  # the grid's figures kept on the CDR


def freephone_leg_price(quote, *, leg: str, forwarded_to: str | None, tariff_id: int) -> FreephoneLegPrice:
    """The rule for both legs, shared by ingestion and rerating (billing.services.rerate)."""
    termination = quote.termination_class or IVR
    extra = {
        "origination_class": quote.origination_class,
        "termination_class": termination,
        "cell_rate": None if quote.cell_rate is None else str(quote.cell_rate),
        "leg_rate": str(quote.leg_rate),
        "call_total": str(quote.total),
        "tariff_id": tariff_id,
    }
    if leg == Leg.ORIGINATION:
        return FreephoneLegPrice(
            quote.origination_amount,
            quote.billed_seconds,
            quote.origination_prefix,
            f"Freephone from {quote.origination_class}",
            extra,
        )
    return FreephoneLegPrice(
        quote.termination_amount,
        quote.billed_seconds if forwarded_to else 0,  # a call ended on the own IVR bills no forwarded time
        quote.termination_prefix,
        f"Freephone to {termination}",
        extra,
    )


def _price_freephone_leg(cdr: Cdr, ctx: RatingContext) -> None:
    """One leg of a freephone call, charged to the freephone number's owner under its tariff's class grid."""
    number = cdr.extra["freephone_number"]
    owner = ctx.freephone_owner(number)
    if owner is None:
        _unrated(cdr, f"unknown freephone number {number}")
        return
    cdr.account, cdr.account_code = owner, owner.code
    if owner.tariff is None:
        _unrated(cdr, no_tariff_reason(owner.code))
        return
    grid = ctx.grid(owner.tariff)
    if grid is None:
        _unrated(cdr, f"tariff {owner.tariff.name} has no class grid")
        return
    forwarded_to = cdr.extra.get("forwarded_to") or None
    try:
        quote = grid.price(caller=cdr.caller, forwarded_to=forwarded_to, billsec=cdr.billsec)
    except rating.Unpriced as error:
        _unrated(cdr, str(error))
        return
    priced = freephone_leg_price(quote, leg=cdr.leg, forwarded_to=forwarded_to, tariff_id=owner.tariff.pk)
    cdr.extra.update(priced.extra)
    _rated(
        cdr,
        price=priced.amount,
        currency=owner.tariff.currency,
        billed=priced.billed_seconds,
        prefix=priced.prefix,
        destination=priced.destination,
    )
    if cdr.leg == Leg.ORIGINATION:
        _cost(cdr, ctx, number=cdr.caller)
    elif forwarded_to:
        _cost(cdr, ctx, number=forwarded_to)
    else:
        cdr.cost = Decimal(0).quantize(rating.MICRO)  # the call ended on our own IVR: nobody to pay downstream


def _usage_key(cdr: Cdr, package: _Package, ctx: RatingContext) -> tuple[int, int, date]:
    return (cdr.account.pk, package.model.pk, ctx.period_start(cdr.start))


def _package_usage_lock(cdrs: list[Cdr], ctx: RatingContext) -> dict[tuple[int, int, date], PackageUsage]:
    """The counters these package CDRs move, created if missing and locked in one fixed order (no deadlocks)."""
    return package_counters_lock(_usage_key(c, ctx.package_for(c.account, c.callee), ctx) for c in cdrs)


@dataclass
class Resequenced:
    """Already-charged package CDRs re-priced because a call of their period arrived after them, and the
    adjustment entries (``resequence:<cdr id>:<late call's source>:<its source id>``) that correct their charges."""

    cdrs: list[Cdr] = field(default_factory=list)
    adjustments: list[Adjustment] = field(default_factory=list)

    def apply(self, *, account_ids) -> None:
        """Write them, in the transaction holding the counters' locks. The accounts of the whole batch
        (``account_ids``) are locked here first, in id order in one statement, so the batch's charges that follow
        lock nothing new (charging takes them in id order too: no deadlock with other imports)."""
        if not self.cdrs:
            return
        accounts_lock(set(account_ids) | {c.account_id for c in self.cdrs})
        fields = ["price", "billed_seconds", "package_seconds", "matched_prefix", "destination", "extra", "updated_at"]
        Cdr.objects.bulk_update(self.cdrs, fields, batch_size=1000)
        adjustments_post(self.adjustments)


def _price_packaged(
    cdrs: list[Cdr], ctx: RatingContext, usage: dict[tuple[int, int, date], PackageUsage]
) -> Resequenced:
    """Price package-covered CDRs in the order the calls started, moving their (locked) counters.

    A call that started before an already-counted call of its period (a late import, or an unrated CDR rated now)
    re-sequences the period (``packages.package_period_replay``): it is priced at its true position (the account's
    tariff), and the already-charged calls after it are re-priced at theirs, each under the tariff it was priced
    with (``extra["tariff_id"]``; the account's tariff for CDRs without it); those whose rating changes are
    returned to be written with their adjustment entries. The counter is set to the replay's end, so
    it stays the sum of the period's package seconds.
    """
    groups: dict[tuple[int, int, date], list[Cdr]] = {}
    for cdr in sorted(cdrs, key=lambda c: (c.start, c.source_id)):
        _reset(cdr)
        package = ctx.package_for(cdr.account, cdr.callee)
        if package.pure is None:
            _unrated(cdr, package.error)
            continue
        groups.setdefault(_usage_key(cdr, package, ctx), []).append(cdr)
    resequenced = Resequenced()
    now = timezone.now()
    moved = []
    for key in sorted(groups):
        fresh = groups[key]
        counter, first = usage[key], fresh[0]
        account, package = first.account, ctx.package_for(first.account, first.callee)
        month_start, month_end = package_months_bounds(key[2], key[2], ctx.zone)
        counted = Cdr.objects.filter(
            account_id=account.pk, status=CdrStatus.RATED, start__lt=month_end, extra__package=package.model.name
        )
        stored = list(counted.filter(start__gte=first.start).order_by("start", "source_id"))
        # New calls are priced under the account's tariff; stored ones under the tariff they were priced with.
        calls = [PackageCall(c.start, c.source_id, c.callee, c.billsec, reprice=True) for c in fresh]
        used_before = counter.used_seconds
        if stored:  # calls of this period already counted started after the first new one: re-sequence
            used_before = (
                counted.filter(start__gte=month_start, start__lt=first.start).aggregate(s=Sum("package_seconds"))["s"]
                or 0
            )
            calls += [
                PackageCall(
                    c.start,
                    c.source_id,
                    c.callee,
                    c.billsec,
                    package_seconds=c.package_seconds,
                    reprice=(c.start, c.source_id) > (first.start, first.source_id),
                    cdr_id=c.pk,
                    tariff_id=_priced_tariff_id(c),
                )
                for c in stored
            ]
        order = sorted(range(len(calls)), key=lambda i: calls[i].order)
        replay = package_period_replay(
            [calls[i] for i in order],
            package=package.pure,
            deck=rate_deck_get(tariff=account.tariff),
            tariff_id=account.tariff.pk,
            decks=_own_decks({c.tariff_id for c in calls if c.reprice} - {account.tariff.pk, None}),
            tz=ctx.tz,
            used_before=used_before,
        )
        price_of = dict(zip(order, replay.prices, strict=True))
        for position, cdr in enumerate(fresh):
            price = price_of[position]
            if price is None:
                _unrated(cdr, no_rate_reason(cdr.callee))
                continue
            _rated(
                cdr,
                price=price.price,
                currency=account.tariff.currency,
                billed=price.billed_seconds,
                prefix=price.prefix,
                destination=price.destination,
            )
            cdr.package_seconds = price.package_seconds
            cdr.extra["package"] = package.model.name
            cdr.extra.update(price.extra)
            _cost(cdr, ctx, number=cdr.callee)
        for position, cdr in enumerate(stored, start=len(fresh)):
            price = price_of[position]
            if price is not None:
                _resequence(cdr, price, first, now, resequenced)
        counter.used_seconds, counter.updated_at = replay.used_seconds, now
        moved.append(counter)
    PackageUsage.objects.bulk_update(moved, ["used_seconds", "updated_at"])
    return resequenced


def _priced_tariff_id(cdr: Cdr) -> int | None:
    """The tariff a stored package CDR was priced with (``extra["tariff_id"]``); None for CDRs from before it was
    kept, which are re-priced under the account's tariff."""
    tariff_id = (cdr.extra or {}).get("tariff_id")
    return tariff_id if isinstance(tariff_id, int) and not isinstance(tariff_id, bool) else None


def _own_decks(tariff_ids: set[int]) -> dict[int, rating.RateDeck]:
    """The decks of the tariffs stored calls were priced with (other than the account's own); a tariff deleted
    since is missing, and its calls are re-priced under the account's tariff."""
    if not tariff_ids:
        return {}
    return {pk: rate_deck_get(tariff=tariff) for pk, tariff in Tariff.objects.in_bulk(tariff_ids).items()}


def _resequence(cdr: Cdr, price: PackagePrice, late: Cdr, now: datetime, into: Resequenced) -> None:
    """Re-price one already-charged package CDR at its new position (nothing to do when nothing about it changes)."""
    before = (cdr.price, cdr.billed_seconds, cdr.package_seconds, cdr.extra.get("package_parts"))
    if before == (price.price, price.billed_seconds, price.package_seconds, price.parts):
        return
    history = {
        "after": f"{late.source}:{late.source_id}",
        "at": now.isoformat(),
        "price": str(cdr.price),
        "billed_seconds": cdr.billed_seconds,
        "package_seconds": cdr.package_seconds,
    }
    cdr.extra = {**cdr.extra, **price.extra, "resequenced": [*cdr.extra.get("resequenced", []), history]}
    old = cdr.price
    cdr.price, cdr.billed_seconds, cdr.package_seconds = price.price, price.billed_seconds, price.package_seconds
    cdr.matched_prefix, cdr.destination, cdr.updated_at = price.prefix, price.destination, now
    into.cdrs.append(cdr)
    if old != price.price:
        into.adjustments.append(
            Adjustment(
                account_id=cdr.account_id,
                amount=old - price.price,
                idempotency_key=f"resequence:{cdr.pk}:{late.source}:{late.source_id}",
                description=f"Resequenced after late call {late.source_id}: {old} -> {price.price}",
                cdr_id=cdr.pk,
            )
        )


# --- storing and charging ---------------------------------------------------------------------------------------------


def _charge_rated(cdrs: list[Cdr]) -> int:
    return ledger_charge_many(
        [
            BulkCharge(
                account_id=c.account_id,
                amount=c.price,
                idempotency_key=f"cdr:{c.source}:{c.source_id}",
                description=_charge_description(c)[:300],
                cdr_id=c.pk,
            )
            for c in cdrs
            if c.status == CdrStatus.RATED and c.price and c.price > 0
        ]
    )


def _charge_description(cdr: Cdr) -> str:
    if "freephone_number" in cdr.extra:
        return f"freephone {cdr.extra['freephone_number']} {cdr.leg} leg, from {cdr.caller}"
    return f"{cdr.service} to {cdr.callee}"


def _cdrs_from_record(parsed, source: str) -> list[Cdr]:
    """The CDR rows one parsed record gives: one, or two legs for a freephone platform record."""
    extra = {
        key: str(value)
        for key, value in (
            ("forwarded_to", parsed.forwarded_to),
            ("service_code", parsed.service_code),
            ("reported_cost", parsed.reported_cost),
            ("disposition", parsed.disposition if parsed.disposition != "ANSWERED" else None),
        )
        if value is not None
    }
    common = dict(
        source=source,
        account_code=parsed.account[:80],
        caller=parsed.caller[:32],
        callee=parsed.callee[:32],
        start=parsed.start,
        duration=parsed.duration,
        billsec=parsed.billsec,
        service=parsed.service or Service.VOICE,
        units=parsed.units or 0,
        trunk=(parsed.trunk or "")[:80],
    )
    if parsed.leg != "combined":
        return [
            Cdr(
                source_id=parsed.source_id[:120],
                leg=parsed.leg or Leg.ORIGINATION,
                correlation_id=(parsed.correlation_id or "")[:120],
                extra=extra,
                **common,
            )
        ]
    extra["freephone_number"] = parsed.callee
    extra.setdefault("forwarded_to", "")
    return [
        Cdr(
            source_id=f"{parsed.source_id}:{FREEPHONE_SUFFIX[leg]}"[:120],
            leg=leg,
            correlation_id=parsed.source_id[:120],
            extra=dict(extra),
            **common,
        )
        for leg in (Leg.ORIGINATION, Leg.TERMINATION)
    ]


@dataclass
class IngestSummary:
    """What an import did, as the JSON the command prints and the API answers.

    ``read`` counts records (lines), the other counts count CDR rows (a freephone record gives two).
    """

    read: int = 0
    imported: int = 0
    duplicates: int = 0
    unrated: int = 0
    rejected: list = field(default_factory=list)
    charged: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    legs: dict = field(default_factory=dict)

    def reject(self, error) -> None:
        self.rejected.append({"line": error.line, "column": error.column, "reason": error.reason})

    def count(self, cdrs: list[Cdr]) -> None:
        self.imported += len(cdrs)
        for cdr in cdrs:
            leg = self.legs.setdefault(cdr.leg, {"cdrs": 0, "charged": {}})
            leg["cdrs"] += 1
            if cdr.status != CdrStatus.RATED:
                self.unrated += 1
                continue
            _add(self.charged, cdr.currency, cdr.price)
            _add(leg["charged"], cdr.currency, cdr.price)
            if cdr.cost is not None:
                _add(self.cost, cdr.currency, cdr.cost)

    def merge(self, other: dict) -> None:
        for key in ("read", "imported", "duplicates", "unrated"):
            setattr(self, key, getattr(self, key) + other[key])
        self.rejected += other["rejected"]
        for target, source in ((self.charged, other["charged"]), (self.cost, other["cost"])):
            for currency, amount in source.items():
                _add(target, currency, Decimal(amount))
        for leg, values in other["legs"].items():
            mine = self.legs.setdefault(leg, {"cdrs": 0, "charged": {}})
            mine["cdrs"] += values["cdrs"]
            for currency, amount in values["charged"].items():
                _add(mine["charged"], currency, Decimal(amount))

    def as_dict(self) -> dict:
        def text(amounts: dict) -> dict:
            return {currency: str(amount) for currency, amount in sorted(amounts.items())}

        return {
            "read": self.read,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "unrated": self.unrated,
            "rejected": sorted(self.rejected, key=lambda r: r["line"]),
            "charged": text(self.charged),
            "cost": text(self.cost),
            "legs": {
                leg: {"cdrs": values["cdrs"], "charged": text(values["charged"])}
                for leg, values in sorted(self.legs.items())
            },
        }


def _add(totals: dict, currency: str, amount: Decimal) -> None:
    totals[currency] = totals.get(currency, Decimal(0)) + amount


def _store(cdrs: list[Cdr], ctx: RatingContext, *, packaged: bool, summary: IngestSummary) -> None:
    """Store and charge one chunk of priced CDRs (package ones priced here, under their counters' lock).

    A chunk that races another import of the same CDRs (unique violation) is retried: the retry finds them stored.
    """
    source = cdrs[0].source
    for attempt in range(3):
        try:
            with transaction.atomic():
                usage = _package_usage_lock(cdrs, ctx) if packaged else {}
                known = set(
                    Cdr.objects.filter(source=source, source_id__in=[c.source_id for c in cdrs]).values_list(
                        "source_id", flat=True
                    )
                )
                fresh, seen = [], set()
                for cdr in cdrs:
                    if cdr.source_id in known or cdr.source_id in seen:
                        continue
                    seen.add(cdr.source_id)
                    fresh.append(cdr)
                resequenced = _price_packaged(fresh, ctx, usage) if packaged else Resequenced()
                Cdr.objects.bulk_create(fresh)
                resequenced.apply(account_ids={c.account_id for c in fresh if c.account_id})
                _charge_rated(fresh)
            break
        except IntegrityError:
            if attempt == 2:
                raise
            log.info("CDR chunk raced another import of the same CDRs; retrying")
            for cdr in cdrs:
                cdr.pk = None
                cdr._state.adding = True
    summary.duplicates += len(cdrs) - len(fresh)
    summary.count(fresh)


def cdrs_ingest(*, source: str, records, tz: str, chunk_size: int = 5000) -> dict:
    """Store, rate and charge CDRs (``csvformats.ParsedCdr``, or ``LineError`` for bad lines) from one source.

    The same (source, source id) twice is stored and charged once; bad lines are reported and the good ones
    imported; CDRs that cannot be rated are kept unrated with the reason. Returns the summary
    (:class:`IngestSummary`): read, imported, duplicates, unrated, rejected (line, column, reason), charged and
    cost per currency, and per leg the CDRs and what they charged.
    """
    from ..csvformats import LineError

    ctx = RatingContext(tz=tz)
    summary = IngestSummary()
    buffer: list = []
    deferred: list[Cdr] = []

    def flush() -> None:
        cdrs = [cdr for parsed in buffer for cdr in _cdrs_from_record(parsed, source)]
        buffer.clear()
        ctx.load(cdrs)
        ready = []
        for cdr in cdrs:
            (ready if cdr_price(cdr, ctx) else deferred).append(cdr)
        if ready:
            _store(ready, ctx, packaged=False, summary=summary)

    for record in records:
        summary.read += 1
        if isinstance(record, LineError):
            summary.reject(record)
            continue
        buffer.append(record)
        if len(buffer) >= chunk_size:
            flush()
    flush()
    # Package calls last, all of them in the order they started, so counters fill in call order.
    deferred.sort(key=lambda c: (c.start, c.source_id))
    for begin in range(0, len(deferred), chunk_size):
        _store(deferred[begin : begin + chunk_size], ctx, packaged=True, summary=summary)
    return summary.as_dict()


# --- rating what waited ----------------------------------------------------------------------------------------------


def cdrs_rate_pending(*, tz: str | None = None, batch_size: int = 2000) -> int:
    """Rate the CDRs kept as unrated, now that a rate, account, freephone number, grid or trunk may have appeared,
    then fill in the costs that were unknown (:func:`cdrs_cost_pending`: a new trunk or cost rate).

    Returns how many got rated (and charged, in the same transaction). Rows are taken with ``FOR UPDATE SKIP
    LOCKED``, so two runs at once share the work instead of rating a CDR twice; the ones still unrated get their
    reason refreshed.
    """
    tz = tz or operator_time_zone()
    ctx = RatingContext(tz=tz)
    rated = 0
    last_pk = 0
    while True:
        with transaction.atomic():
            pending = list(
                Cdr.objects.select_for_update(skip_locked=True)
                .filter(status=CdrStatus.UNRATED, pk__gt=last_pk)
                .order_by("pk")[:batch_size]
            )
            if not pending:
                break
            last_pk = pending[-1].pk
            before = {c.pk: c.unrated_reason for c in pending}
            ctx.load(pending)
            packaged = [c for c in pending if not cdr_price(c, ctx)]
            resequenced = (
                _price_packaged(packaged, ctx, _package_usage_lock(packaged, ctx)) if packaged else Resequenced()
            )
            resequenced.apply(account_ids={c.account_id for c in pending if c.account_id})
            now = timezone.now()
            changed = [c for c in pending if c.status == CdrStatus.RATED or c.unrated_reason != before[c.pk]]
            for cdr in changed:
                cdr.updated_at = now  # bulk_update does not apply auto_now
            Cdr.objects.bulk_update(changed, RATED_FIELDS, batch_size=1000)
            done = [c for c in pending if c.status == CdrStatus.RATED]
            _charge_rated(done)
            rated += len(done)
    cdrs_cost_pending(ctx=ctx, batch_size=batch_size)
    return rated


def cdrs_cost_pending(*, ctx: RatingContext, batch_size: int = 2000) -> int:
    """Fill in the cost of rated CDRs whose cost was unknown (no trunk, cost tariff or cost rate then); their price
    and charge stay as they are. Returns how many got a cost."""
    costed = 0
    last_pk = 0
    while True:
        with transaction.atomic():
            pending = list(
                Cdr.objects.select_for_update(skip_locked=True)
                .filter(status=CdrStatus.RATED, cost__isnull=True, pk__gt=last_pk)
                .order_by("pk")[:batch_size]
            )
            if not pending:
                break
            last_pk = pending[-1].pk
            now = timezone.now()
            changed = []
            for cdr in pending:
                note = cdr.extra.pop("cost_unknown", "")
                _cost(cdr, ctx, number=_cost_number(cdr))
                if cdr.cost is not None or cdr.extra.get("cost_unknown") != note:
                    cdr.updated_at = now
                    changed.append(cdr)
            Cdr.objects.bulk_update(changed, ["cost", "extra", "updated_at"], batch_size=1000)
            costed += sum(1 for c in changed if c.cost is not None)
    return costed


def _cost_number(cdr: Cdr) -> str:
    """The number a CDR's cost is looked up by: the called number; for freephone legs, the caller (origination
    leg) or the forwarded-to number (termination leg)."""
    if "freephone_number" not in cdr.extra:
        return cdr.callee
    return cdr.caller if cdr.leg == Leg.ORIGINATION else cdr.extra.get("forwarded_to", "")


def cdrs_rate_pending_schedule() -> None:
    """Rate the unrated CDRs in the background (Celery, queue ``rating``) once the current transaction commits.

    Called by whatever may complete an unrated CDR (a rate import, a new account, freephone number, trunk, class or
    cell: see ``billing/signals.py``), so the request that adds it returns at once. Enqueued once per transaction
    however many such rows it writes; a broker that is down is logged, never fails the commit that called it.
    """
    from ..tasks import cdrs_rate_pending_task

    if any(getattr(entry[1], "rates_pending_cdrs", False) for entry in connection.run_on_commit):
        return

    def enqueue() -> None:
        cdrs_rate_pending_task.apply_async(queue="rating")

    enqueue.rates_pending_cdrs = True
    transaction.on_commit(enqueue, robust=True)
