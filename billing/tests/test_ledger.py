import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import Account, LedgerEntry, Reservation
from billing.services import (
    BulkCharge,
    InsufficientCredit,
    ReservationClosed,
    account_topup,
    ledger_charge_many,
    ledger_post,
    reservation_commit,
    reservation_hold,
    reservation_release,
    reservations_expire,
)
from tests.celery_worker import worker_database_url


@pytest.fixture
def account(world):
    with schema_context("demo"):
        yield Account.objects.create(name="Alice", code="alice", currency="EUR", credit_limit=Decimal("5"))


def _entries_sum(account) -> Decimal:
    return LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"] or Decimal(0)


@pytest.mark.django_db
def test_charge_seen_twice_is_charged_once(account):
    first, created = ledger_post(account=account, kind="charge", amount=Decimal("1.25"), idempotency_key="cdr:1")
    again, created_again = ledger_post(account=account, kind="charge", amount=Decimal("1.25"), idempotency_key="cdr:1")
    account.refresh_from_db()
    assert created and not created_again and first.pk == again.pk
    assert account.balance == Decimal("-1.25") == _entries_sum(account)


@pytest.mark.django_db
def test_entries_are_append_only(account):
    entry, _ = account_topup(account=account, amount=Decimal("10"), idempotency_key="t1")
    with pytest.raises(ValueError):
        entry.save()
    with pytest.raises(ValueError):
        entry.delete()


@pytest.mark.django_db
def test_prepaid_charge_with_credit_enforced_stops_at_the_limit(account):
    account_topup(account=account, amount=Decimal("1"), idempotency_key="t1")
    ledger_post(account=account, kind="charge", amount=Decimal("6"), idempotency_key="c1", enforce_credit=True)
    with pytest.raises(InsufficientCredit):
        ledger_post(
            account=account, kind="charge", amount=Decimal("0.000001"), idempotency_key="c2", enforce_credit=True
        )
    account.refresh_from_db()
    assert account.balance == Decimal("-5")


@pytest.mark.django_db
def test_bulk_charges_skip_known_keys_and_keep_balance_equal_to_entries(account):
    charges = [BulkCharge(account_id=account.pk, amount=Decimal("0.100001"), idempotency_key=f"k{i}") for i in range(5)]
    assert ledger_charge_many(charges) == 5
    assert (
        ledger_charge_many(charges + [BulkCharge(account_id=account.pk, amount=Decimal("1"), idempotency_key="k9")])
        == 1
    )
    account.refresh_from_db()
    assert account.balance == Decimal("-1.500005") == _entries_sum(account)


@pytest.mark.django_db
def test_reservation_commit_charges_actual_and_releases_the_rest(account):
    account_topup(account=account, amount=Decimal("10"), idempotency_key="t1")
    hold = reservation_hold(account=account, amount=Decimal("4"), idempotency_key="call-1")
    account.refresh_from_db()
    assert account.reserved == Decimal("4") and account.available == Decimal("11")
    reservation_commit(reservation=hold, amount=Decimal("2.5"))
    reservation_commit(reservation=hold, amount=Decimal("2.5"))  # a retried commit changes nothing
    account.refresh_from_db()
    assert account.reserved == 0 and account.balance == Decimal("7.5") == _entries_sum(account)


@pytest.mark.django_db
def test_hold_beyond_available_credit_is_refused(account):
    reservation_hold(account=account, amount=Decimal("5"), idempotency_key="h1")
    with pytest.raises(InsufficientCredit):
        reservation_hold(account=account, amount=Decimal("0.01"), idempotency_key="h2")


@pytest.mark.django_db
def test_released_hold_cannot_be_committed(account):
    hold = reservation_hold(account=account, amount=Decimal("1"), idempotency_key="h1")
    reservation_release(reservation=hold)
    with pytest.raises(ReservationClosed):
        reservation_commit(reservation=hold, amount=Decimal("1"))


@pytest.mark.django_db
def test_expired_holds_release_their_credit(account):
    hold = reservation_hold(account=account, amount=Decimal("3"), idempotency_key="h1", ttl=timedelta(seconds=30))
    assert reservations_expire(now=timezone.now()) == 0
    assert reservations_expire(now=timezone.now() + timedelta(minutes=1)) == 1
    account.refresh_from_db()
    hold.refresh_from_db()
    assert hold.status == "expired" and account.reserved == 0


def _run_workers(mode: str, account_id: int, workers: int, count: int) -> list[str]:
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "billing.tests.ledger_worker", "demo", mode, str(account_id), str(w), str(count)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return outputs


def test_parallel_charges_from_several_processes_keep_the_balance_exact(world, django_db_blocker):
    with django_db_blocker.unblock(), schema_context("demo"):
        account = Account.objects.create(name="Busy", code="busy-parallel", currency="EUR", kind="postpaid")
        _run_workers("charge", account.pk, workers=4, count=100)
        account.refresh_from_db()
        # 4 workers x 80 own keys + 20 shared keys (each posted by all 4, landed once) = 340 charges.
        assert LedgerEntry.objects.filter(account=account).count() == 340
        assert account.balance == Decimal("-0.013333") * 340 == _entries_sum(account)


def test_racing_holds_never_take_a_prepaid_account_below_its_limit(world, django_db_blocker):
    with django_db_blocker.unblock(), schema_context("demo"):
        account = Account.objects.create(name="Racer", code="racer-parallel", currency="EUR", credit_limit=Decimal("0"))
        account_topup(account=account, amount=Decimal("10"), idempotency_key="racer-topup")
        outputs = _run_workers("hold", account.pk, workers=4, count=10)
        held = sum(int(o.split()[0]) for o in outputs)
        account.refresh_from_db()
        # 10.00 / 0.70 = 14 holds fit, whatever the interleaving.
        assert held == 14
        assert account.reserved == Decimal("9.80") and account.available == Decimal("0.20")
        assert Reservation.objects.filter(account=account, status="held").count() == 14
