"""The whole path with real peers: HTTP accept → filters → route → reserve → Celery worker → SMPP submit to the
simulator → receipt → status → charge, CDR → signed callback to a local HTTP server."""

from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.test import Client
from django_tenants.utils import schema_context

from billing.models import Account, Cdr, LedgerEntry
from config.celery_app import app
from sms.models import CallbackAttempt, Message, MessageEvent, SmsClient
from sms.services import callback_signature_valid
from sms.smpp_server import SmscSimulatorThread
from tests.celery_worker import celery_worker

from .conftest import SmsWorld, operator_for_tests, sms_world_make
from .helpers import CallbackServer, held_for_messages, wait_until

SCHEMA = "s1e2e"


@dataclass
class EndToEnd:
    world: SmsWorld
    smsc: SmscSimulatorThread
    dlr: CallbackServer
    http: Client


@pytest.fixture(scope="module")
def e2e(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        with (
            SmscSimulatorThread(receipt_delay=0.2) as smsc,
            CallbackServer() as dlr,
            operator_for_tests(SCHEMA),
        ):
            world = sms_world_make(
                schema=SCHEMA, staff=f"admin@{SCHEMA}.localhost", port=smsc.port, callback_url=dlr.url
            )
            app.control.purge()  # wake-ups queued by earlier runs for schemas that are gone
            with celery_worker():
                yield EndToEnd(world, smsc, dlr, Client(HTTP_HOST=f"{SCHEMA}.localhost"))


def test_a_message_is_submitted_delivered_charged_and_reported(e2e, django_db_blocker):
    world = e2e.world
    with django_db_blocker.unblock():
        # Given a client with a callback URL, when it sends a two-part message
        text = "Hello from the end-to-end test. " * 6  # 192 GSM characters: two parts
        response = e2e.http.post(
            "/api/v1/sms/messages",
            {"to": "+34612345678", "text": text, "client_reference": "e2e-1"},
            content_type="application/json",
            **world.auth,
        )
        assert response.status_code == 201, response.content
        (accepted,) = response.json()["messages"]
        assert accepted["parts"] == 2 and accepted["price"] == "0.100000"
        with schema_context(SCHEMA):
            # Then the simulator receives both parts, its receipts make the message delivered
            message = wait_until(
                lambda: Message.objects.filter(pk=accepted["id"], status="delivered").first(),
                what="the message to be delivered",
            )
            assert len(message.smsc_message_ids) == 2 and message.gateway_id == world.gateway.pk
            statuses = list(MessageEvent.objects.filter(message=message).values_list("status", flat=True))
            assert statuses == ["accepted", "submitted", "delivered"]
            # and it is charged once, as a billing CDR too, and the reservation is settled
            entries = LedgerEntry.objects.filter(idempotency_key=f"sms:charge:{message.pk}")
            assert [e.amount for e in entries] == [Decimal("-0.1")]
            cdr = Cdr.objects.get(source="sms", source_id=str(message.pk))
            assert (cdr.service, cdr.units, cdr.price, cdr.cost) == ("sms", 2, Decimal("0.1"), Decimal("0.04"))
            account = Account.objects.get(pk=world.client.account_id)
            assert held_for_messages(account) == 0
            assert (
                account.balance
                == Decimal("99.9")
                == LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"]
            )
            secret = SmsClient.objects.get(pk=world.client.pk).callback_secret
        assert e2e.smsc.simulator.submits >= 2
        # and the client's callback URL gets the submitted and delivered events, signed
        wait_until(
            lambda: (
                {"submitted", "delivered"} <= {e["status"] for e in e2e.dlr.events() if e["message_id"] == message.pk}
            ),
            what="the callbacks",
        )
        for request in e2e.dlr.requests:
            header = request["headers"]["X-OpenCarrier-Signature"]
            assert callback_signature_valid(secret=secret, header=header, body=request["body"])
            assert not callback_signature_valid(secret="wrong", header=header, body=request["body"])
        with schema_context(SCHEMA):
            attempts = wait_until(
                lambda: list(CallbackAttempt.objects.filter(batch__events__message=message).distinct()),
                what="the callback attempts to be recorded",
            )
            assert {a.status_code for a in attempts} == {200}


@pytest.mark.django_db
def test_a_submitter_without_heartbeat_is_not_alive():
    # (Also makes pytest-django set the test database up when this module runs alone.)
    from sms.kv import runner_alive

    assert not runner_alive("nobody:0:deadbeef")
