"""Reading messages, and the operator's management endpoints: happy paths, validation, isolation."""

from decimal import Decimal

import pytest

from sms.models import Gateway, ListEntry, Message, Route, SmsClient, SpamRule

pytestmark = pytest.mark.django_db


def send(client, world, payload, auth=None):
    response = client.post("/api/v1/sms/messages", payload, content_type="application/json", **(auth or world.auth))
    assert response.status_code == 201, response.content
    return response.json()["messages"]


# --- reading messages ---


def test_a_message_shows_its_events_and_callback_attempts(demo_client, sms_world):
    (sent,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "hi", "client_reference": "order-7"})
    body = demo_client.get(f"/api/v1/sms/messages/{sent['id']}", **sms_world.auth).json()
    assert body["to"] == "+34612345678" and body["from"] == "TEXTCO" and body["client_reference"] == "order-7"
    assert [e["status"] for e in body["events"]] == ["accepted"]
    assert body["events"][0]["callback_attempts"] == []
    assert "cost" not in body  # what the operator pays is not the client's business


def test_staff_see_the_cost_and_route(demo_client, sms_world):
    (sent,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "hi"})
    body = demo_client.get(f"/api/v1/sms/messages/{sent['id']}", **sms_world.staff_auth).json()
    assert body["cost"] == "0.020000" and body["route"] == sms_world.route.pk


def test_the_list_filters_by_status_destination_reference_and_date(demo_client, sms_world, in_schema):
    send(demo_client, sms_world, {"to": "+34612345678", "text": "a", "client_reference": "r1"})
    send(demo_client, sms_world, {"to": "+34612345679", "text": "b", "client_reference": "r2"})
    with in_schema("demo"):
        ListEntry.objects.create(kind="blacklist", number="+34612345670")
    send(demo_client, sms_world, {"to": "+34612345670", "text": "c"})

    def ids(**params):
        response = demo_client.get("/api/v1/sms/messages", params, **sms_world.auth)
        assert response.status_code == 200, response.content
        return [m["to"] for m in response.json()["results"]]

    assert ids() == ["+34612345670", "+34612345679", "+34612345678"]
    assert ids(status="rejected") == ["+34612345670"]
    assert ids(to="34612345679") == ["+34612345679"]
    assert ids(client_reference="r1") == ["+34612345678"]
    assert ids(since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00Z") == []


def test_listing_messages_takes_a_fixed_number_of_queries(demo_client, sms_world, django_assert_max_num_queries):
    send(demo_client, sms_world, {"to": [f"+3461234567{n}" for n in range(10)], "text": "x"})
    with django_assert_max_num_queries(8):
        response = demo_client.get("/api/v1/sms/messages", **sms_world.auth)
    assert response.json()["count"] == 10


def test_todays_summary(demo_client, sms_world):
    send(demo_client, sms_world, {"to": ["+34612345678", "+34612345679"], "text": "x" * 170})
    body = demo_client.get("/api/v1/sms/messages/summary", **sms_world.auth).json()
    assert body["messages"] == 2 and body["pending"] == 2 and body["by_status"] == {"accepted": 2}


# --- isolation of every endpoint ---


@pytest.fixture
def objects(sms_world, in_schema, demo_client):
    """One object of every kind; the message and list entry belong to the *other* client."""
    (theirs,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "x", "from": "OTHER"}, sms_world.other_auth)
    with in_schema("demo"):
        entry = ListEntry.objects.create(kind="optout", number="+34612345678", client=sms_world.other)
        rule = SpamRule.objects.create(name="r", pattern="casino")
        from sms.models import FraudLimit, IncomingMessage, NumberPrefix

        limit = FraudLimit.objects.create(name="l", limit=10)
        prefix = NumberPrefix.objects.create(prefix="34699", mobile_operator="X")
        incoming = IncomingMessage.objects.create(
            customer=sms_world.other.customer, source="+34612345678", destination="OTHER", text="hi"
        )
    return {
        "messages": theirs["id"],
        "lists": entry.pk,
        "clients": sms_world.other.pk,
        "gateways": sms_world.gateway.pk,
        "routes": sms_world.route.pk,
        "spam-rules": rule.pk,
        "fraud-limits": limit.pk,
        "prefixes": prefix.pk,
        "incoming": incoming.pk,
    }


ALL = ["messages", "lists", "clients", "gateways", "routes", "spam-rules", "fraud-limits", "prefixes", "incoming"]


@pytest.mark.parametrize("endpoint", ALL)
def test_another_operators_key_gets_401_everywhere(demo_client, sms_world, objects, endpoint):
    assert demo_client.get(f"/api/v1/sms/{endpoint}", **sms_world.rival_auth).status_code == 401
    assert demo_client.get(f"/api/v1/sms/{endpoint}/{objects[endpoint]}", **sms_world.rival_auth).status_code == 401


CLIENT_READABLE = ["messages", "lists", "clients", "incoming"]
OPERATOR_ONLY = ["gateways", "routes", "spam-rules", "fraud-limits", "prefixes"]


@pytest.mark.parametrize("endpoint", CLIENT_READABLE)
def test_another_clients_objects_are_404_and_not_listed(demo_client, sms_world, objects, endpoint):
    detail = demo_client.get(f"/api/v1/sms/{endpoint}/{objects[endpoint]}", **sms_world.auth)
    assert detail.status_code == 404, (endpoint, detail.status_code)
    listed = demo_client.get(f"/api/v1/sms/{endpoint}", **sms_world.auth)
    assert listed.status_code == 200
    assert objects[endpoint] not in [row["id"] for row in listed.json()["results"]]


@pytest.mark.parametrize("endpoint", OPERATOR_ONLY)
def test_the_operators_own_set_up_is_closed_to_clients(demo_client, sms_world, objects, endpoint):
    assert demo_client.get(f"/api/v1/sms/{endpoint}", **sms_world.auth).status_code == 403
    assert demo_client.get(f"/api/v1/sms/{endpoint}/{objects[endpoint]}", **sms_world.auth).status_code == 403


@pytest.mark.parametrize("endpoint", ALL)
def test_staff_see_everything_of_their_operator(demo_client, sms_world, objects, endpoint):
    assert demo_client.get(f"/api/v1/sms/{endpoint}/{objects[endpoint]}", **sms_world.staff_auth).status_code == 200


@pytest.mark.parametrize(
    "endpoint", ["gateways", "routes", "spam-rules", "fraud-limits", "prefixes", "lists", "clients"]
)
def test_clients_cannot_write_the_operators_set_up(demo_client, sms_world, endpoint):
    response = demo_client.post(f"/api/v1/sms/{endpoint}", {}, content_type="application/json", **sms_world.auth)
    assert response.status_code == 403


def test_a_client_reads_its_own_settings_and_secret(demo_client, sms_world):
    rows = demo_client.get("/api/v1/sms/clients", **sms_world.auth).json()["results"]
    assert [r["id"] for r in rows] == [sms_world.client.pk]
    assert len(rows[0]["callback_secret"]) == 64 and rows[0]["balance"] == "100.000000"
    rotated = demo_client.post(f"/api/v1/sms/clients/{sms_world.client.pk}/rotate-secret", **sms_world.auth).json()
    assert rotated["callback_secret"] != rows[0]["callback_secret"]
    assert (
        demo_client.post(f"/api/v1/sms/clients/{sms_world.other.pk}/rotate-secret", **sms_world.auth).status_code == 404
    )


# --- management by staff ---


def test_staff_create_a_gateway_without_the_password_ever_coming_back(demo_client, sms_world, in_schema):
    payload = {"name": "carrier-2", "host": "smsc.example", "port": 2775, "system_id": "opc", "password": "s3cret"}
    response = demo_client.post(
        "/api/v1/sms/gateways", payload, content_type="application/json", **sms_world.staff_auth
    )
    assert response.status_code == 201, response.content
    assert "password" not in response.json() and response.json()["state"] == "unknown"
    with in_schema("demo"):
        assert Gateway.objects.get(name="carrier-2").password == "s3cret"
    too_long = demo_client.post(
        "/api/v1/sms/gateways",
        {**payload, "name": "x", "password": "123456789"},
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert too_long.status_code == 400 and "password" in too_long.json()["error"]["fields"]


def test_a_gateway_in_use_cannot_be_deleted(demo_client, sms_world):
    response = demo_client.delete(f"/api/v1/sms/gateways/{sms_world.gateway.pk}", **sms_world.staff_auth)
    assert response.status_code == 409


def test_staff_add_a_route_for_one_client_that_takes_effect_at_once(demo_client, sms_world):
    response = demo_client.post(
        "/api/v1/sms/routes",
        {
            "client": sms_world.client.pk,
            "country": "GB",
            "gateway": sms_world.gateway.pk,
            "price_per_part": "0.09",
            "cost_per_part": "0.04",
            "priority": 1,
        },
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert response.status_code == 201, response.content
    (uk,) = send(demo_client, sms_world, {"to": "+447400123456", "text": "x"})
    (es,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "x"})
    assert (uk["price"], es["price"]) == ("0.090000", "0.050000")
    bad = demo_client.post(
        "/api/v1/sms/routes",
        {"country": "Spain", "gateway": sms_world.gateway.pk},
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert bad.status_code == 400 and "country" in bad.json()["error"]["fields"]


def test_a_destination_no_route_reaches_is_rejected_not_charged(demo_client, sms_world, in_schema):
    with in_schema("demo"):
        Route.objects.filter(pk=sms_world.route.pk).update(prefix="34")
        from sms.selectors import sms_config_changed

        sms_config_changed(schema="demo")
    (uk,) = send(demo_client, sms_world, {"to": "+447400123456", "text": "x"})
    assert (uk["status"], uk["error_code"], uk["price"]) == ("rejected", "no_route", "0")


def test_spam_rules_are_validated(demo_client, sms_world):
    bad = demo_client.post(
        "/api/v1/sms/spam-rules",
        {"name": "x", "kind": "regex", "pattern": "(unclosed"},
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert bad.status_code == 400 and "pattern" in bad.json()["error"]["fields"]


def test_lists_import_from_csv_all_or_nothing(demo_client, sms_world, in_schema):
    good = "number,note\n+34612345678,asked by phone\n0034612345679\n"
    response = demo_client.post(
        "/api/v1/sms/lists/import?kind=dnd", good, content_type="text/csv", **sms_world.staff_auth
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"created": 2, "existing": 0, "dry_run": False, "errors": []}
    with in_schema("demo"):
        assert set(ListEntry.objects.filter(kind="dnd").values_list("number", "note")) == {
            ("+34612345678", "asked by phone"),
            ("+34612345679", ""),
        }
    bad = "+34612345670\nnot-a-number\n+34612345671\n12\n"
    response = demo_client.post(
        "/api/v1/sms/lists/import?kind=dnd", bad, content_type="text/csv", **sms_world.staff_auth
    )
    assert response.status_code == 400
    assert [e["line"] for e in response.json()["errors"]] == [2, 4]
    with in_schema("demo"):
        assert not ListEntry.objects.filter(number="+34612345670").exists()


def test_lists_import_as_a_multipart_upload_for_one_client(demo_client, sms_world, in_schema):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("optouts.csv", b"+34612345678\n", content_type="text/csv")
    response = demo_client.post(
        "/api/v1/sms/lists/import",
        {"kind": "optout", "client": sms_world.client.pk, "file": upload},
        **sms_world.staff_auth,
    )
    assert response.status_code == 200, response.content
    with in_schema("demo"):
        assert ListEntry.objects.get(number="+34612345678").client_id == sms_world.client.pk


def test_staff_create_a_client_with_login_account_and_credit(demo_client, sms_world, in_schema):
    response = demo_client.post(
        "/api/v1/sms/clients",
        {"name": "Newco", "admin_email": "it@newco.example", "credit": "25", "sender_ids": ["NEWCO"], "tps_limit": 20},
        content_type="application/json",
        **sms_world.staff_auth,
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["balance"] == "25.000000" and body["currency"] == "EUR" and body["sender_ids"] == ["NEWCO"]
    with in_schema("demo"):
        client = SmsClient.objects.get(pk=body["id"])
        assert client.customer.kind == "sms_client" and client.customer.members.get().user.email == "it@newco.example"
        assert client.account.balance == Decimal("25")


def test_messages_of_another_operator_do_not_exist_here(demo_client, rival_client, sms_world, in_schema):
    (sent,) = send(demo_client, sms_world, {"to": "+34612345678", "text": "x"})
    with in_schema("rival"):
        assert not Message.objects.filter(pk=sent["id"]).exists()
