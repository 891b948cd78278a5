"""POST /api/v1/sms/messages and GET /api/v1/sms/send: acceptance, validation, credit, admission."""

from decimal import Decimal

import pytest
from django.conf import settings

from billing.models import Account, Reservation
from sms.models import Message, MessageEvent
from sms.tests.helpers import held_for_messages

pytestmark = pytest.mark.django_db


def post(client, world, payload, **extra):
    return client.post("/api/v1/sms/messages", payload, content_type="application/json", **{**world.auth, **extra})


def test_one_message_is_accepted_priced_and_reserved(demo_client, sms_world, in_schema):
    # Given a client with 100 EUR and a 0.05/part route
    # When it sends one GSM message
    response = post(demo_client, sms_world, {"to": "+34 612 34 56 78", "from": "TEXTCO", "text": "Your code is 1234"})
    # Then it is accepted: one part, 0.05, and 0.05 is held on its account
    assert response.status_code == 201, response.content
    body = response.json()
    (message,) = body["messages"]
    assert message["status"] == "accepted" and message["to"] == "+34612345678"
    assert message["encoding"] == "gsm7" and message["parts"] == 1 and message["price"] == "0.050000"
    assert body["total_price"] == "0.050000" and body["accepted"] == 1 and body["rejected"] == 0
    with in_schema("demo"):
        stored = Message.objects.get(pk=message["id"])
        assert stored.country == "ES" and stored.mobile_operator
        assert stored.route_id == sms_world.route.pk and stored.cost == Decimal("0.02")
        account = Account.objects.get(pk=sms_world.client.account_id)
        assert held_for_messages(account) == Decimal("0.05") and account.balance == Decimal("100")
        # drawn from a credit grant of BILLING_GRANT_USES requests' worth (billing.services.grants)
        grant = Reservation.objects.get(pk=stored.reservation_id)
        assert grant.amount == Decimal("0.05") * settings.BILLING_GRANT_USES == account.reserved
        assert grant.amount - grant.undrawn == Decimal("0.05")
        assert list(MessageEvent.objects.filter(message=stored).values_list("status", flat=True)) == ["accepted"]


def test_one_text_to_many_numbers_is_one_reservation(demo_client, sms_world, in_schema):
    response = post(demo_client, sms_world, {"to": ["+34612345678", "+34612345679", "+447400123456"], "text": "Hi"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["accepted"] == 3 and body["total_price"] == "0.150000"
    assert [m["from"] for m in body["messages"]] == ["TEXTCO"] * 3  # the client's first sender id by default
    with in_schema("demo"):
        assert {m.reservation_id for m in Message.objects.filter(request_id=body["request_id"])} != {None}
        assert Message.objects.filter(request_id=body["request_id"]).values("reservation_id").distinct().count() == 1


def test_unicode_and_long_texts_are_split_and_priced_per_part(demo_client, sms_world):
    response = post(
        demo_client,
        sms_world,
        {"messages": [{"to": "+34612345678", "text": "Привет " * 11}, {"to": "+34612345679", "text": "a" * 161}]},
    )
    cyrillic, long_gsm = response.json()["messages"]
    assert (cyrillic["encoding"], cyrillic["parts"], cyrillic["length"]) == ("ucs2", 2, 77)
    assert (long_gsm["encoding"], long_gsm["parts"], long_gsm["price"]) == ("gsm7", 2, "0.100000")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"to": "+1", "text": "x"}, "to"),
        ({"to": "hello", "text": "x"}, "to"),
        ({"to": "+34612345678", "text": ""}, "text"),
        ({"to": "+34612345678", "text": "   "}, "text"),
        ({"to": "+34612345678"}, "text"),
        ({"text": "x"}, "to"),
        ({"to": "+34612345678", "text": "x", "from": "NOTMINE"}, "from"),
        ({"to": "+34612345678", "text": "x", "from": "much-too-long-sender"}, "from"),
        ({"to": "+34612345678", "text": "x", "validity": 5}, "validity"),
        ({"to": "+34612345678", "text": "x", "scheduled_at": "tomorrow"}, "scheduled_at"),
        ({"to": "+34612345678", "text": "x", "callback_url": "ftp://x"}, "callback_url"),
        ({"to": "+34612345678", "text": "x", "client_reference": "r" * 101}, "client_reference"),
    ],
)
def test_invalid_fields_are_named(demo_client, sms_world, payload, field):
    response = post(demo_client, sms_world, payload)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error


def test_batch_errors_name_each_position_and_nothing_is_written_or_held(demo_client, sms_world, in_schema):
    # Given a batch with bad numbers at positions 1 and 3 and an empty text at 2
    payload = {
        "messages": [
            {"to": "+34612345678", "text": "ok"},
            {"to": "+999", "text": "bad number"},
            {"to": "+34612345679", "text": ""},
            {"to": "not a number", "text": "bad"},
        ]
    }
    response = post(demo_client, sms_world, payload)
    # Then every error is named by position and field
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"messages[1].to", "messages[2].text", "messages[3].to"}
    # and nothing of the batch is stored or reserved
    with in_schema("demo"):
        assert not Message.objects.filter(customer=sms_world.client.customer).exists()
        assert Account.objects.get(pk=sms_world.client.account_id).reserved == 0


def test_a_list_of_numbers_names_the_bad_ones_by_position(demo_client, sms_world):
    response = post(demo_client, sms_world, {"to": ["+34612345678", "12", "+34612345679"], "text": "x"})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["to[1]"]


def test_more_than_10000_recipients_is_refused_whole(demo_client, sms_world):
    response = post(demo_client, sms_world, {"to": ["+34612345678"] * 10_001, "text": "x"})
    assert response.status_code == 400
    assert "10000" in response.json()["error"]["fields"]["to"][0]


def test_not_enough_credit_is_402_with_the_balance_and_stores_nothing(demo_client, sms_world, in_schema):
    # Given 100 EUR at 0.05 per part, when the client asks for 2,001 messages (100.05)
    numbers = [f"+346123{n:05d}" for n in range(2001)]
    response = post(demo_client, sms_world, {"to": numbers, "text": "x"})
    # Then 402 says what it has and what it needed; nothing is stored or held
    assert response.status_code == 402, response.content
    error = response.json()["error"]
    assert error["code"] == "insufficient_credit"
    assert (error["balance"], error["available"], error["needed"]) == ("100.000000", "100.000000", "100.050000")
    with in_schema("demo"):
        assert not Message.objects.filter(customer=sms_world.client.customer).exists()
        assert Account.objects.get(pk=sms_world.client.account_id).reserved == 0


def test_staff_cannot_send_as_nobody(demo_client, sms_world):
    response = demo_client.post(
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "x"},
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert response.status_code == 403 and response.json()["error"]["code"] == "not_sms_client"


def test_calls_from_an_address_outside_the_allow_list_are_refused(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        sms_world.client.allowed_ips = ["203.0.113.0/24"]
        sms_world.client.save()
    payload = {"to": "+34612345678", "text": "x"}
    refused = post(demo_client, sms_world, payload)
    allowed = post(demo_client, sms_world, payload, REMOTE_ADDR="203.0.113.7")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
    assert allowed.status_code == 201


def test_over_the_clients_tps_is_429_with_retry_after(demo_client, sms_world, in_schema):
    # Given a client allowed 5 messages per second
    with in_schema("demo"):
        sms_world.client.tps_limit = 5
        sms_world.client.save()
    # When it sends 6 at once, then 6 more
    first = post(demo_client, sms_world, {"to": ["+34612345678"] * 6, "text": "x"})
    second = post(demo_client, sms_world, {"to": ["+34612345678"] * 6, "text": "y"})
    # Then the first batch is admitted (a second's worth of burst) and the next must wait
    assert first.status_code == 201
    assert second.status_code == 429 and second.json()["error"]["code"] == "throttled"
    assert int(second["Retry-After"]) >= 1


def test_a_full_queue_pushes_back_with_429(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        sms_world.client.max_queued = 3
        sms_world.client.save()
    first = post(demo_client, sms_world, {"to": ["+34612345678"] * 3, "text": "x"})
    assert first.status_code == 201
    from sms.kv import key, kv

    kv().delete(key("demo", "queue-depth"))  # the depth is cached for a second: count again now
    second = post(demo_client, sms_world, {"to": "+34612345678", "text": "y"})
    assert second.status_code == 429 and second.json()["error"]["code"] == "queue_full"
    assert second["Retry-After"] == "1"


def test_scheduled_messages_wait_and_validity_counts_from_the_schedule(demo_client, sms_world, in_schema):
    from datetime import timedelta

    from django.utils import timezone

    later = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    response = post(
        demo_client,
        sms_world,
        {"to": "+34612345678", "text": "later", "scheduled_at": later.isoformat(), "validity": 3600},
    )
    (message,) = response.json()["messages"]
    assert message["scheduled_at"] == later.isoformat()
    assert message["valid_until"] == (later + timedelta(hours=1)).isoformat()
    far = post(demo_client, sms_world, {"to": "+34612345678", "text": "x", "scheduled_at": "2099-01-01T09:00:00Z"})
    assert far.status_code == 400 and "scheduled_at" in far.json()["error"]["fields"]
    with in_schema("demo"):
        assert not Message.objects.due(timezone.now()).filter(pk=message["id"]).exists()


def test_legacy_get_send_with_the_key_in_the_query(demo_client, sms_world):
    response = demo_client.get(
        "/api/v1/sms/send", {"to": "+34612345678,+34612345679", "text": "by GET", "api_key": sms_world.key}
    )
    assert response.status_code == 201, response.content
    assert [m["to"] for m in response.json()["messages"]] == ["+34612345678", "+34612345679"]


def test_legacy_get_send_validates_like_post(demo_client, sms_world):
    response = demo_client.get("/api/v1/sms/send", {"to": "+34612345678", "api_key": sms_world.key})
    assert response.status_code == 400 and "text" in response.json()["error"]["fields"]
    assert (
        demo_client.get("/api/v1/sms/send", {"to": "+34612345678", "text": "x", "api_key": "nope"}).status_code == 401
    )


def test_another_operators_key_cannot_send(demo_client, sms_world):
    response = demo_client.post(
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "x"},
        content_type="application/json",
        **sms_world.rival_auth,
    )
    assert response.status_code == 401
