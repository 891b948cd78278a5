"""Billing's background work on a real Celery worker (and a real beat): unrated CDRs rated once what they missed
appears, and the reservation sweep every operator gets from beat. Data are committed (other processes read them) in
operators of their own."""

import os
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection, transaction
from django_tenants.utils import schema_context

from billing.csvformats import parse_freephone_cdrs
from billing.models import Account, Cdr, FreephoneNumber, Reservation
from billing.services import account_create, account_topup, cdrs_ingest, reservation_hold
from billing.tests.engine_support import ENGINE_OPERATOR, engine_operator, in_engine
from billing.tests.test_engine_freephone import grid_tariff, record
from tenants.models import Operator
from tenants.services import operator_provision
from tests.celery_worker import worker_database_url

D = Decimal
SECOND_OPERATOR = "engine2"


def _wait_for(check, timeout: float = 40) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


def test_a_new_freephone_number_gets_its_waiting_calls_rated_by_the_worker(worker, world, django_db_blocker):
    with django_db_blocker.unblock():
        engine_operator()
        with in_engine():
            owner = account_create(name="Late owner", code="late-owner", currency="EUR", tariff=grid_tariff("Late"))
            text = record("late1", "74991234567", "79031234567", 90, number="8005550001")
            cdrs_ingest(source="freephone-late", records=parse_freephone_cdrs(text, tz="UTC"), tz="UTC")
            legs = Cdr.objects.filter(source="freephone-late")
            assert {c.status for c in legs} == {"unrated"}
            # The console or the API adds the number; the request returns at once, the worker rates after commit.
            with transaction.atomic():
                FreephoneNumber.objects.create(number="8005550001", account=owner)
                assert legs.filter(status="rated").count() == 0  # not rated inline
            assert _wait_for(lambda: legs.filter(status="rated").count() == 2), "the worker did not rate the legs"
            owner.refresh_from_db()
            assert owner.balance == D("-3.80")  # 2 min fixed → another network: 2 x 0.50 + 2 x 1.40
        connection.set_schema_to_public()


@pytest.mark.django_db
def test_what_may_complete_unrated_cdrs_enqueues_one_rating_task_after_commit(
    in_schema, django_capture_on_commit_callbacks
):
    # (Also: a module whose tests all lack the django_db mark would make pytest-django skip creating the test
    # database; this one keeps the worker tests below on it.)
    with in_schema("demo"), django_capture_on_commit_callbacks() as callbacks:
        owner = account_create(name="Owner", code="owner-x", currency="EUR")
        FreephoneNumber.objects.create(number="8005550002", account=owner)
        FreephoneNumber.objects.create(number="8005550003", account=owner)
    assert [getattr(c, "rates_pending_cdrs", False) for c in callbacks] == [True]


def _held_reservation(schema: str, code: str) -> Reservation:
    with schema_context(schema):
        account = Account.objects.filter(code=code).first() or account_create(name=code, code=code, currency="EUR")
        account_topup(account=account, amount=D("10"), idempotency_key=f"{code}-topup-{time.time_ns()}")
        return reservation_hold(
            account=account, amount=D("4"), idempotency_key=f"{code}-hold-{time.time_ns()}", ttl=timedelta(seconds=1)
        )


def test_beat_sends_the_reservation_sweep_to_every_active_operator(worker, world, django_db_blocker, tmp_path):
    entry = settings.CELERY_BEAT_SCHEDULE["billing-reservations-expire"]
    assert entry["task"] == "billing.reservations_expire" and "tenant_schemas" not in entry  # every operator
    assert entry["schedule"] == 60.0  # every minute (this test runs beat every 2 s instead)
    with django_db_blocker.unblock():
        engine_operator()
        if not Operator.objects.filter(schema_name=SECOND_OPERATOR).exists():
            operator_provision(
                slug=SECOND_OPERATOR, name="Engine Two", domain="engine2.localhost",
                admin_email="admin@engine2.localhost", send_welcome=False,
            )  # fmt: skip
        connection.set_schema_to_public()
        first = _held_reservation(ENGINE_OPERATOR, "sweep-a")
        second = _held_reservation(SECOND_OPERATOR, "sweep-b")
        Operator.objects.filter(schema_name=SECOND_OPERATOR).update(status="suspended")
        env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "config.settings.test"}
        env["BILLING_RESERVATIONS_EXPIRE_EVERY_S"] = "2"
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "WARNING",
             "-s", str(tmp_path / "beat-schedule")],
            env=env,
            start_new_session=True,
        )  # fmt: skip
        try:

            def status(schema: str, reservation: Reservation) -> str:
                with schema_context(schema):
                    return Reservation.objects.get(pk=reservation.pk).status

            assert _wait_for(lambda: status(ENGINE_OPERATOR, first) == "expired"), "beat + worker did not sweep"
            # The suspended operator's sweep is skipped: its hold stays until it is active again.
            assert status(SECOND_OPERATOR, second) == "held"
            Operator.objects.filter(schema_name=SECOND_OPERATOR).update(status="active")
            assert _wait_for(lambda: status(SECOND_OPERATOR, second) == "expired"), "not swept once active again"
        finally:
            Operator.objects.filter(schema_name=SECOND_OPERATOR).update(status="active")
            beat.terminate()
            beat.wait(timeout=15)
        with schema_context(ENGINE_OPERATOR):
            account = Account.objects.get(code="sweep-a")
            assert account.reserved == 0 and account.available == D("10")
        connection.set_schema_to_public()
