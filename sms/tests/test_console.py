"""The operator console's SMS pages and the client panel's message list."""

import json
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from conftest import login_as
from sms.kv import key, kv
from sms.models import Gateway, ListEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(demo_client):
    login_as(demo_client, "demo", "admin@demo.localhost")
    return demo_client


def send(client, world, payload, auth=None):
    response = client.post("/api/v1/sms/messages", payload, content_type="application/json", **(auth or world.auth))
    assert response.status_code == 201, response.content
    return response.json()["messages"]


def test_gateways_show_their_live_state(console, sms_world):
    page = console.get("/admin/sms/gateway/")
    assert page.status_code == 200 and b"unknown" in page.content
    # A submitter reports the gateway bound (as sms.runner does), and the page shows it
    report = {
        "id": sms_world.gateway.pk,
        "state": "bound",
        "queued": 3,
        "in_flight": 7,
        "throughput_per_s": 42.0,
        "reported_at": time.time(),
    }
    kv().hset(key("demo", "gateways"), str(sms_world.gateway.pk), json.dumps(report))
    try:
        page = console.get("/admin/sms/gateway/").content.decode()
    finally:
        kv().hdel(key("demo", "gateways"), str(sms_world.gateway.pk))
    assert ">bound<" in page and ">42.0<" in page and "3 / 7" in page and "/ws/live/" in page


def test_a_gateway_password_is_kept_when_left_empty(console, sms_world, in_schema):
    url = f"/admin/sms/gateway/{sms_world.gateway.pk}/change/"
    form = console.get(url)
    assert form.status_code == 200 and b"secret" not in form.content  # never rendered back
    data = {
        "name": "renamed",
        "host": "127.0.0.1",
        "port": 2775,
        "system_id": "esme",
        "password": "",
        "system_type": "",
        "bind_mode": "transceiver",
        "tps": 100,
        "window": 10,
        "source_ton": 5,
        "source_npi": 0,
        "dest_ton": 1,
        "dest_npi": 1,
        "default_encoding": "gsm7",
        "enabled": "on",
    }
    response = console.post(url, data)
    assert response.status_code == 302, response.content
    with in_schema("demo"):
        gateway = Gateway.objects.get(pk=sms_world.gateway.pk)
        assert (gateway.name, gateway.password) == ("renamed", "secret")


def test_messages_are_read_only_with_events_and_parts(console, demo_client, sms_world):
    (sent,) = send(Client(HTTP_HOST="demo.localhost"), sms_world, {"to": "+34612345678", "text": "console"})
    assert console.get("/admin/sms/message/").status_code == 200
    page = console.get(f"/admin/sms/message/{sent['id']}/change/")
    assert page.status_code == 200 and b"accepted" in page.content
    assert console.get("/admin/sms/message/add/").status_code == 403


def test_lists_import_from_the_console(console, sms_world, in_schema):
    assert console.get("/admin/sms/listentry/import/").status_code == 200
    upload = SimpleUploadedFile("dnd.csv", b"+34612345678\n+34612345679,by letter\n", content_type="text/csv")
    response = console.post("/admin/sms/listentry/import/", {"kind": "dnd", "file": upload, "note": "2026 list"})
    assert response.status_code == 302
    with in_schema("demo"):
        assert dict(ListEntry.objects.filter(kind="dnd").values_list("number", "note")) == {
            "+34612345678": "2026 list",
            "+34612345679": "by letter",
        }
    bad = SimpleUploadedFile("bad.csv", b"+34612345670\nnope\n", content_type="text/csv")
    page = console.post("/admin/sms/listentry/import/", {"kind": "dnd", "file": bad}).content.decode()
    assert "list-import-errors" in page and "nope" in page


@pytest.mark.parametrize(
    "path",
    [
        "/admin/sms/smsclient/",
        "/admin/sms/route/",
        "/admin/sms/numberprefix/",
        "/admin/sms/spamrule/",
        "/admin/sms/fraudlimit/",
        "/admin/sms/incomingmessage/",
        "/admin/sms/callbackbatch/",
        "/admin/sms/listentry/",
    ],
)
def test_console_pages_open(console, sms_world, path):
    assert console.get(path).status_code == 200


def test_the_client_panel_lists_the_clients_own_messages(sms_world, in_schema):
    http = Client(HTTP_HOST="demo.localhost")
    mine = send(http, sms_world, {"to": "+34612345678", "text": "mine"})
    theirs = send(http, sms_world, {"to": "+34612345679", "text": "theirs", "from": "OTHER"}, sms_world.other_auth)
    with in_schema("demo"):
        user = get_user_model().objects.get(customer_member__customer=sms_world.client.customer)
    login_as(http, "demo", user.username)
    page = http.get("/sms/messages/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "+34612345678" in body and "+34612345679" not in body
    assert f"<td>{mine[0]['id']}</td>" in body and f"<td>{theirs[0]['id']}</td>" not in body
    filtered = http.get("/sms/messages/", {"status": "rejected"}).content.decode()
    assert "+34612345678" not in filtered


def test_the_client_panel_is_for_sms_clients_only(acme_client, sms_world):
    login_as(acme_client, "demo", "boss@acme.example")  # a PBX client
    assert acme_client.get("/sms/messages/").status_code == 404
    assert Client(HTTP_HOST="demo.localhost").get("/sms/messages/").status_code == 302  # to the login page
