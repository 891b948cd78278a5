"""Credit grants: many small holds drawn from one grant, settled in shares, never below the credit limit."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, transaction
from django.db.models import Sum
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import Account, LedgerEntry, Reservation
from billing.services import (
    InsufficientCredit,
    Settlement,
    account_topup,
    credit_draw,
    grants_idle_release,
    reservation_settle_many,
)
from billing.tests.test_ledger import _run_workers


@pytest.fixture
def account(world, settings, db):
    settings.BILLING_GRANT_USES = 10
    with schema_context("demo"):
        acc = Account.objects.create(name="Bulk texter", code="grant-texter", currency="EUR")
        account_topup(account=acc, amount=Decimal("10"), idempotency_key="grant-texter-topup")
        yield acc


def draw(account, amount, *, ends_in=timedelta(hours=48), key="k") -> int:
    with transaction.atomic():
        return credit_draw(
            account_id=account.pk, amount=Decimal(amount), use_ends_at=timezone.now() + ends_in, key=key
        )


def held_sum(account) -> Decimal:
    held = Reservation.objects.filter(account=account, status="held")
    return held.aggregate(s=Sum("amount"))["s"] or Decimal(0)


def test_draws_share_one_grant_of_ten_uses(account):
    first = draw(account, "0.30")
    second = draw(account, "0.30")
    grant = Reservation.objects.get(pk=first)
    account.refresh_from_db()
    # One grant of 10 x 0.30 holds 3.00; two draws took 0.60 of it; the account row saw one hold.
    assert second == first
    assert (grant.amount, grant.undrawn, grant.status) == (Decimal("3"), Decimal("2.4"), "held")
    assert account.reserved == Decimal("3") == held_sum(account)


def test_a_grant_is_cut_to_the_free_credit_and_idle_grants_give_way_to_a_request(account):
    # 10 free: a draw of 0.50 opens a grant of 5.00; one of 4.80 does not fit its 4.50 undrawn and opens a grant of
    # 5.00 (wanted 48, all that is free)
    first = draw(account, "0.5")
    second = draw(account, "4.8")
    assert [Reservation.objects.get(pk=pk).undrawn for pk in (first, second)] == [Decimal("4.5"), Decimal("0.2")]
    # 4.60 fits neither grant nor the free credit (0), but the 4.70 idle in grants: they give it back and the 4.60
    # is held on its own
    own = draw(account, "4.6", key="fits")
    account.refresh_from_db()
    assert Reservation.objects.get(pk=own).idempotency_key == "fits"
    assert [Reservation.objects.get(pk=pk).amount for pk in (first, second)] == [Decimal("0.5"), Decimal("4.8")]
    assert account.reserved == Decimal("9.9") == held_sum(account)
    # 0.20 does not fit what is left (0.10): refused, and nothing changed
    with pytest.raises(InsufficientCredit):
        draw(account, "0.2", key="too-much")
    account.refresh_from_db()
    assert account.reserved == Decimal("9.9") == held_sum(account)
    assert not Reservation.objects.filter(idempotency_key="too-much").exists()


def test_uses_outliving_grants_are_held_on_their_own(account):
    far = draw(account, "0.30", ends_in=timedelta(days=200), key="scheduled")
    reservation = Reservation.objects.get(pk=far)
    assert reservation.undrawn is None and reservation.idempotency_key == "scheduled"


def test_settled_shares_and_idle_release_close_the_grant(account):
    grant_id = draw(account, "1")
    draw(account, "1")
    # One use charged 0.80 (released 0.20), the other rejected (released 1.00)
    reservation_settle_many(
        [
            Settlement(account.pk, grant_id, charge=Decimal("0.8"), release=Decimal("0.2"), idempotency_key="use-1"),
            Settlement(account.pk, grant_id, release=Decimal("1")),
        ]
    )
    grant = Reservation.objects.get(pk=grant_id)
    assert (grant.amount, grant.undrawn, grant.status) == (Decimal("8"), Decimal("8"), "held")
    # Not idle yet: nothing given back; idle: the undrawn 8.00 goes back and the grant is closed as committed
    assert grants_idle_release() == 0
    assert grants_idle_release(now=timezone.now() + timedelta(minutes=5)) == 1
    grant.refresh_from_db()
    account.refresh_from_db()
    assert (grant.amount, grant.undrawn, grant.status, grant.committed_amount) == (0, 0, "committed", Decimal("0.8"))
    entries = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
    assert account.reserved == 0 and account.balance == Decimal("9.2") == entries


def test_racing_draws_from_several_processes_never_go_below_the_limit(world, django_db_blocker):
    with django_db_blocker.unblock(), schema_context("demo"):
        account = Account.objects.create(name="Racer", code="grant-racer", currency="EUR", credit_limit=Decimal("0"))
        try:
            account_topup(account=account, amount=Decimal("10"), idempotency_key="grant-racer-topup")
            outputs = _run_workers("draw", account.pk, workers=4, count=10)
            drawn = sum(int(o.split()[0]) for o in outputs)
            account.refresh_from_db()
            # 10.00 / 0.70: at most 14 draws fit whatever the interleaving; credit idle in another process's grant
            # is given back, so a refusal means the credit really was drawn
            assert drawn <= 14 and account.available >= 0
            assert account.reserved == held_sum(account)
            undrawn = Reservation.objects.filter(account=account, status="held").aggregate(s=Sum("undrawn"))["s"]
            assert account.reserved - (undrawn or 0) == Decimal("0.70") * drawn
            assert drawn == 14 or account.available + (undrawn or 0) < Decimal("0.70")
        finally:
            Reservation.objects.filter(account=account).delete()
            LedgerEntry.objects.filter(account=account).delete()
            account.delete()


def test_a_use_settling_more_than_it_drew_never_leaves_a_grant_owing_credit_back(account):
    # Given a grant of 10 x 1.00 with one use of 1.00 drawn (9.00 undrawn)
    grant_id = draw(account, "1")
    # When that use is charged 5.00 (more than it drew) and the idle grant gives back what it still holds
    reservation_settle_many([Settlement(account.pk, grant_id, charge=Decimal("5"), idempotency_key="use-big")])
    grant = Reservation.objects.get(pk=grant_id)
    assert (grant.amount, grant.undrawn) == (Decimal("5"), Decimal("5"))
    grants_idle_release(now=timezone.now() + timedelta(minutes=5))
    # Then it gives back the 5.00 it held, not the 9.00 it had not lent: reserved = sum of held amounts = 0
    grant.refresh_from_db()
    account.refresh_from_db()
    assert (grant.amount, grant.undrawn, grant.status) == (0, 0, "committed")
    assert account.reserved == 0 == held_sum(account)


def test_a_refused_draw_changes_nothing_and_holds_no_lock_on_the_account(world, settings, django_db_blocker):
    settings.BILLING_GRANT_USES = 10
    with django_db_blocker.unblock(), schema_context("demo"):
        account = Account.objects.create(name="Refused", code="grant-refused", currency="EUR")
        try:
            account_topup(account=account, amount=Decimal("10"), idempotency_key="grant-refused-topup")
            # Given 4.70 idle in two grants and nothing else free
            draw(account, "0.5", key="r1")
            draw(account, "4.8", key="r2")
            before = list(Reservation.objects.filter(account=account).order_by("pk").values_list("amount", "undrawn"))
            with transaction.atomic():
                # When a draw of 6.00 does not fit even with the idle credit given back
                with pytest.raises(InsufficientCredit):
                    credit_draw(
                        account_id=account.pk, amount=Decimal("6"), use_ends_at=timezone.now(), key="too-big"
                    )
                # Then, while the caller's transaction goes on, another one can lock the account (a later lock of a
                # grant by this transaction cannot deadlock with a settlement holding the grant and waiting for
                # the account) …
                with ThreadPoolExecutor(max_workers=1) as pool:
                    assert pool.submit(_account_lockable, account.pk).result() is True
            # … and the grants hold what they held
            account.refresh_from_db()
            after = list(Reservation.objects.filter(account=account).order_by("pk").values_list("amount", "undrawn"))
            assert after == before and account.reserved == Decimal("10") == held_sum(account)
        finally:
            Reservation.objects.filter(account=account).delete()
            LedgerEntry.objects.filter(account=account).delete()
            account.delete()


def _account_lockable(account_id: int) -> bool:
    from django.db import connection

    try:
        with schema_context("demo"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {Account._meta.db_table} WHERE id = %s FOR UPDATE NOWAIT", [account_id])
            return True
    except OperationalError:
        return False
    finally:
        connection.close()
