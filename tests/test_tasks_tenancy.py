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
    assert {k: demo[k] for k in ("schema", "marker", "customers")} == {
        "schema": "demo",
        "marker": "from-demo",
        "customers": 1,
    }
    assert {k: rival[k] for k in ("schema", "marker", "customers")} == {
        "schema": "rival",
        "marker": "from-rival",
        "customers": 0,
    }


def test_a_worker_keeps_its_database_session_and_replaces_a_broken_one(worker, world, django_db_blocker):
    with django_db_blocker.unblock(), schema_context("demo"):
        first = ping_schema.apply_async(("one",)).get(timeout=20)["backend"]
        second = ping_schema.apply_async(("two",)).get(timeout=20)["backend"]
        assert second == first  # not a new PostgreSQL backend per task (CELERY_DB_REUSE_MAX)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [first])
        after = ping_schema.apply_async(("after",)).get(timeout=20)
    assert after["marker"] == "after" and after["backend"] != first


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
