"""Billing's Celery tasks: thin wrappers over services, each run in the schema of the operator that enqueued it
(``core.tasks.OperatorTask``: skipped while the operator is suspended). Safe to run twice.

Queues: rating work goes to ``rating`` (``cdrs_rate_pending_schedule`` enqueues it there), the reservation sweep to
``default`` (``CELERY_BEAT_SCHEDULE`` in the settings), rerate runs to ``reports`` (``services.rerate``)."""

from celery import shared_task
from django.db import connection
from django_tenants.utils import get_public_schema_name

from .services.grants import grants_idle_release
from .services.ingest import cdrs_rate_pending
from .services.ledger import reservations_expire
from .services.rerate import rerate_run_confirm, rerate_run_preview


@shared_task(name="billing.cdrs_rate_pending")
def cdrs_rate_pending_task() -> int:
    """Rate the operator's unrated CDRs whose missing rate, account, freephone number or trunk has appeared."""
    return cdrs_rate_pending()


@shared_task(name="billing.reservations_expire")
def reservations_expire_task() -> int:
    """Release the operator's reservations nobody committed in time, and the undrawn credit of idle grants (beat:
    every minute, every operator)."""
    if connection.schema_name == get_public_schema_name():
        return 0  # beat's all-tenant entries reach the public schema too, which has no accounts
    return reservations_expire() + grants_idle_release()


@shared_task(name="billing.rerate_run_preview")
def rerate_run_preview_task(run_id: int) -> str:
    """Compute a queued rerate what-if (queue ``reports``); returns the run's status."""
    return rerate_run_preview(run_id=run_id).status


@shared_task(name="billing.rerate_run_confirm")
def rerate_run_confirm_task(run_id: int) -> str:
    """Confirm a rerate run: post its adjustments (queue ``reports``); returns the run's status."""
    return rerate_run_confirm(run_id=run_id).status
