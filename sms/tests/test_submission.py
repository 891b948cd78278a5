"""Submission, the database side: claiming charges once, answers, receipts, MO, expiry — without a network."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.models import Account, Cdr, LedgerEntry, Reservation
from sms.models import IncomingMessage, ListEntry, Message, MessageEvent, MessagePart
from sms.services import (
    incoming_record,
    messages_claim,
    messages_expire,
    receipts_record,
    submission_results_record,
)
from sms.services.submission import IncomingIn, MessageOutcome, PartOutcome, ReceiptIn
from sms.tests.helpers import held_for_messages

pytestmark = pytest.mark.django_db


def send(client, world, payload):
    response = client.post("/api/v1/sms/messages", payload, content_type="application/json", **world.auth)
    assert response.status_code == 201, response.content
    return [m["id"] for m in response.json()["messages"]]


def claim(**kwargs):
    return messages_claim(token="test-runner", limit=100, choose=lambda gateways: gateways[0], **kwargs)


def account(world) -> Account:
    return Account.objects.get(pk=world.client.account_id)


def entries_sum(acc) -> Decimal:
    return LedgerEntry.objects.filter(account=acc).aggregate(s=Sum("amount"))["s"] or Decimal(0)


def accept_all(submissions):
    """The SMSC accepted every part: smsc ids 'a0', 'a1'… per message."""
    parts, done = [], []
    for s in submissions:
        for index in range(s.parts):
            smsc_id = f"{s.message_id:x}{index}"
            parts.append(PartOutcome(s.message_id, index, s.gateway_id, 0, smsc_id))
            s.accepted[index] = (smsc_id, s.gateway_id)
        done.append(MessageOutcome(s))
    submission_results_record(parts=parts, completed=done)


def test_claiming_charges_each_message_once_with_a_cdr(demo_client, sms_world, in_schema):
    (message_id,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "a" * 200})  # 2 parts, 0.10
    with in_schema("demo"):
        # When the message is claimed for submission
        (submission,) = claim()
        # Then it is charged 0.10, as a rated SMS CDR, and its share of the reservation is settled
        message = Message.objects.get(pk=message_id)
        assert message.status == "submitting" and message.claimed_by == "test-runner" and message.charged_at
        assert submission.parts == 2 and submission.gateway_id == sms_world.gateway.pk
        cdr = Cdr.objects.get(source="sms", source_id=str(message_id))
        assert (cdr.units, cdr.price, cdr.cost, cdr.status, cdr.account_id) == (
            2,
            Decimal("0.1"),
            Decimal("0.04"),
            "rated",
            sms_world.client.account_id,
        )
        acc = account(sms_world)
        assert acc.balance == Decimal("99.9") == entries_sum(acc) and held_for_messages(acc) == 0
        assert Reservation.objects.get(pk=message.reservation_id).committed_amount == Decimal("0.1")
        # and when a dead submitter's message is claimed again, it is not charged again
        Message.objects.filter(pk=message_id).update(status="accepted", claimed_by="")
        (again,) = claim()
        assert LedgerEntry.objects.filter(idempotency_key=f"sms:charge:{message_id}").count() == 1
        assert account(sms_world).balance == Decimal("99.9")


def test_a_message_past_its_validity_at_claim_expires_and_its_credit_is_released(demo_client, sms_world, in_schema):
    (message_id,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "x", "validity": 60})
    with in_schema("demo"):
        assert claim(now=timezone.now() + timedelta(minutes=2)) == []
        message = Message.objects.get(pk=message_id)
        assert (message.status, message.error_code, message.charged_at) == ("expired", "validity", None)
        acc = account(sms_world)
        assert held_for_messages(acc) == 0 and acc.balance == Decimal("100")
        assert list(MessageEvent.objects.filter(message=message).values_list("status", flat=True)) == [
            "accepted",
            "expired",
        ]


def test_the_periodic_expiry_returns_the_credit_of_queued_messages(demo_client, sms_world, in_schema):
    # Given two queued messages of one request, one valid a minute and one an hour
    send(
        demo_client,
        sms_world,
        {
            "messages": [
                {"to": "+34612345678", "text": "short", "validity": 60},
                {"to": "+34612345679", "text": "long", "validity": 3600},
            ]
        },
    )
    with in_schema("demo"):
        # When the periodic task runs ten minutes later
        assert messages_expire(now=timezone.now() + timedelta(minutes=10)) == 1
        # Then the expired one's 0.05 is no longer held, the other's still is; nothing was charged
        acc = account(sms_world)
        assert held_for_messages(acc) == Decimal("0.05") and acc.balance == Decimal("100")
        assert Message.objects.get(text="short").status == "expired"
        assert Message.objects.get(text="long").status == "accepted"


def test_receipts_match_hex_and_decimal_ids_and_finalise_the_message(demo_client, sms_world, in_schema):
    ids = send(demo_client, sms_world, {"to": ["+34612345678", "+34612345679"], "text": "x"})
    with in_schema("demo"):
        submissions = claim()
        # The SMSC answered hex ids …
        parts = [
            PartOutcome(ids[0], 0, sms_world.gateway.pk, 0, "1A2B"),
            PartOutcome(ids[1], 0, sms_world.gateway.pk, 0, "00ff"),
        ]
        for s, p in zip(sorted(submissions, key=lambda s: s.message_id), parts, strict=True):
            s.accepted[0] = (p.smsc_message_id, p.gateway_id)
        submission_results_record(parts=parts, completed=[MessageOutcome(s) for s in submissions])
        assert set(Message.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"submitted"}
        # … and its receipts give them in decimal (6699 = 0x1a2b) and zero-padded hex
        unmatched = receipts_record(
            gateway_id=sms_world.gateway.pk,
            receipts=[
                ReceiptIn("6699", "DELIVRD", "000", None),
                ReceiptIn("0000FF", "UNDELIV", "001", None),
                ReceiptIn("777", "DELIVRD", "000", None),
            ],
        )
        assert [r.smsc_message_id for r in unmatched] == ["777"]
        delivered, undelivered = (Message.objects.get(pk=pk) for pk in ids)
        assert delivered.status == "delivered" and delivered.error_code == ""
        assert (undelivered.status, undelivered.error_code) == ("undelivered", "001")
        assert undelivered.error_description == "Unknown subscriber (error 001)"
        # A receipt seen twice changes nothing and adds no event
        receipts_record(gateway_id=sms_world.gateway.pk, receipts=[ReceiptIn("6699", "DELIVRD", "000", None)])
        assert MessageEvent.objects.filter(message=delivered, status="delivered").count() == 1


def test_a_multipart_message_is_delivered_when_every_part_is(demo_client, sms_world, in_schema):
    (message_id,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "b" * 300})  # 2 parts
    with in_schema("demo"):
        accept_all(claim())
        first, second = f"{message_id:x}0", f"{message_id:x}1"
        receipts_record(gateway_id=sms_world.gateway.pk, receipts=[ReceiptIn(first, "DELIVRD", "000", None)])
        assert Message.objects.get(pk=message_id).status == "submitted"
        receipts_record(gateway_id=sms_world.gateway.pk, receipts=[ReceiptIn(second, "DELIVRD", "000", None)])
        assert Message.objects.get(pk=message_id).status == "delivered"
        assert MessagePart.objects.filter(message_id=message_id, status="delivered").count() == 2


def test_intermediate_receipts_change_nothing(demo_client, sms_world, in_schema):
    (message_id,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "x"})
    with in_schema("demo"):
        accept_all(claim())
        receipts_record(gateway_id=sms_world.gateway.pk, receipts=[ReceiptIn(f"{message_id:x}0", "ACCEPTD", "", None)])
        assert Message.objects.get(pk=message_id).status == "submitted"


def test_refused_by_every_gateway_is_rejected_and_refunded(demo_client, sms_world, in_schema):
    (message_id,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "x"})
    with in_schema("demo"):
        (submission,) = claim()
        assert account(sms_world).balance == Decimal("99.95")
        submission.tried.add(sms_world.gateway.pk)
        submission_results_record(
            parts=[PartOutcome(message_id, 0, sms_world.gateway.pk, 0x45, None)],
            completed=[MessageOutcome(submission, rejected_status=0x45)],
        )
        message = Message.objects.get(pk=message_id)
        assert (message.status, message.error_code) == ("rejected", "0x00000045")
        assert "every gateway refused" in message.error_description and message.refunded_at
        acc = account(sms_world)
        assert acc.balance == Decimal("100") == entries_sum(acc)
        cdr = Cdr.objects.get(source="sms", source_id=str(message_id))
        assert (cdr.units, cdr.price) == (0, Decimal("0"))


def test_an_incoming_stop_opts_the_number_out_of_the_client_owning_the_sender_id(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        rows = incoming_record(
            gateway_id=sms_world.gateway.pk,
            messages=[IncomingIn("34612345678", "34600000001", "STOP please", 0, 0)],
        )
        assert rows[0].is_stop and rows[0].customer_id == sms_world.client.customer_id
        assert ListEntry.objects.filter(kind="optout", number="+34612345678", client=sms_world.client).exists()
    body = demo_client.post(
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "promo"},
        content_type="application/json",
        **sms_world.auth,
    ).json()
    assert body["messages"][0]["error_code"] == "opted_out"


def test_an_incoming_message_to_an_unknown_number_goes_to_the_client_that_last_texted(
    demo_client, sms_world, in_schema
):
    send(demo_client, sms_world, {"to": "+34612345678", "text": "hello"})
    with in_schema("demo"):
        (row,) = incoming_record(gateway_id=None, messages=[IncomingIn("+34612345678", "4446", "Stop", 0, 0)])
        assert row.customer_id == sms_world.client.customer_id and row.is_stop
        (plain,) = incoming_record(gateway_id=None, messages=[IncomingIn("+34699999999", "4446", "hi", 0, 0)])
        assert plain.customer_id is None and not plain.is_stop
        assert IncomingMessage.objects.count() >= 2
