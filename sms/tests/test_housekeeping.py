"""The periodic task: recovery of dead submitters' messages, expiry, wake-ups; fanned out from the public schema."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from config.celery_app import app
from sms.models import Message
from sms.services import sms_maintain
from sms.tasks import maintain
from tenants.models import Operator

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _purge_broker():
    yield
    app.control.purge()  # what these tests queued for workers that do not run here


def test_in_the_public_schema_it_queues_itself_for_every_active_operator(world):
    connection.set_schema_to_public()
    assert maintain.run() == {"fanned_out": Operator.objects.operators().active().count()}


def test_it_recovers_dead_submitters_and_expires_in_one_run(demo_client, sms_world, in_schema):
    response = demo_client.post(
        "/api/v1/sms/messages",
        {"messages": [{"to": "+34612345678", "text": "a", "validity": 60}, {"to": "+34612345679", "text": "b"}]},
        content_type="application/json",
        **sms_world.auth,
    )
    first, second = (m["id"] for m in response.json()["messages"])
    with in_schema("demo"):
        Message.objects.filter(pk=second).update(status="submitting", claimed_by="gone:1:dead")
        result = sms_maintain(now=timezone.now() + timedelta(minutes=5))
        assert result == {"recovered": 1, "expired": 1}
        assert Message.objects.get(pk=first).status == "expired"
        assert Message.objects.get(pk=second).status == "accepted"
