"""Rerating and what-if: previews change nothing, confirms post adjustments once and never edit past entries.

The books of every test, worked out by hand (tariff "Retail", EUR, 60/60 increments):

    34  Spain         0.10/min
    346 Spain mobile  0.20/min + 0.05 connect fee   (the calls were priced when it was wrongly 0.18)

    c1 +34911111111  90 s → 120 s billed → 2 × 0.10              = 0.20  (was 0.20)
    c2 +34611111111  30 s →  60 s billed → 0.05 + 1 × 0.20       = 0.25  (was 0.05 + 0.18 = 0.23)
    c3 +34622222222  61 s → 120 s billed → 0.05 + 2 × 0.20       = 0.45  (was 0.05 + 0.36 = 0.41)

    Spain mobile: old 0.64, new 0.70, difference +0.06; Spain: 0.20 → 0.20; account: 0.84 → 0.90 (+0.06).
    Confirming posts -0.02 (c2) and -0.04 (c3): the customer owes 0.06 more.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django_tenants.utils import schema_context

from billing.choices import EntryKind, RerateStatus, TariffKind
from billing.models import Account, Cdr, LedgerEntry, Rate, RerateRun, Tariff
from billing.services import (
    RerateInvalid,
    RerateStale,
    account_create,
    account_topup,
    ledger_post,
    rerate_confirm,
    rerate_preview,
)
from billing.services import rerate as rerate_module

# Each test runs in a rolled-back transaction but the race below, whose two workers must see committed data.


def rerate_tasks_run(callbacks) -> list[str]:
    """Run the rerate tasks the captured on-commit callbacks would send to the worker, here, in the test's
    transaction (the real task, without the broker round trip; test_rerate_tasks.py uses a real worker)."""
    return [
        task.apply(args=[run_id], throw=True).get()
        for task, run_id in (c.rerate_task for c in callbacks if hasattr(c, "rerate_task"))
    ]


JAN = datetime(2024, 1, 1, tzinfo=UTC)
FEB = datetime(2024, 2, 1, tzinfo=UTC)


def _tariff(name: str, rows, *, currency="EUR", kind=TariffKind.PRICE) -> Tariff:
    tariff = Tariff.objects.create(name=name, currency=currency, kind=kind)
    for prefix, destination, rate, connect_fee, first, next_ in rows:
        Rate.objects.create(
            tariff=tariff,
            prefix=prefix,
            destination=destination,
            rate=Decimal(rate),
            connect_fee=Decimal(connect_fee),
            first_increment=first,
            next_increment=next_,
        )
    return tariff


def _rated_cdr(account, source_id, callee, billsec, price, *, prefix, destination, billed, day=10, **extra) -> Cdr:
    """A CDR as the import left it (priced and charged), with the price it had at the time."""
    cdr = Cdr.objects.create(
        source="test",
        source_id=source_id,
        account=account,
        account_code=account.code,
        callee=callee,
        start=datetime(2024, 1, day, 12, 0, tzinfo=UTC),
        duration=billsec + 5,
        billsec=billsec,
        status="rated",
        matched_prefix=prefix,
        destination=destination,
        billed_seconds=billed,
        price=Decimal(price),
        currency=account.currency,
        **extra,
    )
    ledger_post(
        account=account, kind=EntryKind.CHARGE, amount=Decimal(price), idempotency_key=f"cdr:test:{source_id}", cdr=cdr
    )
    return cdr


@pytest.fixture
def books(world, in_schema):
    with in_schema("demo"):
        retail = _tariff(
            "Retail", [("34", "Spain", "0.10", "0", 60, 60), ("346", "Spain mobile", "0.20", "0.05", 60, 60)]
        )
        acme = account_create(name="Acme", code="rr-acme", currency="EUR", tariff=retail)
        account_topup(account=acme, amount=Decimal("10"), idempotency_key="rr-acme-topup")
        cdrs = [
            _rated_cdr(acme, "c1", "+34911111111", 90, "0.20", prefix="34", destination="Spain", billed=120),
            _rated_cdr(acme, "c2", "+34611111111", 30, "0.23", prefix="346", destination="Spain mobile", billed=60),
            _rated_cdr(acme, "c3", "+34622222222", 61, "0.41", prefix="346", destination="Spain mobile", billed=120),
        ]
        yield {"retail": retail, "acme": acme, "cdrs": cdrs}


def _snapshot():
    return (
        list(LedgerEntry.objects.order_by("id").values_list("id", "amount")),
        list(Account.objects.order_by("id").values_list("id", "balance")),
        list(Cdr.objects.order_by("id").values_list("id", "price", "destination", "billed_seconds", "extra")),
    )


def _account_line(run: RerateRun, code: str) -> dict:
    return next(a for a in run.summary["accounts"] if a["account_code"] == code)


@pytest.mark.django_db
def test_what_if_shows_the_difference_per_account_and_destination_and_touches_nothing(books):
    # Given calls priced under a wrong rate that has since been corrected
    before = _snapshot()
    # When the period is re-rated under the current tariff
    run = rerate_preview(start=JAN, end=FEB, account=books["acme"])
    # Then the run shows +0.06 on Spain mobile and nothing on Spain, and the books are as they were
    line = _account_line(run, "rr-acme")
    assert (line["cdrs"], line["changed"], line["old_total"], line["new_total"], line["difference"]) == (
        3,
        2,
        "0.840000",
        "0.900000",
        "0.060000",
    )
    by_destination = {d["destination"]: d for d in line["destinations"]}
    assert by_destination["Spain mobile"]["difference"] == "0.060000"
    assert by_destination["Spain mobile"]["old_total"] == "0.640000"
    assert by_destination["Spain"]["difference"] == "0.000000"
    assert run.summary["totals"] == [
        {
            "currency": "EUR",
            "cdrs": 3,
            "changed": 2,
            "no_rate": 0,
            "old_total": "0.840000",
            "new_total": "0.900000",
            "difference": "0.060000",
        }
    ]
    assert run.status == RerateStatus.READY and run.confirmed_at is None
    assert _snapshot() == before


@pytest.mark.django_db
def test_confirm_posts_adjustments_summing_to_the_difference_once(books):
    # Given a what-if of +0.06
    acme = books["acme"]
    run = rerate_preview(start=JAN, end=FEB, account=acme)
    old_entries = list(LedgerEntry.objects.filter(account=acme).values_list("id", "amount", "kind"))
    # When it is confirmed
    confirmed = rerate_confirm(run=run)
    # Then one adjustment per changed CDR is posted, summing to minus the difference (the customer owes more)
    adjustments = LedgerEntry.objects.filter(account=acme, kind=EntryKind.ADJUSTMENT)
    c1, c2, c3 = books["cdrs"]
    assert sorted(adjustments.values_list("idempotency_key", "amount")) == [
        (f"rerate:{run.pk}:{c2.pk}", Decimal("-0.020000")),
        (f"rerate:{run.pk}:{c3.pk}", Decimal("-0.040000")),
    ]
    assert adjustments.aggregate(total=Sum("amount"))["total"] == -Decimal(run.summary["accounts"][0]["difference"])
    # past entries are untouched, and balance = sum of entries: 10 - 0.84 - 0.06
    assert all(LedgerEntry.objects.filter(pk=pk, amount=amount, kind=kind).exists() for pk, amount, kind in old_entries)
    acme.refresh_from_db()
    assert (
        acme.balance == Decimal("9.100000") == LedgerEntry.objects.filter(account=acme).aggregate(t=Sum("amount"))["t"]
    )
    # the CDRs carry the new price and remember the old one
    c2.refresh_from_db()
    assert c2.price == Decimal("0.250000")
    assert c2.extra["rerated"] == [
        {
            "run": run.pk,
            "at": confirmed.confirmed_at.isoformat(),
            "price": "0.230000",
            "matched_prefix": "346",
            "destination": "Spain mobile",
            "billed_seconds": 60,
        }
    ]
    assert confirmed.status == RerateStatus.CONFIRMED
    assert confirmed.summary["confirmed"] == {"entries": 2, "adjusted": "-0.060000", "cdrs": 2}
    # When it is confirmed again, nothing changes
    after = _snapshot()
    again = rerate_confirm(run=run)
    assert again.confirmed_at == confirmed.confirmed_at and _snapshot() == after


@pytest.mark.django_db
def test_rerating_again_after_a_confirm_compares_with_the_new_prices(books):
    # Given a confirmed rerate of the period
    acme = books["acme"]
    rerate_confirm(run=rerate_preview(start=JAN, end=FEB, account=acme))
    balance = Account.objects.get(pk=acme.pk).balance
    # When the same period is re-rated again (every account this time) and confirmed
    second = rerate_preview(start=JAN, end=FEB)
    line = _account_line(second, "rr-acme")
    assert (line["changed"], line["difference"]) == (0, "0.000000")
    rerate_confirm(run=second)
    # Then nothing is adjusted twice
    assert not LedgerEntry.objects.filter(idempotency_key__startswith=f"rerate:{second.pk}:").exists()
    assert Account.objects.get(pk=acme.pk).balance == balance


@pytest.mark.django_db
def test_what_if_under_a_candidate_tariff(books, in_schema):
    # Given a candidate deck: 34 at 0.06/min per second, no Spain mobile prefix, no United Kingdom
    acme = books["acme"]
    promo = _tariff("Promo", [("34", "Spain", "0.06", "0", 1, 1)])
    uk = _rated_cdr(acme, "c4", "+447700900000", 60, "0.30", prefix="44", destination="United Kingdom", billed=60)
    before = _snapshot()
    # When the account's period is re-rated under it
    run = rerate_preview(start=JAN, end=FEB, account=acme, tariff=promo)
    # Then c1 90 s → 0.09, c2 30 s → 0.03, c3 61 s → 0.061 (mobile falls back to prefix 34); the UK call has no
    # rate in the candidate: it is counted, not priced at 0
    line = _account_line(run, "rr-acme")
    assert line["tariff_name"] == "Promo"
    by_destination = {d["destination"]: d for d in line["destinations"]}
    assert (by_destination["Spain"]["old_total"], by_destination["Spain"]["new_total"]) == ("0.200000", "0.090000")
    assert (by_destination["Spain mobile"]["new_total"], by_destination["Spain mobile"]["difference"]) == (
        "0.091000",
        "-0.549000",
    )
    assert by_destination["United Kingdom"]["no_rate"] == 1 and by_destination["United Kingdom"]["cdrs"] == 0
    assert line["difference"] == "-0.659000"
    assert {"reason": "no rate in the tariff", "cdrs": 1} in run.summary["skipped"]
    assert _snapshot() == before
    # When confirmed, the customer is credited 0.659 and the UK call keeps its price
    rerate_confirm(run=run)
    adjustments = LedgerEntry.objects.filter(account=acme, kind=EntryKind.ADJUSTMENT).aggregate(t=Sum("amount"))
    assert adjustments["t"] == Decimal("0.659000")
    uk.refresh_from_db()
    assert uk.price == Decimal("0.300000") and "rerated" not in uk.extra
    c3 = Cdr.objects.get(pk=books["cdrs"][2].pk)
    assert (c3.price, c3.matched_prefix, c3.destination, c3.billed_seconds) == (Decimal("0.061"), "34", "Spain", 61)


@pytest.mark.django_db
def test_bulk_rater_and_scalar_path_give_the_same_what_if(books, monkeypatch):
    # Given the same period rated one CDR at a time and through the vectorised rater
    monkeypatch.setattr(rerate_module, "BULK_MIN_ROWS", 10**9)
    scalar = rerate_preview(start=JAN, end=FEB, account=books["acme"])
    monkeypatch.setattr(rerate_module, "BULK_MIN_ROWS", 1)
    bulk = rerate_preview(start=JAN, end=FEB, account=books["acme"])
    # Then the summaries are equal
    assert bulk.summary == scalar.summary
    assert _account_line(bulk, "rr-acme")["difference"] == "0.060000"


@pytest.mark.django_db
def test_unnamed_package_cdrs_gridless_legs_and_tariffless_accounts_are_skipped_and_counted(books, in_schema):
    # Given a CDR with package seconds but no package name (from before packages were named), a freephone grid leg
    # under a tariff without a grid, and an account without a tariff
    acme = books["acme"]
    _rated_cdr(acme, "p1", "+34911111112", 60, "0", prefix="34", destination="Spain", billed=60, package_seconds=60)
    grid = _rated_cdr(
        acme,
        "g1:orig",
        "+34800123456",
        60,
        "0.03",
        prefix="",
        destination="",
        billed=60,
        leg="origination",
        extra={"origination_class": "Fixed", "termination_class": "IVR", "cell_rate": "0.03"},
    )
    bare = account_create(name="Bare", code="rr-bare", currency="EUR")
    _rated_cdr(bare, "b1", "+34911111113", 60, "0.10", prefix="34", destination="Spain", billed=60)
    # When every account's period is re-rated and confirmed
    run = rerate_preview(start=JAN, end=FEB)
    skipped = {s["reason"]: s["cdrs"] for s in run.summary["skipped"]}
    rerate_confirm(run=run)
    # Then they are counted with their reason and left as they were
    assert skipped == {
        "priced by a minute package that is not named": 1,
        "tariff has no class grid": 1,
        "account has no tariff": 1,
    }
    assert _account_line(run, "rr-acme")["cdrs"] == 3
    assert "rr-bare" not in {a["account_code"] for a in run.summary["accounts"]}
    assert run.progress_done == run.progress_total == 6
    grid.refresh_from_db()
    assert grid.price == Decimal("0.03") and "rerated" not in grid.extra


@pytest.mark.django_db
def test_confirming_a_stale_preview_is_refused_and_writes_nothing(books):
    # Given a what-if, and then a rate changed again before anyone confirmed it
    run = rerate_preview(start=JAN, end=FEB, account=books["acme"])
    Rate.objects.filter(tariff=books["retail"], prefix="346").update(rate=Decimal("0.25"))
    books["retail"].save()  # a deck change touches its tariff
    before = _snapshot()
    # When it is confirmed
    with pytest.raises(RerateStale):
        rerate_confirm(run=run)
    # Then nothing is written and the run stays a draft
    assert _snapshot() == before
    assert RerateRun.objects.get(pk=run.pk).status == RerateStatus.READY


@pytest.mark.django_db
def test_the_period_of_a_what_if_is_start_inclusive_end_exclusive(books):
    # Given calls on 10 January only; when the period ends at that instant, or starts just after it
    noon = datetime(2024, 1, 10, 12, 0, tzinfo=UTC)
    before_them = rerate_preview(start=JAN, end=noon, account=books["acme"])
    from_them = rerate_preview(start=noon, end=FEB, account=books["acme"])
    # Then the first sees none and the second all three
    assert before_them.summary["cdrs"] == 0 and before_them.summary["accounts"] == []
    assert from_them.summary["cdrs"] == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    "case, field",
    [("cost_tariff", "tariff"), ("other_currency", "tariff"), ("reversed", "end"), ("no_tariff", "account")],
)
def test_invalid_what_ifs_name_the_argument(books, case, field):
    # Given a what-if that cannot be run
    acme = books["acme"]
    kwargs = {"start": JAN, "end": FEB, "account": acme}
    if case == "cost_tariff":
        kwargs["tariff"] = _tariff("Carrier", [("34", "Spain", "0.01", "0", 1, 1)], kind=TariffKind.COST)
    elif case == "other_currency":
        kwargs["tariff"] = _tariff("Dollars", [("34", "Spain", "0.01", "0", 1, 1)], currency="USD")
    elif case == "reversed":
        kwargs.update(start=FEB, end=JAN)
    else:
        kwargs["account"] = account_create(name="Bare", code="rr-bare2", currency="EUR")
    # When previewed, then the error names the argument and no run is made
    runs = RerateRun.objects.count()
    with pytest.raises(RerateInvalid) as error:
        rerate_preview(**kwargs)
    assert error.value.field == field
    assert RerateRun.objects.count() == runs


@pytest.fixture
def committed_race(world, django_db_blocker):
    """A committed what-if of 50 calls, each 0.02 dearer now (June 2019, away from the other tests' periods).

    The two racing workers must see it, so it is committed, and removed afterwards so no other test sees it.
    """
    june, july = datetime(2019, 6, 1, tzinfo=UTC), datetime(2019, 7, 1, tzinfo=UTC)
    with django_db_blocker.unblock(), schema_context("demo"):
        tariff = _tariff("Race retail", [("346", "Spain mobile", "0.20", "0.05", 60, 60)])
        account = account_create(name="Race", code="rr-race", currency="EUR", tariff=tariff, kind="postpaid")
        for n in range(50):
            _rated_cdr(
                account, f"race{n}", "+34611111111", 30, "0.23", prefix="346", destination="Spain mobile", billed=60
            )
        Cdr.objects.filter(account=account).update(start=datetime(2019, 6, 10, tzinfo=UTC))
        run = rerate_preview(start=june, end=july, account=account)
    yield run
    with django_db_blocker.unblock(), schema_context("demo"):
        RerateRun.objects.filter(account=account).delete()
        LedgerEntry.objects.filter(account=account)._raw_delete(LedgerEntry.objects.db)  # append-only for the app
        Cdr.objects.filter(account=account).delete()
        Account.objects.filter(pk=account.pk).delete()
        Tariff.objects.filter(pk=tariff.pk).delete()


def test_two_confirms_racing_post_the_adjustments_once(committed_race, django_db_blocker):
    run, account = committed_race, committed_race.account
    barrier = threading.Barrier(2)

    def confirm(_):
        try:
            with schema_context("demo"):
                barrier.wait(timeout=30)
                return rerate_confirm(run=RerateRun.objects.get(pk=run.pk)).confirmed_at
        finally:
            connection.close()

    # When two workers confirm the run at the same moment
    with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=2) as pool:
        stamps = list(pool.map(confirm, range(2)))
    # Then both see the same confirmation, and the adjustments landed once: 50 × -0.02, balance = sum of entries
    assert stamps[0] == stamps[1]
    with django_db_blocker.unblock(), schema_context("demo"):
        adjustments = LedgerEntry.objects.filter(account=account, kind=EntryKind.ADJUSTMENT)
        assert adjustments.count() == 50
        assert adjustments.aggregate(t=Sum("amount"))["t"] == Decimal("-1.000000")
        account.refresh_from_db()
        assert account.balance == LedgerEntry.objects.filter(account=account).aggregate(t=Sum("amount"))["t"]
        assert account.balance == Decimal("-12.500000")  # 50 × 0.23 charged, then 50 × 0.02 adjusted


@pytest.mark.django_db
def test_a_preview_task_delivered_twice_never_turns_a_confirmed_run_back(books, monkeypatch):
    # Given a queued what-if whose task is delivered twice (acks_late redelivery): the second delivery claims the
    # run while the first is still computing, and the first one's run is confirmed before the second one finishes
    run = rerate_module.rerate_request(start=JAN, end=FEB, account=books["acme"], enqueue=False)
    original_run = rerate_module._Rerating.run
    other_worker = {"done": False}

    def run_then_let_the_other_worker_finish(rerating):
        original_run(rerating)
        if not other_worker["done"]:
            other_worker["done"] = True
            assert rerate_module.rerate_run_preview(run_id=run.pk).status == RerateStatus.READY
            rerate_module.rerate_confirm_request(run=run)
            assert rerate_module.rerate_run_confirm(run_id=run.pk).status == RerateStatus.CONFIRMED

    monkeypatch.setattr(rerate_module._Rerating, "run", run_then_let_the_other_worker_finish)
    # When the slow delivery finishes
    late = rerate_module.rerate_run_preview(run_id=run.pk)
    # Then the run stays confirmed, with what confirming wrote
    run.refresh_from_db()
    assert late.status == run.status == RerateStatus.CONFIRMED
    assert run.summary["confirmed"] == {"entries": 2, "adjusted": "-0.060000", "cdrs": 2}


@pytest.mark.django_db
def test_a_duplicate_preview_task_failing_never_fails_a_run_that_moved_on(books, monkeypatch):
    # Given a what-if delivered twice: the other delivery makes it ready and it is sent to confirm, then this one's
    # worker fails
    run = rerate_module.rerate_request(start=JAN, end=FEB, account=books["acme"], enqueue=False)
    original_run = rerate_module._Rerating.run
    calls = []

    def other_worker_finishes_then_this_one_fails(rerating):
        calls.append(rerating)
        if len(calls) > 1:
            return original_run(rerating)
        assert rerate_module.rerate_run_preview(run_id=run.pk).status == RerateStatus.READY
        rerate_module.rerate_confirm_request(run=run)
        raise RuntimeError("worker lost its database")

    monkeypatch.setattr(rerate_module._Rerating, "run", other_worker_finishes_then_this_one_fails)
    failed = rerate_module.rerate_run_preview(run_id=run.pk)
    # Then the run is still confirming, and its confirmation goes through
    assert (failed.status, failed.error_code) == (RerateStatus.CONFIRMING, "")
    assert rerate_module.rerate_run_confirm(run_id=run.pk).status == RerateStatus.CONFIRMED
