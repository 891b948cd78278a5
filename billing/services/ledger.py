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

from ..choices import AccountKind, EntryKind, ReservationStatus
from ..models import Account, LedgerEntry, Reservation

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
    from .ingest import cdrs_rate_pending  # ingest stands on the ledger, not the other way round

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
