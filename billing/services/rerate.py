"""Rerating and what-if: price a period's CDRs again under each account's current tariff or a candidate one.

``rerate_preview`` re-rates and records the differences in a draft :class:`RerateRun`; it writes
nothing else (no CDR, no ledger entry). ``rerate_confirm`` re-rates again, checks that the result is
still the one previewed, and then, in one transaction:

- posts one ``adjustment`` ledger entry per CDR whose price changed, of ``old price - new price``
  (the ledger's sign: a higher new price is a negative entry, the customer owes more), with the
  idempotency key ``rerate:<run id>:<cdr id>``; earlier entries are never edited;
- moves each account's balance by the sum of what was actually inserted, so balance = sum of entries;
- writes the new price, matched prefix, destination and billed seconds on the CDRs, appending what
  they were to ``extra["rerated"]`` (a history, one item per confirmed run);
- marks the run confirmed. Confirming a confirmed run changes nothing.

So a run's adjustments sum to minus its ``difference`` (new total - old total), and re-rating the
same period again compares with the prices a confirmed run wrote: nothing is adjusted twice.

Which CDRs: rated ones of the account (or every account) whose call started in [start, end). Left as
they are, and counted in the summary's ``skipped`` with the reason:

- priced by a minute package (``package_seconds > 0``): their price depends on the period's package
  counters and the order of calls, not on the rate deck alone;
- freephone legs priced on a tariff's class grid (``extra`` names their origination class);
- no tariff to rate with (no candidate and the account has none), or a tariff in another currency;
- no rate in the tariff for the number at the call's start (``no_rate``, also counted per account):
  a candidate deck that does not cover a destination does not make those calls free.

The rating engine is the one that priced them (:mod:`billing.rating`), in the operator's time zone;
groups of at least ``BULK_MIN_ROWS`` CDRs of one tariff and service go through the vectorised
:class:`billing.rating.BulkRater`, which equals :func:`billing.rating.rate_one` row by row.
"""

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
from django.db import connection, transaction
from django.db.models import BigIntegerField, F, Q
from django.db.models.functions import Cast, Extract
from django.utils import timezone

from .. import rating
from ..choices import CdrStatus, EntryKind, RerateStatus, TariffKind
from ..models import Account, Cdr, LedgerEntry, RerateRun, Tariff

BULK_MIN_ROWS = 1000
CHUNK_ROWS = 100_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SKIP_PACKAGE = "priced by a minute package"
SKIP_GRID = "freephone leg priced on a class grid"
SKIP_NO_TARIFF = "account has no tariff"
SKIP_CURRENCY = "tariff in another currency"
SKIP_NO_RATE = "no rate in the tariff"


class RerateInvalid(ValueError):
    """A what-if that cannot be run as asked; ``field`` names the argument at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class RerateStale(Exception):
    """Prices, tariffs or CDRs changed since the preview: confirming it would post what nobody saw."""


def _money(micro: int) -> str:
    return str(Decimal(int(micro)).scaleb(-6).quantize(rating.MICRO))


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


_MEASURES = ("cdrs", "changed", "no_rate", "old", "new")


@dataclass
class _Rerating:
    """One pass over a period: reads the CDRs chunk by chunk as columns, rates them, and sums the differences."""

    start: datetime
    end: datetime
    account: Account | None
    tariff: Tariff | None
    tz: str
    skipped: dict[str, int] = field(default_factory=dict)
    accounts: dict[int, dict] = field(default_factory=dict)
    tariffs: dict[int, Tariff] = field(default_factory=dict)
    lines: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (account, destination) -> _MEASURES

    def _skip(self, reason: str, count: int) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    def chunks(self) -> Iterator[_Chunk]:
        """The re-rated CDRs in id order, CHUNK_ROWS at a time; skipped CDRs are only counted."""
        base = Cdr.objects.filter(
            status=CdrStatus.RATED,
            account__isnull=False,
            price__isnull=False,
            start__gte=self.start,
            start__lt=self.end,
        )
        if self.account is not None:
            base = base.filter(account=self.account)
        grid = Q(extra__has_key="origination_class") | Q(extra__has_key="cell_rate")
        self._skip(SKIP_GRID, base.filter(grid).count())
        self._skip(SKIP_PACKAGE, base.filter(package_seconds__gt=0).exclude(grid).count())
        candidates = base.exclude(grid).exclude(package_seconds__gt=0)
        account_ids = candidates.values("account_id").distinct()
        usable: dict[int, int] = {}  # account id -> tariff id
        # Read afresh: decks are cached per version of the tariff (its updated_at), never per stale object.
        candidate = Tariff.objects.get(pk=self.tariff.pk) if self.tariff is not None else None
        for account in Account.objects.filter(pk__in=account_ids).select_related("tariff").order_by("pk"):
            tariff = candidate or account.tariff
            if tariff is None:
                self._skip(SKIP_NO_TARIFF, candidates.filter(account=account).count())
            elif tariff.currency != account.currency:
                self._skip(SKIP_CURRENCY, candidates.filter(account=account).count())
            else:
                usable[account.pk] = tariff.pk
                self.tariffs[tariff.pk] = tariff
                self.accounts[account.pk] = {
                    "account_id": account.pk,
                    "account_code": account.code,
                    "account_name": account.name,
                    "currency": account.currency,
                    "tariff_id": tariff.pk,
                    "tariff_name": tariff.name,
                }
        if not usable:
            return
        account_keys = np.array(sorted(usable), dtype=np.int64)
        tariff_of_account = np.array([usable[a] for a in account_keys.tolist()], dtype=np.int64)
        rows = (
            candidates.filter(account_id__in=list(usable))
            .order_by("id")
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


def rerate_preview(
    *,
    start: datetime,
    end: datetime,
    account: Account | None = None,
    tariff: Tariff | None = None,
    tz: str | None = None,
) -> RerateRun:
    """What-if: re-rate the period's CDRs (of ``account``, or all) under ``tariff`` (or each account's own).

    Returns a draft run whose ``summary`` holds, per account and per destination (the CDRs' current
    destination), the CDRs re-rated, how many change price, the old and new totals and the difference
    (new - old; positive: the customer would pay more), the same per currency, and the CDRs skipped
    with why. Writes nothing but the run. Raises :class:`RerateInvalid` naming the bad argument.
    """
    from ..selectors.reports import operator_time_zone

    _validate(start=start, end=end, account=account, tariff=tariff)
    rerating = _Rerating(start=start, end=end, account=account, tariff=tariff, tz=tz or operator_time_zone())
    for _chunk in rerating.chunks():
        pass
    return RerateRun.objects.create(
        tariff=tariff,
        account=account,
        period_start=start,
        period_end=end,
        status=RerateStatus.DRAFT,
        summary=rerating.summary(),
    )


def _comparable(summary: dict) -> tuple:
    return summary.get("accounts"), summary.get("skipped")


_CREATE_RESULTS = """CREATE TEMP TABLE IF NOT EXISTS _rerate_result (
    cdr_id bigint, account_id bigint, old_price numeric(20,6), new_price numeric(20,6),
    new_prefix text, new_destination text, new_billed integer) ON COMMIT DELETE ROWS"""


def _copy_changed(cursor, chunk: _Chunk) -> int:
    """COPY the chunk's re-rated CDRs into the session's _rerate_result; returns how many."""
    rows = np.flatnonzero(chunk.changed())
    if not rows.size:
        return 0
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(
        zip(
            chunk.ids[rows].tolist(),
            chunk.accounts[rows].tolist(),
            map(_money, chunk.old_micro[rows].tolist()),
            map(_money, chunk.new_micro[rows].tolist()),
            chunk.new_prefix[rows].tolist(),
            chunk.new_destination[rows].tolist(),
            chunk.new_billed[rows].tolist(),
            strict=True,
        )
    )
    buffer.seek(0)
    cursor.copy_expert("COPY _rerate_result FROM STDIN WITH (FORMAT csv)", buffer)
    return int(rows.size)


def rerate_confirm(*, run: RerateRun) -> RerateRun:
    """Post the run's differences as adjustment entries and write the new prices on its CDRs (see module doc).

    Idempotent: a confirmed run is returned unchanged, and each entry's key ``rerate:<run>:<cdr>`` is
    unique. Raises :class:`RerateStale` when re-rating now gives another result than the preview
    (a tariff, a price or the period's CDRs changed), or when a CDR's price moves while confirming:
    nothing is written then; preview again and confirm the new run.
    """
    from ..selectors.reports import operator_time_zone

    with transaction.atomic():
        run = RerateRun.objects.select_for_update(of=("self",)).select_related("account", "tariff").get(pk=run.pk)
        if run.status == RerateStatus.CONFIRMED:
            return run
        rerating = _Rerating(
            start=run.period_start,
            end=run.period_end,
            account=run.account,
            tariff=run.tariff,
            tz=run.summary.get("time_zone") or operator_time_zone(),
        )
        stale = RerateStale(
            f"rerate run {run.pk}: prices, tariffs or CDRs of the period changed since the preview; "
            "run the what-if again"
        )
        now = timezone.now()
        entries, cdrs, accounts = LedgerEntry._meta.db_table, Cdr._meta.db_table, Account._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(_CREATE_RESULTS)
            cursor.execute("TRUNCATE _rerate_result")
            copied = sum(_copy_changed(cursor.cursor, chunk) for chunk in rerating.chunks())
            if _comparable(rerating.summary()) != _comparable(run.summary):
                raise stale
            # Lock the accounts in one order, so bulk charges running at the same time cannot deadlock with us.
            cursor.execute(
                f"SELECT id FROM {accounts} WHERE id IN (SELECT DISTINCT account_id FROM _rerate_result) "
                "ORDER BY id FOR NO KEY UPDATE"
            )
            # One statement: re-price each CDR only if its price is still the one re-rated (optimistic), post an
            # adjustment for each one re-priced, and move the balances by what was actually inserted.
            cursor.execute(
                f"""WITH moved AS (
                      UPDATE {cdrs} c SET
                        price = r.new_price, matched_prefix = r.new_prefix, destination = r.new_destination,
                        billed_seconds = r.new_billed, updated_at = %(now)s,
                        extra = jsonb_set(coalesce(c.extra, '{{}}'::jsonb), '{{rerated}}',
                          coalesce(c.extra -> 'rerated', '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
                            'run', %(run)s, 'at', %(at)s, 'price', c.price::text, 'matched_prefix', c.matched_prefix,
                            'destination', c.destination, 'billed_seconds', c.billed_seconds)))
                      FROM _rerate_result r WHERE c.id = r.cdr_id AND c.price = r.old_price
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
        run.status, run.confirmed_at = RerateStatus.CONFIRMED, now
        run.summary = {
            **run.summary,
            "confirmed": {"entries": int(posted), "adjusted": _money(int(adjusted.scaleb(6))), "cdrs": int(moved)},
        }
        run.save(update_fields=["status", "confirmed_at", "summary", "updated_at"])
    return run
