"""Filters before anything is sent: each refusal is stored as `rejected` with its own reason, and not charged."""

import functools
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core import mail

from billing.models import Account
from core.live import live_group
from sms.models import FraudLimit, ListEntry, Message, MessageEvent, SpamRule
from sms.services import fraud_alert_send
from sms.tests.helpers import held_for_messages

pytestmark = pytest.mark.django_db


def send(client, world, payload, auth=None):
    response = client.post("/api/v1/sms/messages", payload, content_type="application/json", **(auth or world.auth))
    assert response.status_code == 201, response.content
    return response.json()


def statuses(body) -> list[tuple[str, str]]:
    return [(m["status"], m["error_code"]) for m in body["messages"]]


def held(in_schema, world) -> Decimal:
    with in_schema("demo"):
        return held_for_messages(Account.objects.get(pk=world.client.account_id))


@pytest.mark.parametrize(("kind", "code"), [("blacklist", "blacklisted"), ("dnd", "dnd"), ("optout", "opted_out")])
def test_operator_wide_lists_refuse_the_number_for_every_client(demo_client, sms_world, in_schema, kind, code):
    with in_schema("demo"):
        ListEntry.objects.create(kind=kind, number="+34612345678")
    body = send(demo_client, sms_world, {"to": ["+34612345678", "+34612345679"], "text": "hello"})
    assert statuses(body) == [("rejected", code), ("accepted", "")]
    assert body["messages"][0]["price"] == "0" and body["total_price"] == "0.050000"
    assert held(in_schema, sms_world) == Decimal("0.05")  # only the accepted one is held
    other = send(demo_client, sms_world, {"to": "+34612345678", "text": "hi", "from": "OTHER"}, sms_world.other_auth)
    assert statuses(other) == [("rejected", code)]


def test_a_clients_opt_out_binds_that_client_only(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        ListEntry.objects.create(kind="optout", number="+34612345678", client=sms_world.client)
    mine = send(demo_client, sms_world, {"to": "+34612345678", "text": "promo"})
    theirs = send(
        demo_client, sms_world, {"to": "+34612345678", "text": "promo", "from": "OTHER"}, sms_world.other_auth
    )
    assert statuses(mine) == [("rejected", "opted_out")]
    assert statuses(theirs) == [("accepted", "")]


def test_a_rejected_message_is_stored_with_its_reason_and_event(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        ListEntry.objects.create(kind="blacklist", number="+34612345678")
    body = send(demo_client, sms_world, {"to": "+34612345678", "text": "x"})
    with in_schema("demo"):
        message = Message.objects.get(pk=body["messages"][0]["id"])
        assert (message.status, message.error_code, message.price) == ("rejected", "blacklisted", 0)
        assert "blacklisted" in message.error_description and message.reservation_id is None
        event = MessageEvent.objects.get(message=message)
        assert (event.status, event.error_code) == ("rejected", "blacklisted")


def test_spam_keywords_match_whole_words_in_any_case(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        SpamRule.objects.create(name="Free money", kind="keyword", pattern="free money")
    body = send(
        demo_client,
        sms_world,
        {
            "messages": [
                {"to": "+34612345678", "text": "Get FREE   money now"},
                {"to": "+34612345679", "text": "freedom money"},
            ]
        },
    )
    assert statuses(body) == [("rejected", "spam"), ("accepted", "")]
    assert "Free money" in body["messages"][0]["error_description"]


def test_spam_regular_expressions(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        SpamRule.objects.create(name="Short links", kind="regex", pattern=r"bit\.ly/\w+")
    body = send(demo_client, sms_world, {"to": ["+34612345678"], "text": "win at BIT.LY/abc"})
    assert statuses(body) == [("rejected", "spam")]


def test_duplicates_within_the_window_are_refused(demo_client, sms_world, in_schema):
    # Given a client with a 10-minute duplicate window
    with in_schema("demo"):
        sms_world.client.duplicate_window_s = 600
        sms_world.client.save()
    # When the same text goes to the same number twice in a batch, and again in a later request
    first = send(demo_client, sms_world, {"to": ["+34612345678", "+34612345678", "+34612345679"], "text": "Code 1"})
    again = send(demo_client, sms_world, {"to": "+34612345678", "text": "Code 1"})
    other_text = send(demo_client, sms_world, {"to": "+34612345678", "text": "Code 2"})
    # Then only the first of each (client, number, text) goes
    assert statuses(first) == [("accepted", ""), ("rejected", "duplicate"), ("accepted", "")]
    assert statuses(again) == [("rejected", "duplicate")]
    assert statuses(other_text) == [("accepted", "")]


def test_duplicates_are_allowed_once_the_window_has_passed(demo_client, sms_world, in_schema):
    from datetime import timedelta

    from django.utils import timezone

    with in_schema("demo"):
        sms_world.client.duplicate_window_s = 60
        sms_world.client.save()
    first = send(demo_client, sms_world, {"to": "+34612345678", "text": "Code 1"})
    with in_schema("demo"):
        Message.objects.filter(pk=first["messages"][0]["id"]).update(created_at=timezone.now() - timedelta(minutes=2))
    assert statuses(send(demo_client, sms_world, {"to": "+34612345678", "text": "Code 1"})) == [("accepted", "")]


def test_a_count_limit_per_client_refuses_beyond_it(
    demo_client, sms_world, in_schema, django_capture_on_commit_callbacks
):
    with in_schema("demo"):
        FraudLimit.objects.create(name="3 an hour", scope="client", metric="count", period="hour", limit=3)
    with django_capture_on_commit_callbacks(execute=False) as alerts:
        first = send(demo_client, sms_world, {"to": ["+34612345678", "+34612345679"], "text": "a"})
        second = send(demo_client, sms_world, {"to": ["+34612345670", "+34612345671"], "text": "b"})
        third = send(demo_client, sms_world, {"to": "+34612345672", "text": "c"})
    assert statuses(first) == [("accepted", "")] * 2
    assert statuses(second) == [("accepted", ""), ("rejected", "fraud_limit")]
    assert statuses(third) == [("rejected", "fraud_limit")]
    assert "3 an hour" in third["messages"][0]["error_description"]
    # The operator is alerted once for the period, not once per refused message
    queued = [c.keywords["kwargs"] for c in alerts if isinstance(c, functools.partial)]
    assert queued == [{"limit_id": queued[0]["limit_id"], "customer_id": sms_world.client.customer_id, "scope": "*"}]


def test_an_amount_limit_per_destination_operator(demo_client, sms_world, in_schema):
    # Given at most 0.10 an hour towards each destination operator (0.05 a message here)
    with in_schema("demo"):
        FraudLimit.objects.create(
            name="0.10 per network", scope="destination_operator", metric="amount", period="hour", limit="0.10"
        )
    spanish = ["+34612345678", "+34612345679", "+34612345670"]  # one Spanish operator (phonenumbers)
    body = send(demo_client, sms_world, {"to": [*spanish, "+447400123456"], "text": "x"})
    assert statuses(body) == [("accepted", ""), ("accepted", ""), ("rejected", "fraud_limit"), ("accepted", "")]


def test_a_count_limit_per_sender_counts_each_sender_apart(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        FraudLimit.objects.create(
            name="1 per sender", scope="sender", metric="count", period="minute", limit=1, client=sms_world.client
        )
    a = send(demo_client, sms_world, {"to": ["+34612345678", "+34612345679"], "text": "x", "from": "TEXTCO"})
    b = send(demo_client, sms_world, {"to": "+34612345670", "text": "x", "from": "+34600000001"})
    assert statuses(a) == [("accepted", ""), ("rejected", "fraud_limit")]
    assert statuses(b) == [("accepted", "")]


def test_a_refused_request_gives_its_fraud_count_back(demo_client, sms_world, in_schema):
    # Given a count limit of 2 and a client with credit for one message only
    with in_schema("demo"):
        FraudLimit.objects.create(name="2 a day", scope="client", metric="count", period="day", limit=2)
        Account.objects.filter(pk=sms_world.client.account_id).update(balance=Decimal("0.05"))
    # When a request for two is refused for credit (402), the next single message still fits the limit
    refused = demo_client.post(
        "/api/v1/sms/messages",
        {"to": ["+34612345678", "+34612345679"], "text": "x"},
        content_type="application/json",
        **sms_world.auth,
    )
    assert refused.status_code == 402
    assert statuses(send(demo_client, sms_world, {"to": "+34612345678", "text": "x"})) == [("accepted", "")]


def test_the_fraud_alert_reaches_staff_by_email_and_live_event(sms_world, in_schema):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(live_group("demo"), channel)
    with in_schema("demo"):
        limit = FraudLimit.objects.create(name="Burst", scope="client", metric="count", period="minute", limit=10)
        fraud_alert_send(limit_id=limit.pk, customer_id=sms_world.client.customer_id, scope="*")
    event = async_to_sync(layer.receive)(channel)
    while event["topic"] != "sms.fraud_limit":
        event = async_to_sync(layer.receive)(channel)
    assert event["payload"]["limit"] == "Burst" and event["payload"]["customer"] == sms_world.client.customer.name
    (email,) = mail.outbox
    assert "Burst" in email.subject and "admin@demo.localhost" in email.to
    assert "boss@acme.example" not in email.to  # client logins are not the operator's staff
