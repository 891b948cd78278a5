"""The base of every Celery task: runs in the schema of the operator that enqueued it, skips suspended ones."""

import logging

from celery import shared_task
from django.db import connection
from tenant_schemas_celery.task import TenantTask

log = logging.getLogger(__name__)


class OperatorTask(TenantTask):
    abstract = True

    def __call__(self, *args, **kwargs):
        # tenant-schemas-celery switched the connection to the task's schema before we get here, reading the
        # operator row afresh for each task (task_tenant_cache_seconds is 0), so a suspension applies at once.
        tenant = getattr(connection, "tenant", None)
        if getattr(tenant, "is_suspended", False):
            log.info("skipping %s for suspended operator %s", self.name, tenant.schema_name)
            return {"skipped": "operator_suspended"}
        return super().__call__(*args, **kwargs)


@shared_task(name="core.ping_schema")
def ping_schema(marker: str) -> dict:
    """Report which schema the worker ran in and what it sees there: a probe for health and for tests."""
    from .models import Customer

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    return {
        "schema": connection.schema_name,
        "marker": marker,
        "customers": Customer.objects.count(),
        "backend": backend,  # the PostgreSQL session the worker used
    }


@shared_task(name="core.publish_live_event")
def publish_live_event(topic: str, payload: dict) -> None:
    """Stream an event to the operator's staff on /ws/live/ from a worker."""
    from .live import live_event_publish

    live_event_publish(schema=connection.schema_name, topic=topic, payload=payload)
