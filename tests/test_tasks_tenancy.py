"""Tasks run in the schema of the operator that enqueued them, and are skipped while it is suspended."""

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from core.tasks import ping_schema
from tenants.models import Operator
from tests.celery_worker import celery_worker


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), celery_worker():
        yield


def test_task_runs_in_the_enqueuing_operators_schema(worker, world, django_db_blocker):
    with django_db_blocker.unblock():
        with schema_context("demo"):
            demo = ping_schema.apply_async(("from-demo",)).get(timeout=20)
        with schema_context("rival"):
            rival = ping_schema.apply_async(("from-rival",)).get(timeout=20)
    # demo has the client Acme; rival has no customers: each task saw its own schema's rows.
    assert demo == {"schema": "demo", "marker": "from-demo", "customers": 1}
    assert rival == {"schema": "rival", "marker": "from-rival", "customers": 0}


def test_suspended_operators_tasks_are_skipped_and_resume_restores(worker, world, django_db_blocker):
    with django_db_blocker.unblock():
        Operator.objects.filter(schema_name="rival").update(status="suspended")
        try:
            with schema_context("rival"):
                skipped = ping_schema.apply_async(("while-suspended",)).get(timeout=20)
        finally:
            Operator.objects.filter(schema_name="rival").update(status="active")
        with schema_context("rival"):
            resumed = ping_schema.apply_async(("after-resume",)).get(timeout=20)
        connection.set_schema_to_public()
    assert skipped == {"skipped": "operator_suspended"}
    assert resumed["schema"] == "rival" and resumed["marker"] == "after-resume"
