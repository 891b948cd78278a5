"""Writes of the billing engine: ledger entries, reservations. Every caller goes through these.

The rule that holds everywhere: an account's `balance` equals the sum of its ledger entries. Each
entry and its balance change are written in one transaction under the account's row lock, and the
entry's unique idempotency key makes a charge seen twice land once.
"""

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from .choices import AccountKind, EntryKind, ReservationStatus
from .models import Account, LedgerEntry, Reservation

SIGN = {EntryKind.TOPUP: 1, EntryKind.REFUND: 1, EntryKind.CHARGE: -1}


class InsufficientCredit(Exception):
    def __init__(self, account: Account, needed: Decimal):
        self.account, self.needed = account, needed
        super().__init__(f"account {account.code} has {account.available} available, needs {needed}")


class ReservationClosed(Exception):
    """The reservation was already committed, released or expired."""


def _locked(account_id: int) -> Account:
    return Account.objects.select_for_update().get(pk=account_id)


def _signed(kind: str, amount: Decimal) -> Decimal:
    amount = Decimal(amount)
    if kind == EntryKind.ADJUSTMENT:
        return amount
    if amount < 0:
        raise ValueError(f"{kind} amounts are given positive; the ledger signs them")
    return SIGN[kind] * amount


def ledger_post(
    *,
    account: Account,
    kind: str,
    amount: Decimal,
    idempotency_key: str,
    description: str = "",
    cdr=None,
    enforce_credit: bool = False,
) -> tuple[LedgerEntry, bool]:
    """Post one entry (charges and top-ups are given positive). Returns (entry, created); a key seen before
    returns the first entry unchanged. With `enforce_credit`, a prepaid account may not go below its limit."""
    signed = _signed(kind, amount)
    existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
    if existing:
        return existing, False
    with transaction.atomic():
        locked = _locked(account.pk)
        # Whoever held the lock before us may have posted this very key.
        existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
        if enforce_credit and signed < 0 and locked.kind == AccountKind.PREPAID and locked.available + signed < 0:
            raise InsufficientCredit(locked, -signed)
        try:
            with transaction.atomic():
                entry = LedgerEntry.objects.create(
                    account=locked,
                    kind=kind,
                    amount=signed,
                    idempotency_key=idempotency_key,
                    description=description,
                    cdr=cdr,
                )
        except IntegrityError:  # the same key posted concurrently on another account
            return LedgerEntry.objects.get(idempotency_key=idempotency_key), False
        Account.objects.filter(pk=locked.pk).update(balance=F("balance") + signed, updated_at=timezone.now())
    return entry, True


@dataclass(frozen=True)
class BulkCharge:
    account_id: int
    amount: Decimal  # positive: what the customer pays
    idempotency_key: str
    description: str = ""
    cdr_id: int | None = None


def ledger_charge_many(charges: list[BulkCharge]) -> int:
    """Post many charges at once (CDR import): keys seen before are skipped. Returns how many were new.

    One INSERT … ON CONFLICT DO NOTHING for the entries and one UPDATE per account from what was
    actually inserted, in one transaction, so balance = sum of entries holds here too.
    """
    if not charges:
        return 0
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        table = LedgerEntry._meta.db_table
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _bulk_charge (account_id bigint, amount numeric(20,6), "
            "idempotency_key text, description text, cdr_id bigint) ON COMMIT DELETE ROWS"
        )
        from psycopg2.extras import execute_values

        execute_values(
            cursor,
            "INSERT INTO _bulk_charge VALUES %s",
            [(c.account_id, -c.amount, c.idempotency_key, c.description, c.cdr_id) for c in charges],
            page_size=10000,
        )
        cursor.execute(
            f"""WITH inserted AS (
                  INSERT INTO {table} (account_id, kind, amount, idempotency_key, description, cdr_id, created_at)
                  SELECT account_id, %s, amount, idempotency_key, description, cdr_id, %s FROM _bulk_charge
                  ON CONFLICT (idempotency_key) DO NOTHING
                  RETURNING account_id, amount)
                , totals AS (SELECT account_id, sum(amount) AS total, count(*) AS n FROM inserted GROUP BY account_id)
                , updated AS (
                  UPDATE {Account._meta.db_table} a SET balance = a.balance + totals.total, updated_at = %s
                  FROM totals WHERE a.id = totals.account_id RETURNING totals.n)
                SELECT coalesce(sum(n), 0) FROM updated""",
            [EntryKind.CHARGE, now, now],
        )
        return int(cursor.fetchone()[0])


def account_topup(*, account: Account, amount: Decimal, idempotency_key: str, description: str = "Top-up"):
    return ledger_post(
        account=account, kind=EntryKind.TOPUP, amount=amount, idempotency_key=idempotency_key, description=description
    )


def reservation_hold(
    *, account: Account, amount: Decimal, idempotency_key: str, ttl: timedelta = timedelta(minutes=10)
) -> Reservation:
    """Hold credit for a call or message. A prepaid account never goes below its credit limit, however many
    holds race: each takes the account's row lock and sees the holds before it."""
    amount = Decimal(amount)
    if amount <= 0:
        raise ValueError("a reservation holds a positive amount")
    existing = Reservation.objects.filter(idempotency_key=idempotency_key).first()
    if existing:
        return existing
    with transaction.atomic():
        locked = _locked(account.pk)
        existing = Reservation.objects.filter(idempotency_key=idempotency_key).first()
        if existing:
            return existing
        if locked.kind == AccountKind.PREPAID and locked.available < amount:
            raise InsufficientCredit(locked, amount)
        reservation = Reservation.objects.create(
            account=locked, amount=amount, idempotency_key=idempotency_key, expires_at=timezone.now() + ttl
        )
        Account.objects.filter(pk=locked.pk).update(reserved=F("reserved") + amount)
    return reservation


def _close(reservation: Reservation, status: str, committed: Decimal | None) -> Reservation:
    locked_res = Reservation.objects.select_for_update().get(pk=reservation.pk)
    if locked_res.status != ReservationStatus.HELD:
        if status == ReservationStatus.COMMITTED and locked_res.status == ReservationStatus.COMMITTED:
            return locked_res  # committing twice is the same commit
        raise ReservationClosed(f"reservation {reservation.pk} is {locked_res.status}")
    _locked(locked_res.account_id)
    Account.objects.filter(pk=locked_res.account_id).update(reserved=F("reserved") - locked_res.amount)
    locked_res.status, locked_res.committed_amount = status, committed
    locked_res.save(update_fields=["status", "committed_amount", "updated_at"])
    return locked_res


def reservation_commit(*, reservation: Reservation, amount: Decimal, description: str = "") -> Reservation:
    """Charge what was actually used and release the rest of the hold, in one transaction."""
    with transaction.atomic():
        closed = _close(reservation, ReservationStatus.COMMITTED, Decimal(amount))
        if Decimal(amount) > 0:
            ledger_post(
                account=closed.account,
                kind=EntryKind.CHARGE,
                amount=Decimal(amount),
                idempotency_key=f"reservation:{closed.idempotency_key}",
                description=description,
            )
    return closed


def reservation_release(*, reservation: Reservation) -> Reservation:
    with transaction.atomic():
        return _close(reservation, ReservationStatus.RELEASED, None)


def reservations_expire(*, now=None) -> int:
    """Release holds nobody committed in time (a lost call-control session, a crashed worker)."""
    now = now or timezone.now()
    expired = 0
    for reservation in Reservation.objects.filter(status=ReservationStatus.HELD, expires_at__lte=now):
        with transaction.atomic():
            try:
                _close(reservation, ReservationStatus.EXPIRED, None)
                expired += 1
            except ReservationClosed:
                pass
    return expired


# --- Rate decks -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatesImport:
    rates: int
    errors: list  # csvformats.LineError, each with line, column, reason
    dry_run: bool

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {
            "imported": 0 if (self.errors or self.dry_run) else self.rates,
            "valid_rates": self.rates,
            "dry_run": self.dry_run,
            "errors": [{"line": e.line, "column": e.column, "reason": e.reason} for e in self.errors],
        }


def rates_import(*, tariff, source, dry_run: bool = False) -> RatesImport:
    """Import a rate-deck CSV into a tariff. Any bad line: nothing is written and every bad line is reported.

    A row with the same (prefix, service, effective_from, time band) as a stored one replaces its prices;
    other rows add versions, so future-dated rates wait for their date next to today's.
    """
    from .csvformats import parse_rate_deck_csv
    from .models import Rate, Tariff

    rates, errors = parse_rate_deck_csv(source)
    if errors or dry_run:
        return RatesImport(rates=len(rates), errors=errors, dry_run=dry_run)
    rows = [
        Rate(
            tariff=tariff,
            prefix=r.prefix,
            destination=r.destination,
            service=r.service,
            rate=r.rate,
            connect_fee=r.connect_fee,
            first_increment=r.first_increment,
            next_increment=r.next_increment,
            min_charge=r.min_charge,
            effective_from=r.effective_from,
            time_band=r.time_band or "",
        )
        for r in rates
    ]
    with transaction.atomic():
        Rate.objects.bulk_create(
            rows,
            batch_size=5000,
            update_conflicts=True,
            unique_fields=["tariff", "prefix", "service", "effective_from", "time_band"],
            update_fields=["destination", "rate", "connect_fee", "first_increment", "next_increment", "min_charge"],
        )
        Tariff.objects.filter(pk=tariff.pk).update(updated_at=timezone.now())
        tariff.refresh_from_db(fields=["updated_at"])
        transaction.on_commit(lambda: cdrs_rate_pending())
    return RatesImport(rates=len(rates), errors=[], dry_run=False)


# --- CDRs -------------------------------------------------------------------------------------------------


def _rate_cdr(cdr, account, tz: str) -> None:
    """Fill a CDR's rating fields in place: priced under its account's tariff, or unrated with the reason."""
    from . import rating
    from .selectors import rate_deck_get

    if account is None:
        cdr.status, cdr.unrated_reason = "unrated", f"unknown account {cdr.account_code!r}"
        return
    if account.tariff is None:
        cdr.status, cdr.unrated_reason = "unrated", f"account {account.code} has no tariff"
        return
    quote = rating.rate_one(
        rate_deck_get(tariff=account.tariff),
        number=cdr.callee,
        seconds=cdr.billsec,
        at=cdr.start,
        tz=tz,
        service=cdr.service,
        units=cdr.units or 1,
    )
    if quote is None:
        cdr.status, cdr.unrated_reason = "unrated", f"no rate for {cdr.callee}"
        return
    cdr.account = account
    cdr.status, cdr.unrated_reason = "rated", ""
    cdr.matched_prefix, cdr.destination = quote.prefix, quote.destination
    cdr.billed_seconds, cdr.price, cdr.currency = quote.billed_seconds, quote.amount, account.tariff.currency


def _charge_rated(cdrs: list) -> int:
    return ledger_charge_many(
        [
            BulkCharge(
                account_id=c.account_id,
                amount=c.price,
                idempotency_key=f"cdr:{c.source}:{c.source_id}",
                description=f"{c.service} to {c.callee}",
                cdr_id=c.pk,
            )
            for c in cdrs
            if c.status == "rated" and c.price and c.price > 0
        ]
    )


def cdrs_ingest(*, source: str, records, tz: str, chunk_size: int = 5000) -> dict:
    """Store, rate and charge CDRs (csvformats.ParsedCdr, or LineError for bad lines) from one source.

    The same (source, source id) twice is stored and charged once; bad lines are reported and the good
    ones imported; CDRs that cannot be rated are kept as unrated with the reason.
    """
    from .csvformats import LineError
    from .models import Account, Cdr

    summary = {"read": 0, "imported": 0, "duplicates": 0, "unrated": 0, "rejected": [], "charged": {}}
    accounts = {a.code: a for a in Account.objects.select_related("tariff")}
    chunk: list = []

    def flush():
        if not chunk:
            return
        known = set(
            Cdr.objects.filter(source=source, source_id__in=[c.source_id for c in chunk]).values_list(
                "source_id", flat=True
            )
        )
        fresh, seen = [], set()
        for parsed in chunk:
            if parsed.source_id in known or parsed.source_id in seen:
                summary["duplicates"] += 1
                continue
            seen.add(parsed.source_id)
            cdr = Cdr(
                source=source,
                source_id=parsed.source_id,
                leg=parsed.leg or "origination",
                account_code=parsed.account,
                caller=parsed.caller,
                callee=parsed.callee,
                start=parsed.start,
                duration=parsed.duration,
                billsec=parsed.billsec,
                extra={
                    k: str(v)
                    for k, v in (
                        ("forwarded_to", parsed.forwarded_to),
                        ("service_code", parsed.service_code),
                        ("reported_cost", parsed.reported_cost),
                    )
                    if v is not None
                },
            )
            _rate_cdr(cdr, accounts.get(parsed.account), tz)
            if cdr.status == "unrated":
                summary["unrated"] += 1
            fresh.append(cdr)
        with transaction.atomic():
            Cdr.objects.bulk_create(fresh, batch_size=chunk_size)
            _charge_rated(fresh)
        for cdr in fresh:
            if cdr.status == "rated":
                summary["charged"][cdr.currency] = summary["charged"].get(cdr.currency, Decimal(0)) + cdr.price
        summary["imported"] += len(fresh)
        chunk.clear()

    for record in records:
        summary["read"] += 1
        if isinstance(record, LineError):
            summary["rejected"].append({"line": record.line, "column": record.column, "reason": record.reason})
            continue
        chunk.append(record)
        if len(chunk) >= chunk_size:
            flush()
    flush()
    summary["charged"] = {currency: str(total) for currency, total in summary["charged"].items()}
    return summary


def cdrs_rate_pending(*, tz: str | None = None) -> int:
    """Rate the CDRs kept as unrated, now that a rate or an account may have appeared. Returns how many."""
    from .models import Account, Cdr

    tz = tz or getattr(getattr(connection, "tenant", None), "time_zone", "UTC")
    accounts = {a.code: a for a in Account.objects.select_related("tariff")}
    pending = list(Cdr.objects.filter(status="unrated")[:50000])
    now = timezone.now()
    for cdr in pending:
        _rate_cdr(cdr, accounts.get(cdr.account_code), tz)
        cdr.updated_at = now  # bulk_update does not apply auto_now
    done = [c for c in pending if c.status == "rated"]
    with transaction.atomic():
        Cdr.objects.bulk_update(
            done,
            [
                "account",
                "status",
                "unrated_reason",
                "matched_prefix",
                "destination",
                "billed_seconds",
                "price",
                "currency",
                "updated_at",
            ],
            batch_size=5000,
        )
        _charge_rated(done)
    return len(done)


def account_create(
    *,
    name: str,
    code: str,
    currency: str,
    tariff=None,
    customer=None,
    kind: str = "prepaid",
    credit_limit: Decimal = Decimal(0),
):
    """Open an account; CDRs that were waiting for this account code are rated once it exists."""
    from .models import Account

    with transaction.atomic():
        account = Account.objects.create(
            name=name,
            code=code,
            currency=currency,
            tariff=tariff,
            customer=customer,
            kind=kind,
            credit_limit=credit_limit,
        )
        transaction.on_commit(lambda: cdrs_rate_pending())
    return account
