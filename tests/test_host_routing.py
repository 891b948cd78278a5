"""Which site a host reaches: platform, operator, client subdomain, nothing (404), or a suspended page."""

import pytest
from django.contrib.auth import get_user_model

from core.services import api_key_create
from tenants.models import Operator
from tenants.services import operator_set_status

pytestmark = pytest.mark.django_db


def test_platform_domain_serves_the_platform_console(world, platform_client):
    response = platform_client.get("/admin/login/")
    assert response.status_code == 200
    assert b"OpenCarrier platform" in response.content


def test_operator_domain_serves_its_branded_login(world, demo_client):
    response = demo_client.get("/accounts/login/")
    assert response.status_code == 200
    assert b"DemoTel" in response.content
    assert b"--primary: #6a1b9a" in response.content


def test_operator_console_is_branded_and_shows_no_platform_models(world, demo_client):
    from conftest import login_as

    login_as(demo_client, "demo", "admin@demo.localhost")
    response = demo_client.get("/admin/")
    assert response.status_code == 200
    assert b"DemoTel console" in response.content
    assert b"/admin/tenants/" not in response.content
    assert demo_client.get("/admin/tenants/operator/").status_code == 404


def test_client_subdomain_resolves_to_the_operator_and_the_client(world, acme_client):
    response = acme_client.get("/accounts/login/")
    assert response.status_code == 200
    assert b"DemoTel" in response.content and b"Acme Corp" in response.content
    assert response.wsgi_request.host_customer.subdomain == "acme"
    assert response.wsgi_request.tenant.schema_name == "demo"


@pytest.mark.parametrize(
    "host", ["nowhere.localhost", "ghost.demo.localhost", "acme.localhost", "demo.localhost.evil.com"]
)
def test_unknown_hosts_answer_404(world, host):
    from conftest import host_client

    response = host_client(host).get("/accounts/login/")
    assert response.status_code == 404
    assert b"DemoTel" not in response.content and b"OpenCarrier platform" not in response.content


def test_unknown_host_api_404_is_in_the_error_shape(world):
    from conftest import host_client

    response = host_client("nowhere.localhost").get("/api/v1/me")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not found.", "fields": {}}}


def test_client_login_rejects_another_customers_user(world, acme_client, in_schema):
    response = acme_client.post(
        "/accounts/login/", {"username": "admin@demo.localhost", "password": world.logins["operator"]["password"]}
    )
    assert response.status_code == 200  # form shown again with the error, nobody logged in
    assert "_auth_user_id" not in acme_client.session


def test_client_login_lets_the_clients_user_in(world, acme_client):
    response = acme_client.post(
        "/accounts/login/", {"username": "boss@acme.example", "password": world.logins["client"]["password"]}
    )
    assert response.status_code == 302
    assert acme_client.get("/dashboard/").status_code == 200


def test_suspended_operator_pages_are_403_and_branded_then_resume_restores(world, demo_client):
    demo = Operator.objects.get(schema_name="demo")
    operator_set_status(operator=demo, status="suspended")
    page = demo_client.get("/accounts/login/")
    assert page.status_code == 403
    assert b"DemoTel" in page.content and b"suspended" in page.content
    api = demo_client.get("/api/v1/me")
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "operator_suspended"
    from conftest import host_client

    assert host_client("acme.demo.localhost").get("/accounts/login/").status_code == 403

    operator_set_status(operator=demo, status="active")
    assert demo_client.get("/accounts/login/").status_code == 200


def test_suspending_one_operator_leaves_others_running(world, rival_client):
    operator_set_status(operator=Operator.objects.get(schema_name="demo"), status="suspended")
    assert rival_client.get("/accounts/login/").status_code == 200


def test_branding_change_shows_on_the_next_page_load(world, demo_client):
    Operator.objects.filter(schema_name="demo").update(product_name="NewBrand", primary_colour="#123456")
    response = demo_client.get("/accounts/login/")
    assert b"NewBrand" in response.content and b"#123456" in response.content


def test_operator_logo_is_generated_in_its_colours(world, demo_client):
    response = demo_client.get("/branding/logo")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert b"#6a1b9a" in response.content


def test_operator_api_key_is_refused_on_platform_and_other_operator(
    world, demo_client, rival_client, platform_client, in_schema
):
    with in_schema("demo"):
        raw = api_key_create(user=get_user_model().objects.get(username="admin@demo.localhost"), name="k").raw_key
    auth = {"HTTP_AUTHORIZATION": f"Api-Key {raw}"}
    assert demo_client.get("/api/v1/me", **auth).status_code == 200
    assert rival_client.get("/api/v1/me", **auth).status_code == 401
    assert platform_client.get("/api/v1/platform/operators/", **auth).status_code == 401


def test_operator_console_lists_billing_models(world, demo_client):
    from conftest import login_as

    login_as(demo_client, "demo", "admin@demo.localhost")
    response = demo_client.get("/admin/billing/cdr/")
    assert response.status_code == 200
    assert demo_client.get("/admin/billing/ledgerentry/add/").status_code == 403
