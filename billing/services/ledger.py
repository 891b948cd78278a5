"""Writes of the billing engine: ledger entries, reservations. Every caller goes through these.

The rule that holds everywhere: an account's `balance` equals the sum of its ledger entries. Each
entry and its balance change are written in one transaction under the account's row lock, and the
entry's unique idempotency key makes a charge seen twice land once.
"""

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from core.sql import execute_values, literal

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
    """Post many charges at once (CDR import): keys seen before are skipped. Returns how many were new."""
    return ledger_entries_post(
        kind=EntryKind.CHARGE,
        entries=[(c.account_id, -c.amount, c.idempotency_key, c.description, c.cdr_id) for c in charges],
    )


def ledger_entries_post(*, kind: str, entries: list[tuple]) -> int:
    """Post many entries of one kind: ``(account id, signed amount, idempotency key, description, cdr id)`` each.
    Keys seen before are skipped. Returns how many were new.

    One INSERT … ON CONFLICT DO NOTHING for the entries and one UPDATE per account from what was actually inserted,
    in one transaction (the caller's, if any), with the accounts locked in id order first, so two posters of
    overlapping accounts cannot deadlock and balance = sum of entries holds.
    """
    if not entries:
        return 0
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _ledger_post (account_id bigint, amount numeric(20,6), "
            "idempotency_key text, description text, cdr_id bigint) ON COMMIT DELETE ROWS"
        )
        cursor.execute("TRUNCATE _ledger_post")
        execute_values(
            cursor,
            "INSERT INTO _ledger_post VALUES %s",
            [(account, amount, key, description[:300], cdr) for account, amount, key, description, cdr in entries],
            ["bigint", "numeric", "text", "text", "bigint"],
        )
        cursor.execute(
            f"SELECT id FROM {Account._meta.db_table} WHERE id IN (SELECT DISTINCT account_id FROM _ledger_post) "
            "ORDER BY id FOR UPDATE"
        )
        cursor.execute(
            f"""WITH inserted AS (
                  INSERT INTO {LedgerEntry._meta.db_table}
                    (account_id, kind, amount, idempotency_key, description, cdr_id, created_at)
                  SELECT account_id, %s, amount, idempotency_key, description, cdr_id, %s FROM _ledger_post
                  ORDER BY idempotency_key
                  ON CONFLICT (idempotency_key) DO NOTHING
                  RETURNING account_id, amount)
                , totals AS (SELECT account_id, sum(amount) AS total, count(*) AS n FROM inserted GROUP BY account_id)
                , updated AS (
                  UPDATE {Account._meta.db_table} a SET balance = a.balance + totals.total, updated_at = %s
                  FROM totals WHERE a.id = totals.account_id RETURNING totals.n)
                SELECT coalesce(sum(n), 0) FROM updated""",
            [kind, now, now],
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
    from .ingest import cdrs_rate_pending_schedule  # ingest stands on the ledger, not the other way round

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
        cdrs_rate_pending_schedule()  # in the background, once committed
    return account


# --- Reservations settled in shares, and pre-rated usage (SMS) --------------------------------------------------
#
# A reservation held for many messages is settled message by message: each share is either charged (a ledger entry
# with its own idempotency key, so a share seen twice is charged once) or released. While shares remain, the
# reservation stays `held` and its `amount` is what is still held (`committed_amount` what was charged so far); when
# nothing is left it becomes `committed` (something was charged) or `released`. A share of a reservation that is no
# longer held (expired by `reservations_expire`) is still charged, but no longer counts against `Account.reserved`.
# Releases carry no key: the caller makes each happen once (SMS releases in the same transaction as the message's
# own state change, which can happen only once).


@dataclass(frozen=True)
class Settlement:
    """One share of a reservation: `charge` posted once under `idempotency_key`, and/or `release` no longer held."""

    account_id: int
    reservation_id: int | None
    charge: Decimal = Decimal(0)
    release: Decimal = Decimal(0)
    idempotency_key: str = ""  # required when charge > 0
    description: str = ""
    cdr_id: int | None = None


def accounts_lock(account_ids) -> None:
    """Lock accounts in id order in one statement (as every bulk charge does), so writers cannot deadlock."""
    ids = sorted(set(account_ids))
    if ids:
        list(Account.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))


def reservation_settle_many(settlements: list[Settlement]) -> set[str]:
    """Charge and release shares of reservations in one transaction. Returns the idempotency keys charged now.

    Reservations, then accounts, are locked in id order (the order `_close` takes them: no deadlock with other
    settlers, holds or the expiry sweep). The accounts are locked last, just before the commit, because an account
    row is the hot spot every hold of that customer waits on. A charge whose key was seen before changes nothing,
    neither the balance nor the reservation. balance = sum of entries holds. A credit grant never keeps more undrawn
    than it holds (a use that settles more than it drew eats into the undrawn part), so giving back its undrawn part
    never takes more off ``Account.reserved`` than the grant held.
    """
    if not settlements:
        return set()
    for settlement in settlements:
        if settlement.charge < 0 or settlement.release < 0:
            raise ValueError("settlement amounts are given positive")
        if settlement.charge > 0 and not settlement.idempotency_key:
            raise ValueError("a charged settlement needs an idempotency key")
    now = timezone.now()
    reservation_ids = sorted({s.reservation_id for s in settlements if s.reservation_id is not None})
    with transaction.atomic(), connection.cursor() as cursor:
        held = {
            pk: (amount, account_id)
            for pk, amount, account_id in Reservation.objects.select_for_update()
            .filter(pk__in=reservation_ids, status=ReservationStatus.HELD)
            .order_by("pk")
            .values_list("pk", "amount", "account_id")
        }
        charged_keys: set[str] = set()
        charges = [s for s in settlements if s.charge > 0]
        if charges:
            inserted = execute_values(
                cursor,
                f"""INSERT INTO {LedgerEntry._meta.db_table}
                    (account_id, kind, amount, idempotency_key, description, cdr_id, created_at)
                    VALUES %s ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key""",
                [
                    (s.account_id, EntryKind.CHARGE, -s.charge, s.idempotency_key, s.description[:300], s.cdr_id, now)
                    for s in charges
                ],
                ["bigint", "text", "numeric", "text", "text", "bigint", "timestamptz"],
                fetch=True,
            )
            charged_keys = {row[0] for row in inserted}

        balance_delta: dict[int, Decimal] = {}
        cut: dict[int, Decimal] = {}
        charged_on: dict[int, Decimal] = {}
        for s in settlements:
            charged = s.charge if s.charge > 0 and s.idempotency_key in charged_keys else Decimal(0)
            if charged:
                balance_delta[s.account_id] = balance_delta.get(s.account_id, Decimal(0)) - charged
            if s.reservation_id in held:
                cut[s.reservation_id] = cut.get(s.reservation_id, Decimal(0)) + charged + s.release
                charged_on[s.reservation_id] = charged_on.get(s.reservation_id, Decimal(0)) + charged

        reserved_delta: dict[int, Decimal] = {}
        reservation_rows = []
        for pk, amount in cut.items():
            if not amount:
                continue
            still_held, account_id = held[pk]
            applied = min(amount, still_held)
            reservation_rows.append((pk, still_held - applied, charged_on[pk]))
            reserved_delta[account_id] = reserved_delta.get(account_id, Decimal(0)) - applied
        if reservation_rows:
            # Literals below are our own constants, not input: execute_values takes one placeholder only.
            execute_values(
                cursor,
                f"""UPDATE {Reservation._meta.db_table} r SET
                      amount = v.left_amount,
                      undrawn = CASE WHEN r.undrawn IS NOT NULL THEN least(r.undrawn, v.left_amount) END,
                      committed_amount = CASE WHEN v.charged > 0 OR r.committed_amount IS NOT NULL
                                              THEN coalesce(r.committed_amount, 0) + v.charged END,
                      status = CASE WHEN v.left_amount > 0 THEN r.status
                                    WHEN coalesce(r.committed_amount, 0) + v.charged > 0
                                    THEN '{ReservationStatus.COMMITTED.value}'
                                    ELSE '{ReservationStatus.RELEASED.value}' END,
                      updated_at = now()
                    FROM (VALUES %s) AS v (id, left_amount, charged) WHERE r.id = v.id""",
                reservation_rows,
                ["bigint", "numeric", "numeric"],
            )
        accounts = sorted(set(balance_delta) | set(reserved_delta))
        if accounts:
            accounts_lock(accounts)
            execute_values(
                cursor,
                f"""UPDATE {Account._meta.db_table} a SET balance = a.balance + v.balance_delta,
                      reserved = a.reserved + v.reserved_delta, updated_at = now()
                    FROM (VALUES %s) AS v (id, balance_delta, reserved_delta) WHERE a.id = v.id""",
                [(pk, balance_delta.get(pk, Decimal(0)), reserved_delta.get(pk, Decimal(0))) for pk in accounts],
                ["bigint", "numeric", "numeric"],
            )
    return charged_keys


@dataclass(frozen=True)
class PreratedUsage:
    """Usage priced by its product (an SMS priced by its route): recorded as a rated CDR and charged once.

    `idempotency_key` names the charge; the CDR is unique by (`source`, `source_id`).
    """

    account_id: int
    reservation_id: int | None
    source: str
    source_id: str
    service: str
    caller: str
    callee: str
    start: object  # datetime
    units: int
    price: Decimal
    cost: Decimal | None
    currency: str
    idempotency_key: str
    description: str = ""
    destination: str = ""
    trunk: str = ""
    account_code: str = ""
    extra: dict | None = None


def usage_charge_many(usages: list[PreratedUsage]) -> set[str]:
    """Record pre-rated usage as rated `Cdr` rows and charge each (settling its reservation share), in one
    transaction. A usage seen before (same CDR source id, same charge key) is neither recorded nor charged again.
    Returns the idempotency keys charged now."""
    if not usages:
        return set()

    with transaction.atomic():
        cdr_ids = _prerated_cdrs_insert(usages)
        return reservation_settle_many(
            [
                Settlement(
                    account_id=u.account_id,
                    reservation_id=u.reservation_id,
                    charge=u.price,
                    idempotency_key=u.idempotency_key,
                    description=u.description,
                    cdr_id=cdr_ids.get((u.source, u.source_id)),
                )
                for u in usages
            ]
        )


def reservation_id_next(*, cursor=None) -> int:
    """A reservation id to give `reservation_hold_quick`, so rows that refer to it can be written before the hold
    (foreign keys are checked at commit): the account row is then locked only for the hold and the commit."""
    with contextlib.nullcontext(cursor) if cursor is not None else connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [Reservation._meta.db_table])
        return cursor.fetchone()[0]


def reservation_hold_quick(
    *, account_id: int, amount: Decimal, idempotency_key: str, expires_at, cursor=None, reservation_id=None
) -> int:
    """`reservation_hold` in one round trip, for hot paths (an SMS request): returns the new reservation's id.

    The same rule: a prepaid account never goes below its credit limit however many holds race (the account row
    is locked and the condition re-checked on the locked row). Raises InsufficientCredit (with the account as it
    is) when the amount does not fit. The key must be new (a request id): a key seen before is an error here.
    ``cursor``: the caller's, to spare opening another (each new cursor costs a round trip in a tenant schema);
    ``reservation_id``: one from `reservation_id_next`, else the table's next.
    """
    amount = Decimal(amount)
    if amount <= 0:
        raise ValueError("a reservation holds a positive amount")
    with contextlib.nullcontext(cursor) if cursor is not None else connection.cursor() as cursor:
        cursor.execute(
            f"""WITH account AS (
                  SELECT id FROM {Account._meta.db_table}
                  WHERE id = %(account)s AND (kind <> %(prepaid)s OR balance + credit_limit - reserved >= %(amount)s)
                  FOR UPDATE),
                held AS (
                  INSERT INTO {Reservation._meta.db_table}
                    (id, account_id, amount, committed_amount, status, idempotency_key, expires_at, created_at,
                     updated_at)
                  SELECT coalesce(%(id)s, nextval(pg_get_serial_sequence(%(table)s, 'id'))), id, %(amount)s, NULL,
                         %(held)s, %(key)s, %(expires)s, now(), now() FROM account
                  RETURNING id, account_id),
                booked AS (
                  UPDATE {Account._meta.db_table} a SET reserved = a.reserved + %(amount)s
                  FROM held WHERE a.id = held.account_id RETURNING a.id)
                SELECT held.id FROM held, booked""",
            {
                "account": account_id,
                "prepaid": AccountKind.PREPAID.value,
                "amount": amount,
                "held": ReservationStatus.HELD.value,
                "key": idempotency_key,
                "expires": expires_at,
                "id": reservation_id,
                "table": Reservation._meta.db_table,
            },
        )
        row = cursor.fetchone()
    if row is None:
        raise InsufficientCredit(Account.objects.get(pk=account_id), amount)
    return row[0]


def _prerated_cdrs_insert(usages: list[PreratedUsage]) -> dict[tuple[str, str], int]:
    """Insert the usages' CDRs in one statement; a CDR seen before is left as it is (only its updated_at moves).
    Returns every CDR's id by (source, source_id).

    Hand-built rather than `bulk_create`: the ORM prepares every field of every row one by one, a large part of
    the SMS submitter's time. Columns come from the model, so a field added later with a default still fits.
    """
    from ..choices import CdrStatus, Leg
    from ..models import Cdr

    now = timezone.now()
    per_usage = {
        "source": lambda u: u.source,
        "source_id": lambda u: u.source_id,
        "service": lambda u: u.service,
        "leg": lambda u: Leg.TERMINATION.value,
        "correlation_id": lambda u: u.source_id,
        "account_code": lambda u: u.account_code,
        "account_id": lambda u: u.account_id,
        "caller": lambda u: u.caller[:32],
        "callee": lambda u: u.callee[:32],
        "start": lambda u: u.start,
        "units": lambda u: u.units,
        "status": lambda u: CdrStatus.RATED.value,
        "destination": lambda u: u.destination[:100],
        "trunk": lambda u: u.trunk[:80],
        "price": lambda u: u.price,
        "cost": lambda u: u.cost,
        "currency": lambda u: u.currency,
        "created_at": lambda u: now,
        "updated_at": lambda u: now,
    }
    fields = [f for f in Cdr._meta.concrete_fields if not f.primary_key]
    extra_field = Cdr._meta.get_field("extra")
    varying = [f for f in fields if f.attname in per_usage or f.attname == "extra"]
    fixed = [f for f in fields if f not in varying]
    rows = [
        [
            extra_field.get_db_prep_save(u.extra or {}, connection) if f.attname == "extra" else per_usage[f.attname](u)
            for f in varying
        ]
        for u in usages
    ]
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        # The columns every row has the same value in are written once, as literals, not adapted row by row.
        constants = ", ".join(
            f"{literal(f.get_db_prep_save(f.get_default(), connection))}::{f.db_type(connection)}" for f in fixed
        )
        result = execute_values(
            cursor,
            f"""INSERT INTO {Cdr._meta.db_table} ({", ".join(quote(f.column) for f in varying + fixed)})
                SELECT v.*, {constants} FROM (VALUES %s) AS v
                ON CONFLICT (source, source_id) DO UPDATE SET updated_at = EXCLUDED.updated_at
                RETURNING source, source_id, id""",
            rows,
            [f.db_type(connection) for f in varying],
            fetch=True,
        )
    return {(source, source_id): pk for source, source_id, pk in result}
