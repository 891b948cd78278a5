"""Callback URLs cannot reach the platform's own network (SSRF): refused at input and again at send time.

The tests' receivers listen on 127.0.0.1, so test settings allow private addresses; these tests turn the guard on.
"""

import socket
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from sms.models import CallbackAttempt, CallbackBatch, ListEntry
from sms.services import callbacks
from sms.services.callbacks import callback_url_problem, callbacks_send_due

from .helpers import CallbackServer

pytestmark = pytest.mark.django_db

guarded = override_settings(SMS_CALLBACK_ALLOW_PRIVATE=False)

INTERNAL_URLS = [
    "http://127.0.0.1:8080/dlr",
    "http://127.1/dlr",  # the resolver's short forms of loopback
    "http://2130706433/dlr",
    "http://0x7f.0.0.1/dlr",
    "http://localhost/dlr",
    "http://api.localhost/dlr",
    "http://10.0.0.5/dlr",
    "http://192.168.1.1/dlr",
    "http://172.16.3.4/dlr",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.1.1/dlr",
    "http://0.0.0.0:8000/dlr",
    "http://224.0.0.1/dlr",
    "http://[::1]/dlr",
    "http://[::]/dlr",
    "http://[fe80::1]/dlr",
    "http://[fd00::1]/dlr",
    "http://[::ffff:127.0.0.1]/dlr",
    "http://[::ffff:a9fe:a9fe]/dlr",  # IPv4-mapped 169.254.169.254, in hex
    "http://[fec0::1]/dlr",  # IPv6 site-local: deprecated, still routed inside some networks; Python calls it global
    "http://[64:ff9b::a9fe:a9fe]/dlr",  # NAT64 form of 169.254.169.254
]
MALFORMED_URLS = ["ftp://hooks.example.com/dlr", "http://user:pw@hooks.example.com/dlr", "file:///etc/passwd"]


@pytest.fixture
def blacklisted(in_schema):
    with in_schema("demo"):
        ListEntry.objects.create(kind="blacklist", number="+34612345678")


def send(client, world, **fields):
    return client.post(
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "x", **fields},
        content_type="application/json",
        **world.auth,
    )


# --- at input -------------------------------------------------------------------------------------------------------


@guarded
@pytest.mark.parametrize("url", INTERNAL_URLS + MALFORMED_URLS)
def test_the_guard_names_the_problem(url):
    assert callback_url_problem(url)


@guarded
@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/dlr?x=1", "http://203.0.114.9:8080/dlr", "https://[2a00::1]/"]
)
def test_public_urls_pass(url):
    assert callback_url_problem(url) is None


@guarded
def test_a_message_callback_url_to_the_internal_network_is_a_400_naming_the_field(demo_client, sms_world):
    response = send(demo_client, sms_world, callback_url="http://169.254.169.254/latest/meta-data/")
    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == ["callback_url"]
    assert "own network" in response.json()["error"]["fields"]["callback_url"][0]


@guarded
def test_a_per_message_callback_url_names_its_position(demo_client, sms_world):
    messages = [
        {"to": "+34612345678", "text": "a", "callback_url": "https://hooks.example.com/dlr"},
        {"to": "+34612345679", "text": "b", "callback_url": "http://[::ffff:127.0.0.1]:9000/"},
    ]
    response = send(demo_client, sms_world, messages=messages)
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["messages[1].callback_url"]


@guarded
def test_credentials_in_a_callback_url_are_refused(demo_client, sms_world):
    response = send(demo_client, sms_world, callback_url="https://me:secret@hooks.example.com/dlr")
    assert response.status_code == 400 and "credentials" in response.json()["error"]["fields"]["callback_url"][0]


def test_with_private_addresses_allowed_local_receivers_are_accepted(demo_client, sms_world):
    response = send(demo_client, sms_world, callback_url="http://127.0.0.1:9/dlr")
    assert response.status_code == 201, response.content


@guarded
@pytest.mark.parametrize("url", ["http://localhost:8000/dlr", "http://10.1.2.3/dlr", "http://a:b@hooks.example.com/"])
def test_staff_cannot_give_a_client_an_internal_callback_url(demo_client, sms_world, url):
    response = demo_client.patch(
        f"/api/v1/sms/clients/{sms_world.client.pk}",
        {"callback_url": url},
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == ["callback_url"]


@guarded
def test_staff_give_a_client_a_public_callback_url_and_create_none_internal(demo_client, sms_world):
    response = demo_client.patch(
        f"/api/v1/sms/clients/{sms_world.client.pk}",
        {"callback_url": "https://hooks.example.com/dlr"},
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert response.status_code == 200 and response.json()["callback_url"] == "https://hooks.example.com/dlr"
    created = demo_client.post(
        "/api/v1/sms/clients",
        {"name": "Sneaky", "callback_url": "http://[::1]:6379/"},
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert created.status_code == 400 and list(created.json()["error"]["fields"]) == ["callback_url"]


# --- at send time -------------------------------------------------------------------------------------------------


def refused_with_callback(client, world, in_schema, url) -> CallbackBatch:
    """A stored client callback URL (set before the guard, or whose DNS changed) and a message to report."""
    with in_schema("demo"):
        world.client.callback_url = url
        world.client.save()
    message_id = send(client, world).json()["messages"][0]["id"]
    with in_schema("demo"):
        return CallbackBatch.objects.get(events__message_id=message_id)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]"])
def test_a_host_resolving_to_loopback_is_not_posted_to_and_fails_at_once(
    demo_client, sms_world, in_schema, blacklisted, host
):
    with CallbackServer() as server:
        port = server.server.server_address[1]
        batch = refused_with_callback(demo_client, sms_world, in_schema, f"http://{host}:{port}/dlr")
        with guarded, in_schema("demo"):
            assert callbacks_send_due(now=timezone.now()) == 1
            # not retried: nothing is due later, even past every back-off
            assert callbacks_send_due(now=timezone.now() + timedelta(days=2)) == 0
            batch.refresh_from_db()
            (attempt,) = CallbackAttempt.objects.filter(batch=batch)
    assert server.requests == []
    assert (batch.state, batch.attempts, batch.last_status_code) == ("failed", 1, None)
    assert attempt.status_code is None and attempt.next_retry_at is None
    assert "Refused by the platform" in attempt.error and "127.0.0.1" in attempt.error


def test_with_private_addresses_allowed_the_name_is_resolved_and_posted_to(
    demo_client, sms_world, in_schema, blacklisted
):
    with CallbackServer() as server:
        port = server.server.server_address[1]
        batch = refused_with_callback(demo_client, sms_world, in_schema, f"http://localhost:{port}/dlr")
        with in_schema("demo"):
            assert callbacks_send_due(now=timezone.now()) == 1
            batch.refresh_from_db()
    assert batch.state == "delivered"
    (request,) = server.requests
    assert request["headers"]["Host"] == f"localhost:{port}"


def test_the_connection_goes_to_the_address_that_was_checked(
    demo_client, sms_world, in_schema, blacklisted, monkeypatch
):
    """DNS rebinding: the name answers a public address when checked, then loopback; only the first is used."""
    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def rebinding_dns(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = "8.8.8.8" if len(lookups) == 1 else "127.0.0.1"  # public when checked, loopback after
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    monkeypatch.setattr(callbacks, "TIMEOUT_S", 1.0)
    with CallbackServer() as server:
        port = server.server.server_address[1]
        batch = refused_with_callback(demo_client, sms_world, in_schema, f"http://rebind.test:{port}/dlr")
        with guarded, in_schema("demo"):
            callbacks_send_due(now=timezone.now())
            batch.refresh_from_db()
            (attempt,) = CallbackAttempt.objects.filter(batch=batch)
    assert server.requests == []  # never reached loopback
    assert lookups == ["rebind.test"]  # resolved once, and that answer was connected to
    assert batch.state == "pending" and batch.attempts == 1 and attempt.error  # a network error: retried later
