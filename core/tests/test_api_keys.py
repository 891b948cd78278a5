import hashlib

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from conftest import login_as
from core.api.throttling import PerKeyThrottle
from core.models import ApiKey
from core.services import api_key_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_staff(in_schema):
    with in_schema("demo"):
        return get_user_model().objects.get(username="admin@demo.localhost")


def test_created_key_is_shown_once_and_stored_hashed(world, demo_client, demo_staff):
    login_as(demo_client, "demo", "admin@demo.localhost")
    response = demo_client.post("/api/v1/api-keys", {"name": "billing export"}, content_type="application/json")
    assert response.status_code == 201
    raw = response.json()["key"]
    from django_tenants.utils import schema_context

    with schema_context("demo"):
        stored = ApiKey.objects.get(pk=response.json()["id"])
        assert stored.hashed_key == hashlib.sha256(raw.encode()).hexdigest()
        assert raw not in {stored.prefix, stored.hashed_key, stored.name}
    listed = demo_client.get("/api/v1/api-keys").json()["results"]
    assert all("key" not in item for item in listed)


def test_key_authenticates_and_records_last_use(world, demo_client, demo_staff, in_schema):
    with in_schema("demo"):
        issued = api_key_create(user=demo_staff, name="k")
    response = demo_client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Api-Key {issued.raw_key}")
    assert response.status_code == 200
    assert response.json()["operator"] == "demo" and response.json()["customer"] is None
    with in_schema("demo"):
        assert ApiKey.objects.get(pk=issued.api_key.pk).last_used_at is not None


def test_revoked_key_is_refused(world, demo_client, demo_staff, in_schema):
    with in_schema("demo"):
        issued = api_key_create(user=demo_staff, name="k")
    auth = {"HTTP_AUTHORIZATION": f"Api-Key {issued.raw_key}"}
    assert demo_client.post(f"/api/v1/api-keys/{issued.api_key.pk}/revoke", **auth).status_code == 200
    response = demo_client.get("/api/v1/me", **auth)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_customer_key_reports_its_customer(world, acme_client, in_schema):
    with in_schema("demo"):
        boss = get_user_model().objects.get(username="boss@acme.example")
        raw = api_key_create(user=boss, name="acme").raw_key
    body = acme_client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Api-Key {raw}").json()
    assert body["customer"]["name"] == "Acme Corp"


def test_users_see_only_their_own_keys(world, demo_client, demo_staff, in_schema):
    with in_schema("demo"):
        boss = get_user_model().objects.get(username="boss@acme.example")
        theirs = api_key_create(user=boss, name="acme").api_key
        mine = api_key_create(user=demo_staff, name="mine")
    auth = {"HTTP_AUTHORIZATION": f"Api-Key {mine.raw_key}"}
    assert [k["id"] for k in demo_client.get("/api/v1/api-keys", **auth).json()["results"]] == [mine.api_key.pk]
    assert demo_client.get(f"/api/v1/api-keys/{theirs.pk}", **auth).status_code == 404


def test_platform_key_does_not_work_on_an_operator_domain(world, demo_client, platform_client):
    staff = get_user_model().objects.get(username="admin@localhost")
    raw = api_key_create(user=staff, name="ops").raw_key
    assert platform_client.get("/api/v1/platform/operators/", HTTP_AUTHORIZATION=f"Api-Key {raw}").status_code == 200
    assert demo_client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Api-Key {raw}").status_code == 401


def test_operator_staff_without_platform_rights_cannot_list_operators(world, platform_client):
    user = get_user_model().objects.create_user(username="nobody@localhost", email="nobody@localhost")
    raw = api_key_create(user=user, name="x").raw_key
    response = platform_client.get("/api/v1/platform/operators/", HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_create_api_key_command_prints_a_working_key(world, demo_client, capsys):
    call_command("create_api_key", operator="demo", email="admin@demo.localhost", name="script")
    raw = capsys.readouterr().out.strip()
    assert raw.startswith("oc_")
    assert demo_client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Api-Key {raw}").status_code == 200


def test_create_api_key_command_for_platform(world, platform_client, capsys):
    call_command("create_api_key", platform=True, email="admin@localhost", name="ops")
    raw = capsys.readouterr().out.strip()
    assert platform_client.get("/api/v1/platform/operators/", HTTP_AUTHORIZATION=f"Api-Key {raw}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/api/v1/me", 401, "not_authenticated"),
        ("get", "/api/v1/no-such-thing", 404, "not_found"),
        ("delete", "/api/v1/me", 405, "method_not_allowed"),
    ],
)
def test_errors_share_one_shape(world, demo_client, demo_staff, method, path, status, code):
    if status != 401:
        login_as(demo_client, "demo", "admin@demo.localhost")
    response = getattr(demo_client, method)(path)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["fields"] == {}


def test_validation_error_names_the_field(world, demo_client, demo_staff):
    login_as(demo_client, "demo", "admin@demo.localhost")
    response = demo_client.post("/api/v1/api-keys", {}, content_type="application/json")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["name"]


def test_throttled_key_gets_429_with_retry_after(world, demo_client, demo_staff, in_schema, monkeypatch):
    monkeypatch.setattr(PerKeyThrottle, "THROTTLE_RATES", {"per_key": "3/min"})
    with in_schema("demo"):
        raw = api_key_create(user=demo_staff, name="busy").raw_key
        other = api_key_create(user=demo_staff, name="calm").raw_key
    statuses = [demo_client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Api-Key {raw}").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = demo_client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert int(response["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "throttled"
    assert demo_client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Api-Key {other}").status_code == 200
