import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("urlconf", ["config.urls_tenant", "config.urls_public"])
def test_openapi_schema_validates_without_warnings(world, urlconf, tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--urlconf", urlconf, "--file", str(out))
    assert "/api/v1/" in out.read_text()


def test_schema_and_docs_are_served(world, demo_client, platform_client):
    assert b"/api/v1/me" in demo_client.get("/api/schema/").content
    assert b"/api/v1/platform/operators/" in platform_client.get("/api/schema/").content
    assert demo_client.get("/api/docs/").status_code == 200
