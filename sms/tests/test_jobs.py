"""Bulk jobs, the service side: the file's checks by line, template filling, the lifecycle scheduled → running →
paused → resumed → done, cancelling with credit back, pausing when out of credit, waiting on 429, and feeding
that survives a crash between (or inside) chunks without sending a row twice."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import Sum
from django.test import override_settings
from django.utils import timezone

from billing.models import Account
from billing.services import account_topup
from config.celery_app import app
from sms.models import JobRowOutcome, JobStatus, Message, SmsJob, SmsJobRow
from sms.selectors_jobs import job_progress, job_report_csv
from sms.services import messages_claim
from sms.services.jobs import (
    HOLD_UNTIL,
    JobFileInvalid,
    JobStateError,
    RequestInvalid,
    job_cancel,
    job_chunk_feed,
    job_create,
    job_feed,
    job_pause,
    job_resume,
    jobs_maintain,
    template_fill,
)
from sms.tests.conftest import sms_world_make

pytestmark = pytest.mark.django_db

NUMBERS = ["+34612345601", "+34612345602", "+34612345603", "+34612345604", "+34612345605"]


@pytest.fixture(autouse=True)
def _purge_broker():
    yield
    app.control.purge()  # feeders the services queued for workers that do not run here


def csv_of(rows: list[str], header: str = "to,name") -> str:
    return "\n".join([header, *rows]) + "\n"


def five_rows() -> str:
    return csv_of([f"{number},Name{i}" for i, number in enumerate(NUMBERS, start=1)])


def make_job(world, source: str | None = None, text: str = "Hi {name}", reference_prefix="", **options) -> SmsJob:
    return job_create(
        customer=world.client.customer,
        source=source or five_rows(),
        options={"text": text, **options},
        reference_prefix=reference_prefix,
    )


def account(world) -> Account:
    return Account.objects.get(pk=world.client.account_id)


# --- the file ---


def test_a_bad_file_is_refused_with_every_bad_line_and_nothing_is_stored(sms_world, in_schema):
    source = csv_of(
        [
            "+34612345601,Ann",
            "+34612345602",  # line 3: a field short
            "+34612345603,Bob,extra",  # line 4: a field too many
            "+34612345604,Cy",
            '+34612345605,"Dee',  # line 6: an unterminated quote
        ]
    )
    with in_schema("demo"):
        with pytest.raises(JobFileInvalid) as caught:
            make_job(sms_world, source, text="Hi {name} {surname}")
        errors = caught.value.errors
        assert [(e["line"], e["column"]) for e in errors] == [(1, "surname"), (3, ""), (4, ""), (6, "")]
        assert "no such column" in errors[0]["reason"] and "1 fields" in errors[1]["reason"]
        assert not SmsJob.objects.exists() and not SmsJobRow.objects.exists()


def test_a_file_without_a_number_column_is_refused_at_its_header(sms_world, in_schema):
    with in_schema("demo"):
        with pytest.raises(JobFileInvalid) as caught:
            make_job(sms_world, "name,city\nAnn,Madrid\n", text="Hi {name}")
    assert [(e["line"], "No number column" in e["reason"]) for e in caught.value.errors] == [(1, True)]


@override_settings(SMS_JOB_MAX_ROWS=3)
def test_a_file_over_the_row_limit_is_refused_at_the_first_line_too_many(sms_world, in_schema):
    with in_schema("demo"):
        with pytest.raises(JobFileInvalid) as caught:
            make_job(sms_world)
    assert [(e["line"], e["reason"]) for e in caught.value.errors] == [(5, "Over the limit of 3 rows per job.")]


def test_bad_options_are_named_by_field(sms_world, in_schema):
    with in_schema("demo"):
        with pytest.raises(RequestInvalid) as caught:
            make_job(sms_world, text=" ", **{"from": "NOTMINE", "validity": 5})
    assert set(caught.value.fields) == {"text", "from", "validity"}


def test_invalid_numbers_and_overlong_texts_are_rows_refused_in_the_report_not_a_file_error(sms_world, in_schema):
    source = csv_of(["+34612345601,Ann", "12,Bob", f"+34612345603,{'x' * 40_000}", "+34612345604,"], "to,name")
    with in_schema("demo"):
        job = make_job(sms_world, source, text="{name}")
        rows = list(job.rows.order_by("line").values_list("line", "outcome", "reason"))
    assert [(line, outcome) for line, outcome, _ in rows] == [
        (2, "pending"),
        (3, "invalid"),
        (4, "invalid"),
        (5, "invalid"),
    ]
    assert rows[1][2].startswith("Invalid number") and "too long" in rows[2][2] and "empty" in rows[3][2]
    assert (job.total_rows, job.invalid_rows, job.status) == (4, 3, JobStatus.RUNNING)


def test_the_job_report_csv_neutralises_numbers_and_reasons_a_spreadsheet_would_run(sms_world, in_schema):
    source = csv_of(['"=HYPERLINK(""http://evil/""),x",Ann', "@SUM(1),Bob", "+34612345601,Cy"], "to,name")
    with in_schema("demo"):
        job = make_job(sms_world, source, text="{name}")
        lines = list(csv.reader(io.StringIO("".join(job_report_csv(job=job)))))
    assert [line[1] for line in lines[1:]] == ['\'=HYPERLINK("http://evil/"),x', "'@SUM(1)", "+34612345601"]


def test_a_template_cannot_reach_attributes_of_the_values_format_style(sms_world, in_schema):
    with in_schema("demo"), pytest.raises(JobFileInvalid) as error:
        make_job(sms_world, csv_of(["+34612345601,Ann"]), text="{name.__class__} {0.__class__.__mro__} {name!r}")
    assert {e["column"] for e in error.value.errors} == {"name.__class__", "0.__class__.__mro__", "name!r"}
    assert template_fill("{name} {{name.__class__}}", {"name": "{0.__class__}"}) == "{0.__class__} {name.__class__}"


def test_semicolon_files_and_column_names_in_any_case_work(sms_world, in_schema):
    with in_schema("demo"):
        job = make_job(sms_world, "Number;First Name\n+34612345601;Ann\n", text="Hi {first name}!")
        job_feed(job_id=job.pk)
        assert Message.objects.get(job=job).text == "Hi Ann!"


# --- filling the template ---


def test_template_filling_replaces_columns_and_keeps_doubled_braces_literal():
    assert template_fill("{{x}} {Name}: {code}", {"name": "Ann", "code": "42"}) == "{x} Ann: 42"


def test_each_row_gets_its_own_text_encoding_parts_and_reference(sms_world, in_schema):
    source = csv_of(["+34612345601,Ann,1", "+34612345602,Иван,2", f"+34612345603,{'a' * 200},3"], "to,name,code")
    with in_schema("demo"):
        job = make_job(sms_world, source, text="Hello {name}, your code is {code}", reference_prefix="promo-")
        assert job_feed(job_id=job.pk).state == JobStatus.DONE
        messages = list(Message.objects.filter(job=job).order_by("client_reference"))
    assert [(m.client_reference, m.encoding, m.parts) for m in messages] == [
        ("promo-2", "gsm7", 1),
        ("promo-3", "ucs2", 1),
        ("promo-4", "gsm7", 2),
    ]
    assert messages[1].text == "Hello Иван, your code is 2"
    assert messages[0].price == Decimal("0.05") and messages[2].price == Decimal("0.10")


# --- lifecycle ---


def test_lifecycle_scheduled_running_paused_resumed_done(sms_world, in_schema):
    now = timezone.now()
    with in_schema("demo"):
        # Given a job scheduled an hour ahead
        job = make_job(sms_world, scheduled_at=(now + timedelta(hours=1)).isoformat())
        assert job.status == JobStatus.SCHEDULED
        # Nothing is fed before its time, even if a feeder runs
        assert job_feed(job_id=job.pk).state == JobStatus.SCHEDULED
        assert jobs_maintain(now=now)["jobs_started"] == 0
        # When the periodic task runs after the scheduled time, it starts
        later = now + timedelta(hours=1, seconds=1)
        assert jobs_maintain(now=later)["jobs_started"] == 1
        job.refresh_from_db()
        assert (job.status, job.started_at) == (JobStatus.RUNNING, later)
        # One chunk of two rows is fed: two queued messages
        assert job_feed(job_id=job.pk, chunk_rows=2, max_chunks=1, now=later).state == "more"
        assert Message.objects.filter(job=job, status="accepted").count() == 2
        # Paused: no more feeding, and the queued messages are held (no submitter takes them)
        job_pause(job=job, now=later)
        assert job_feed(job_id=job.pk, chunk_rows=2, now=later).state == JobStatus.PAUSED
        assert not Message.objects.due(later + timedelta(days=30)).filter(job=job).exists()
        assert set(Message.objects.filter(job=job).values_list("not_before", flat=True)) == {HOLD_UNTIL}
        progress = job_progress(job=SmsJob.objects.get(pk=job.pk))
        assert (progress["accepted"], progress["pending"], progress["held"]) == (2, 3, 2)
        with pytest.raises(JobStateError):
            job_pause(job=job, now=later)
        # Resumed: the held messages are due again and feeding goes on to the end
        job = job_resume(job=job, now=later)
        assert job.status == JobStatus.RUNNING
        assert Message.objects.due(later).filter(job=job).count() == 2
        assert job_feed(job_id=job.pk, chunk_rows=2, now=later).state == JobStatus.DONE
        job.refresh_from_db()
        progress = job_progress(job=job)
    assert (job.status, job.fed_rows, job.finished_at) == (JobStatus.DONE, 5, later)
    assert (progress["total"], progress["accepted"], progress["queued"], progress["pending"]) == (5, 5, 5, 0)
    assert progress["reserved"] == Decimal("0.25") and progress["percent"] == 100


def test_rows_refused_at_acceptance_are_in_the_report_with_the_reason(sms_world, in_schema):
    from sms.models import ListEntry

    with in_schema("demo"):
        ListEntry.objects.create(kind="blacklist", number=NUMBERS[1])
        job = make_job(sms_world)
        job_feed(job_id=job.pk)
        row = job.rows.select_related("message").get(line=3)
        progress = job_progress(job=SmsJob.objects.get(pk=job.pk))
    assert (row.outcome, row.message.status, row.reason) == ("rejected", "rejected", "The number is blacklisted")
    assert (progress["rejected"], progress["accepted"], progress["failed"]) == (1, 4, 0)


def test_cancel_stops_feeding_and_returns_the_credit_of_queued_messages(sms_world, in_schema):
    with in_schema("demo"):
        balance = account(sms_world).balance
        job = make_job(sms_world)
        job_feed(job_id=job.pk, chunk_rows=3, max_chunks=1)
        # One message is taken by a submitter (and charged) before the cancel
        (taken,) = messages_claim(token="t", limit=1, choose=lambda gateways: gateways[0])
        held = account(sms_world).reserved
        job = job_cancel(job=job)
        assert job.status == JobStatus.CANCELLED
        statuses = dict(Message.objects.filter(job=job).values_list("id", "status"))
        codes = set(Message.objects.filter(job=job).exclude(pk=taken.message_id).values_list("error_code", flat=True))
        acc = account(sms_world)
        progress = job_progress(job=job)
        assert job_feed(job_id=job.pk).state == JobStatus.CANCELLED
        assert list(job.rows.filter(outcome="cancelled").values_list("line", flat=True)) == [5, 6]
    assert statuses.pop(taken.message_id) == "submitting"
    assert set(statuses.values()) == {"rejected"} and codes == {"cancelled"}
    # The two cancelled messages' 0.10 is no longer held; only the taken one is paid
    assert acc.reserved == held - Decimal("0.10") and acc.balance == balance - Decimal("0.05")
    assert (progress["cancelled"], progress["cancelled_messages"], progress["spent"]) == (2, 2, Decimal("0.05"))
    with in_schema("demo"), pytest.raises(JobStateError):
        job_cancel(job=job)


def test_out_of_credit_pauses_the_job_with_the_reason_and_a_top_up_and_resume_finish_it(db, world, in_schema):
    poor = sms_world_make(credit=Decimal("0.10"))
    with in_schema("demo"):
        job = make_job(poor)
        # Two rows a chunk: the first chunk fits the credit, the second does not
        assert job_feed(job_id=job.pk, chunk_rows=2).state == JobStatus.PAUSED
        job.refresh_from_db()
        assert job.status == JobStatus.PAUSED and job.status_reason.startswith("Out of credit")
        assert "0.10 EUR" in job.status_reason and job.fed_rows == 2
        # Nothing of the refused chunk was stored
        assert Message.objects.filter(job=job).count() == 2
        account_topup(account=account(poor), amount=Decimal("1"), idempotency_key="test:topup")
        job_resume(job=job)
        assert job_feed(job_id=job.pk, chunk_rows=2).state == JobStatus.DONE
        assert Message.objects.filter(job=job).count() == 5


def test_too_fast_makes_the_job_wait_and_go_on_rather_than_fail(db, world, in_schema):
    slow = sms_world_make(tps_limit=1)
    now = timezone.now()
    with in_schema("demo"):
        job = make_job(slow)
        # The first chunk uses the client's burst; the next is refused with 429, so the job waits
        result = job_feed(job_id=job.pk, chunk_rows=2, now=now)
        assert result.state == "wait" and result.retry_in >= 1
        job.refresh_from_db()
        assert job.status == JobStatus.RUNNING and job.retry_at > now and job.fed_rows == 2
        assert job.status_reason.startswith("Waiting")
        # Once the wait is over it goes on
        assert job_feed(job_id=job.pk, chunk_rows=2, max_chunks=1, now=now + timedelta(seconds=5)).fed == 2


# --- restart safety ---


class WorkerKilled(Exception):
    pass


def test_a_worker_killed_inside_a_chunk_leaves_nothing_and_the_rerun_sends_each_row_once(sms_world, in_schema):
    with in_schema("demo"):
        job = make_job(sms_world)
        start = account(sms_world).available
        # A chunk whose transaction never commits (the worker died before the commit) leaves no trace
        with pytest.raises(WorkerKilled), transaction.atomic():
            assert job_chunk_feed(job_id=job.pk, chunk_rows=3).fed == 3
            raise WorkerKilled
        assert not Message.objects.filter(destination__in=NUMBERS).exists()
        assert account(sms_world).available == start
        # A feeder that stops after one chunk (killed between chunks), then two more feeders run
        assert job_feed(job_id=job.pk, chunk_rows=3, max_chunks=1).fed == 3
        assert job_feed(job_id=job.pk, chunk_rows=3).state == JobStatus.DONE
        assert job_feed(job_id=job.pk, chunk_rows=3).state == JobStatus.DONE
        destinations = list(Message.objects.filter(job=job).values_list("destination", flat=True))
        linked = set(job.rows.values_list("message_id", flat=True))
        assert linked == set(Message.objects.filter(job=job).values_list("id", flat=True))
        assert Message.objects.filter(job=job).aggregate(s=Sum("price"))["s"] == Decimal("0.25")
    assert sorted(destinations) == NUMBERS  # each row once


def test_the_periodic_task_gives_a_feeder_to_a_running_job_nobody_feeds(sms_world, in_schema):
    now = timezone.now()
    with in_schema("demo"):
        job = make_job(sms_world)
        # Kicked once (the flag stops repeats while a feeder may be on its way)
        assert jobs_maintain(now=now)["jobs_kicked"] == 1
        assert jobs_maintain(now=now)["jobs_kicked"] == 0
        job_feed(job_id=job.pk, chunk_rows=2, max_chunks=1, now=now)
        assert SmsJob.objects.feeding_stalled(now, now - timedelta(seconds=15)).count() == 0
        assert SmsJob.objects.feeding_stalled(now + timedelta(minutes=1), now + timedelta(seconds=30)).count() == 1


def test_job_rows_outcomes_cover_every_line(sms_world, in_schema):
    with in_schema("demo"):
        job = make_job(sms_world, csv_of(["+34612345601,A", "bad,B", "+34612345603,C"]))
        job_feed(job_id=job.pk)
        outcomes = dict(job.rows.values_list("line", "outcome"))
    assert outcomes == {2: JobRowOutcome.MESSAGE, 3: JobRowOutcome.INVALID, 4: JobRowOutcome.MESSAGE}


def test_the_feed_task_feeds_the_job_in_its_schema_and_clears_its_wake_up_flag(sms_world, in_schema):
    from sms.kv import kv
    from sms.services.jobs import _feed_key, job_feed_kick
    from sms.tasks import job_feed as job_feed_task

    with in_schema("demo"):
        job = make_job(sms_world)
        assert job_feed_kick(schema="demo", job_id=job.pk) is True  # queued (purged after the test)
        assert job_feed_kick(schema="demo", job_id=job.pk) is False  # one is on its way already
        job_feed_task.run(job_id=job.pk)
        assert SmsJob.objects.get(pk=job.pk).status == JobStatus.DONE
        assert Message.objects.filter(job=job).count() == 5
        assert not kv().exists(_feed_key("demo", job.pk))


# --- progress ---


def test_progress_counts_the_parts_the_charge_records_kept_in_one_query_for_a_page_of_jobs(
    sms_world, in_schema, django_assert_num_queries
):
    """A 3-part message refused after an SMSC took its first part keeps that part charged: the job's parts count it,
    as the reports do, and match its credit spent."""
    from sms.selectors_jobs import jobs_progress
    from sms.selectors_reports import sms_today_totals
    from sms.services import submission_results_record
    from sms.services.submission import MessageOutcome, PartOutcome

    with in_schema("demo"):
        # Given a job of a 3-part and a 2-part message, both taken by a submitter (and charged)
        job = make_job(sms_world, csv_of([f"{NUMBERS[0]},{'a' * 400}", f"{NUMBERS[1]},{'b' * 200}"]), text="{name}")
        job_feed(job_id=job.pk)
        other = make_job(sms_world, csv_of([f"{NUMBERS[2]},C"]))
        submissions = {s.message_id: s for s in messages_claim(token="t", limit=10, choose=lambda g: g[0])}
        three = Message.objects.get(job=job, parts=3)
        assert set(submissions) == {three.pk, Message.objects.get(job=job, parts=2).pk}
        # When the first part of the 3-part message is accepted and every gateway refuses the second
        gateway_id = sms_world.gateway.pk
        submission = submissions[three.pk]
        submission.accepted[0] = ("a0", gateway_id)
        submission.tried.add(gateway_id)
        submission_results_record(
            parts=[PartOutcome(three.pk, 0, gateway_id, 0, "a0"), PartOutcome(three.pk, 1, gateway_id, 0x45, None)],
            completed=[MessageOutcome(submission, rejected_status=0x45)],
        )
        assert Message.objects.get(pk=three.pk).status == "rejected"
        jobs = list(SmsJob.objects.filter(pk__in=[job.pk, other.pk]))
        with django_assert_num_queries(1):
            progress = jobs_progress(jobs=jobs)
        today = sms_today_totals(customer=sms_world.client.customer)
    # Then the kept part and the 2 charged parts are counted, like the credit spent and the day's report
    assert (progress[job.pk]["parts"], progress[job.pk]["spent"], progress[job.pk]["failed"]) == (3, Decimal("0.15"), 1)
    assert (today["parts"], today["credit"]) == (3, Decimal("0.15"))
    assert (progress[other.pk]["parts"], progress[other.pk]["spent"]) == (0, Decimal(0))  # not fed: nothing charged
