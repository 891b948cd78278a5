from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from core.models import Customer


class JobStatus(models.TextChoices):
    """Where a bulk job stands. `done`: every row was fed to acceptance (its messages may still be on their way)."""

    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    DONE = "done", "Done"
    CANCELLED = "cancelled", "Cancelled"


class JobRowOutcome(models.TextChoices):
    """What became of one line of a job's file (what became of its message: see the message)."""

    PENDING = "pending", "Waiting to be sent"
    INVALID = "invalid", "Refused in the file"
    MESSAGE = "message", "Accepted as a message"
    REJECTED = "rejected", "Refused at acceptance (a filter, no route)"
    CANCELLED = "cancelled", "Cancelled before it was sent"


class SmsJobQuerySet(models.QuerySet):
    def of_customer(self, customer):
        return self.filter(customer=customer)

    def due_to_start(self, now):
        """Scheduled jobs whose time has come."""
        return self.filter(status=JobStatus.SCHEDULED, scheduled_at__lte=now)

    def feeding_stalled(self, now, since):
        """Running jobs nobody fed since ``since`` (a worker died, or a wait after a 429 is over)."""
        return self.filter(status=JobStatus.RUNNING).filter(
            Q(retry_at__isnull=True) | Q(retry_at__lte=now),
            Q(last_fed_at__isnull=True) | Q(last_fed_at__lt=since),
        )


class SmsJob(models.Model):
    """One bulk send a client uploaded: a CSV of numbers with per-row variables filled into one text template.

    Its rows are fed to the normal acceptance pipeline in chunks (filters, routing, credit as for the API), now or at
    `scheduled_at`; a job can be paused (its queued messages are held), resumed and cancelled (queued messages are
    cancelled and their credit returned). Progress is counted from its rows and messages.
    """

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="sms_jobs")
    name = models.CharField(max_length=100, blank=True)
    file_name = models.CharField(max_length=200, blank=True)
    sender = models.CharField(max_length=16)
    template = models.TextField(help_text="The text; {column} is replaced by that column of each row.")
    columns = ArrayField(models.CharField(max_length=100), default=list, help_text="The file's header.")
    number_column = models.CharField(max_length=100)
    validity_s = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: the platform's default.")
    callback_url = models.URLField(max_length=500, blank=True)
    reference_prefix = models.CharField(
        max_length=80, blank=True, help_text="Each message's client reference is this followed by its line number."
    )
    scheduled_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.RUNNING)
    status_reason = models.CharField(max_length=300, blank=True, help_text="Why it paused or stopped.")
    total_rows = models.PositiveIntegerField(default=0)
    invalid_rows = models.PositiveIntegerField(default=0, help_text="Refused in the file (bad number, too long).")
    fed_rows = models.PositiveIntegerField(default=0, help_text="Fed to acceptance so far (accepted or refused).")
    rejected_rows = models.PositiveIntegerField(default=0, help_text="Refused at acceptance (filters, no route).")
    retry_at = models.DateTimeField(null=True, blank=True, help_text="Fed again from then (after a 429).")
    last_fed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SmsJobQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name = "SMS job"
        indexes = [
            models.Index(fields=["customer", "-id"], name="sms_job_customer"),
            models.Index(
                fields=["status"], name="sms_job_active", condition=Q(status__in=["scheduled", "running"])
            ),
        ]

    def __str__(self) -> str:
        return self.name or f"Job {self.pk}"


class SmsJobRow(models.Model):
    """One line of a job's file: the number, its variables, and the message it became (or why it did not)."""

    job = models.ForeignKey(SmsJob, on_delete=models.CASCADE, related_name="rows")
    line = models.PositiveIntegerField(help_text="Line number in the file (the header is line 1).")
    destination = models.CharField(max_length=40, help_text="E.164 with +, or the value as given when invalid.")
    variables = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=10, choices=JobRowOutcome.choices, default=JobRowOutcome.PENDING)
    reason = models.CharField(max_length=200, blank=True)
    message = models.ForeignKey(
        "sms.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["job", "line"]
        verbose_name = "SMS job row"
        constraints = [models.UniqueConstraint(fields=["job", "line"], name="uniq_sms_job_row_line")]
        indexes = [models.Index(fields=["job", "line"], name="sms_job_row_pending", condition=Q(outcome="pending"))]

    def __str__(self) -> str:
        return f"{self.job_id}:{self.line} {self.destination} ({self.outcome})"
