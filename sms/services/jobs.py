"""Bulk jobs and cancelling queued messages.

A job is a client's CSV file (a header, a number column — ``to``, ``number``, ``destination``, ``msisdn``, ``phone``
or ``mobile`` — and any other columns) plus one text template whose ``{column}`` placeholders are filled from each
row (``{{`` and ``}}`` are literal braces). `job_create` checks the whole file first: a structurally bad file (no
number column, a placeholder with no column, a line that does not parse, too many rows) is refused with every bad
line listed and nothing stored. A row whose number is not valid, or whose filled text is empty or too long, is not a
file error: it is stored as ``invalid`` with its reason and shows in the job's report.

Feeding (`job_feed`, from the ``sms.job_feed`` task) hands the rows to the same acceptance pipeline as the API
(`messages_accept`: filters, routing, pricing, one credit reservation per chunk) in chunks of CHUNK_ROWS. Each chunk
is one transaction that locks the job row, takes the next pending rows in line order, accepts them as one request
and records each row's message: a worker killed mid-chunk commits nothing (the chunk is fed again, whole), a
committed row is never fed again, and two feeders of one job take turns on the lock. Not enough credit (402)
pauses the job with the reason; too fast or queue full (429) makes it wait Retry-After and go on.

Pausing stops the feeding and holds the job's queued messages (their `not_before` is pushed to HOLD_UNTIL; their
validity keeps running); resuming releases them. Cancelling stops the job for good: rows not fed yet are cancelled,
queued messages are closed as ``rejected`` / ``cancelled`` with their credit back, through the same path as expiry.
"""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ..choices import MessageStatus, RejectReason
from ..encoding import MessageTooLong, count_parts
from ..kv import key, kv
from ..models import JobRowOutcome, JobStatus, Message, SmsJob, SmsJobRow
from ..numbers import InvalidNumber, number_parse
from ..selectors import sms_config_get
from .accept import CreditInsufficient, RequestInvalid, RequestRefused, _fields_check, messages_accept
from .bulk import rows_update
from .submission import _MESSAGE_FIELDS, _close, _Closing

CHUNK_ROWS = 500
FEED_BUDGET_S = 2.0
FEED_STALE_S = 15  # a running job nobody fed for this long gets a feeder again (the last one died)
FEED_KICK_TTL_MS = 10_000
HOLD_UNTIL = datetime(9000, 1, 1, tzinfo=UTC)  # the `not_before` of a paused job's queued messages
NUMBER_COLUMNS = ("to", "number", "destination", "msisdn", "phone", "mobile")
MAX_REFERENCE_PREFIX = 80
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def max_job_rows() -> int:
    return int(getattr(settings, "SMS_JOB_MAX_ROWS", 100_000))


def max_file_bytes() -> int:
    return int(getattr(settings, "SMS_JOB_MAX_FILE_BYTES", 20 * 1024 * 1024))


def job_upload_too_large(content_length: str | int | None) -> bool:
    """Whether a request announcing this body size cannot hold an acceptable file (checked before reading it)."""
    try:
        return int(content_length or 0) > max_file_bytes() + 64 * 1024  # room for the form's other fields
    except ValueError:
        return False


def job_file_read(*, upload) -> str:
    """The uploaded CSV as text; RequestInvalid naming ``file`` when it is too large or not UTF-8."""
    if upload.size > max_file_bytes():
        raise RequestInvalid({"file": [job_file_too_large_message()]})
    try:
        return upload.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestInvalid({"file": [f"The file is not UTF-8 text: {exc}."]}) from exc


def job_file_too_large_message() -> str:
    limit = max_file_bytes()
    return f"At most {limit // (1024 * 1024)} MB." if limit >= 1024 * 1024 else f"At most {limit} bytes."


class JobFileInvalid(Exception):
    """The file cannot be a job; ``errors`` lists every bad line: ``{"line", "column", "reason"}``."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__(f"{len(errors)} bad line(s)")


class JobStateError(Exception):
    """The job (or message) is not in a state that allows this (409)."""


# --- the file and the template ------------------------------------------------------------------------------------


def template_placeholders(template: str) -> list[str]:
    """The column names the template uses, lower-cased, in order of first use."""
    names: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name is not None and name.strip().lower() not in names:
            names.append(name.strip().lower())
    return names


def template_fill(template: str, variables: dict[str, str]) -> str:
    """The template with each ``{column}`` replaced by the row's value (column names are not case-sensitive)."""

    def value(match: re.Match) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return variables.get(match.group(1).strip().lower(), "")

    return _PLACEHOLDER.sub(value, template)


@dataclass(frozen=True, slots=True)
class ParsedFile:
    columns: list[str]  # lower-cased, as the variables are keyed
    number_column: str
    rows: list[tuple[int, dict[str, str]]]  # (line, values by column)


def job_file_parse(*, source: str, template: str, max_rows: int | None = None) -> ParsedFile:
    """Parse a job's CSV (comma, semicolon or tab separated, with a header); JobFileInvalid lists every bad line."""
    max_rows = max_rows or max_job_rows()
    errors: list[dict] = []
    sample = source[:4096].split("\n", 1)[0]
    delimiter = max(",;\t", key=sample.count) if sample else ","
    reader = csv.reader(io.StringIO(source), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise JobFileInvalid([{"line": 1, "column": "", "reason": f"The header does not parse: {exc}."}]) from exc
    if not header or not "".join(header).strip():
        raise JobFileInvalid([{"line": 1, "column": "", "reason": "The file is empty: give a header line first."}])
    columns = [name.strip().lower() for name in header]
    for index, name in enumerate(columns):
        if not name:
            errors.append({"line": 1, "column": f"#{index + 1}", "reason": "A column has no name."})
        elif columns.index(name) != index:
            errors.append({"line": 1, "column": name, "reason": f"The column {name!r} appears twice."})
    number_column = next((name for name in NUMBER_COLUMNS if name in columns), "")
    if not number_column:
        errors.append(
            {
                "line": 1,
                "column": "",
                "reason": f"No number column: name one of {', '.join(NUMBER_COLUMNS)} in the header.",
            }
        )
    for name in template_placeholders(template):
        if not name:
            errors.append({"line": 1, "column": "{}", "reason": "The text has an empty placeholder {}."})
        elif name not in columns:
            errors.append(
                {"line": 1, "column": name, "reason": f"The text uses {{{name}}} but the file has no such column."}
            )
    rows: list[tuple[int, dict[str, str]]] = []
    last_line = 1
    while True:
        start = last_line + 1
        try:
            record = next(reader, None)
        except csv.Error as exc:
            errors.append({"line": reader.line_num, "column": "", "reason": f"The line does not parse: {exc}."})
            if reader.line_num <= last_line:  # no progress: the rest of the file is one broken field
                break
            last_line = reader.line_num
            continue
        if record is None:
            break
        last_line = reader.line_num
        if not record or not "".join(record).strip():
            continue
        if len(record) != len(columns):
            errors.append(
                {"line": start, "column": "", "reason": f"{len(record)} fields; the header has {len(columns)}."}
            )
            continue
        if len(rows) >= max_rows:
            errors.append({"line": start, "column": "", "reason": f"Over the limit of {max_rows} rows per job."})
            break
        rows.append((start, {name: value.strip() for name, value in zip(columns, record, strict=True)}))
    if not rows and not errors:
        errors.append({"line": 2, "column": "", "reason": "The file has a header but no rows."})
    if errors:
        raise JobFileInvalid(errors)
    return ParsedFile(columns=columns, number_column=number_column, rows=rows)


# --- creating -----------------------------------------------------------------------------------------------------


def job_create(
    *,
    customer,
    source: str,
    options: dict,
    name: str = "",
    file_name: str = "",
    reference_prefix: str = "",
    now: datetime | None = None,
) -> SmsJob:
    """Store a job from a CSV and the send options (``text`` — the template —, ``from``, ``scheduled_at``,
    ``validity``, ``callback_url``, named and checked as for sending); it starts now or when scheduled.

    Raises RequestRefused (not an SMS client), RequestInvalid (an option, by field) or JobFileInvalid (the file).
    """
    now = now or timezone.now()
    config = sms_config_get()
    client = config.clients.get(customer.pk) if customer is not None else None
    if client is None:
        raise RequestRefused(403, "not_sms_client", "Only an SMS client's logins can send messages.")
    template = options.get("text")
    checked = {k: options[k] for k in ("from", "scheduled_at", "validity", "callback_url") if k in options}
    clean, errors = _fields_check(checked, client=client, config=config, now=now)
    if not isinstance(template, str) or not template.strip():
        errors["text"] = ["Give the text (the template) of the messages."]
    if "from" not in clean and "from" not in errors:
        if client.sender_ids:
            clean["from"] = client.sender_ids[0]
        else:
            errors["from"] = ["This field is required."]
    if len(reference_prefix) > MAX_REFERENCE_PREFIX:
        errors["reference_prefix"] = [f"At most {MAX_REFERENCE_PREFIX} characters."]
    if errors:
        raise RequestInvalid(errors)
    parsed = job_file_parse(source=source, template=template)

    job_rows: list[SmsJobRow] = []
    invalid = 0
    for line, values in parsed.rows:
        raw_number = values[parsed.number_column]
        row = SmsJobRow(line=line, destination=raw_number[:40], variables=values)
        try:
            number = number_parse(raw_number, prefixes=config.prefixes)
        except InvalidNumber as exc:
            row.outcome, row.reason = JobRowOutcome.INVALID, f"Invalid number: {exc}"[:200]
        else:
            row.destination = number.e164
            text = template_fill(template, values)
            if not text.strip():
                row.outcome, row.reason = JobRowOutcome.INVALID, "The text is empty once filled."
            else:
                try:
                    count_parts(text)
                except MessageTooLong as exc:
                    row.outcome, row.reason = JobRowOutcome.INVALID, f"The text is too long: {exc}."[:200]
        invalid += row.outcome == JobRowOutcome.INVALID
        job_rows.append(row)

    scheduled_at = clean.get("scheduled_at")
    with transaction.atomic():
        job = SmsJob.objects.create(
            customer=customer,
            name=name[:100],
            file_name=file_name[:200],
            sender=clean["from"],
            template=template,
            columns=parsed.columns,
            number_column=parsed.number_column,
            validity_s=clean.get("validity"),
            callback_url=clean.get("callback_url", ""),
            reference_prefix=reference_prefix,
            scheduled_at=scheduled_at,
            status=JobStatus.SCHEDULED if scheduled_at else JobStatus.RUNNING,
            started_at=None if scheduled_at else now,
            total_rows=len(job_rows),
            invalid_rows=invalid,
        )
        for row in job_rows:
            row.job = job
        SmsJobRow.objects.bulk_create(job_rows, batch_size=5000)
        if not scheduled_at:
            _kick_after_commit(job.pk)
    return job


# --- feeding ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedResult:
    """``state``: ``more`` (rows left, feed again), ``wait`` (429: again in ``retry_in`` seconds), or the job's
    status when it is not running (``done``, ``paused``, ``cancelled``, ``scheduled``)."""

    state: str
    retry_in: float = 0.0
    fed: int = 0


def job_feed(
    *,
    job_id: int,
    budget_s: float = FEED_BUDGET_S,
    max_chunks: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    now: datetime | None = None,
) -> FeedResult:
    """Feed the job chunk after chunk for about ``budget_s`` seconds (or ``max_chunks``)."""
    started = time.monotonic()
    fed = chunks = 0
    while True:
        result = job_chunk_feed(job_id=job_id, chunk_rows=chunk_rows, now=now)
        fed += result.fed
        chunks += 1
        if result.state != "more":
            return FeedResult(result.state, result.retry_in, fed)
        if (max_chunks and chunks >= max_chunks) or time.monotonic() - started >= budget_s:
            return FeedResult("more", 0.0, fed)


def job_chunk_feed(*, job_id: int, chunk_rows: int = CHUNK_ROWS, now: datetime | None = None) -> FeedResult:
    """Feed the job's next chunk of rows to acceptance, in one transaction (see the module docstring)."""
    now = now or timezone.now()
    with transaction.atomic():
        job = SmsJob.objects.select_for_update(of=("self",)).select_related("customer").filter(pk=job_id).first()
        if job is None:
            return FeedResult(JobStatus.CANCELLED)
        if job.status != JobStatus.RUNNING:
            return FeedResult(job.status)
        if job.retry_at and job.retry_at > now:
            return FeedResult("wait", (job.retry_at - now).total_seconds())
        rows = list(
            SmsJobRow.objects.filter(job=job, outcome=JobRowOutcome.PENDING)
            .order_by("line")
            .only("id", "line", "destination", "variables")[:chunk_rows]
        )
        if not rows:
            return FeedResult(_job_finish(job, now=now))
        try:
            with transaction.atomic():
                accepted = messages_accept(
                    customer=job.customer, payload=_payload(job, rows), now=now, job_id=job.pk
                )
        except CreditInsufficient as exc:
            reason = (
                f"Out of credit: the next {len(rows)} messages cost {_money(exc.needed)} {exc.currency}, "
                f"{_money(exc.available)} is available. Top up and resume."
            )
            _job_pause_locked(job, reason=reason, now=now)
            return FeedResult(JobStatus.PAUSED)
        except RequestRefused as exc:
            if exc.status == 429:
                wait = max(1, exc.retry_after or 1)
                job.retry_at = now + timedelta(seconds=wait)
                job.status_reason = f"Waiting {wait} s: {exc.message}"[:300]
                job.save(update_fields=["retry_at", "status_reason", "updated_at"])
                return FeedResult("wait", float(wait))
            _job_pause_locked(job, reason=f"Refused: {exc.message}", now=now)
            return FeedResult(JobStatus.PAUSED)
        except RequestInvalid as exc:
            bad = _invalid_positions(exc.fields, count=len(rows))
            if not bad:  # a job-wide option no longer holds (e.g. the sender id was taken away)
                detail = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.fields.items())
                _job_pause_locked(job, reason=f"Invalid: {detail}", now=now)
                return FeedResult(JobStatus.PAUSED)
            rows_update(
                table=SmsJobRow._meta.db_table,
                columns=[("outcome", "text"), ("reason", "text"), ("updated_at", "timestamptz")],
                rows=[(rows[i].id, JobRowOutcome.INVALID.value, reason[:200], now) for i, reason in bad.items()],
            )
            job.invalid_rows += len(bad)
            job.save(update_fields=["invalid_rows", "updated_at"])
            return FeedResult("more")

        refused = 0
        updates = []
        for row, message in zip(rows, accepted.messages, strict=True):
            if message.status == MessageStatus.REJECTED:
                refused += 1
                updates.append((row.id, JobRowOutcome.REJECTED.value, message.error_description[:200], message.id, now))
            else:
                updates.append((row.id, JobRowOutcome.MESSAGE.value, "", message.id, now))
        rows_update(
            table=SmsJobRow._meta.db_table,
            columns=[("outcome", "text"), ("reason", "text"), ("message_id", "bigint"), ("updated_at", "timestamptz")],
            rows=updates,
        )
        job.fed_rows += len(rows)
        job.rejected_rows += refused
        job.last_fed_at = now
        job.retry_at = None
        job.status_reason = ""
        if len(rows) < chunk_rows:
            _job_finish(job, now=now)
        else:
            job.save()
    return FeedResult("more" if job.status == JobStatus.RUNNING else job.status, fed=len(rows))


def _money(amount: Decimal) -> str:
    """0.100000 → 0.10, 0.003500 → 0.0035."""
    amount = amount.normalize()
    return f"{amount:.2f}" if amount == amount.quantize(Decimal("0.01")) else format(amount, "f")


def _payload(job: SmsJob, rows: list[SmsJobRow]) -> dict:
    prefix = job.reference_prefix or f"job{job.pk}-"
    payload: dict = {
        "from": job.sender,
        "messages": [
            {
                "to": row.destination,
                "text": template_fill(job.template, row.variables),
                "client_reference": f"{prefix}{row.line}",
            }
            for row in rows
        ],
    }
    if job.validity_s:
        payload["validity"] = job.validity_s
    if job.callback_url:
        payload["callback_url"] = job.callback_url
    return payload


_POSITION = re.compile(r"^messages\[(\d+)\]")


def _invalid_positions(fields: dict[str, list[str]], *, count: int) -> dict[int, str]:
    """The rows of a chunk acceptance refused by position (``messages[3].to``), with the reason."""
    bad: dict[int, str] = {}
    for field, messages in fields.items():
        match = _POSITION.match(field)
        if match is None:
            return {}
        position = int(match.group(1))
        if position < count:
            name = field.split(".", 1)[1] if "." in field else "message"
            bad[position] = f"{name}: {' '.join(messages)}"
    return bad


def _job_finish(job: SmsJob, *, now: datetime) -> str:
    job.status = JobStatus.DONE
    job.finished_at = now
    job.status_reason = ""
    job.save()
    return JobStatus.DONE


# --- pause, resume, cancel ------------------------------------------------------------------------------------------


def _locked(job_id: int) -> SmsJob:
    return SmsJob.objects.select_for_update(of=("self",)).get(pk=job_id)


def _job_pause_locked(job: SmsJob, *, reason: str, now: datetime) -> None:
    Message.objects.filter(job=job, status=MessageStatus.ACCEPTED).update(not_before=HOLD_UNTIL, updated_at=now)
    job.status = JobStatus.PAUSED
    job.status_reason = reason[:300]
    job.retry_at = None
    job.save()


def job_pause(*, job: SmsJob, reason: str = "", now: datetime | None = None) -> SmsJob:
    """Stop feeding and hold the job's queued messages (their validity keeps running)."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _locked(job.pk)
        if job.status not in (JobStatus.SCHEDULED, JobStatus.RUNNING):
            raise JobStateError(f"A {job.get_status_display().lower()} job cannot be paused.")
        _job_pause_locked(job, reason=reason or "Paused.", now=now)
    return job


def job_resume(*, job: SmsJob, now: datetime | None = None) -> SmsJob:
    """Release the held messages and go on feeding (or wait for the scheduled time, if still ahead)."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _locked(job.pk)
        if job.status != JobStatus.PAUSED:
            raise JobStateError(f"A {job.get_status_display().lower()} job cannot be resumed.")
        released = Message.objects.filter(
            job=job, status=MessageStatus.ACCEPTED, not_before__gte=HOLD_UNTIL
        ).update(not_before=now, updated_at=now)
        job.status_reason = ""
        job.retry_at = None
        if job.scheduled_at and job.scheduled_at > now:
            job.status = JobStatus.SCHEDULED
        else:
            job.status = JobStatus.RUNNING
            job.started_at = job.started_at or now
            _kick_after_commit(job.pk)
        job.save()
        if released:
            schema = connection.schema_name
            transaction.on_commit(lambda: _submission_kick(schema))
    return job


def job_cancel(*, job: SmsJob, now: datetime | None = None) -> SmsJob:
    """Stop the job for good: rows not fed are cancelled; queued messages are cancelled with their credit back."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _locked(job.pk)
        if job.status == JobStatus.CANCELLED:
            raise JobStateError("The job is already cancelled.")
        SmsJobRow.objects.filter(job=job, outcome=JobRowOutcome.PENDING).update(
            outcome=JobRowOutcome.CANCELLED, reason="The job was cancelled.", updated_at=now
        )
        cancelled = messages_cancel(queryset=Message.objects.filter(job=job), now=now)
        job.status = JobStatus.CANCELLED
        job.status_reason = f"Cancelled; {cancelled} queued message(s) cancelled and their credit returned."
        job.finished_at = now
        job.retry_at = None
        job.save()
    return job


def messages_cancel(*, queryset, now: datetime | None = None, batch: int = 1000) -> int:
    """Cancel the messages of ``queryset`` that are still queued (not taken by a submitter): closed as ``rejected``
    with the code ``cancelled``, their credit released or refunded and the client told, as expiry does."""
    now = now or timezone.now()
    config = sms_config_get()
    count = 0
    with transaction.atomic():
        last_id = 0
        while True:
            # Waits for a submitter that is claiming one of them, then sees it is no longer `accepted`.
            rows = list(
                queryset.filter(status=MessageStatus.ACCEPTED, id__gt=last_id)
                .order_by("id")
                .select_for_update(of=("self",))
                .values(*_MESSAGE_FIELDS)[:batch]
            )
            if not rows:
                break
            last_id = rows[-1]["id"]
            _close(
                [
                    _Closing(row, MessageStatus.REJECTED, RejectReason.CANCELLED, RejectReason.CANCELLED.label)
                    for row in rows
                ],
                config=config,
                now=now,
            )
            count += len(rows)
    return count


def message_cancel(*, message_id: int, customer=None, now: datetime | None = None) -> Message:
    """Cancel one queued (e.g. scheduled) message of ``customer`` (any, for staff); Message.DoesNotExist if it is
    not theirs, JobStateError once a submitter has taken it."""
    now = now or timezone.now()
    queryset = Message.objects.filter(pk=message_id)
    if customer is not None:
        queryset = queryset.filter(customer=customer)
    with transaction.atomic():
        message = queryset.select_for_update(of=("self",)).get()
        if message.status != MessageStatus.ACCEPTED:
            raise JobStateError(f"The message is {message.get_status_display().lower()}: too late to cancel it.")
        messages_cancel(queryset=queryset, now=now)
    return Message.objects.get(pk=message_id)


# --- starting and waking up -------------------------------------------------------------------------------------


def jobs_maintain(*, now: datetime | None = None) -> dict:
    """The jobs' part of the periodic task: start scheduled jobs that are due, and give a feeder to running jobs
    nobody is feeding (a worker died, or a wait after a 429 is over)."""
    now = now or timezone.now()
    started = 0
    for job_id in SmsJob.objects.due_to_start(now).values_list("id", flat=True):
        with transaction.atomic():
            job = _locked(job_id)
            if job.status == JobStatus.SCHEDULED and job.scheduled_at and job.scheduled_at <= now:
                job.status = JobStatus.RUNNING
                job.started_at = now
                job.save()
                started += 1
                _kick_after_commit(job.pk, force=True)
    kicked = 0
    stale = now - timedelta(seconds=FEED_STALE_S)
    for job_id in SmsJob.objects.feeding_stalled(now, stale).values_list("id", flat=True):
        kicked += job_feed_kick(schema=connection.schema_name, job_id=job_id)
    return {"jobs_started": started, "jobs_kicked": kicked}


def _feed_key(schema: str, job_id: int) -> str:
    return key(schema, "kick", "job", job_id)


def job_feed_kick(*, schema: str, job_id: int, countdown: float = 0, force: bool = False) -> bool:
    """Queue a feeder for the job unless one was queued lately; True if this call queued one."""
    from django_tenants.utils import schema_context

    from ..tasks import job_feed as job_feed_task

    ttl = FEED_KICK_TTL_MS + int(countdown * 1000)
    if not kv().set(_feed_key(schema, job_id), 1, nx=not force, px=ttl) and not force:
        return False
    with schema_context(schema):
        job_feed_task.apply_async(kwargs={"job_id": job_id}, queue="default", countdown=countdown or None)
    return True


def job_feed_drained(*, schema: str, job_id: int) -> None:
    kv().delete(_feed_key(schema, job_id))


def _kick_after_commit(job_id: int, *, force: bool = False) -> None:
    schema = connection.schema_name
    transaction.on_commit(lambda: job_feed_kick(schema=schema, job_id=job_id, force=force))


def _submission_kick(schema: str) -> None:
    from .wakeups import submission_kick

    submission_kick(schema=schema)
