"""Reads of bulk jobs: the jobs a caller may see, their progress, their rows' report."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal

from django.db.models import Count, Q, Sum

from core.models import Customer

from .choices import MessageStatus, RejectReason
from .models import JobStatus, Message, SmsJob, SmsJobRow
from .selectors_reports import CHARGED_CREDIT, CHARGED_PARTS, csv_row
from .services.jobs import HOLD_UNTIL


def job_list(*, customer: Customer | None):
    """The customer's jobs (every job of the operator for staff: ``customer`` None), newest first."""
    queryset = SmsJob.objects.select_related("customer")
    return queryset if customer is None else queryset.of_customer(customer)


def job_rows(*, job: SmsJob):
    return SmsJobRow.objects.filter(job=job).select_related("message").order_by("line")


_QUEUED = Q(status=MessageStatus.ACCEPTED)


def jobs_progress(*, jobs: list[SmsJob]) -> dict[int, dict]:
    """Progress of each job by id, in one query over their messages for however many jobs.

    Rows: total, refused in the file (``invalid``), refused at acceptance (``rejected``), ``accepted``, ``pending``
    (not fed yet), ``cancelled`` (never fed). Messages: ``queued`` (of which ``held`` by a pause), ``submitted``,
    ``delivered``, ``undelivered``, ``expired``, ``failed`` (every gateway refused it), ``cancelled_messages``;
    ``parts`` and credit ``spent`` (what the messages' charge records kept, as the reports count them: parts an SMSC
    accepted stay charged when the rest is refunded) and ``reserved`` (held for queued messages).
    """
    ids = [job.pk for job in jobs]
    by_job = {
        row["job_id"]: row
        for row in Message.objects.filter(job_id__in=ids)
        .values("job_id")
        .annotate(
            queued=Count("id", filter=_QUEUED),
            held=Count("id", filter=_QUEUED & Q(not_before__gte=HOLD_UNTIL)),
            submitted=Count("id", filter=Q(status__in=[MessageStatus.SUBMITTING, MessageStatus.SUBMITTED])),
            delivered=Count("id", filter=Q(status=MessageStatus.DELIVERED)),
            undelivered=Count("id", filter=Q(status=MessageStatus.UNDELIVERED)),
            expired=Count("id", filter=Q(status=MessageStatus.EXPIRED)),
            refused=Count("id", filter=Q(status=MessageStatus.REJECTED) & ~Q(error_code=RejectReason.CANCELLED)),
            cancelled_messages=Count("id", filter=Q(status=MessageStatus.REJECTED, error_code=RejectReason.CANCELLED)),
            # what the charge records kept, as the reports count (sms.selectors_reports): a message refused after an
            # SMSC took its first parts keeps those parts; a queued one has none charged yet
            parts=Sum(CHARGED_PARTS),
            spent=Sum(CHARGED_CREDIT),
            reserved=Sum("price", filter=_QUEUED & Q(charged_at__isnull=True)),
        )
    }
    progress = {}
    for job in jobs:
        counts = by_job.get(job.pk, {})
        accepted = job.fed_rows - job.rejected_rows
        finished_rows = job.invalid_rows + job.rejected_rows + accepted
        cancelled_rows = job.total_rows - finished_rows if job.status == JobStatus.CANCELLED else 0
        pending = job.total_rows - finished_rows - cancelled_rows
        progress[job.pk] = {
            "total": job.total_rows,
            "invalid": job.invalid_rows,
            "rejected": job.rejected_rows,
            "accepted": accepted,
            "pending": pending,
            "cancelled": cancelled_rows,
            "queued": counts.get("queued", 0),
            "held": counts.get("held", 0),
            "submitted": counts.get("submitted", 0),
            "delivered": counts.get("delivered", 0),
            "undelivered": counts.get("undelivered", 0),
            "expired": counts.get("expired", 0),
            "failed": counts.get("refused", 0) - job.rejected_rows,  # refused after acceptance
            "cancelled_messages": counts.get("cancelled_messages", 0),
            "parts": counts.get("parts") or 0,
            "spent": counts.get("spent") or Decimal(0),
            "reserved": counts.get("reserved") or Decimal(0),
            "percent": round(100 * (job.total_rows - pending) / job.total_rows) if job.total_rows else 100,
        }
    return progress


def job_progress(*, job: SmsJob) -> dict:
    return jobs_progress(jobs=[job])[job.pk]


REPORT_COLUMNS = ["line", "to", "outcome", "reason", "message_id", "status", "error_code", "error_description", "price"]


def job_report_filename(job: SmsJob) -> str:
    return f"sms-job-{job.pk}.csv"


def job_report_csv(*, job: SmsJob) -> Iterator[str]:
    """The job's report, one CSV line per row of its file, in chunks of about 64 kB (for a streaming response)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        value = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return value

    writer.writerow(REPORT_COLUMNS)
    for row in job_rows(job=job).iterator(chunk_size=2000):
        message = row.message
        writer.writerow(
            csv_row(
                [
                    row.line,
                    row.destination,
                    row.outcome,
                    row.reason,
                    row.message_id or "",
                    message.status if message else "",
                    message.error_code if message else "",
                    message.error_description if message else "",
                    message.price if message else "",
                ]
            )
        )
        if buffer.tell() > 64 * 1024:
            yield flush()
    yield flush()
