"""The fast path of ``import_cdrs --format asterisk``: a million Master.csv lines parsed, rated (price and cost),
stored and charged in seconds, with the same prices as the exact path (``ingest.cdrs_ingest``; a test compares them).

How, batch by batch (100,000 records):

1. ``csvformats.iter_asterisk_master_columns`` reads the batch into columns (bad lines are reported, not lost),
   pyarrow parsing the next block on a helper thread meanwhile;
2. duplicates inside the file are dropped (the first one wins) and the accounts it names are read;
3. CDRs of accounts with a minute package covering the number are set aside for the exact path, which moves the
   package counters under their row lock, in call order, after the bulk batches;
4. price (account's tariff) and cost (trunk's cost tariff, else the default one) come from
   ``rating.BulkRater`` per tariff, in int64 micro-units;
5. the batch's rows become a pyarrow table (no per-row Python formatting); one of two writer threads, each on a
   connection of its own, writes it as CSV (pyarrow, off the GIL), streams it into ``billing_cdr`` with ``COPY``
   (two batches stored at once: PostgreSQL uses a core per connection) and charges
   each account the sum of its new CDRs' prices in one ledger entry per account and batch (idempotency key
   ``cdr-batch:<source>:<account id>:<first CDR source id>``; ``LedgerEntry.cdr`` empty, the CDRs themselves carry
   each price), all in one transaction per batch, so ``balance = sum of entries`` holds at every commit. Meanwhile
   the main thread reads and rates the next batch.

Idempotency: a batch whose CDRs are all new is written by a plain ``COPY``; if any is already stored (a re-import,
an overlapping file, a concurrent import) the ``COPY`` fails on the unique (source, source_id) and the batch goes
through a temporary table and ``INSERT … ON CONFLICT DO NOTHING RETURNING source_id`` instead, and only what was
inserted is charged. A CDR is therefore stored and charged once, whatever the files and however many imports run.

Inside a caller's open transaction (tests, a service composing this one) the writes join that transaction on the
caller's connection instead of a thread.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal

import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.csv as pa_csv
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from .. import csvformats
from ..choices import CdrStatus
from ..models import Cdr
from ..rating import encode_numbers
from ..selectors.decks import BulkDeck, bulk_deck_get
from .ingest import (
    IngestSummary,
    RatingContext,
    cdrs_ingest,
    cost_currency_note,
    no_cost_rate_note,
    no_cost_tariff_note,
    no_rate_reason,
    no_tariff_reason,
    unknown_account_reason,
)
from .ledger import BulkCharge, ledger_charge_many

log = logging.getLogger(__name__)

BATCH_ROWS = 100_000
WRITERS = 2
# COPY column order: what varies per CDR first, then one constant tail (source, service, leg, correlation id,
# units, package seconds, created_at, updated_at) written once per row as a single pre-joined string.
_VARYING = (
    "source_id",
    "account_code",
    "account_id",
    "caller",
    "callee",
    "start",
    "duration",
    "billsec",
    "status",
    "unrated_reason",
    "matched_prefix",
    "destination",
    "billed_seconds",
    "trunk",
    "price",
    "cost",
    "currency",
    "extra",
)
_CONSTANT = ("source", "service", "leg", "correlation_id", "units", "package_seconds", "created_at", "updated_at")
_COLUMNS = ", ".join(_VARYING + _CONSTANT)


def _money_array(micro: np.ndarray, known: np.ndarray) -> pa.Array:
    """int64 micro-units as exact decimals with 6 places (null where not ``known``), without a float in between."""
    words = np.empty((micro.size, 2), dtype=np.int64)  # decimal128: the unscaled value, little-endian, two's complement
    words[:, 0] = micro
    words[:, 1] = micro >> 63
    validity = pa.array(known, type=pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(pa.decimal128(38, 6), micro.size, [validity, pa.py_buffer(words.tobytes())])


def _copy_csv(table: pa.Table) -> io.BytesIO:
    """The rows as COPY's CSV format reads them: strings always quoted (so "" is an empty string), NULL unquoted."""
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    buffer.seek(0)
    return buffer


def _cut(values: list[str], limit: int) -> list[str]:
    """Values cut to a column's length, as the exact path's CDR fields cut them (one C-level scan usually)."""
    if not values or max(map(len, values)) <= limit:
        return values
    return [v[:limit] for v in values]


def _as_bytes(values: list[str]) -> np.ndarray:
    try:
        return np.array(values, dtype="S")
    except UnicodeEncodeError:  # non-ASCII is never a number: blank it, it comes out unrated like the scalar path
        return np.array([v if v.isascii() else "" for v in values], dtype="S")


@dataclass
class _Batch:
    """One batch ready to write: the CDR rows (their columns in COPY order) and, per row, what charging and the
    summary need."""

    table: pa.Table | None
    source: str
    source_ids: list[str]
    account_pk: np.ndarray  # -1: unknown account
    rated: np.ndarray
    price_micro: np.ndarray
    cost_known: np.ndarray
    cost_micro: np.ndarray
    currency_index: np.ndarray  # into currencies; -1 for unrated rows
    currencies: list[str]
    known_duplicates: int = 0  # in the file before, or stored before


@dataclass
class _Written:
    imported: int = 0
    duplicates: int = 0
    unrated: int = 0
    charged: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)


class _Import:
    """State of one bulk import: the rating context, what was seen, what waits for the exact path."""

    def __init__(self, *, source: str, tz: str) -> None:
        self.source = source
        self.tz = tz
        self.ctx = RatingContext(tz=tz)
        self.seen: set[str] = set()
        self.deferred: list[csvformats.ParsedCdr] = []
        self.now = pa.scalar(timezone.now().astimezone(UTC).replace(tzinfo=None), pa.timestamp("us"))
        self._deck_cache: dict[int, tuple[pa.Array, pa.Array]] = {}

    def _stored(self, source_ids: list[str]) -> set[str]:
        """The batch's source ids already stored, looked up only when a probe of three of them finds one."""
        table = Cdr._meta.db_table
        probe = [source_ids[0], source_ids[len(source_ids) // 2], source_ids[-1]]
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT EXISTS (SELECT 1 FROM {table} WHERE source = %s AND source_id = ANY(%s))", [self.source, probe]
            )
            if not cursor.fetchone()[0]:
                return set()
            cursor.execute(
                f"SELECT source_id FROM {table} WHERE source = %s AND source_id = ANY(%s)", [self.source, source_ids]
            )
            return {row[0] for row in cursor.fetchall()}

    def prepare(self, batch: csvformats.CdrColumns) -> _Batch | None:
        """Rate one batch of good records and lay it out for COPY; None when nothing is left to write."""
        count = len(batch)
        # Same limits as the exact path's CDR fields, before rating, so both rate the very same numbers.
        source_ids = _cut(batch.source_id, 120)
        codes = _cut(batch.account, 80)
        callers = _cut(batch.caller, 32)
        callees = _cut(batch.callee, 32)
        trunks = batch.trunk
        seen = self.seen
        keep = np.ones(count, dtype=bool)
        batch_ids = set(source_ids)
        if len(batch_ids) == count and seen.isdisjoint(batch_ids):  # the usual case, in C: nothing repeats
            seen |= batch_ids
            duplicate_rows = []
        else:
            duplicate_rows = [i for i, s in enumerate(source_ids) if s in seen or seen.add(s)]
            keep[duplicate_rows] = False
        # A file seen before (a re-import, an overlap): drop what is stored already before rating it.
        known = self._stored(source_ids)
        if known:
            stored_rows = [i for i, s in enumerate(source_ids) if s in known and keep[i]]
            keep[stored_rows] = False
            duplicate_rows += stored_rows

        ctx = self.ctx
        distinct = list(set(codes))
        ctx.accounts_load(set(distinct))
        accounts = [ctx.accounts[c] for c in distinct]
        code_index = {code: position for position, code in enumerate(distinct)}
        row_account = np.array(list(map(code_index.__getitem__, codes)), dtype=np.int64).reshape(count)
        pk_of = np.array([a.pk if a else -1 for a in accounts], dtype=np.int64)
        tariffs = list({a.tariff_id: a.tariff for a in accounts if a is not None and a.tariff is not None}.values())
        slot_of_tariff = {t.pk: slot for slot, t in enumerate(tariffs)}
        slot_of = np.array(
            [slot_of_tariff[a.tariff_id] if a is not None and a.tariff is not None else -1 for a in accounts],
            dtype=np.int64,
        )
        with_packages = np.array([a is not None and bool(ctx.packages.get(a.pk)) for a in accounts], dtype=bool)
        row_pk = pk_of[row_account]
        row_slot = slot_of[row_account]

        # Calls a minute package covers go to the exact path (counters under lock, in call order).
        for i in np.flatnonzero(keep & with_packages[row_account]).tolist():
            account = accounts[row_account[i]]
            if account.tariff is not None and ctx.package_for(account, callees[i]) is not None:
                keep[i] = False
                self.deferred.append(
                    csvformats.ParsedCdr(
                        line=int(batch.line[i]),
                        source_id=source_ids[i],
                        caller=callers[i],
                        callee=callees[i],
                        start=batch.start[i].item().replace(tzinfo=UTC),
                        duration=int(batch.duration[i]),
                        billsec=int(batch.billsec[i]),
                        account=codes[i],
                        disposition=batch.disposition[i],
                        trunk=trunks[i],
                    )
                )
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return None if not duplicate_rows else _empty(self.source, len(duplicate_rows))

        numbers = _as_bytes(callees)
        padded, ndigits = encode_numbers(numbers)  # once for the price and the cost decks
        price_index = np.full(count, -1, dtype=np.int64)
        billed = np.zeros(count, dtype=np.int64)
        price_micro = np.zeros(count, dtype=np.int64)
        currencies = sorted({t.currency for t in tariffs})
        currency_of_slot = np.array([currencies.index(t.currency) for t in tariffs] + [-1], dtype=np.int64)
        decks: list[BulkDeck | None] = [None] * len(tariffs)
        for slot, tariff in enumerate(tariffs):
            group = rows[row_slot[rows] == slot]
            if group.size == 0:
                continue
            bulk = decks[slot] = bulk_deck_get(tariff=tariff)
            quotes = bulk.rater.rate_bulk(
                numbers[group],
                batch.billsec[group],
                batch.start[group],
                tz=self.tz,
                encoded=(padded[group], ndigits[group]),
            )
            price_index[group] = quotes.rate_index
            billed[group] = quotes.billed_seconds
            price_micro[group] = quotes.amount_micro
        rated = keep & (row_slot >= 0) & (price_index >= 0)
        currency_index = np.where(rated, currency_of_slot[row_slot], -1)

        unrated_reason = np.full(count, "", dtype=object)
        for i in np.flatnonzero(keep & ~rated).tolist():
            account = accounts[row_account[i]]
            if account is None:
                unrated_reason[i] = unknown_account_reason(codes[i])
            elif account.tariff is None:
                unrated_reason[i] = no_tariff_reason(account.code)
            else:
                unrated_reason[i] = no_rate_reason(callees[i])

        cost_micro, cost_known, notes = self._costs(
            rated, row_slot, tariffs, trunks, (numbers, padded, ndigits), batch, callees
        )
        extra = np.full(count, "{}", dtype=object)
        odd = (notes != "") | (np.array(batch.disposition, dtype=object) != "ANSWERED")
        for i in np.flatnonzero(keep & odd).tolist():
            details = {}
            if batch.disposition[i] != "ANSWERED":
                details["disposition"] = batch.disposition[i]
            if notes[i]:
                details["cost_unknown"] = notes[i]
            extra[i] = json.dumps(details)

        full = rows.size == count
        row_list = rows.tolist()

        def pick(column) -> list:
            if isinstance(column, list):
                return column if full else [column[i] for i in row_list]
            return (column if full else column[rows]).tolist()

        def text(column) -> pa.Array:
            return pa.array(pick(column), type=pa.string())

        def vocabulary(words: list[str], index: np.ndarray) -> pa.Array:
            """Per row, words[index] (index -1: the empty string)."""
            index = index[rows]
            return pa.array([*words, ""], type=pa.string()).take(pa.array(np.where(index < 0, len(words), index)))

        prefixes, destinations = self._deck_columns(decks, price_index, row_slot, rows)
        kept = rows.size
        arrays = {
            "source_id": text(source_ids),
            "account_code": text(codes),
            "account_id": pa.array(row_pk[rows], mask=row_pk[rows] < 0),
            "caller": text(callers),
            "callee": text(callees),
            "start": pa.array(batch.start[rows]),
            "duration": pa.array(batch.duration[rows]),
            "billsec": pa.array(batch.billsec[rows]),
            "status": vocabulary([CdrStatus.RATED.value, CdrStatus.UNRATED.value], (~rated).astype(np.int64)),
            "unrated_reason": text(unrated_reason),
            "matched_prefix": prefixes,
            "destination": destinations,
            "billed_seconds": pa.array(billed[rows]),
            "trunk": text(trunks),
            "price": _money_array(price_micro[rows], rated[rows]),
            "cost": _money_array(cost_micro[rows], cost_known[rows]),
            "currency": vocabulary(currencies, currency_index),
            "extra": text(extra),
            "source": pa.repeat(pa.scalar(self.source, pa.string()), kept),
            "service": pa.repeat(pa.scalar("voice", pa.string()), kept),
            "leg": pa.repeat(pa.scalar("origination", pa.string()), kept),
            "correlation_id": pa.repeat(pa.scalar("", pa.string()), kept),
            "units": pa.repeat(pa.scalar(0, pa.int64()), kept),
            "package_seconds": pa.repeat(pa.scalar(0, pa.int64()), kept),
            "created_at": pa.repeat(self.now, kept),
            "updated_at": pa.repeat(self.now, kept),
        }
        return _Batch(
            table=pa.table([arrays[name] for name in _VARYING + _CONSTANT], names=[*_VARYING, *_CONSTANT]),
            source=self.source,
            source_ids=pick(source_ids),
            account_pk=row_pk[rows],
            rated=rated[rows],
            price_micro=price_micro[rows],
            cost_known=cost_known[rows],
            cost_micro=cost_micro[rows],
            currency_index=currency_index[rows],
            currencies=currencies,
            known_duplicates=len(duplicate_rows),
        )

    def _deck_columns(
        self, decks: list[BulkDeck | None], price_index: np.ndarray, row_slot: np.ndarray, rows: np.ndarray
    ) -> tuple[pa.Array, pa.Array]:
        """matched_prefix and destination of the kept rows: each row's rate in its tariff's deck (or empty)."""
        prefixes: list[pa.Array] = []
        destinations: list[pa.Array] = []
        base = np.zeros(len(decks) + 1, dtype=np.int64)
        for slot, bulk in enumerate(decks):
            if bulk is not None:
                prefix_array, destination_array = self._deck_arrays(bulk)
                prefixes.append(prefix_array)
                destinations.append(destination_array)
                base[slot + 1] = base[slot] + len(prefix_array)
            else:
                base[slot + 1] = base[slot]
        prefixes.append(pa.array([""], type=pa.string()))  # rows of no tariff
        destinations.append(pa.array([""], type=pa.string()))
        deck_size = np.diff(base)
        slot, index = row_slot[rows], price_index[rows]
        priced = slot >= 0  # every such row's tariff has its deck in ``decks``
        at = np.full(rows.size, base[-1], dtype=np.int64)
        # Rate index -1 (no rate) is the deck's trailing empty entry.
        at[priced] = base[slot[priced]] + np.where(index[priced] >= 0, index[priced], deck_size[slot[priced]] - 1)
        taken = pa.array(at)
        return pa.concat_arrays(prefixes).take(taken), pa.concat_arrays(destinations).take(taken)

    def _deck_arrays(self, bulk: BulkDeck) -> tuple[pa.Array, pa.Array]:
        """Per rate index, the deck's prefix and destination as pyarrow arrays (last: empty), once per deck."""
        cached = self._deck_cache.get(id(bulk))
        if cached is None:
            cached = (
                pa.array(bulk.prefixes.tolist(), type=pa.string()),
                pa.array(bulk.destinations.tolist(), type=pa.string()),
            )
            self._deck_cache[id(bulk)] = cached
        return cached

    def _costs(self, rated, row_slot, tariffs, trunks, numbers, batch, callees):
        """Cost of each rated row under its trunk's cost tariff (else the default one), and why when unknown."""
        numbers, padded, ndigits = numbers
        count = len(rated)
        ctx = self.ctx
        cost_micro = np.zeros(count, dtype=np.int64)
        cost_known = np.zeros(count, dtype=bool)
        notes = np.full(count, "", dtype=object)
        cost_tariffs: list = []
        slot_of_trunk: dict[str, int] = {}
        for trunk in set(trunks):
            tariff = ctx.cost_tariff(trunk)
            if tariff is not None and tariff not in cost_tariffs:
                cost_tariffs.append(tariff)
            slot_of_trunk[trunk] = cost_tariffs.index(tariff) if tariff is not None else -1
        row_cost_slot = np.array(list(map(slot_of_trunk.__getitem__, trunks)), dtype=np.int64).reshape(count)
        for i in np.flatnonzero(rated & (row_cost_slot < 0)).tolist():
            notes[i] = no_cost_tariff_note(trunks[i])
        for cost_slot, cost_tariff in enumerate(cost_tariffs):
            in_slot = rated & (row_cost_slot == cost_slot)
            for price_slot, tariff in enumerate(tariffs):
                group = np.flatnonzero(in_slot & (row_slot == price_slot))
                if group.size == 0:
                    continue
                if cost_tariff.currency != tariff.currency:
                    notes[group] = cost_currency_note(cost_tariff, tariff.currency)
                    continue
                bulk = bulk_deck_get(tariff=cost_tariff)
                quotes = bulk.rater.rate_bulk(
                    numbers[group],
                    batch.billsec[group],
                    batch.start[group],
                    tz=self.tz,
                    encoded=(padded[group], ndigits[group]),
                )
                found = quotes.rate_index >= 0
                cost_micro[group] = quotes.amount_micro
                cost_known[group] = found
                for i in group[~found].tolist():
                    notes[i] = no_cost_rate_note(callees[i], cost_tariff)
        return cost_micro, cost_known, notes


def _empty(source: str, duplicates: int) -> _Batch:
    nothing = np.zeros(0, dtype=np.int64)
    return _Batch(
        table=None,
        source=source,
        source_ids=[],
        account_pk=nothing,
        rated=nothing.astype(bool),
        price_micro=nothing,
        cost_known=nothing.astype(bool),
        cost_micro=nothing,
        currency_index=nothing,
        currencies=[],
        known_duplicates=duplicates,
    )


# --- writing -----------------------------------------------------------------------------------------------------


def _batch_write(batch: _Batch) -> _Written:
    """Store one batch and charge what it added, in one transaction (see the module docstring)."""
    written = _Written(duplicates=batch.known_duplicates)
    if not batch.source_ids:
        return written
    began = time.perf_counter()
    rows = _copy_csv(batch.table)  # pyarrow writes it with the GIL released, while the caller rates the next batch
    table = Cdr._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL TIME ZONE 'UTC'")  # start/created_at are written as UTC wall-clock text
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE source = %s AND source_id = ANY(%s))",
            [batch.source, [batch.source_ids[0], batch.source_ids[-1]]],
        )
        inserted = None
        if not cursor.fetchone()[0]:
            try:
                with transaction.atomic():
                    cursor.copy_expert(f"COPY {table} ({_COLUMNS}) FROM STDIN (FORMAT csv)", rows, 1 << 20)
                inserted = np.ones(len(batch.source_ids), dtype=bool)
            except psycopg2.errors.UniqueViolation:
                inserted = None  # some were stored before: take the slower path that skips them
        if inserted is None:
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS _cdr_bulk ON COMMIT DELETE ROWS AS "
                f"SELECT {_COLUMNS} FROM {table} WITH NO DATA"
            )
            cursor.execute("TRUNCATE _cdr_bulk")
            rows.seek(0)
            cursor.copy_expert(f"COPY _cdr_bulk ({_COLUMNS}) FROM STDIN (FORMAT csv)", rows, 1 << 20)
            cursor.execute(
                f"INSERT INTO {table} ({_COLUMNS}) SELECT {_COLUMNS} FROM _cdr_bulk "
                f"ON CONFLICT (source, source_id) DO NOTHING RETURNING source_id"
            )
            stored = {row[0] for row in cursor.fetchall()}
            inserted = np.fromiter((s in stored for s in batch.source_ids), dtype=bool, count=len(batch.source_ids))
        copied = time.perf_counter()
        _charge(batch, inserted)
    log.debug(
        "bulk batch of %d: stored in %.2f s, charged and committed in %.2f s",
        len(batch.source_ids),
        copied - began,
        time.perf_counter() - copied,
    )
    written.imported = int(inserted.sum())
    written.duplicates += len(batch.source_ids) - written.imported
    new_rated = inserted & batch.rated
    written.unrated = int((inserted & ~batch.rated).sum())
    for position, currency in enumerate(batch.currencies):
        in_currency = new_rated & (batch.currency_index == position)
        if in_currency.any():
            written.charged[currency] = _decimal(int(batch.price_micro[in_currency].sum()))
            costed = in_currency & batch.cost_known
            if costed.any():
                written.cost[currency] = _decimal(int(batch.cost_micro[costed].sum()))
    return written


def _charge(batch: _Batch, inserted: np.ndarray) -> None:
    """One charge per account for the new rated CDRs of the batch (their prices summed exactly, in micro-units)."""
    charged = np.flatnonzero(inserted & batch.rated & (batch.price_micro > 0))
    if charged.size == 0:
        return
    accounts = batch.account_pk[charged]
    order = np.argsort(accounts, kind="stable")
    accounts, rows = accounts[order], charged[order]
    starts = np.flatnonzero(np.r_[True, accounts[1:] != accounts[:-1]])
    sums = np.add.reduceat(batch.price_micro[rows], starts)
    counts = np.diff(np.r_[starts, rows.size])
    ledger_charge_many(
        [
            BulkCharge(
                account_id=int(accounts[start]),
                amount=_decimal(int(total)),
                idempotency_key=f"cdr-batch:{batch.source}:{int(accounts[start])}:{batch.source_ids[rows[start]]}"[
                    :200
                ],
                description=f"{int(n)} voice calls, {batch.source} import (CDRs from {batch.source_ids[rows[start]]})"[
                    :300
                ],
            )
            for start, total, n in zip(starts.tolist(), sums.tolist(), counts.tolist(), strict=True)
        ]
    )


def _decimal(micro: int) -> Decimal:
    return Decimal(micro).scaleb(-6)


class _Writer:
    """Writes batches on ``WRITERS`` threads, each with its own connection (so PostgreSQL stores two batches at once
    on two cores), while the caller prepares the next one. Batches never share a CDR (the reader drops repeats) and
    charges lock accounts in id order, so the writers cannot deadlock each other.

    ``inline``: write on the caller's connection and thread instead (the caller holds an open transaction that a
    second connection could not see into).
    """

    def __init__(self, *, schema: str, inline: bool) -> None:
        self.inline = inline
        self.results: list[_Written] = []
        self._error: BaseException | None = None
        if not inline:
            self._queue: queue.Queue = queue.Queue(maxsize=1)
            self._threads = [
                threading.Thread(target=self._run, args=(schema,), name=f"cdr-bulk-writer-{n}", daemon=True)
                for n in range(WRITERS)
            ]
            for thread in self._threads:
                thread.start()

    def put(self, batch: _Batch) -> None:
        if self.inline:
            self.results.append(_batch_write(batch))
            return
        while True:  # wait for room, but notice a writer that died
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> list[_Written]:
        if not self.inline:
            for _thread in self._threads:
                self._queue.put(None)  # one end mark per writer; a writer that failed still takes its own
            for thread in self._threads:
                thread.join()
            if self._error is not None:
                raise self._error
        return self.results

    def _run(self, schema: str) -> None:
        try:
            with schema_context(schema):
                while (batch := self._queue.get()) is not None:
                    if self._error is None:
                        self.results.append(_batch_write(batch))
        except BaseException as error:  # reported to the caller by put()/close()
            self._error = error
            while self._queue.get() is not None:  # let the caller finish putting
                pass
        finally:
            connection.close()


def cdrs_import_bulk(*, source, tz: str, source_name: str = "asterisk", batch_rows: int = BATCH_ROWS) -> dict:
    """Import an Asterisk Master.csv fast: parse, rate price and cost, store, charge. Returns the import summary
    (the same shape as :func:`billing.services.cdrs_ingest`'s). See the module docstring for how."""
    work = _Import(source=source_name, tz=tz)
    summary = IngestSummary()
    writer = _Writer(schema=connection.schema_name, inline=connection.in_atomic_block)
    timings = {"read": 0.0, "rate": 0.0, "wait": 0.0}
    began = mark = time.perf_counter()
    try:
        for batch in csvformats.iter_asterisk_master_columns(source, tz=tz, batch_rows=batch_rows):
            timings["read"] += time.perf_counter() - mark
            mark = time.perf_counter()
            summary.read += len(batch) + len(batch.errors)
            for error in batch.errors:
                summary.reject(error)
            prepared = work.prepare(batch) if len(batch) else None
            timings["rate"] += time.perf_counter() - mark
            mark = time.perf_counter()
            if prepared is not None:
                writer.put(prepared)
            timings["wait"] += time.perf_counter() - mark
            mark = time.perf_counter()
    finally:
        results = writer.close()
    log.debug(
        "bulk import: read %.2f s, rated and laid out %.2f s, waited for the writer %.2f s, tail %.2f s",
        timings["read"],
        timings["rate"],
        timings["wait"],
        time.perf_counter() - mark,
    )
    log.debug("bulk import: %.2f s in all", time.perf_counter() - began)
    for written in results:
        summary.imported += written.imported
        summary.duplicates += written.duplicates
        summary.unrated += written.unrated
        leg = summary.legs.setdefault("origination", {"cdrs": 0, "charged": {}})
        leg["cdrs"] += written.imported
        for currency, amount in written.charged.items():
            summary.charged[currency] = summary.charged.get(currency, Decimal(0)) + amount
            leg["charged"][currency] = leg["charged"].get(currency, Decimal(0)) + amount
        for currency, amount in written.cost.items():
            summary.cost[currency] = summary.cost.get(currency, Decimal(0)) + amount
    if work.deferred:
        exact = cdrs_ingest(source=source_name, records=work.deferred, tz=tz)
        exact["read"] = 0  # counted above
        summary.merge(exact)
    return summary.as_dict()
