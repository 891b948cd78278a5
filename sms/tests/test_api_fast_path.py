"""The ASGI fast path of POST /api/v1/sms/messages answers exactly as the regular API does.

The real ASGI application (config.asgi) is called in-process; the fast path's threads have database connections of
their own, so this module's rows are committed, in an operator of its own.
"""

import gc
import json

import pytest
from channels.testing import HttpCommunicator
from django.test import Client
from django_tenants.utils import schema_context

from config.asgi import application
from config.celery_app import app as celery_app
from sms.api.asgi import senders_stop
from sms.models import Message

from .conftest import operator_for_tests, sms_world_make

SCHEMA = "s1fast"
HOST = f"{SCHEMA}.localhost"


@pytest.fixture(scope="module")
def fast_world(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), operator_for_tests(SCHEMA):
        yield sms_world_make(schema=SCHEMA, staff=f"admin@{SCHEMA}.localhost", credit="1")
        senders_stop()
        gc.collect()  # the connections of Django's finished request threads
        celery_app.control.purge()  # the wake-ups of accepted messages: no worker runs here


async def call(method, path, body=None, *, key=None, host=HOST, content_type="application/json"):
    headers = [(b"host", host.encode())]
    if key:
        headers.append((b"authorization", f"Api-Key {key}".encode()))
    if body is not None:
        headers.append((b"content-type", content_type.encode()))
    raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body or b"")
    response = await HttpCommunicator(application, method, path, body=raw, headers=headers).get_response(timeout=30)
    headers = {name.decode().lower(): value.decode() for name, value in response["headers"]}
    return response["status"], headers, json.loads(response["body"]) if response["body"] else None


async def test_a_send_is_accepted_and_stored(fast_world, django_db_blocker):
    status, headers, body = await call(
        "POST", "/api/v1/sms/messages", {"to": "+34612345678", "text": "fast"}, key=fast_world.key
    )
    assert status == 201, body
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    (message,) = body["messages"]
    assert (message["status"], message["price"], message["to"]) == ("accepted", "0.050000", "+34612345678")

    def stored():
        with django_db_blocker.unblock(), schema_context(SCHEMA):
            return Message.objects.get(pk=message["id"]).reservation_id is not None

    from asgiref.sync import sync_to_async

    assert await sync_to_async(stored)()


async def test_errors_are_the_regular_apis(fast_world):
    status, _, body = await call(
        "POST", "/api/v1/sms/messages", {"messages": [{"to": "+1", "text": "x"}]}, key=fast_world.key
    )
    assert status == 400 and body["error"]["code"] == "invalid" and list(body["error"]["fields"]) == ["messages[0].to"]
    status, _, body = await call("POST", "/api/v1/sms/messages", b"{not json", key=fast_world.key)
    assert status == 400 and body["error"]["code"] == "parse_error"
    status, _, body = await call(
        "POST",
        "/api/v1/sms/messages",
        {"to": [f"+3461234{n:04d}" for n in range(30)], "text": "x"},
        key=fast_world.key,
    )
    assert status == 402 and body["error"]["needed"] == "1.500000" and body["error"]["balance"] == "1.000000"


async def test_keys_are_checked_like_everywhere(fast_world):
    status, headers, body = await call("POST", "/api/v1/sms/messages", {"to": "+34612345678", "text": "x"}, key="oc_no")
    assert status == 401 and body["error"]["code"] == "authentication_failed" and headers["www-authenticate"]
    status, _, _ = await call(
        "POST", "/api/v1/sms/messages", {"to": "+34612345678", "text": "x"}, key=fast_world.rival_key
    )
    assert status == 401  # another operator's key
    status, _, body = await call(
        "POST",
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "x"},
        key=fast_world.key,
        host="nowhere.localhost",
    )
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_everything_else_goes_to_django(fast_world):
    status, _, body = await call("GET", "/api/v1/sms/messages", key=fast_world.key)
    assert status == 200 and "results" in body
    status, _, body = await call("POST", "/api/v1/sms/messages", {"to": "+34612345678", "text": "x"})
    assert status == 401 and body["error"]["code"] == "not_authenticated"  # no key: the regular API answers
    status, _, body = await call("POST", "/api/v1/sms/messages", b"to=1", key=fast_world.key, content_type="text/plain")
    assert status != 201  # not sent: the regular API refuses what it cannot parse


@pytest.mark.django_db
def test_both_paths_answer_the_same_shape(sms_world, demo_client):
    # (Also makes pytest-django set the test database up when this module runs alone.)
    regular = demo_client.post(
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "x", "from": "NOPE"},
        content_type="application/json",
        **sms_world.auth,
    )
    assert regular.status_code == 400
    assert regular.json()["error"] == {
        "code": "invalid",
        "message": "Invalid input: from.",
        "fields": {"from": ["'NOPE' is not one of this client's sender ids: TEXTCO, +34600000001."]},
    }
    assert Client  # the WSGI test client is the regular path; the ASGI tests above are the fast one


SCHEMA2 = "s1fast2"


@pytest.fixture(scope="module")
def second_world(fast_world, django_db_blocker):
    with django_db_blocker.unblock(), operator_for_tests(SCHEMA2):
        yield sms_world_make(schema=SCHEMA2, staff=f"admin@{SCHEMA2}.localhost", credit="1")
        senders_stop()  # before the schema goes: the sender threads' connections may sit in it


async def test_sender_threads_serving_operators_in_turn_store_each_in_its_own_schema(
    fast_world, second_world, django_db_blocker
):
    # The sender threads keep their search_path from one request to the next: alternate the two operators
    sent = {SCHEMA: [], SCHEMA2: []}
    for n in range(12):
        schema, world = (SCHEMA, fast_world) if n % 2 else (SCHEMA2, second_world)
        text = f"turn {n}"
        status, _, body = await call(
            "POST",
            "/api/v1/sms/messages",
            {"to": "+34612345678", "text": text},
            key=world.key,
            host=f"{schema}.localhost",
        )
        assert status == 201, body
        sent[schema].append(text)
    # and one operator's key on the other's host is refused, whichever schema the thread was left in
    status, _, _ = await call(
        "POST",
        "/api/v1/sms/messages",
        {"to": "+34612345678", "text": "x"},
        key=fast_world.key,
        host=f"{SCHEMA2}.localhost",
    )
    assert status == 401

    def stored(schema):
        with django_db_blocker.unblock(), schema_context(schema):
            return sorted(Message.objects.filter(text__startswith="turn ").values_list("text", flat=True))

    from asgiref.sync import sync_to_async

    assert await sync_to_async(stored)(SCHEMA) == sorted(sent[SCHEMA])
    assert await sync_to_async(stored)(SCHEMA2) == sorted(sent[SCHEMA2])
