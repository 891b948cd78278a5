"""The demo's SMS set-up: made once, through the services, and usable at once."""

import pytest
from django_tenants.utils import schema_context

from sms.demo import sms_demo_load
from sms.models import Gateway

pytestmark = pytest.mark.django_db


def test_the_sms_demo_is_made_once_and_can_send(world, demo_client):
    with schema_context("demo"):
        client = sms_demo_load(operator=world.demo, password="demo-pass-1")
        assert sms_demo_load(operator=world.demo) == client
        assert Gateway.objects.filter(name="Local SMSC simulator").count() == 1
    from conftest import login_as

    login_as(demo_client, "demo", "ops@textco.example")
    response = demo_client.post(
        "/api/v1/sms/messages", {"to": "+34612345678", "text": "demo"}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["messages"][0]["price"] == "0.040000"  # the Spain-mobile route
