"""Credit grants: holding credit for many small uses without locking the account row for each.

A prepaid account's row is where every hold is checked (``balance + credit_limit - reserved``) under its row lock,
so holds of one busy customer (an SMS client sending hundreds of requests a second) queue on that lock, each until
its transaction commits. A grant works as an online charging system's granted quota (RFC 4006): one hold of many
uses' worth, that later uses draw from.

``credit_draw`` holds an amount for one use (one SMS request) in the caller's transaction and returns the
reservation to settle it against, in the first way that works:

1. draw from one of the account's open grants that has room and lives long enough (``undrawn`` goes down; the grant
   row is locked with SKIP LOCKED, so concurrent draws take different grants and never wait for each other);
2. open a new grant of ``BILLING_GRANT_USES`` times the amount (less when the free credit is less, but at least the
   amount), drawing the amount from it: the account row is locked once for many uses;
3. when the free credit does not cover the amount, give back what the account's grants hold undrawn and hold the
   amount by itself (``reservation_hold_quick``), which raises ``InsufficientCredit`` when it still does not fit —
   so idle credit in grants never turns a request away.

The rules of reservations still hold: ``account.reserved`` is the sum of its held reservations' amounts (a draw
moves credit inside a grant, not out of it), and a prepaid account never goes below its credit limit. A use is
settled against its grant like any reservation share (``reservation_settle_many``: charge and release cut the
grant's amount). ``grants_idle_release`` (run by the reservation sweep every minute) gives back the undrawn part
of grants nobody drew from for ``BILLING_GRANT_IDLE_S``; a grant expires (releasing all it holds) ``GRANT_LIFETIME``
after it opened, and is drawn from only for uses that end an hour before that.

Locks are taken reservations first, then accounts (the order of ``reservation_settle_many`` and the expiry sweep),
so grants do not deadlock with settlements.
"""

import contextlib
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ..choices import AccountKind, ReservationStatus
from ..models import Account, Reservation
from .ledger import InsufficientCredit, reservation_hold_quick

GRANT_MARGIN = timedelta(hours=1)
GRANT_LIFETIME = timedelta(days=8)  # longer than any message's validity (7 days) plus the margin
GIVE_BACK_ATTEMPTS = 3


def credit_draw(*, account_id: int, amount: Decimal, use_ends_at: datetime, key: str, cursor=None) -> int:
    """Hold ``amount`` on the account for a use over by ``use_ends_at``; the id of the reservation to settle it on.

    Must run in the caller's transaction (what it holds is gone if that rolls back). ``key`` names the use: it is
    the idempotency key of the reservation when the amount is held by itself. Raises InsufficientCredit.
    """
    amount = Decimal(amount)
    if amount <= 0:
        raise ValueError("a draw takes a positive amount")
    if not connection.in_atomic_block:
        raise RuntimeError("credit_draw runs in the caller's transaction")
    with connection.cursor() if cursor is None else contextlib.nullcontext(cursor) as cursor:

        def hold_alone() -> int:
            return reservation_hold_quick(
                account_id=account_id,
                amount=amount,
                idempotency_key=key,
                expires_at=use_ends_at + GRANT_MARGIN,
                cursor=cursor,
            )

        if use_ends_at + GRANT_MARGIN > timezone.now() + GRANT_LIFETIME:  # outlives any grant
            return hold_alone()
        drawn = _draw(cursor, account_id=account_id, amount=amount, use_ends_at=use_ends_at)
        if drawn is not None:
            return drawn
        try:
            with transaction.atomic():  # a savepoint, rolled back when no grant fits: no account lock is left
                return _grant_open(cursor, account_id=account_id, amount=amount)
        except _NoRoom:
            pass
        # A grant another request opened meanwhile is seen once it commits (the hold waits for its account lock):
        # give back again then, so credit idle in grants never turns the request away. Each attempt is a savepoint
        # rolled back when the hold does not fit, so no attempt starts holding the account row (locked by the give
        # back or by the refused hold): grants are always locked before the account (reservations → accounts).
        attempts_left = GIVE_BACK_ATTEMPTS
        while True:
            try:
                with transaction.atomic():
                    _grants_give_back(cursor, account_ids=[account_id])
                    return hold_alone()
            except InsufficientCredit:
                attempts_left -= 1
                if not attempts_left or not _grants_undrawn(cursor, account_id=account_id):
                    raise


class _NoRoom(Exception):
    """The free credit does not cover the amount: no grant opened."""


def _draw(cursor, *, account_id: int, amount: Decimal, use_ends_at: datetime) -> int | None:
    table = Reservation._meta.db_table
    cursor.execute(
        f"""UPDATE {table} SET undrawn = undrawn - %(amount)s, updated_at = now()
            WHERE id = (SELECT id FROM {table}
                        WHERE account_id = %(account)s AND status = %(held)s AND undrawn > 0
                          AND undrawn >= %(amount)s AND expires_at >= %(until)s
                        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING id""",
        {
            "amount": amount,
            "account": account_id,
            "held": ReservationStatus.HELD.value,
            "until": use_ends_at + GRANT_MARGIN,
        },
    )
    row = cursor.fetchone()
    return row[0] if row else None


def _grant_open(cursor, *, account_id: int, amount: Decimal) -> int:
    """A new grant of up to BILLING_GRANT_USES × amount (at least the amount) with the amount drawn; _NoRoom if none
    fits."""
    accounts, reservations = Account._meta.db_table, Reservation._meta.db_table
    cursor.execute(
        f"""WITH account AS (
              SELECT id, CASE WHEN kind = %(prepaid)s
                              THEN least(%(wanted)s, balance + credit_limit - reserved) ELSE %(wanted)s END AS size
              FROM {accounts} WHERE id = %(account)s FOR UPDATE),
            held AS (
              INSERT INTO {reservations}
                (account_id, amount, undrawn, committed_amount, status, idempotency_key, expires_at, created_at,
                 updated_at)
              SELECT id, size, size - %(amount)s, NULL, %(held)s, %(key)s, now() + %(lifetime)s, now(), now()
              FROM account WHERE size >= %(amount)s
              RETURNING id, account_id, amount),
            booked AS (
              UPDATE {accounts} a SET reserved = a.reserved + held.amount
              FROM held WHERE a.id = held.account_id RETURNING a.id)
            SELECT held.id FROM held, booked""",
        {
            "prepaid": AccountKind.PREPAID.value,
            "wanted": amount * settings.BILLING_GRANT_USES,
            "account": account_id,
            "amount": amount,
            "held": ReservationStatus.HELD.value,
            "key": f"grant:{uuid.uuid4()}",
            "lifetime": GRANT_LIFETIME,
        },
    )
    row = cursor.fetchone()
    if row is None:
        raise _NoRoom
    return row[0]


def _grants_give_back(cursor, *, account_ids: list[int], idle_before: datetime | None = None) -> int:
    """Release the undrawn part of the accounts' open grants (only those idle since ``idle_before`` if given);
    grants left holding nothing are closed. Returns how many grants gave something back."""
    accounts, reservations = Account._meta.db_table, Reservation._meta.db_table
    idle = "AND updated_at < %(idle_before)s" if idle_before is not None else ""
    skip = "SKIP LOCKED" if idle_before is not None else ""  # the sweep leaves grants in use alone
    cursor.execute(
        f"""WITH grants AS (
              SELECT id, undrawn FROM {reservations}
              WHERE account_id = ANY(%(accounts)s) AND status = %(held)s AND undrawn > 0 {idle}
              ORDER BY id FOR UPDATE {skip}),
            released AS (
              UPDATE {reservations} r SET amount = r.amount - g.undrawn, undrawn = 0, updated_at = now(),
                status = CASE WHEN r.amount - g.undrawn > 0 THEN r.status
                              WHEN r.committed_amount > 0 THEN %(committed)s ELSE %(released)s END
              FROM grants g WHERE r.id = g.id
              RETURNING r.account_id, g.undrawn)
            SELECT account_id, sum(undrawn), count(*) FROM released GROUP BY account_id ORDER BY account_id""",
        {
            "accounts": account_ids,
            "held": ReservationStatus.HELD.value,
            "committed": ReservationStatus.COMMITTED.value,
            "released": ReservationStatus.RELEASED.value,
            "idle_before": idle_before,
        },
    )
    given = cursor.fetchall()
    for account_id, total, _ in given:  # in id order, after the grants: the settlements' lock order
        cursor.execute(
            f"UPDATE {accounts} SET reserved = reserved - %s, updated_at = now() WHERE id = %s", [total, account_id]
        )
    return sum(count for _, _, count in given)


def _grants_undrawn(cursor, *, account_id: int) -> bool:
    cursor.execute(
        f"SELECT EXISTS (SELECT 1 FROM {Reservation._meta.db_table} "
        "WHERE account_id = %s AND status = %s AND undrawn > 0)",
        [account_id, ReservationStatus.HELD.value],
    )
    return cursor.fetchone()[0]


def grants_idle_release(*, now: datetime | None = None) -> int:
    """Give back the undrawn credit of grants nobody drew from for BILLING_GRANT_IDLE_S (every account of this
    schema)."""
    now = now or timezone.now()
    idle_before = now - timedelta(seconds=settings.BILLING_GRANT_IDLE_S)
    account_ids = list(
        Reservation.objects.filter(status=ReservationStatus.HELD, undrawn__gt=0, updated_at__lt=idle_before)
        .values_list("account_id", flat=True)
        .distinct()
    )
    if not account_ids:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        return _grants_give_back(cursor, account_ids=sorted(account_ids), idle_before=idle_before)
