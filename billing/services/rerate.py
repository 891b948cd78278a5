"""Rerating and what-if: price a period's CDRs again under each account's current tariff or a candidate one.

A run (:class:`RerateRun`) goes ``queued`` → ``running`` → ``ready`` (the what-if) → ``confirming`` →
``confirmed``, or ``failed`` (with ``error_code`` and ``error``; ``rerate_stale`` when confirming found the period
changed). :func:`rerate_request` checks the arguments and queues a run, :func:`rerate_confirm_request` queues its
confirmation; both run on a Celery worker (``billing.tasks``, queue ``reports``) after the request's commit, which
report progress on the run (``progress_done`` of ``progress_total`` CDRs). :func:`rerate_preview` and
:func:`rerate_confirm` are the same work run inline. Either task may run twice (redelivery, a re-enqueue): a preview
writes its result, progress or failure only onto a run still ``running``, a confirm only acts on a ``confirming``
run under its row lock. A run whose task never reached a worker (broker down at commit) or whose worker died is sent
again when it is polled (:func:`rerate_runs_resume`).

The what-if writes nothing but the run. Confirming re-rates again, checks that the result is still the one
previewed, and then, in one transaction:

- posts one ``adjustment`` ledger entry per CDR whose price changed, of ``old price - new price``
  (the ledger's sign: a higher new price is a negative entry, the customer owes more), with the
  idempotency key ``rerate:<run id>:<cdr id>``; earlier entries are never edited;
- moves each account's balance by the sum of what was actually inserted, so balance = sum of entries;
- writes the new rating (price, matched prefix, destination, billed seconds; package seconds and parts, grid
  classes and rates; for package calls and grid legs the tariff that priced them, ``extra["tariff_id"]``) on the
  CDRs, appending what they were to ``extra["rerated"]`` (one item per confirmed run, with the previous
  ``tariff_id`` when there was one);
- sets the package counters it replayed (see below) to their replayed values;
- marks the run confirmed. Confirming a confirmed run changes nothing.

So a run's adjustments sum to minus its ``difference`` (new total - old total), and re-rating the
same period again compares with the prices a confirmed run wrote: nothing is adjusted twice.

Which CDRs: rated ones of the account (or every account) whose call started in [start, end), priced three ways:

- **by the rate deck**: the rating engine that priced them (:mod:`billing.rating`), in the operator's time zone;
  groups of at least ``BULK_MIN_ROWS`` CDRs of one tariff and service go through the vectorised
  :class:`billing.rating.BulkRater`, which equals :func:`billing.rating.rate_one` row by row;
- **by a minute package** (``extra["package"]``): the price depends on the package counter and the order of calls,
  so each period of the package (account, package, calendar month in the operator's zone) that has calls in the
  window is replayed from zero at the month's start in call order (``packages.package_period_replay``) with the
  tariff's deck: calls in the window are re-priced at their replayed positions, calls of the month outside the
  window keep their rating and count with their stored package seconds. Confirming records the run's tariff on the
  calls it re-priced (``extra["tariff_id"]``, also on calls whose price does not change), so a later re-sequence
  of the month (a late call, ``ingest.py``) re-prices them under that tariff, not the account's. The what-if never
  touches the counters; confirming locks them (``SELECT … FOR UPDATE`` in id order, as ingestion does, before the
  accounts) and sets each to its replayed end;
- **freephone legs on a class grid** (``extra["origination_class"]``): priced again on the tariff's grid exactly as
  ingestion prices them (``ingest._price_freephone_leg``), with the caller and forwarded-to number.

Left as they are, and counted in the summary's ``skipped`` with the reason: no tariff to rate with (no candidate
and the account has none), a tariff in another currency, a grid leg under a tariff without a grid, a package
CDR whose package is gone or invalid (or with package seconds but no package name, from before packages were
named), and no rate (or grid cell) for the number (``no_rate``, also counted per account and destination): a
candidate deck that does not cover a destination does not make those calls free.
"""

import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
from django.db import connection, transaction
from django.db.models import BigIntegerField, Count, F, Q
from django.db.models.functions import Cast, Extract
from django.utils import timezone

from .. import rating
from ..choices import CdrStatus, EntryKind, RerateStatus, TariffKind
from ..models import Account, Cdr, LedgerEntry, MinutePackage, PackageUsage, RerateRun, Tariff
from .packages import (
    PackageCall,
    PackagePrice,
    package_counters_lock,
    package_month,
    package_months_bounds,
    package_period_replay,
)

log = logging.getLogger(__name__)

BULK_MIN_ROWS = 1000
CHUNK_ROWS = 100_000
ROWS_BATCH = 5000  # package and grid CDRs are priced one by one, this many per batch
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
QUEUE = "reports"

SKIP_PACKAGE = "priced by a minute package that is not named"
SKIP_PACKAGE_GONE = "its minute package no longer exists"
SKIP_NO_GRID = "tariff has no class grid"
SKIP_NO_TARIFF = "account has no tariff"
SKIP_CURRENCY = "tariff in another currency"
SKIP_NO_RATE = "no rate in the tariff"

GRID = Q(extra__has_key="origination_class") | Q(extra__has_key="cell_rate")
PACKAGED = Q(extra__has_key="package")
_GRID_KEYS = ("origination_class", "termination_class", "cell_rate", "leg_rate", "call_total", "tariff_id")


class RerateInvalid(ValueError):
    """A what-if that cannot be run as asked; ``field`` names the argument at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class RerateStale(Exception):
    """Prices, tariffs or CDRs changed since the preview: confirming it would post what nobody saw."""


class RerateNotReady(Exception):
    """The run cannot be confirmed: its what-if is not done yet, or it failed (``code`` says which)."""

    def __init__(self, run: RerateRun):
        self.run = run
        if run.status == RerateStatus.FAILED:
            self.code = run.error_code or "rerate_failed"
            message = f"rerate run {run.pk} failed: {run.error}; run the what-if again"
        else:
            self.code = "rerate_not_ready"
            message = f"rerate run {run.pk} is {run.status}: its what-if is not ready yet"
        super().__init__(message)


def _money(micro: int) -> str:
    return str(Decimal(int(micro)).scaleb(-6).quantize(rating.MICRO))


def _micro(amount: Decimal) -> int:
    return int(Decimal(amount).scaleb(6))


@dataclass
class _Chunk:
    """Up to CHUNK_ROWS CDRs as columns: what they cost (``old_*``) and what they cost now (``new_*``)."""

    ids: np.ndarray
    accounts: np.ndarray
    services: np.ndarray  # object (str)
    callees: list[str]
    billsec: np.ndarray
    units: np.ndarray
    start_us: np.ndarray  # epoch microseconds, UTC
    old_micro: np.ndarray
    old_prefix: np.ndarray  # object
    old_destination: np.ndarray  # object
    old_billed: np.ndarray
    new_micro: np.ndarray = None  # -1: the tariff has no rate
    new_prefix: np.ndarray = None
    new_destination: np.ndarray = None
    new_billed: np.ndarray = None

    @classmethod
    def from_rows(cls, rows: list[tuple]) -> "_Chunk":
        (ids, accounts, services, callees, billsec, units, start_us, micro, prefix, destination, billed) = zip(
            *rows, strict=True
        )
        count = len(rows)
        chunk = cls(
            ids=np.array(ids, dtype=np.int64),
            accounts=np.array(accounts, dtype=np.int64),
            services=np.array(services, dtype=object),
            callees=list(callees),
            billsec=np.array(billsec, dtype=np.int64),
            units=np.array(units, dtype=np.int64),
            start_us=np.array(start_us, dtype=np.int64),
            old_micro=np.array(micro, dtype=np.int64),
            old_prefix=np.array(prefix, dtype=object),
            old_destination=np.array(destination, dtype=object),
            old_billed=np.array(billed, dtype=np.int64),
        )
        chunk.new_micro = np.full(count, -1, dtype=np.int64)
        chunk.new_prefix = np.full(count, "", dtype=object)
        chunk.new_destination = np.full(count, "", dtype=object)
        chunk.new_billed = np.zeros(count, dtype=np.int64)
        return chunk

    def rate(self, rows: np.ndarray, tariff: Tariff, service: str, tz: str) -> None:
        """Price ``rows`` (indexes, all of one service) under ``tariff``, in bulk when there are many."""
        units = np.maximum(self.units[rows], 1)  # a message is at least one part, as when it was rated
        if len(rows) >= BULK_MIN_ROWS:
            from ..selectors.decks import bulk_deck_get

            bulk = bulk_deck_get(tariff=tariff)  # built once per version of the deck, shared with the import
            quotes = bulk.rater.rate_bulk(
                [self.callees[i] for i in rows.tolist()],
                self.billsec[rows],
                self.start_us[rows].astype("datetime64[us]"),
                tz=tz,
                service=service,
                units=units,
            )
            found = quotes.rate_index >= 0
            hit, index = rows[found], quotes.rate_index[found]
            self.new_micro[hit] = quotes.amount_micro[found]
            self.new_billed[hit] = quotes.billed_seconds[found]
            self.new_prefix[hit] = bulk.prefixes[index]
            self.new_destination[hit] = bulk.destinations[index]
            return
        from ..selectors import rate_deck_get

        deck = rate_deck_get(tariff=tariff)
        for position, row in enumerate(rows.tolist()):
            quote = rating.rate_one(
                deck,
                number=self.callees[row],
                seconds=int(self.billsec[row]),
                at=_EPOCH + timedelta(microseconds=int(self.start_us[row])),
                tz=tz,
                service=service,
                units=int(units[position]),
            )
            if quote is not None:
                self.new_micro[row] = int(quote.amount.scaleb(6))
                self.new_billed[row] = quote.billed_seconds
                self.new_prefix[row], self.new_destination[row] = quote.prefix, quote.destination

    def changed(self) -> np.ndarray:
        """Rows the tariff prices and whose rating differs (price, prefix, destination or billed seconds)."""
        return (self.new_micro >= 0) & (
            (self.new_micro != self.old_micro)
            | (self.new_billed != self.old_billed)
            | (self.new_prefix != self.old_prefix)
            | (self.new_destination != self.old_destination)
        )


@dataclass(frozen=True)
class _New:
    """A package or grid CDR's new rating; ``package_seconds`` None for grid legs, ``extra`` the keys to write."""

    micro: int
    billed: int
    prefix: str
    destination: str
    package_seconds: int | None
    extra: dict

    @classmethod
    def of_package(cls, price: PackagePrice) -> "_New":
        return cls(
            _micro(price.price), price.billed_seconds, price.prefix, price.destination, price.package_seconds,
            price.extra,
        )  # fmt: skip


@dataclass
class _Row:
    """One package or grid CDR of the window: its rating now, and the new one (None: no rate, left as it is)."""

    cdr_id: int
    account_id: int
    destination: str
    old_micro: int
    old_billed: int
    old_prefix: str
    old_package_seconds: int | None
    old_extra: dict
    new: _New | None

    @classmethod
    def stored(
        cls, cdr_id, account_id, price, package_seconds, billed, prefix, destination, *, old_extra, new
    ) -> "_Row":
        """From a stored CDR's columns (``package_seconds`` None for grid legs) and its new rating."""
        return cls(cdr_id, account_id, destination, _micro(price), billed, prefix, package_seconds, old_extra, new)

    def writes(self) -> bool:
        """Whether confirming rewrites it: any part of its rating differs."""
        new = self.new
        if new is None:
            return False
        return (
            (new.micro, new.billed, new.prefix, new.destination)
            != (self.old_micro, self.old_billed, self.old_prefix, self.destination)
            or (new.package_seconds is not None and new.package_seconds != self.old_package_seconds)
            or any(self.old_extra.get(key) != value for key, value in new.extra.items())
        )


_MEASURES = ("cdrs", "changed", "no_rate", "old", "new")


@dataclass
class _Rerating:
    """One pass over a period: reads the CDRs (deck-priced ones chunk by chunk as columns, package and grid ones
    row by row), rates them, and sums the differences. ``progress(done, total)`` is told as it goes."""

    start: datetime
    end: datetime
    account: Account | None
    tariff: Tariff | None
    tz: str
    progress: Callable[[int, int], None] | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    accounts: dict[int, dict] = field(default_factory=dict)
    tariffs: dict[int, Tariff] = field(default_factory=dict)
    usable: dict[int, int] = field(default_factory=dict)  # account id -> tariff id
    lines: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (account, destination) -> _MEASURES
    counters: dict[tuple[int, int, date], int] = field(default_factory=dict)  # replayed package counters
    total: int = 0
    done: int = 0
    _prepared: bool = False
    _groups: dict | None = None
    _digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def _skip(self, reason: str, count: int) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    def _advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None and count:
            self.progress(self.done, self.total)

    def scope(self):
        base = Cdr.objects.filter(
            status=CdrStatus.RATED,
            account__isnull=False,
            price__isnull=False,
            start__gte=self.start,
            start__lt=self.end,
        )
        return base if self.account is None else base.filter(account=self.account)

    def prepare(self) -> None:
        """Which accounts can be re-rated and under which tariff; the others' CDRs are counted as skipped."""
        if self._prepared:
            return
        self._prepared = True
        per_account = dict(self.scope().values("account_id").annotate(n=Count("id")).values_list("account_id", "n"))
        self.total = sum(per_account.values())
        # Read afresh: decks are cached per version of the tariff (its updated_at), never per stale object.
        candidate = Tariff.objects.get(pk=self.tariff.pk) if self.tariff is not None else None
        for account in Account.objects.filter(pk__in=list(per_account)).select_related("tariff").order_by("pk"):
            tariff = candidate or account.tariff
            if tariff is None:
                self._skip(SKIP_NO_TARIFF, per_account[account.pk])
            elif tariff.currency != account.currency:
                self._skip(SKIP_CURRENCY, per_account[account.pk])
            else:
                self.usable[account.pk] = tariff.pk
                self.tariffs[tariff.pk] = tariff
                self.accounts[account.pk] = {
                    "account_id": account.pk,
                    "account_code": account.code,
                    "account_name": account.name,
                    "currency": account.currency,
                    "tariff_id": tariff.pk,
                    "tariff_name": tariff.name,
                }
        self._advance(self.total - sum(per_account[a] for a in self.usable))

    def _tariff_of(self, account_id: int) -> Tariff:
        return self.tariffs[self.usable[account_id]]

    # --- deck-priced CDRs ----------------------------------------------------------------------------------------

    def chunks(self) -> Iterator[_Chunk]:
        """The deck-priced CDRs in id order, CHUNK_ROWS at a time."""
        self.prepare()
        candidates = self.scope().filter(account_id__in=list(self.usable)).exclude(GRID).exclude(PACKAGED)
        legacy = candidates.filter(package_seconds__gt=0)
        self._skip(SKIP_PACKAGE, legacy.count())
        self._advance(self.skipped.get(SKIP_PACKAGE, 0))
        candidates = candidates.exclude(package_seconds__gt=0)
        if not self.usable:
            return
        account_keys = np.array(sorted(self.usable), dtype=np.int64)
        tariff_of_account = np.array([self.usable[a] for a in account_keys.tolist()], dtype=np.int64)
        rows = (
            candidates.order_by("id")
            # Times and prices as integers (epoch µs, micro units): no datetime or Decimal per row.
            .annotate(
                start_us=Cast(Extract("start", "epoch", tzinfo=UTC) * 1_000_000, BigIntegerField()),
                price_micro=Cast(F("price") * 1_000_000, BigIntegerField()),
            )
            .values_list(
                "id",
                "account_id",
                "service",
                "callee",
                "billsec",
                "units",
                "start_us",
                "price_micro",
                "matched_prefix",
                "destination",
                "billed_seconds",
            )
        )
        batch: list[tuple] = []
        for values in rows.iterator(chunk_size=20_000):
            batch.append(values)
            if len(batch) >= CHUNK_ROWS:
                yield self._rated(_Chunk.from_rows(batch), account_keys, tariff_of_account)
                batch = []
        if batch:
            yield self._rated(_Chunk.from_rows(batch), account_keys, tariff_of_account)

    def _rated(self, chunk: _Chunk, account_keys: np.ndarray, tariff_of_account: np.ndarray) -> _Chunk:
        row_tariffs = tariff_of_account[np.searchsorted(account_keys, chunk.accounts)]
        for tariff_id in np.unique(row_tariffs).tolist():
            of_tariff = row_tariffs == tariff_id
            for service in set(chunk.services[of_tariff].tolist()):
                rows = np.flatnonzero(of_tariff & (chunk.services == service))
                chunk.rate(rows, self.tariffs[tariff_id], service, self.tz)
        self._add(chunk)
        changed = np.flatnonzero(chunk.changed())
        for column in (chunk.ids, chunk.old_micro, chunk.new_micro, chunk.new_billed):
            self._digest.update(column[changed].tobytes())
        self._digest.update(
            "\x1f".join(chunk.new_prefix[changed].tolist() + chunk.new_destination[changed].tolist()).encode()
        )
        self._advance(len(chunk.ids))
        return chunk

    def _add(self, chunk: _Chunk) -> None:
        """Sum the chunk per (account, destination before re-rating) with numpy, then into the running lines."""
        codes: dict[str, int] = {}
        destination = np.fromiter(
            (codes.setdefault(d, len(codes)) for d in chunk.old_destination.tolist()),
            dtype=np.int64,
            count=len(chunk.ids),
        )
        account_ids, account_index = np.unique(chunk.accounts, return_inverse=True)
        groups, group = np.unique(account_index * len(codes) + destination, return_inverse=True)
        priced = chunk.new_micro >= 0
        sums = np.zeros((len(_MEASURES), len(groups)), dtype=np.int64)
        np.add.at(sums[0], group, priced)
        np.add.at(sums[1], group, priced & (chunk.new_micro != chunk.old_micro))
        np.add.at(sums[2], group, ~priced)
        np.add.at(sums[3], group[priced], chunk.old_micro[priced])
        np.add.at(sums[4], group[priced], chunk.new_micro[priced])
        names = list(codes)
        for position, key in enumerate(groups.tolist()):
            line_key = (int(account_ids[key // len(codes)]), names[key % len(codes)])
            line = self.lines.setdefault(line_key, [0] * len(_MEASURES))
            for measure in range(len(_MEASURES)):
                line[measure] += int(sums[measure, position])
        self._skip(SKIP_NO_RATE, int((~priced).sum()))

    # --- package and grid CDRs, row by row -------------------------------------------------------------------------

    def _add_rows(self, rows: list[_Row]) -> list[_Row]:
        for row in rows:
            line = self.lines.setdefault((row.account_id, row.destination), [0] * len(_MEASURES))
            if row.new is None:
                line[2] += 1
                self._skip(SKIP_NO_RATE, 1)
                continue
            line[0] += 1
            line[1] += row.new.micro != row.old_micro
            line[3] += row.old_micro
            line[4] += row.new.micro
            if row.writes():
                new = row.new
                self._digest.update(
                    json.dumps(
                        [row.cdr_id, row.old_micro, new.micro, new.billed, new.prefix, new.destination,
                         new.package_seconds, new.extra],
                        sort_keys=True,
                        default=str,
                    ).encode()
                )  # fmt: skip
        self._advance(len(rows))
        return rows

    def _month(self, moment: datetime) -> date:
        return package_month(moment, ZoneInfo(self.tz))

    def _month_bounds(self, first: date, last: date) -> tuple[datetime, datetime]:
        return package_months_bounds(first, last, ZoneInfo(self.tz))

    def package_groups(self) -> dict[tuple[int, str, date], int]:
        """The package periods with calls in the window: (account, package name, month) -> in-window CDRs."""
        if self._groups is None:
            self.prepare()
            self._groups = {}
            window = self.scope().filter(PACKAGED, account_id__in=list(self.usable)).exclude(GRID)
            for account_id, name, start in window.values_list("account_id", "extra__package", "start").iterator():
                key = (account_id, name, self._month(start))
                self._groups[key] = self._groups.get(key, 0) + 1
            self.packages = {p.name: p for p in MinutePackage.objects.filter(name__in={k[1] for k in self._groups})}
        return self._groups

    def counter_keys(self) -> list[tuple[int, int, date]]:
        """The counters (account, package id, month) the package replay covers."""
        groups = self.package_groups()
        return sorted({(a, self.packages[n].pk, d) for a, n, d in groups if n in self.packages})

    def package_rows(self) -> Iterator[list[_Row]]:
        """Replay each package period with calls in the window (see the module doc); yields its window's rows."""
        from ..selectors import rate_deck_get
        from .ingest import _package_pure

        groups = self.package_groups()
        for account_id in sorted({k[0] for k in groups}):
            keys = sorted(k for k in groups if k[0] == account_id)
            names = {k[1] for k in keys}
            low, high = self._month_bounds(keys[0][2], max(k[2] for k in keys))
            calls: dict[tuple[str, date], list[tuple]] = {}
            stored = (
                Cdr.objects.filter(account_id=account_id, status=CdrStatus.RATED, start__gte=low, start__lt=high)
                .filter(PACKAGED)
                .exclude(GRID)
                .order_by("start", "source_id")
                .values_list(
                    "id", "start", "source_id", "callee", "billsec", "price", "package_seconds", "billed_seconds",
                    "matched_prefix", "destination", "extra__package", "extra__package_parts", "extra__tariff_id",
                )
            )  # fmt: skip
            for values in stored.iterator(chunk_size=ROWS_BATCH):
                if values[10] in names:
                    calls.setdefault((values[10], self._month(values[1])), []).append(values)
            tariff = self._tariff_of(account_id)
            deck = rate_deck_get(tariff=tariff)
            for key in keys:
                _, name, month = key
                model = self.packages.get(name)
                if model is None:
                    self._skip(SKIP_PACKAGE_GONE, groups[key])
                    self._advance(groups[key])
                    continue
                package = _package_pure(model)
                if package.pure is None:
                    self._skip(package.error, groups[key])
                    self._advance(groups[key])
                    continue
                period = calls.get((name, month), [])
                replay = package_period_replay(
                    [
                        PackageCall(start, source_id, callee, billsec, package_seconds=seconds, cdr_id=cdr_id,
                                    reprice=self.start <= start < self.end)
                        for cdr_id, start, source_id, callee, billsec, _, seconds, *_ in period
                    ],
                    package=package.pure,
                    deck=deck,
                    tariff_id=tariff.pk,  # written on the CDRs at confirm: a later re-sequence prices them alike
                    tz=self.tz,
                )  # fmt: skip
                self.counters[(account_id, model.pk, month)] = replay.used_seconds
                yield self._add_rows(
                    [
                        _Row.stored(
                            values[0], account_id, *values[5:10],
                            old_extra={"package_parts": values[11], "tariff_id": values[12]},
                            new=None if price is None else _New.of_package(price),
                        )
                        for values, price in zip(period, replay.prices, strict=True)
                        if self.start <= values[1] < self.end
                    ]
                )  # fmt: skip

    def grid_rows(self) -> Iterator[list[_Row]]:
        """Freephone legs priced again on the tariff's class grid, as ingestion prices them."""
        from ..selectors.grid import class_grid_pricer_get
        from .ingest import freephone_leg_price

        self.prepare()
        grids: dict[int, rating.ClassGrid | None] = {}
        legs = (
            self.scope()
            .filter(GRID, account_id__in=list(self.usable))
            .order_by("id")
            .values_list(
                "id", "account_id", "leg", "caller", "billsec", "extra", "price", "billed_seconds", "matched_prefix",
                "destination",
            )
        )  # fmt: skip
        rows: list[_Row] = []
        for cdr_id, account_id, leg, caller, billsec, extra, price, billed, prefix, destination in legs.iterator(
            chunk_size=ROWS_BATCH
        ):
            tariff = self._tariff_of(account_id)
            if tariff.pk not in grids:
                grids[tariff.pk] = class_grid_pricer_get(tariff=tariff)
            grid = grids[tariff.pk]
            if grid is None:
                self._skip(SKIP_NO_GRID, 1)
                self._advance(1)
                continue
            forwarded_to = extra.get("forwarded_to") or None
            try:
                quote = grid.price(caller=caller, forwarded_to=forwarded_to, billsec=billsec)
            except rating.Unpriced:
                new = None
            else:
                priced = freephone_leg_price(quote, leg=leg, forwarded_to=forwarded_to, tariff_id=tariff.pk)
                new = _New(
                    micro=_micro(priced.amount),
                    billed=priced.billed_seconds,
                    prefix=priced.prefix,
                    destination=priced.destination[:100],
                    package_seconds=None,
                    extra=priced.extra,
                )
            rows.append(
                _Row.stored(
                    cdr_id, account_id, price, None, billed, prefix, destination,
                    old_extra={key: extra.get(key) for key in _GRID_KEYS}, new=new,
                )
            )  # fmt: skip
            if len(rows) >= ROWS_BATCH:
                yield self._add_rows(rows)
                rows = []
        if rows:
            yield self._add_rows(rows)

    def run(self) -> None:
        """The whole pass, for a what-if (nothing kept but the sums)."""
        for _ in self.chunks():
            pass
        for _ in self.package_rows():
            pass
        for _ in self.grid_rows():
            pass

    def summary(self) -> dict:
        """The differences per account and destination, and per currency, as JSON-ready data."""

        def amounts(line: list[int]) -> dict:
            cdrs, changed, no_rate, old, new = line
            return {
                "cdrs": cdrs,
                "changed": changed,
                "no_rate": no_rate,
                "old_total": _money(old),
                "new_total": _money(new),
                "difference": _money(new - old),
            }

        per_account: dict[int, list[tuple[str, list[int]]]] = {}
        for (account_id, destination), line in sorted(self.lines.items()):
            per_account.setdefault(account_id, []).append((destination, line))
        accounts, currencies = [], {}
        for info in sorted(self.accounts.values(), key=lambda a: a["account_code"]):
            destinations = per_account.get(info["account_id"])
            if not destinations:
                continue
            total = [sum(line[m] for _, line in destinations) for m in range(len(_MEASURES))]
            per_currency = currencies.setdefault(info["currency"], [0] * len(_MEASURES))
            for measure in range(len(_MEASURES)):
                per_currency[measure] += total[measure]
            accounts.append(
                {
                    **info,
                    **amounts(total),
                    "destinations": [{"destination": name, **amounts(line)} for name, line in destinations],
                }
            )
        return {
            "time_zone": self.tz,
            "cdrs": sum(a["cdrs"] for a in accounts),
            "changed": sum(a["changed"] for a in accounts),
            "totals": [{"currency": c, **amounts(line)} for c, line in sorted(currencies.items())],
            "accounts": accounts,
            "skipped": [{"reason": reason, "cdrs": n} for reason, n in sorted(self.skipped.items())],
            # What confirming would write, row by row: a preview whose fingerprint no longer matches is stale.
            "fingerprint": self._digest.hexdigest(),
        }


def _validate(*, start: datetime, end: datetime, account: Account | None, tariff: Tariff | None) -> None:
    if start.utcoffset() is None or end.utcoffset() is None:
        raise RerateInvalid("start", "the period's bounds must be timezone-aware")
    if end <= start:
        raise RerateInvalid("end", "the period must end after it starts")
    if tariff is not None and tariff.kind != TariffKind.PRICE:
        raise RerateInvalid("tariff", f"tariff {tariff.name} is a supplier cost tariff; a candidate prices customers")
    if account is not None:
        if tariff is not None and tariff.currency != account.currency:
            raise RerateInvalid(
                "tariff", f"tariff {tariff.name} is in {tariff.currency}, account {account.code} in {account.currency}"
            )
        if tariff is None and account.tariff_id is None:
            raise RerateInvalid("account", f"account {account.code} has no tariff; name a candidate tariff")


# --- runs: queued, computed on a worker, confirmed on a worker ------------------------------------------------------


def _enqueue(task_name: str, run_id: int) -> None:
    """Send the run's task (``billing.tasks``) to the worker once the current transaction commits."""
    from .. import tasks

    task = getattr(tasks, task_name)

    def enqueue() -> None:
        task.apply_async(args=[run_id], queue=QUEUE)

    enqueue.rerate_task = (task, run_id)  # what tests run in-process instead of a broker round trip
    transaction.on_commit(enqueue, robust=True)


def rerate_request(
    *,
    start: datetime,
    end: datetime,
    account: Account | None = None,
    tariff: Tariff | None = None,
    tz: str | None = None,
    enqueue: bool = True,
) -> RerateRun:
    """Check a what-if (raises :class:`RerateInvalid` naming the bad argument) and queue it: a ``queued`` run that a
    worker computes (:func:`rerate_run_preview`) after the caller's transaction commits."""
    from ..selectors.reports import operator_time_zone

    _validate(start=start, end=end, account=account, tariff=tariff)
    run = RerateRun.objects.create(
        tariff=tariff,
        account=account,
        period_start=start,
        period_end=end,
        status=RerateStatus.QUEUED,
        summary={"time_zone": tz or operator_time_zone()},
    )
    if enqueue:
        _enqueue("rerate_run_preview_task", run.pk)
    return run


def _run_progress(run_id: int) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        RerateRun.objects.filter(pk=run_id, status=RerateStatus.RUNNING).update(
            progress_done=done, progress_total=total, updated_at=timezone.now()
        )

    return report


def _run_fail(run_id: int, code: str, error: Exception, *, was: str) -> RerateRun:
    """Fail the run if it is still ``was`` (a duplicate task failing never fails a run that moved on)."""
    RerateRun.objects.filter(pk=run_id, status=was).update(
        status=RerateStatus.FAILED,
        error_code=code,
        error=str(error)[:2000],
        finished_at=timezone.now(),
        updated_at=timezone.now(),
    )
    return RerateRun.objects.get(pk=run_id)


def rerate_run_preview(*, run_id: int) -> RerateRun:
    """Compute a queued what-if: the run's summary holds, per account and per destination (the CDRs' current
    destination), the CDRs re-rated, how many change price, the old and new totals and the difference (new - old;
    positive: the customer would pay more), the same per currency, and the CDRs skipped with why. Writes nothing but
    the run. Safe to run twice: a run past ``running`` is returned as it is."""
    now = timezone.now()
    claimed = RerateRun.objects.filter(pk=run_id, status__in=[RerateStatus.QUEUED, RerateStatus.RUNNING]).update(
        status=RerateStatus.RUNNING, started_at=now, updated_at=now
    )
    run = RerateRun.objects.select_related("account", "tariff").get(pk=run_id)
    if not claimed:
        return run
    try:
        rerating = _Rerating(
            start=run.period_start,
            end=run.period_end,
            account=run.account,
            tariff=run.tariff,
            tz=run.summary["time_zone"],
            progress=_run_progress(run.pk),
        )
        rerating.run()
    except Exception as error:
        log.exception("rerate run %s failed", run_id)
        return _run_fail(run_id, "rerate_failed", error, was=RerateStatus.RUNNING)
    # Only onto a run still running: the same task delivered twice (acks_late redelivery, a re-enqueue by
    # rerate_runs_resume) computes the same result, and must never turn a run confirmed meanwhile back to ready.
    now = timezone.now()
    RerateRun.objects.filter(pk=run_id, status=RerateStatus.RUNNING).update(
        summary=rerating.summary(),
        status=RerateStatus.READY,
        progress_done=rerating.total,
        progress_total=rerating.total,
        finished_at=now,
        updated_at=now,
    )
    return RerateRun.objects.select_related("account", "tariff").get(pk=run_id)


def rerate_preview(
    *,
    start: datetime,
    end: datetime,
    account: Account | None = None,
    tariff: Tariff | None = None,
    tz: str | None = None,
) -> RerateRun:
    """What-if, inline: :func:`rerate_request` and :func:`rerate_run_preview` at once; returns the ``ready`` run."""
    run = rerate_request(start=start, end=end, account=account, tariff=tariff, tz=tz, enqueue=False)
    return rerate_run_preview(run_id=run.pk)


def rerate_confirm_request(*, run: RerateRun) -> RerateRun:
    """Queue the confirmation of a ready run (``confirming``; a worker runs :func:`rerate_run_confirm` after
    commit). A run already confirming or confirmed is returned as it is; one not ready, or failed, raises
    :class:`RerateNotReady`."""
    with transaction.atomic():
        run = RerateRun.objects.select_for_update().get(pk=run.pk)
        if run.status in (RerateStatus.CONFIRMING, RerateStatus.CONFIRMED):
            return run
        if run.status != RerateStatus.READY:
            raise RerateNotReady(run)
        run.status = RerateStatus.CONFIRMING
        run.save(update_fields=["status", "updated_at"])
        _enqueue("rerate_run_confirm_task", run.pk)
    return run


def rerate_run_confirm(*, run_id: int) -> RerateRun:
    """Confirm a ``confirming`` run (the worker's half of :func:`rerate_confirm_request`); a stale one fails with
    ``rerate_stale``. Safe to run twice."""
    run = RerateRun.objects.get(pk=run_id)
    if run.status != RerateStatus.CONFIRMING:
        return run
    try:
        return rerate_confirm(run=run)
    except RerateStale as error:
        return _run_fail(run_id, "rerate_stale", error, was=RerateStatus.CONFIRMING)
    except Exception as error:
        log.exception("confirming rerate run %s failed", run_id)
        return _run_fail(run_id, "rerate_failed", error, was=RerateStatus.CONFIRMING)


RESUME_AFTER = timedelta(minutes=1)
RESUME_RUNNING_AFTER = timedelta(minutes=10)
_RESUMED_TASK = {
    RerateStatus.QUEUED: "rerate_run_preview_task",
    RerateStatus.RUNNING: "rerate_run_preview_task",
    RerateStatus.CONFIRMING: "rerate_run_confirm_task",
}


def rerate_runs_resume(*, run_id: int | None = None, now: datetime | None = None) -> int:
    """Send again the task of runs no worker is at: ``queued`` or ``confirming`` untouched for ``RESUME_AFTER`` (the
    broker was down when it was enqueued: ``on_commit(robust=True)`` only logs that), or ``running`` with no progress
    for ``RESUME_RUNNING_AFTER`` (its worker died). A run a worker is confirming holds its row lock and is skipped.
    Both tasks are safe to run twice. Called when a run is polled (API, console), ``run_id`` then names it; returns
    how many were sent again."""
    now = now or timezone.now()
    stuck = Q(status__in=[RerateStatus.QUEUED, RerateStatus.CONFIRMING], updated_at__lt=now - RESUME_AFTER) | Q(
        status=RerateStatus.RUNNING, updated_at__lt=now - RESUME_RUNNING_AFTER
    )
    runs = RerateRun.objects.filter(stuck)
    if run_id is not None:
        runs = runs.filter(pk=run_id)
    with transaction.atomic():
        resumed = list(runs.select_for_update(skip_locked=True).order_by("pk").values_list("pk", "status"))
        RerateRun.objects.filter(pk__in=[pk for pk, _ in resumed]).update(updated_at=now)  # once a period, not a poll
        for pk, status in resumed:
            log.warning("rerate run %s was %s with no worker at it: its task is sent again", pk, status)
            _enqueue(_RESUMED_TASK[status], pk)
    return len(resumed)


# --- confirming ------------------------------------------------------------------------------------------------------


def _comparable(summary: dict) -> tuple:
    return summary.get("accounts"), summary.get("skipped"), summary.get("fingerprint")


_CREATE_ROWS = """CREATE TEMP TABLE IF NOT EXISTS _rerate_rows (
    cdr_id bigint, account_id bigint, old_price numeric(20,6), new_price numeric(20,6),
    new_prefix text, new_destination text, new_billed integer, old_package_seconds integer,
    new_package_seconds integer, extra_patch jsonb) ON COMMIT DELETE ROWS"""


_DECK_COLUMNS = "cdr_id, account_id, old_price, new_price, new_prefix, new_destination, new_billed"
_ROW_COLUMNS = _DECK_COLUMNS + ", old_package_seconds, new_package_seconds, extra_patch"


def _copy(cursor, rows, columns: str) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    buffer.seek(0)
    cursor.copy_expert(f"COPY _rerate_rows ({columns}) FROM STDIN WITH (FORMAT csv)", buffer)


def _copy_changed(cursor, chunk: _Chunk) -> int:
    """COPY the chunk's re-rated CDRs into the session's _rerate_rows; returns how many."""
    rows = np.flatnonzero(chunk.changed())
    if not rows.size:
        return 0
    _copy(
        cursor,
        zip(
            chunk.ids[rows].tolist(),
            chunk.accounts[rows].tolist(),
            map(_money, chunk.old_micro[rows].tolist()),
            map(_money, chunk.new_micro[rows].tolist()),
            chunk.new_prefix[rows].tolist(),
            chunk.new_destination[rows].tolist(),
            chunk.new_billed[rows].tolist(),
            strict=True,
        ),
        _DECK_COLUMNS,
    )
    return int(rows.size)


def _copy_rows(cursor, rows: list[_Row]) -> int:
    """COPY the package and grid CDRs whose rating changes into _rerate_rows (empty fields read as NULL)."""
    changed = [row for row in rows if row.writes()]
    if changed:
        _copy(
            cursor,
            (
                (
                    row.cdr_id, row.account_id, _money(row.old_micro), _money(row.new.micro), row.new.prefix,
                    row.new.destination, row.new.billed,
                    "" if row.new.package_seconds is None else row.old_package_seconds,
                    "" if row.new.package_seconds is None else row.new.package_seconds,
                    json.dumps(row.new.extra),
                )
                for row in changed
            ),
            _ROW_COLUMNS,
        )  # fmt: skip
    return len(changed)


def rerate_confirm(*, run: RerateRun) -> RerateRun:
    """Post the run's differences as adjustment entries and write the new ratings on its CDRs (see module doc).

    Idempotent: a confirmed run is returned unchanged, and each entry's key ``rerate:<run>:<cdr>`` is
    unique. Raises :class:`RerateStale` when re-rating now gives another result than the preview
    (a tariff, a price or the period's CDRs changed), or when a CDR's price moves while confirming:
    nothing is written then; preview again and confirm the new run. Raises :class:`RerateNotReady` for a run whose
    what-if is not done.
    """
    with transaction.atomic():
        run = RerateRun.objects.select_for_update(of=("self",)).select_related("account", "tariff").get(pk=run.pk)
        if run.status == RerateStatus.CONFIRMED:
            return run
        if run.status not in (RerateStatus.READY, RerateStatus.CONFIRMING):
            raise RerateNotReady(run)
        rerating = _Rerating(
            start=run.period_start,
            end=run.period_end,
            account=run.account,
            tariff=run.tariff,
            tz=run.summary["time_zone"],
        )
        stale = RerateStale(
            f"rerate run {run.pk}: prices, tariffs or CDRs of the period changed since the preview; "
            "run the what-if again"
        )
        now = timezone.now()
        entries, cdrs, accounts = LedgerEntry._meta.db_table, Cdr._meta.db_table, Account._meta.db_table
        # Package counters first (ingestion takes them before the accounts too), then re-rate under their lock.
        counters = package_counters_lock(rerating.counter_keys())
        with connection.cursor() as cursor:
            cursor.execute(_CREATE_ROWS)
            cursor.execute("TRUNCATE _rerate_rows")
            copied = sum(_copy_changed(cursor.cursor, chunk) for chunk in rerating.chunks())
            copied += sum(_copy_rows(cursor.cursor, rows) for rows in rerating.package_rows())
            copied += sum(_copy_rows(cursor.cursor, rows) for rows in rerating.grid_rows())
            if _comparable(rerating.summary()) != _comparable(run.summary):
                raise stale
            # Lock the accounts in one order, so bulk charges running at the same time cannot deadlock with us.
            cursor.execute(
                f"SELECT id FROM {accounts} WHERE id IN (SELECT DISTINCT account_id FROM _rerate_rows) "
                "ORDER BY id FOR NO KEY UPDATE"
            )
            # One statement: re-price each CDR only if its price (and package seconds) are still the ones re-rated
            # (optimistic), post an adjustment for each one re-priced, and move the balances by what was inserted.
            cursor.execute(
                f"""WITH moved AS (
                      UPDATE {cdrs} c SET
                        price = r.new_price, matched_prefix = coalesce(r.new_prefix, ''),
                        destination = coalesce(r.new_destination, ''), billed_seconds = r.new_billed,
                        package_seconds = coalesce(r.new_package_seconds, c.package_seconds), updated_at = %(now)s,
                        extra = jsonb_set(coalesce(c.extra, '{{}}'::jsonb), '{{rerated}}',
                          coalesce(c.extra -> 'rerated', '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
                            'run', %(run)s, 'at', %(at)s, 'price', c.price::text, 'matched_prefix', c.matched_prefix,
                            'destination', c.destination, 'billed_seconds', c.billed_seconds)
                            || CASE WHEN r.new_package_seconds IS NULL THEN '{{}}'::jsonb
                                    ELSE jsonb_build_object('package_seconds', c.package_seconds) END
                            || CASE WHEN r.extra_patch ? 'cell_rate'
                                    THEN jsonb_build_object('cell_rate', c.extra -> 'cell_rate')
                                    ELSE '{{}}'::jsonb END
                            || CASE WHEN r.extra_patch ? 'tariff_id' AND c.extra ? 'tariff_id'
                                    THEN jsonb_build_object('tariff_id', c.extra -> 'tariff_id')
                                    ELSE '{{}}'::jsonb END))
                          || coalesce(r.extra_patch, '{{}}'::jsonb)
                      FROM _rerate_rows r WHERE c.id = r.cdr_id AND c.price = r.old_price
                        AND (r.old_package_seconds IS NULL OR c.package_seconds = r.old_package_seconds)
                      RETURNING r.cdr_id, r.account_id, r.old_price, r.new_price)
                    , inserted AS (
                      INSERT INTO {entries} (account_id, kind, amount, idempotency_key, description, cdr_id,
                                             created_at)
                      SELECT account_id, %(kind)s, old_price - new_price, 'rerate:' || %(run)s || ':' || cdr_id,
                             'Rerate #' || %(run)s || ': ' || old_price || ' -> ' || new_price, cdr_id, %(now)s
                      FROM moved WHERE old_price <> new_price ORDER BY cdr_id
                      ON CONFLICT (idempotency_key) DO NOTHING
                      RETURNING account_id, amount)
                    , totals AS (SELECT account_id, sum(amount) AS total, count(*) AS n FROM inserted
                                 GROUP BY account_id)
                    , balances AS (
                      UPDATE {accounts} a SET balance = a.balance + totals.total, updated_at = %(now)s
                      FROM totals WHERE a.id = totals.account_id RETURNING totals.n, totals.total)
                    SELECT (SELECT count(*) FROM moved), (SELECT coalesce(sum(n), 0) FROM balances),
                           (SELECT coalesce(sum(total), 0) FROM balances)""",
                {"now": now, "run": run.pk, "at": now.isoformat(), "kind": EntryKind.ADJUSTMENT},
            )
            moved, posted, adjusted = cursor.fetchone()
            if moved != copied:  # a price moved under us (another rerate, a late correction): all or nothing
                raise stale
        replayed = []
        for key, used in rerating.counters.items():  # the counters locked above, set to their replayed totals
            counter = counters[key]
            counter.used_seconds, counter.updated_at = used, now
            replayed.append(counter)
        PackageUsage.objects.bulk_update(replayed, ["used_seconds", "updated_at"])
        run.status, run.confirmed_at, run.finished_at = RerateStatus.CONFIRMED, now, now
        run.progress_done = run.progress_total = rerating.total
        run.error_code = run.error = ""
        run.summary = {
            **run.summary,
            "confirmed": {"entries": int(posted), "adjusted": _money(int(adjusted.scaleb(6))), "cdrs": int(moved)},
        }
        run.save(
            update_fields=[
                "status", "confirmed_at", "finished_at", "progress_done", "progress_total", "error_code", "error",
                "summary", "updated_at",
            ]
        )  # fmt: skip
    return run
