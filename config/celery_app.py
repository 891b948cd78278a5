"""The Celery app: Redis broker, one queue per kind of work, tasks run in their operator's schema."""

import os

from celery import signals
from django.db import close_old_connections
from kombu import Queue
from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = CeleryApp("opencarrier", task_cls="core.tasks:OperatorTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [
    Queue(name, routing_key=name) for name in ("default", "rating", "sms", "callcontrol", "reports")
]
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _database_connections_check(sender=None, **kwargs) -> None:
    """What Django does around each request: drop a connection that is broken or older than CONN_MAX_AGE (Celery's
    fix-up keeps them between tasks, see CELERY_DB_REUSE_MAX). Not for a task run in the caller's process (apply()):
    that connection is the caller's, maybe inside its transaction."""
    if not getattr(getattr(sender, "request", None), "is_eager", False):
        close_old_connections()
