"""A submitting worker killed with SIGKILL in the middle of a batch, then a new one: every message the SMSC received
is charged exactly once, nothing is charged that it did not receive, and every message ends delivered.

The rule under test (sms.services.submission): a message is charged when claimed, before its submit_sm leaves;
submission is at-least-once, so after the crash a message whose submit_sm was in flight is submitted again — the
SMSC may receive it twice — but its charge key makes it charged once.
"""

import struct
import time
from collections import Counter
from decimal import Decimal

import pytest
from django.db.models import Count, Sum
from django.test import Client
from django_tenants.utils import schema_context

from billing.models import Account, LedgerEntry
from config.celery_app import app
from sms.choices import MessageStatus
from sms.models import Message
from sms.smpp_server import SmscSimulatorThread
from sms.tasks import maintain
from tests.celery_worker import celery_worker

from .conftest import operator_for_tests, sms_world_make
from .helpers import held_for_messages, wait_until

SCHEMA = "s1kill"
COUNT = 400


class RecordingSmsc:
    """The simulator, plus a record of every submit_sm it accepted (by text)."""

    def __init__(self) -> None:
        self.thread = SmscSimulatorThread(receipt_delay=0.3)
        self.accepted: Counter = Counter()

    def __enter__(self):
        self.thread.start()
        simulator = self.thread.simulator
        original = simulator._accept_submit

        def accept(session, sequence, submit):
            response = original(session, sequence, submit)
            if struct.unpack_from(">I", response, 8)[0] == 0:  # command_status of the submit_sm_resp
                self.accepted[submit.short_message.decode("latin-1")] += 1
            return response

        simulator._accept_submit = accept
        return self

    def __exit__(self, *exc):
        self.thread.stop()


@pytest.fixture
def killed_world(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), RecordingSmsc() as smsc, operator_for_tests(SCHEMA):
        world = sms_world_make(
            schema=SCHEMA,
            staff=f"admin@{SCHEMA}.localhost",
            port=smsc.thread.port,
            gateway_settings={"tps": 100, "window": 20},
        )
        yield world, smsc


def test_every_message_received_is_charged_exactly_once_after_a_kill_9(killed_world, django_db_blocker):
    world, smsc = killed_world
    http = Client(HTTP_HOST=f"{SCHEMA}.localhost")
    with django_db_blocker.unblock():
        app.control.purge()  # wake-ups queued by earlier runs for schemas that are gone
        # Given 400 accepted messages, each with its own text
        texts = [f"kill test {i:04d}" for i in range(COUNT)]
        response = http.post(
            "/api/v1/sms/messages",
            {"messages": [{"to": "+34612345678", "text": text} for text in texts]},
            content_type="application/json",
            **world.auth,
        )
        assert response.status_code == 201, response.content
        with schema_context(SCHEMA):
            ids = {m["id"] for m in response.json()["messages"]}
            by_text = dict(Message.objects.filter(pk__in=ids).values_list("text", "pk"))

        # When a worker is killed with -9 while it is submitting them (at 100/s: mid-batch)
        with celery_worker("sms,default") as first:
            wait_until(lambda: sum(smsc.accepted.values()) >= 80, what="the first submits", interval=0.02)
            first.kill()
            first.wait(timeout=10)
        received_before_kill = sum(smsc.accepted.values())
        with schema_context(SCHEMA):
            left_behind = Message.objects.filter(pk__in=ids, status=MessageStatus.SUBMITTING).count()
        assert received_before_kill < COUNT, "the worker finished before it was killed; slow the gateway down"

        # and a new worker comes up (the periodic maintenance task notices the dead submitter)
        with celery_worker("sms,default"):

            def all_final():
                with schema_context(SCHEMA):
                    maintain.apply_async(queue="default")
                    return not Message.objects.filter(pk__in=ids).exclude(status=MessageStatus.DELIVERED).exists()

            wait_until(all_final, timeout=90, interval=1.0, what="every message to be delivered")
            time.sleep(1)  # let late results of duplicate submits land before counting

        # Then every message the SMSC received is charged exactly once, and only those
        with schema_context(SCHEMA):
            charges = dict(
                LedgerEntry.objects.filter(idempotency_key__startswith="sms:charge:")
                .values_list("idempotency_key")
                .annotate(n=Count("id"))
                .values_list("idempotency_key", "n")
            )
            received = {by_text[text] for text in smsc.accepted}
            charged = {int(k.rsplit(":", 1)[1]) for k in charges}
            assert received == ids, "every message reached the SMSC"
            assert charged == received, "charged exactly the messages the SMSC received"
            assert set(charges.values()) == {1}, "none charged twice"
            assert not LedgerEntry.objects.filter(idempotency_key__startswith="sms:refund:").exists()
            account = Account.objects.get(pk=world.client.account_id)
            total = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
            assert account.balance == total == Decimal("100") - COUNT * Decimal("0.05")
            assert held_for_messages(account) == 0
        duplicates = sum(1 for n in smsc.accepted.values() if n > 1)
        print(
            f"\nkilled after {received_before_kill} submits, {left_behind} messages left submitting; "
            f"{duplicates} received twice (at-least-once), each charged once"
        )


@pytest.mark.django_db
def test_recovery_leaves_messages_of_live_submitters_alone(sms_world, in_schema):
    # Given a message claimed by a submitter that is alive (this process, heartbeat written)
    from sms.runner import Runner
    from sms.services import submissions_recover

    runner = Runner()
    runner._beat()
    with in_schema("demo"):
        from sms.models import Message

        message = Message.objects.create(
            customer=sms_world.client.customer,
            request_id="00000000-0000-0000-0000-000000000001",
            sender="TEXTCO",
            destination="+34612345678",
            text="x",
            encoding="gsm7",
            length=1,
            parts=1,
            price_per_part=0,
            price=0,
            cost=0,
            currency="EUR",
            status=MessageStatus.SUBMITTING,
            claimed_by=runner.token,
            valid_until="2099-01-01T00:00:00Z",
            not_before="2000-01-01T00:00:00Z",
        )
        from sms.kv import runner_alive

        # When recovery runs, then it is left alone; once the heartbeat is gone, it goes back to the queue
        assert submissions_recover(alive=runner_alive) == 0
        assert submissions_recover(alive=lambda token: False) == 1
        message.refresh_from_db()
        assert message.status == MessageStatus.ACCEPTED and message.claimed_by == ""
