"""Rerate runs through the API on a real Celery worker: queued (202), polled while the worker re-rates, confirmed in
the background. Data are committed (the worker is another process) in the engine operator, and removed after.

The books are test_rerate_packages.py's: three package calls on 10 March 2023 charged 0.96, a per-second candidate
gives 0.78 (difference -0.18); plus one deck-priced call to the UK (0.30 → 0.24 under the candidate's 0.24/min).
"""

import time
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Sum
from django.test import Client

from billing.csvformats import parse_asterisk_master_csv
from billing.models import Account, Cdr, LedgerEntry, MinutePackage, PackageUsage, RerateRun, Tariff
from billing.services import account_create, cdrs_ingest
from billing.tests.engine_support import engine_operator, in_engine, master_line, tariff_with_deck
from core.models import ApiKey
from core.services import api_key_create

D = Decimal
TIERS = [{"up_to_minutes": "20", "rate": "0.05"}, {"up_to_minutes": "25", "rate": "0.04"}]
CALLS = (
    master_line("rt-C", "34911234567", "2023-03-10 12:00:00", 60, account="rt-pkg")
    + master_line("rt-A", "34911234567", "2023-03-10 10:00:00", 250, account="rt-pkg")
    + master_line("rt-B", "34911234567", "2023-03-10 11:00:00", 1230, account="rt-pkg")
    + master_line("rt-U", "442071234567", "2023-03-10 13:00:00", 60, account="rt-pkg")
)


@pytest.fixture
def committed_books(world, django_db_blocker):
    with django_db_blocker.unblock():
        engine_operator()
        with in_engine():
            retail = tariff_with_deck("RT retail", "34,Spain,0.10,0.02,60/60,,,,\n44,United Kingdom,0.30,,60/60,,,,\n")
            candidate = tariff_with_deck("RT per second", "34,Spain,0.12,0,1/1,,,,\n44,United Kingdom,0.24,,1/1,,,,\n")
            account = account_create(name="RT", code="rt-pkg", currency="EUR", tariff=retail, kind="postpaid")
            package = MinutePackage.objects.create(name="RT 10", prefixes=["34"], included_minutes=D(10), tiers=TIERS)
            account.packages.add(package)
            cdrs_ingest(source="rt", records=parse_asterisk_master_csv(CALLS, tz="Europe/Madrid"), tz="Europe/Madrid")
            key = api_key_create(user=get_user_model().objects.get(username="admin@engine.localhost"), name="rt")
        connection.set_schema_to_public()
    yield {"account": account, "candidate": candidate, "key": {"HTTP_AUTHORIZATION": f"Api-Key {key.raw_key}"}}
    with django_db_blocker.unblock(), in_engine():
        ApiKey.objects.filter(pk=key.api_key.pk).delete()
        RerateRun.objects.filter(account=account).delete()
        LedgerEntry.objects.filter(account=account)._raw_delete(LedgerEntry.objects.db)  # append-only for the app
        Cdr.objects.filter(account=account).delete()
        PackageUsage.objects.filter(account=account).delete()
        Account.objects.filter(pk=account.pk).delete()
        MinutePackage.objects.filter(pk=package.pk).delete()
        Tariff.objects.filter(pk__in=[retail.pk, candidate.pk]).delete()
    connection.set_schema_to_public()


def _poll(client: Client, key: dict, run_id: int, status: str, timeout: float = 60) -> dict:
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        seen = client.get(f"/api/v1/billing/rerate/{run_id}", **key).json()
        if seen["status"] == status:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} never got {status}: {seen}")


def test_a_rerate_run_is_previewed_and_confirmed_by_the_worker(worker, committed_books, django_db_blocker):
    client, key = Client(HTTP_HOST="engine.localhost"), committed_books["key"]
    account = committed_books["account"]
    with django_db_blocker.unblock():
        # Given a what-if of March under the candidate, asked through the API
        response = client.post(
            "/api/v1/billing/rerate",
            {
                "from": "2023-03-01",
                "to": "2023-04-01",
                "account": account.pk,
                "tariff": committed_books["candidate"].pk,
            },
            content_type="application/json",
            **key,
        )
        assert response.status_code == 202, response.content
        assert response.json()["status"] == "queued"
        # When the worker has run it
        run = _poll(client, key, response.json()["id"], "ready")
        # Then polling shows the differences and the progress of all four calls
        [line] = run["summary"]["accounts"]
        assert (line["cdrs"], line["old_total"], line["new_total"], line["difference"]) == (
            4,
            "1.260000",
            "1.020000",
            "-0.240000",
        )
        assert (run["progress_done"], run["progress_total"]) == (4, 4)
        with in_engine():
            assert not LedgerEntry.objects.filter(account=account, kind="adjustment").exists()
        # When it is confirmed
        response = client.post(f"/api/v1/billing/rerate/{run['id']}/confirm", **key)
        assert response.status_code == 202 and response.json()["status"] == "confirming"
        confirmed = _poll(client, key, run["id"], "confirmed")
        # Then the worker posted the adjustments: balance = sum of entries = minus the new prices
        assert confirmed["summary"]["confirmed"]["adjusted"] == "0.240000"
        with in_engine():
            account.refresh_from_db()
            entries = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
            prices = Cdr.objects.filter(account=account).aggregate(s=Sum("price"))["s"]
            assert account.balance == entries == -prices == D("-1.02")
            assert PackageUsage.objects.get(account=account).used_seconds == 1500
        connection.set_schema_to_public()
