"""Client IP allow-lists behind proxies: X-Forwarded-For counts only when the peer is a trusted proxy.

Both send paths are covered: the DRF views (Django test client) and the lean ASGI path (the real ASGI application,
whose threads need committed rows: an operator of its own).
"""

import gc
import ipaddress
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.db import connection
from django.test import override_settings
from django_tenants.utils import schema_context

from config.asgi import application
from config.celery_app import app as celery_app
from core.net import address_is_internal, client_ip, parse_ip
from sms.api.asgi import senders_stop
from sms.models import SmsClient

from .conftest import operator_for_tests, sms_world_make

ALLOWED = "203.0.113.0/24"
PROXIES = ["10.0.0.0/8", "2001:db8:ffff::/48"]


# --- core.net.client_ip -------------------------------------------------------------------------------------------


def meta(peer, forwarded=None):
    values = {"REMOTE_ADDR": peer}
    if forwarded is not None:
        values["HTTP_X_FORWARDED_FOR"] = forwarded
    return values


def scope(peer, *forwarded):
    return {
        "type": "http",
        "client": (peer, 40000) if peer else None,
        "headers": [(b"host", b"x"), *((b"x-forwarded-for", f.encode()) for f in forwarded)],
    }


def test_without_trusted_proxies_the_forwarded_header_is_ignored():
    with override_settings(TRUSTED_PROXIES=[]):
        assert client_ip(meta("198.51.100.9", "203.0.113.7")) == "198.51.100.9"
        assert client_ip(scope("198.51.100.9", "203.0.113.7")) == "198.51.100.9"


@override_settings(TRUSTED_PROXIES=PROXIES)
def test_a_spoofed_header_from_an_untrusted_peer_is_ignored():
    assert client_ip(meta("198.51.100.9", "203.0.113.7")) == "198.51.100.9"
    assert client_ip(scope("198.51.100.9", "203.0.113.7")) == "198.51.100.9"


@override_settings(TRUSTED_PROXIES=PROXIES)
def test_through_trusted_proxies_the_right_most_untrusted_address_is_the_client():
    # client 203.0.113.7 -> proxy 10.0.0.5 -> proxy 10.0.0.6 (the peer); the client prepended a lie.
    assert client_ip(meta("10.0.0.6", "192.0.2.66, 203.0.113.7, 10.0.0.5")) == "203.0.113.7"
    # the same over two headers (ASGI keeps them apart), ports and IPv6 brackets as proxies write them
    assert client_ip(scope("10.0.0.6", "192.0.2.66, 203.0.113.7:5555", "10.0.0.5")) == "203.0.113.7"
    assert client_ip(scope("2001:db8:ffff::1", "[2001:db8:1::7]:443")) == "2001:db8:1::7"
    # a lie appended after the real address is still left of what the trusted proxy wrote
    assert client_ip(meta("10.0.0.6", "203.0.113.7, 198.51.100.1")) == "198.51.100.1"


@override_settings(TRUSTED_PROXIES=PROXIES)
def test_garbage_where_the_client_should_be_gives_no_address():
    assert client_ip(meta("10.0.0.6", "not-an-ip")) is None
    assert client_ip(meta("10.0.0.6", "10.0.0.9, 10.0.0.5")) == "10.0.0.9"  # all proxies: the origin


@override_settings(TRUSTED_PROXIES=PROXIES)
def test_a_trusted_proxy_that_forwards_no_client_gives_no_address():
    # the proxy's own address is not the client's: an allow-list holding the proxy's network must not pass it
    assert client_ip(meta("10.0.0.6")) is None
    assert client_ip(meta("10.0.0.6", "")) is None and client_ip(meta("10.0.0.6", " , ")) is None
    assert client_ip(scope("10.0.0.6")) is None and client_ip(scope("2001:db8:ffff::1", "")) is None
    assert client_ip(meta("198.51.100.9")) == "198.51.100.9"  # an untrusted peer is still the client itself


def test_ipv4_mapped_addresses_read_as_ipv4():
    assert str(parse_ip("::ffff:203.0.113.7")) == "203.0.113.7"
    with override_settings(TRUSTED_PROXIES=["10.0.0.0/8"]):
        assert client_ip(scope("::ffff:10.0.0.6", "203.0.113.7")) == "203.0.113.7"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
        "2001:db8::1",  # documentation
    ],
)
def test_internal_addresses_are_recognised(address):
    assert address_is_internal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "203.0.114.1", "2a00:1450:4001:80b::200e", "64:ff9b::808:808"])
def test_public_addresses_are_not_internal(address):
    assert not address_is_internal(ipaddress.ip_address(address))


# --- the DRF send path -----------------------------------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db


def post(client, world, **extra):
    return client.post(
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "x"},
        content_type="application/json",
        **{**world.auth, **extra},
    )


@pytest.fixture
def restricted(sms_world, in_schema):
    with in_schema("demo"):
        sms_world.client.allowed_ips = [ALLOWED]
        sms_world.client.save()
    return sms_world


@pytestmark_db
def test_drf_a_spoofed_forwarded_for_from_an_untrusted_peer_is_refused(demo_client, restricted):
    with override_settings(TRUSTED_PROXIES=PROXIES):
        response = post(demo_client, restricted, REMOTE_ADDR="198.51.100.9", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert response.status_code == 403 and response.json()["error"]["code"] == "ip_not_allowed"
    assert "198.51.100.9" in response.json()["error"]["message"]


@pytestmark_db
def test_drf_through_a_trusted_proxy_the_real_client_ip_is_checked(demo_client, restricted):
    with override_settings(TRUSTED_PROXIES=PROXIES):
        allowed = post(demo_client, restricted, REMOTE_ADDR="10.0.0.6", HTTP_X_FORWARDED_FOR="203.0.113.7")
        refused = post(demo_client, restricted, REMOTE_ADDR="10.0.0.6", HTTP_X_FORWARDED_FOR="198.51.100.9")
        spoofed = post(
            demo_client, restricted, REMOTE_ADDR="10.0.0.6", HTTP_X_FORWARDED_FOR="203.0.113.7, 198.51.100.9"
        )
    assert allowed.status_code == 201, allowed.content
    assert refused.status_code == 403 and spoofed.status_code == 403


@pytestmark_db
def test_drf_without_trusted_proxies_the_proxys_own_address_is_checked(demo_client, restricted):
    # Without TRUSTED_PROXIES the proxy's address is what the allow-list sees (and it is not allowed).
    with override_settings(TRUSTED_PROXIES=[]):
        response = post(demo_client, restricted, REMOTE_ADDR="10.0.0.6", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert response.status_code == 403


@pytestmark_db
def test_drf_a_trusted_proxy_without_forwarded_for_is_refused_by_an_allow_list(demo_client, restricted, in_schema):
    # Given an allow-list that holds the proxies' own network, as an operator might write it
    with in_schema("demo"):
        restricted.client.allowed_ips = [ALLOWED, "10.0.0.0/8"]
        restricted.client.save()
    with override_settings(TRUSTED_PROXIES=PROXIES):
        response = post(demo_client, restricted, REMOTE_ADDR="10.0.0.6")  # no X-Forwarded-For
    assert response.status_code == 403 and response.json()["error"]["code"] == "ip_not_allowed"


@pytestmark_db
def test_drf_a_client_without_an_allow_list_is_not_affected_by_an_unknown_address(demo_client, sms_world):
    with override_settings(TRUSTED_PROXIES=PROXIES):
        response = post(demo_client, sms_world, REMOTE_ADDR="10.0.0.6")
    assert response.status_code == 201, response.content


# --- the lean ASGI path ------------------------------------------------------------------------------------------

SCHEMA = "h5ip"
HOST = f"{SCHEMA}.localhost"


@pytest.fixture(scope="module")
def asgi_world(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), operator_for_tests(SCHEMA):
        world = sms_world_make(schema=SCHEMA, staff=f"admin@{SCHEMA}.localhost", allowed_ips=[ALLOWED])
        with schema_context(SCHEMA):
            assert SmsClient.objects.get(pk=world.client.pk).allowed_ips == [ALLOWED]
        yield world
        senders_stop()
        gc.collect()
        celery_app.control.purge()  # the wake-ups of accepted messages: no worker runs here


async def asgi_send(world, peer, *forwarded):
    headers = [
        (b"host", HOST.encode()),
        (b"authorization", f"Api-Key {world.key}".encode()),
        (b"content-type", b"application/json"),
        *((b"x-forwarded-for", f.encode()) for f in forwarded),
    ]
    body = json.dumps({"to": "+34612345678", "text": "x"}).encode()
    communicator = HttpCommunicator(application, "POST", "/api/v1/sms/messages", body=body, headers=headers)
    communicator.scope["client"] = (peer, 40000)
    response = await communicator.get_response(timeout=30)
    return response["status"], json.loads(response["body"])


async def test_asgi_a_spoofed_forwarded_for_from_an_untrusted_peer_is_refused(asgi_world):
    with override_settings(TRUSTED_PROXIES=PROXIES):
        status, body = await asgi_send(asgi_world, "198.51.100.9", "203.0.113.7")
    assert status == 403 and body["error"]["code"] == "ip_not_allowed", body


async def test_asgi_through_a_trusted_proxy_the_real_client_ip_is_checked(asgi_world):
    with override_settings(TRUSTED_PROXIES=PROXIES):
        allowed = await asgi_send(asgi_world, "10.0.0.6", "192.0.2.1, 203.0.113.7", "10.0.0.5")
        refused = await asgi_send(asgi_world, "10.0.0.6", "203.0.113.7, 198.51.100.9")
    assert allowed[0] == 201, allowed[1]
    assert refused[0] == 403 and "198.51.100.9" in refused[1]["error"]["message"]


async def test_asgi_a_trusted_proxy_without_forwarded_for_is_refused(asgi_world, django_db_blocker):
    def allow(networks):
        with django_db_blocker.unblock(), schema_context(SCHEMA):
            SmsClient.objects.filter(pk=asgi_world.client.pk).update(allowed_ips=networks)
            connection.close()  # this worker thread's own connection: the test database is dropped at the end

    await sync_to_async(allow)([ALLOWED, "10.0.0.0/8"])  # the proxies' own network in the allow-list too
    try:
        with override_settings(TRUSTED_PROXIES=PROXIES):
            status, body = await asgi_send(asgi_world, "10.0.0.6")
    finally:
        await sync_to_async(allow)([ALLOWED])
    assert status == 403 and body["error"]["code"] == "ip_not_allowed", body
