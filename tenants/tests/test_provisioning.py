import json

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django_tenants.utils import schema_context, schema_exists

from core.services import api_key_create
from tenants.models import Domain, Operator
from tenants.services import OperatorConflict, operator_provision

pytestmark = pytest.mark.django_db


def _migrations_in(schema: str) -> set[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT app, name FROM "{schema}".django_migrations')
        return set(cursor.fetchall())


def test_provisioning_creates_schema_domain_and_admin_with_set_password_email(world):
    result = operator_provision(slug="newco", name="NewCo", domain="newco.example.com", admin_email="Boss@NewCo.com")

    assert schema_exists("newco")
    assert Domain.objects.get(domain="newco.example.com").tenant == result.operator
    assert result.console_url == "http://newco.example.com:8000/admin/"
    with schema_context("newco"):
        admin = get_user_model().objects.get(username="boss@newco.com")
        assert admin.is_staff and admin.is_superuser and not admin.has_usable_password()
    assert mail.outbox == []  # sent only once the transaction commits


def test_provisioning_sends_the_set_password_email_after_commit(world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        operator_provision(slug="mailco", name="MailCo", domain="mailco.example.com", admin_email="a@mailco.com")
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["a@mailco.com"]
    assert "http://mailco.example.com:8000/accounts/reset/" in mail.outbox[0].body


def test_new_schema_is_cloned_with_every_migration_recorded(world):
    operator_provision(slug="cloned", name="Cloned", domain="cloned.example.com", admin_email="a@cloned.com")
    assert _migrations_in("cloned") == _migrations_in("template_operator")
    assert ("core", "0001_initial") in _migrations_in("cloned")


def test_same_slug_twice_conflicts_and_changes_nothing(world):
    before = (Operator.objects.count(), Domain.objects.count())
    with pytest.raises(OperatorConflict):
        operator_provision(slug="demo", name="Other", domain="other.example.com", admin_email="a@other.com")
    assert (Operator.objects.count(), Domain.objects.count()) == before
    assert Operator.objects.get(schema_name="demo").name == "Demo Telecom"


def test_taken_domain_conflicts(world):
    with pytest.raises(OperatorConflict):
        operator_provision(slug="fresh", name="Fresh", domain="rival.localhost", admin_email="a@fresh.com")
    assert not schema_exists("fresh")


def test_failure_midway_leaves_no_schema_domain_or_user(world, monkeypatch):
    def explode(**kwargs):
        raise RuntimeError("mail server on fire")

    monkeypatch.setattr("core.services.user_create", explode)
    with pytest.raises(RuntimeError):
        operator_provision(slug="broken", name="Broken", domain="broken.example.com", admin_email="a@broken.com")
    assert not schema_exists("broken")
    assert not Operator.objects.filter(schema_name="broken").exists()
    assert not Domain.objects.filter(domain="broken.example.com").exists()


def test_create_operator_command_prints_console_url(world, capsys):
    call_command(
        "create_operator",
        slug="clico",
        name="CliCo",
        domain="clico.example.com",
        admin_email="a@clico.com",
        products="sms,pbx",
    )
    out = json.loads(capsys.readouterr().out)
    assert out == {"slug": "clico", "console_url": "http://clico.example.com:8000/admin/", "admin_email": "a@clico.com"}
    assert Operator.objects.get(schema_name="clico").products == ["sms", "pbx"]


def _platform_key():
    staff = get_user_model().objects.get(username="admin@localhost")
    return api_key_create(user=staff, name="ops").raw_key


def test_platform_api_provisions_an_operator(world, platform_client):
    response = platform_client.post(
        "/api/v1/platform/operators/",
        {
            "slug": "apico",
            "name": "ApiCo",
            "domain": "apico.example.com",
            "admin_email": "a@apico.com",
            "products": ["sms"],
        },
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Api-Key {_platform_key()}",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["console_url"] == "http://apico.example.com:8000/admin/"
    assert body["operator"]["slug"] == "apico" and body["operator"]["domains"] == ["apico.example.com"]


def test_platform_api_same_slug_is_409_in_the_error_shape(world, platform_client):
    response = platform_client.post(
        "/api/v1/platform/operators/",
        {"slug": "demo", "name": "Again", "domain": "again.example.com", "admin_email": "a@again.com"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Api-Key {_platform_key()}",
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert not Domain.objects.filter(domain="again.example.com").exists()


def test_platform_api_bad_slug_names_the_field(world, platform_client):
    response = platform_client.post(
        "/api/v1/platform/operators/",
        {"slug": "Bad Slug!", "name": "X", "domain": "x.example.com", "admin_email": "not-an-email"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Api-Key {_platform_key()}",
    )
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"slug", "admin_email"}


def test_platform_api_suspend_and_resume(world, platform_client):
    auth = {"HTTP_AUTHORIZATION": f"Api-Key {_platform_key()}"}
    assert platform_client.post("/api/v1/platform/operators/rival/suspend", **auth).json()["status"] == "suspended"
    assert Operator.objects.get(schema_name="rival").is_suspended
    assert platform_client.post("/api/v1/platform/operators/rival/resume", **auth).json()["status"] == "active"


def test_platform_admin_provisions_through_the_console(world, platform_client):
    staff = get_user_model().objects.get(username="admin@localhost")
    platform_client.force_login(staff)
    response = platform_client.post(
        "/admin/tenants/operator/add/",
        {
            "slug": "consoleco",
            "name": "ConsoleCo",
            "domain": "consoleco.example.com",
            "admin_email": "a@consoleco.com",
            "time_zone": "UTC",
            "currency": "EUR",
        },
    )
    assert response.status_code == 302, response.content
    assert schema_exists("consoleco")
