"""Reservations settled in shares, and pre-rated usage (SMS) as rated CDRs charged once."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import Account, Cdr, LedgerEntry, Reservation
from billing.services import (
    PreratedUsage,
    Settlement,
    account_topup,
    reservation_hold,
    reservation_settle_many,
    reservations_expire,
    usage_charge_many,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def account(world):
    with schema_context("demo"):
        acc = Account.objects.create(name="Texter", code="texter-ledger-sms", currency="EUR")
        account_topup(account=acc, amount=Decimal("10"), idempotency_key="texter-topup")
        yield acc


def entries_sum(acc) -> Decimal:
    return LedgerEntry.objects.filter(account=acc).aggregate(s=Sum("amount"))["s"] or Decimal(0)


def test_shares_are_charged_or_released_until_nothing_is_held(account):
    # Given 0.30 held for three messages of 0.10
    hold = reservation_hold(account=account, amount=Decimal("0.30"), idempotency_key="req-1")
    # When one is charged, then one released
    charged = reservation_settle_many(
        [Settlement(account.pk, hold.pk, charge=Decimal("0.10"), idempotency_key="msg-1")]
    )
    reservation_settle_many([Settlement(account.pk, hold.pk, release=Decimal("0.10"))])
    hold.refresh_from_db()
    account.refresh_from_db()
    # Then 0.10 is still held, 0.10 charged, and balance = sum of entries
    assert charged == {"msg-1"}
    assert (hold.status, hold.amount, hold.committed_amount) == ("held", Decimal("0.1"), Decimal("0.1"))
    assert account.reserved == Decimal("0.1") and account.balance == Decimal("9.9") == entries_sum(account)
    # When the last share is charged, the reservation is committed and nothing is held
    reservation_settle_many([Settlement(account.pk, hold.pk, charge=Decimal("0.10"), idempotency_key="msg-3")])
    hold.refresh_from_db()
    account.refresh_from_db()
    assert (hold.status, hold.amount, hold.committed_amount) == ("committed", 0, Decimal("0.2"))
    assert account.reserved == 0 and account.balance == Decimal("9.8") == entries_sum(account)


def test_a_share_charged_twice_is_charged_and_settled_once(account):
    hold = reservation_hold(account=account, amount=Decimal("0.20"), idempotency_key="req-2")
    share = Settlement(account.pk, hold.pk, charge=Decimal("0.10"), idempotency_key="msg-a")
    assert reservation_settle_many([share]) == {"msg-a"}
    assert reservation_settle_many([share, share]) == set()
    hold.refresh_from_db()
    account.refresh_from_db()
    assert hold.amount == Decimal("0.1") and account.reserved == Decimal("0.1")
    assert LedgerEntry.objects.filter(idempotency_key="msg-a").count() == 1 and account.balance == Decimal("9.9")


def test_releasing_everything_releases_the_reservation(account):
    hold = reservation_hold(account=account, amount=Decimal("0.05"), idempotency_key="req-3")
    reservation_settle_many([Settlement(account.pk, hold.pk, release=Decimal("0.05"))])
    hold.refresh_from_db()
    account.refresh_from_db()
    assert hold.status == "released" and account.reserved == 0 and account.balance == Decimal("10")


def test_a_share_of_an_expired_reservation_is_charged_without_touching_what_is_held(account):
    hold = reservation_hold(account=account, amount=Decimal("0.10"), idempotency_key="req-4", ttl=timedelta(seconds=1))
    reservations_expire(now=timezone.now() + timedelta(minutes=1))
    reservation_settle_many([Settlement(account.pk, hold.pk, charge=Decimal("0.10"), idempotency_key="late")])
    account.refresh_from_db()
    assert account.reserved == 0 and account.balance == Decimal("9.9") == entries_sum(account)
    assert Reservation.objects.get(pk=hold.pk).status == "expired"


def test_settlement_amounts_are_checked(account):
    with pytest.raises(ValueError):
        reservation_settle_many([Settlement(account.pk, None, charge=Decimal("-1"), idempotency_key="k")])
    with pytest.raises(ValueError):
        reservation_settle_many([Settlement(account.pk, None, charge=Decimal("1"))])


def usage(account, hold, n: int, price="0.10") -> PreratedUsage:
    return PreratedUsage(
        account_id=account.pk,
        reservation_id=hold.pk if hold else None,
        source="sms",
        source_id=f"ledger-test-{n}",
        service="sms",
        caller="TEXTCO",
        callee="34612345678",
        start=timezone.now(),
        units=2,
        price=Decimal(price),
        cost=Decimal("0.04"),
        currency="EUR",
        idempotency_key=f"sms:charge:ledger-test-{n}",
        trunk="carrier-1",
        destination="ES Movistar",
    )


def test_pre_rated_usage_becomes_a_rated_cdr_charged_once(account):
    hold = reservation_hold(account=account, amount=Decimal("0.20"), idempotency_key="req-5")
    assert usage_charge_many([usage(account, hold, 1), usage(account, hold, 2)]) == {
        "sms:charge:ledger-test-1",
        "sms:charge:ledger-test-2",
    }
    # The same usage again (a retried batch): no new CDR, no new charge
    assert usage_charge_many([usage(account, hold, 1)]) == set()
    cdr = Cdr.objects.get(source="sms", source_id="ledger-test-1")
    assert (cdr.service, cdr.units, cdr.price, cdr.cost, cdr.status, cdr.trunk) == (
        "sms",
        2,
        Decimal("0.1"),
        Decimal("0.04"),
        "rated",
        "carrier-1",
    )
    entry = LedgerEntry.objects.get(idempotency_key="sms:charge:ledger-test-1")
    assert entry.cdr_id == cdr.pk and entry.amount == Decimal("-0.1")
    account.refresh_from_db()
    assert account.reserved == 0 and account.balance == Decimal("9.8") == entries_sum(account)
    assert Cdr.objects.filter(source="sms", source_id__startswith="ledger-test-").count() == 2


def test_a_quick_hold_takes_a_preallocated_id_and_never_goes_below_the_limit(account):
    from billing.services import InsufficientCredit, reservation_hold_quick, reservation_id_next

    expires = timezone.now() + timedelta(hours=1)
    wanted = reservation_id_next()
    got = reservation_hold_quick(
        account_id=account.pk, amount=Decimal("6"), idempotency_key="quick-1", expires_at=expires, reservation_id=wanted
    )
    assert got == wanted and Reservation.objects.get(pk=got).amount == Decimal("6")
    with pytest.raises(InsufficientCredit) as refused:  # 10 - 6 held = 4 available
        reservation_hold_quick(
            account_id=account.pk, amount=Decimal("4.01"), idempotency_key="quick-2", expires_at=expires
        )
    assert refused.value.account.available == Decimal("4")
    account.refresh_from_db()
    assert account.reserved == Decimal("6") and not Reservation.objects.filter(idempotency_key="quick-2").exists()
