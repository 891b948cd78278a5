"""Delivery reports to clients: signed JSON POSTs to a real local HTTP server, retried with back-off."""

import json
import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from sms.models import CallbackAttempt, CallbackBatch, ListEntry
from sms.services import callback_sign, callback_signature_valid, callbacks_send_due

from .helpers import CallbackServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def blacklisted(in_schema):
    with in_schema("demo"):
        ListEntry.objects.create(kind="blacklist", number="+34612345678")


def refused_message(client, world, **extra) -> int:
    """A message refused at once: its `rejected` event is the first one a callback carries."""
    response = client.post(
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "x", **extra},
        content_type="application/json",
        **world.auth,
    )
    return response.json()["messages"][0]["id"]


def set_callback(world, in_schema, url):
    with in_schema("demo"):
        world.client.callback_url = url
        world.client.save()


def test_the_post_is_signed_json_and_a_failure_is_retried_with_back_off(demo_client, sms_world, in_schema, blacklisted):
    with CallbackServer(statuses=[500, 503]) as server:
        set_callback(sms_world, in_schema, server.url)
        message_id = refused_message(demo_client, sms_world, client_reference="ref-9")
        now = timezone.now()
        with in_schema("demo"):
            # First try: 500 → retried after the base delay (15 s), not before
            assert callbacks_send_due(now=now) == 1
            assert callbacks_send_due(now=now + timedelta(seconds=10)) == 0
            # Second: 503 → after twice the delay; third: 200 → delivered
            assert callbacks_send_due(now=now + timedelta(seconds=16)) == 1
            assert callbacks_send_due(now=now + timedelta(seconds=40)) == 0
            assert callbacks_send_due(now=now + timedelta(seconds=50)) == 1
            batch = CallbackBatch.objects.get(events__message_id=message_id)
            assert (batch.state, batch.attempts, batch.last_status_code) == ("delivered", 3, 200)
            attempts = list(CallbackAttempt.objects.filter(batch=batch).order_by("number"))
            assert [a.status_code for a in attempts] == [500, 503, 200]
            delays = [(a.next_retry_at - a.created_at).total_seconds() for a in attempts[:2]]
            assert [round(d) for d in delays] == [15, 30] and attempts[2].next_retry_at is None
            secret = type(sms_world.client).objects.get(pk=sms_world.client.pk).callback_secret
    (first, *_) = server.requests
    assert first["headers"]["Content-Type"] == "application/json"
    assert callback_signature_valid(
        secret=secret, header=first["headers"]["X-OpenCarrier-Signature"], body=first["body"]
    )
    (event,) = json.loads(first["body"])["events"]
    assert event["message_id"] == message_id and event["status"] == "rejected"
    assert event["error_code"] == "blacklisted" and event["client_reference"] == "ref-9"
    # and every attempt shows with the message in the API
    detail = demo_client.get(f"/api/v1/sms/messages/{message_id}", **sms_world.auth).json()
    rejected = detail["events"][-1]
    assert rejected["callback_state"] == "delivered"
    assert [a["status_code"] for a in rejected["callback_attempts"]] == [500, 503, 200]


def test_a_message_callback_url_overrides_the_clients(demo_client, sms_world, in_schema, blacklisted):
    with CallbackServer() as client_server, CallbackServer() as message_server:
        set_callback(sms_world, in_schema, client_server.url)
        refused_message(demo_client, sms_world, callback_url=message_server.url)
        with in_schema("demo"):
            callbacks_send_due()
    assert len(message_server.requests) == 1 and client_server.requests == []


def test_an_unreachable_url_is_recorded_and_given_up_after_the_last_attempt(
    demo_client, sms_world, in_schema, blacklisted, settings
):
    settings.SMS_CALLBACK_MAX_ATTEMPTS = 2
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    set_callback(sms_world, in_schema, f"http://127.0.0.1:{port}/dlr")
    message_id = refused_message(demo_client, sms_world)
    now = timezone.now()
    with in_schema("demo"):
        callbacks_send_due(now=now)
        callbacks_send_due(now=now + timedelta(hours=1))
        batch = CallbackBatch.objects.get(events__message_id=message_id)
        assert (batch.state, batch.attempts) == ("failed", 2)
        errors = list(CallbackAttempt.objects.filter(batch=batch).values_list("status_code", "error"))
        assert all(code is None and "Connection" in error for code, error in errors)
        assert callbacks_send_due(now=now + timedelta(days=1)) == 0


def test_no_callback_url_no_batch(demo_client, sms_world, in_schema, blacklisted):
    refused_message(demo_client, sms_world)
    with in_schema("demo"):
        assert not CallbackBatch.objects.exists()


def test_signature_checks_refuse_a_changed_body_another_secret_and_an_old_timestamp():
    body = b'{"events":[]}'
    header = callback_sign(secret="s3", timestamp=1_700_000_000, body=body)
    assert callback_signature_valid(secret="s3", header=header, body=body, now=1_700_000_010)
    assert not callback_signature_valid(secret="s3", header=header, body=body + b" ", now=1_700_000_010)
    assert not callback_signature_valid(secret="other", header=header, body=body, now=1_700_000_010)
    assert not callback_signature_valid(secret="s3", header=header, body=body, now=1_700_009_999)
    assert not callback_signature_valid(secret="s3", header="garbage", body=body)
