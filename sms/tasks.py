"""Celery tasks of the SMS app: thin wrappers over the services, each run in its operator's schema.

Queues are named where the tasks are sent (``sms.services.wakeups``), not on the tasks.

- ``sms.submit_pending`` (queue ``sms``): submit due messages through this process's SMPP binds (sms.runner),
  for a time slice; queued by the wake-ups (sms.services.wakeups), never per message.
- ``sms.callbacks_send`` (queue ``default``): POST due delivery reports.
- ``sms.maintain`` (every MAINTAIN_EVERY_S for every operator, from beat): recovery, expiry, wake-ups.
- ``sms.fraud_alert``: tell the operator's staff a fraud limit was hit.
- ``sms.job_feed`` (queue ``default``): feed a bulk job's rows to acceptance for a time slice (sms.services.jobs);
  queued when a job starts or resumes, and by ``sms.maintain`` for scheduled jobs that are due and stalled ones.
Each is safe to run twice.
"""

from celery import shared_task
from celery.signals import worker_process_shutdown, worker_shutdown
from django.db import connection

from config.celery_app import app

from .services.callbacks import callbacks_send_due
from .services.housekeeping import fraud_alert_send, sms_maintain
from .services.jobs import job_feed as job_feed_run
from .services.jobs import job_feed_drained, job_feed_kick, jobs_maintain
from .services.wakeups import callbacks_drained, callbacks_kick, submission_drained, submission_kick

MAINTAIN_EVERY_S = 5.0
DRAIN_BUDGET_S = 1.0


@shared_task(name="sms.submit_pending", ignore_result=True)
def submit_pending() -> None:
    from .models import Message
    from .runner import runner_get

    schema = connection.schema_name
    if runner_get().drain(schema=schema, budget_s=DRAIN_BUDGET_S):
        submission_kick(schema=schema, force=True)  # more is due: continue in a fresh task, after others' turns
        return
    submission_drained(schema=schema)
    from django.utils import timezone

    if Message.objects.due(timezone.now()).exists():  # committed while we were finishing
        submission_kick(schema=schema)


@shared_task(name="sms.callbacks_send", ignore_result=True)
def callbacks_send() -> None:
    schema = connection.schema_name
    if callbacks_send_due() > 0:
        callbacks_kick(schema=schema, force=True)
        return
    callbacks_drained(schema=schema)
    if callbacks_send_due() > 0:
        callbacks_kick(schema=schema)


@shared_task(name="sms.maintain", ignore_result=True)
def maintain() -> dict:
    """In an operator's schema: its housekeeping. In the public schema (how the beat entry may arrive, depending on
    the scheduler): queue it for every active operator instead."""
    if connection.schema_name == "public":
        from django_tenants.utils import schema_context

        from tenants.models import Operator

        schemas = list(Operator.objects.operators().active().values_list("schema_name", flat=True))
        for schema in schemas:
            with schema_context(schema):
                maintain.apply_async(queue="default", expires=MAINTAIN_EVERY_S)
        return {"fanned_out": len(schemas)}
    return {**sms_maintain(), **jobs_maintain()}


@shared_task(name="sms.fraud_alert", ignore_result=True)
def fraud_alert(*, limit_id: int, customer_id: int, scope: str) -> None:
    fraud_alert_send(limit_id=limit_id, customer_id=customer_id, scope=scope)


@shared_task(name="sms.job_feed", ignore_result=True)
def job_feed(*, job_id: int) -> None:
    schema = connection.schema_name
    result = job_feed_run(job_id=job_id)
    if result.state == "more":
        job_feed_kick(schema=schema, job_id=job_id, force=True)
    elif result.state == "wait":
        job_feed_kick(schema=schema, job_id=job_id, countdown=result.retry_in, force=True)
    else:
        job_feed_drained(schema=schema, job_id=job_id)


# Every operator, every few seconds (tenant-schemas-celery's beat sends an entry without schemas to all tenants).
app.conf.beat_schedule = {
    **(app.conf.beat_schedule or {}),
    "sms-maintain": {
        "task": "sms.maintain",
        "schedule": MAINTAIN_EVERY_S,
        "options": {"expires": MAINTAIN_EVERY_S, "queue": "default"},
    },
}


@worker_shutdown.connect
@worker_process_shutdown.connect
def _runner_stop(**kwargs) -> None:
    """Unbind cleanly and give back what was not sent when the worker stops."""
    from .runner import runner_stop

    runner_stop()
