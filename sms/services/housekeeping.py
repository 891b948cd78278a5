"""Periodic work of each operator (the `sms.maintain` task, every few seconds): take over what dead submitters
left, expire what waited past its validity, and make sure due messages and callbacks have a drain queued."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import connection
from django.utils import timezone

from core.live import live_event_publish
from core.models import Customer

from ..choices import CallbackState
from ..kv import runner_alive
from ..models import CallbackBatch, FraudLimit, Message
from .incoming import incoming_parts_expire
from .submission import messages_expire, submissions_recover
from .wakeups import callbacks_kick, submission_kick

STALE_S = 5  # work due this long ago with no drain running: the wake-up flag is stale, queue a drain anyway


def sms_maintain(*, now: datetime | None = None) -> dict:
    now = now or timezone.now()
    schema = connection.schema_name
    recovered = submissions_recover(alive=runner_alive, now=now)
    expired = 0
    while True:
        count = messages_expire(now=now)
        expired += count
        if count < 1000:
            break
    stale = now - timedelta(seconds=STALE_S)
    if recovered or Message.objects.due(now).exists():
        submission_kick(schema=schema, force=bool(recovered) or Message.objects.due(stale).exists())
    pending = CallbackBatch.objects.filter(state=CallbackState.PENDING)
    if pending.filter(next_attempt_at__lte=now).exists():
        callbacks_kick(schema=schema, force=pending.filter(next_attempt_at__lte=stale).exists())
    incoming_parts_expire()  # long MO messages whose parts stopped arriving: stored as what arrived
    return {"recovered": recovered, "expired": expired}


def fraud_alert_send(*, limit_id: int, customer_id: int, scope: str) -> None:
    """Tell the operator's staff a fraud limit was hit: a live event on /ws/live/ and an email."""
    limit = FraudLimit.objects.filter(pk=limit_id).first()
    customer = Customer.objects.filter(pk=customer_id).first()
    if limit is None or customer is None:
        return
    what = f"{limit.get_metric_display().lower()} per {limit.get_period_display().lower()}"
    scope_text = "" if scope == "*" else f" ({limit.get_scope_display().lower()}: {scope})"
    message = f"SMS fraud limit “{limit.name}” ({limit.limit} {what}) reached by {customer.name}{scope_text}."
    live_event_publish(
        schema=connection.schema_name,
        topic="sms.fraud_limit",
        payload={"limit": limit.name, "limit_id": limit.pk, "customer": customer.name, "scope": scope, "text": message},
    )
    staff = (
        get_user_model()
        .objects.filter(is_staff=True, is_active=True, customer_member__isnull=True)
        .exclude(email="")
        .values_list("email", flat=True)
    )
    if staff:
        send_mail(
            subject=f"[SMS] Fraud limit reached: {limit.name}",
            message=message + "\n\nFurther messages over the limit are refused until the period ends.",
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=list(staff),
        )
