"""Bulk jobs over the REST API, in the client panel and the operator console; cancelling a queued message."""

import csv
import io
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.utils import timezone

from config.celery_app import app
from conftest import login_as
from sms.models import Message, SmsJob
from sms.services.jobs import job_feed

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/sms/jobs"
FILE = "to,name\n+34612345601,Ann\n+34612345602,Иван\nnot-a-number,Bob\n"


@pytest.fixture(autouse=True)
def _purge_broker():
    yield
    app.control.purge()


def upload(client, auth, source=FILE, **fields):
    data = {"file": SimpleUploadedFile("people.csv", source.encode(), "text/csv"), "text": "Hi {name}", **fields}
    return client.post(JOBS, data, **auth)


def test_a_client_uploads_a_job_and_follows_its_progress(demo_client, sms_world, in_schema):
    response = upload(demo_client, sms_world.auth, name="Spring", reference_prefix="spring-")
    assert response.status_code == 201, response.content
    job = response.json()
    assert (job["status"], job["from"], job["text"], job["name"], job["file_name"]) == (
        "running",
        "TEXTCO",
        "Hi {name}",
        "Spring",
        "people.csv",
    )
    assert (job["progress"]["total"], job["progress"]["invalid"], job["progress"]["pending"]) == (3, 1, 2)
    with in_schema("demo"):
        job_feed(job_id=job["id"])
    detail = demo_client.get(f"{JOBS}/{job['id']}", **sms_world.auth).json()
    assert detail["status"] == "done"
    assert {k: detail["progress"][k] for k in ("accepted", "queued", "pending", "percent")} == {
        "accepted": 2,
        "queued": 2,
        "pending": 0,
        "percent": 100,
    }
    # The report, as JSON and as CSV, has every line with its outcome and its message
    rows = demo_client.get(f"{JOBS}/{job['id']}/rows", **sms_world.auth).json()["results"]
    assert [(r["line"], r["outcome"], r["message_status"]) for r in rows] == [
        (2, "message", "accepted"),
        (3, "message", "accepted"),
        (4, "invalid", ""),
    ]
    assert rows[1]["variables"] == {"to": "+34612345602", "name": "Иван"}
    invalid = demo_client.get(f"{JOBS}/{job['id']}/rows", {"outcome": "invalid"}, **sms_world.auth).json()
    assert [r["line"] for r in invalid["results"]] == [4]
    report = demo_client.get(f"{JOBS}/{job['id']}/report.csv", **sms_world.auth)
    assert report.status_code == 200 and report["Content-Type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(b"".join(report.streaming_content).decode())))
    assert lines[0][:3] == ["line", "to", "outcome"] and [line[2] for line in lines[1:]] == [
        "message",
        "message",
        "invalid",
    ]
    with in_schema("demo"):
        references = set(Message.objects.filter(job_id=job["id"]).values_list("client_reference", flat=True))
    assert references == {"spring-2", "spring-3"}


def test_a_bad_file_is_a_400_listing_every_bad_line(demo_client, sms_world, in_schema):
    source = "name,city\nAnn,Madrid,Spain\n"
    response = upload(demo_client, sms_world.auth, source=source, text="Hi {name} from {town}")
    assert response.status_code == 400
    body = response.json()
    assert [(e["line"], e["column"]) for e in body["errors"]] == [(1, ""), (1, "town"), (2, "")]
    assert body["error"]["fields"]["file"][1] == (
        "line 1, column town: The text uses {town} but the file has no such column."
    )
    with in_schema("demo"):
        assert not SmsJob.objects.exists()


def test_bad_options_are_a_400_naming_the_field(demo_client, sms_world):
    response = upload(demo_client, sms_world.auth, **{"from": "NOTMINE", "validity": "soon"})
    assert response.status_code == 400 and set(response.json()["error"]["fields"]) == {"validity"}
    response = upload(demo_client, sms_world.auth, **{"from": "NOTMINE"})
    assert response.status_code == 400 and set(response.json()["error"]["fields"]) == {"from"}
    response = demo_client.post(JOBS, {"text": "x"}, **sms_world.auth)
    assert response.status_code == 400 and set(response.json()["error"]["fields"]) == {"file"}


def test_pause_resume_cancel_over_the_api(demo_client, sms_world, in_schema):
    later = (timezone.now() + timedelta(hours=2)).isoformat()
    job = upload(demo_client, sms_world.auth, scheduled_at=later).json()
    assert job["status"] == "scheduled"
    url = f"{JOBS}/{job['id']}"
    assert demo_client.post(f"{url}/pause", **sms_world.auth).json()["status"] == "paused"
    assert demo_client.post(f"{url}/pause", **sms_world.auth).status_code == 409
    assert demo_client.post(f"{url}/resume", **sms_world.auth).json()["status"] == "scheduled"
    cancelled = demo_client.post(f"{url}/cancel", **sms_world.auth).json()
    assert cancelled["status"] == "cancelled" and cancelled["progress"]["cancelled"] == 2
    assert demo_client.post(f"{url}/cancel", **sms_world.auth).status_code == 409


def test_jobs_are_scoped_to_their_client_and_operator(demo_client, sms_world):
    job = upload(demo_client, sms_world.auth).json()
    url = f"{JOBS}/{job['id']}"
    # Another client of the operator: 404 everywhere, and not listed
    assert demo_client.get(url, **sms_world.other_auth).status_code == 404
    assert demo_client.post(f"{url}/cancel", **sms_world.other_auth).status_code == 404
    assert demo_client.get(f"{url}/rows", **sms_world.other_auth).status_code == 404
    assert demo_client.get(f"{url}/report.csv", **sms_world.other_auth).status_code == 404
    assert demo_client.get(JOBS, **sms_world.other_auth).json()["count"] == 0
    # Another operator's key: 401
    assert demo_client.get(url, **sms_world.rival_auth).status_code == 401
    assert demo_client.get(JOBS, **sms_world.rival_auth).status_code == 401
    assert upload(demo_client, sms_world.rival_auth).status_code == 401
    # The operator's staff see and steer every job; but a job needs an SMS client to send for
    listed = demo_client.get(JOBS, **sms_world.staff_auth).json()["results"]
    assert job["id"] in [j["id"] for j in listed]
    assert demo_client.post(f"{url}/pause", **sms_world.staff_auth).json()["status"] == "paused"
    assert upload(demo_client, sms_world.staff_auth).status_code == 403


def test_the_job_list_costs_a_fixed_number_of_queries(demo_client, sms_world, django_assert_max_num_queries):
    for _ in range(3):
        upload(demo_client, sms_world.auth)
    with django_assert_max_num_queries(12):
        body = demo_client.get(JOBS, **sms_world.auth).json()
    assert body["count"] == 3 and all("progress" in j for j in body["results"])


# --- cancelling one queued message ---


def send(client, world, payload, auth=None):
    response = client.post("/api/v1/sms/messages", payload, content_type="application/json", **(auth or world.auth))
    assert response.status_code == 201, response.content
    return response.json()["messages"][0]["id"]


def test_a_scheduled_message_is_cancelled_and_its_credit_returned(demo_client, sms_world, in_schema):
    from billing.models import Account

    later = (timezone.now() + timedelta(hours=1)).isoformat()
    with in_schema("demo"):
        before = Account.objects.get(pk=sms_world.client.account_id).reserved
    message_id = send(demo_client, sms_world, {"to": "+34612345678", "text": "later", "scheduled_at": later})
    with in_schema("demo"):
        held = Account.objects.get(pk=sms_world.client.account_id).reserved
    response = demo_client.post(f"/api/v1/sms/messages/{message_id}/cancel", **sms_world.auth)
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["error_code"]) == ("rejected", "cancelled")
    with in_schema("demo"):
        account = Account.objects.get(pk=sms_world.client.account_id)
        message = Message.objects.get(pk=message_id)
    assert held >= before + message.price  # it held its price...
    assert account.reserved == held - message.price  # ...and no longer does
    assert account.balance == 100 and message.charged_at is None
    detail = demo_client.get(f"/api/v1/sms/messages/{message_id}", **sms_world.auth).json()
    assert [e["status"] for e in detail["events"]][-1] == "rejected"
    # Too late once cancelled (or submitted)
    assert demo_client.post(f"/api/v1/sms/messages/{message_id}/cancel", **sms_world.auth).status_code == 409


def test_a_submitted_message_cannot_be_cancelled(demo_client, sms_world, in_schema):
    message_id = send(demo_client, sms_world, {"to": "+34612345678", "text": "now"})
    with in_schema("demo"):
        Message.objects.filter(pk=message_id).update(status="submitted")
    response = demo_client.post(f"/api/v1/sms/messages/{message_id}/cancel", **sms_world.auth)
    assert response.status_code == 409 and "too late" in response.json()["error"]["message"]


def test_cancelling_another_clients_message_is_404_and_another_operators_key_401(demo_client, sms_world):
    message_id = send(demo_client, sms_world, {"to": "+34612345678", "text": "mine"})
    url = f"/api/v1/sms/messages/{message_id}/cancel"
    assert demo_client.post(url, **sms_world.other_auth).status_code == 404
    assert demo_client.post(url, **sms_world.rival_auth).status_code == 401
    assert demo_client.post(url, **sms_world.staff_auth).status_code == 200  # staff may


# --- the client panel and the console ---


def panel_for(world, in_schema) -> Client:
    http = Client(HTTP_HOST="demo.localhost")
    with in_schema("demo"):
        user = get_user_model().objects.get(customer_member__customer=world.client.customer)
    login_as(http, "demo", user.username)
    return http


def test_the_panel_jobs_page_uploads_lists_and_steers_jobs(sms_world, in_schema):
    http = panel_for(sms_world, in_schema)
    page = http.get("/sms/jobs/")
    assert page.status_code == 200 and b'data-testid="job-upload"' in page.content
    assert b"/sms/jobs/" in http.get("/sms/messages/").content  # linked from the messages page
    # A bad file shows its lines, a good one is created
    bad = http.post(
        "/sms/jobs/",
        {"file": SimpleUploadedFile("x.csv", b"name\nAnn\n"), "text": "Hi {name}", "sender": "TEXTCO"},
    )
    assert bad.status_code == 400 and b'data-testid="file-errors"' in bad.content and b"No number column" in bad.content
    created = http.post(
        "/sms/jobs/",
        {"file": SimpleUploadedFile("p.csv", FILE.encode()), "text": "Hi {name}", "sender": "TEXTCO", "name": "Mine"},
    )
    assert created.status_code == 302
    with in_schema("demo"):
        job = SmsJob.objects.get(customer=sms_world.client.customer)
    listing = http.get("/sms/jobs/").content.decode()
    assert "Mine" in listing and f"/sms/jobs/{job.pk}/pause/" in listing
    assert http.post(f"/sms/jobs/{job.pk}/pause/").status_code == 302
    with in_schema("demo"):
        assert SmsJob.objects.get(pk=job.pk).status == "paused"
    report = http.get(f"/sms/jobs/{job.pk}/report.csv")
    assert report.status_code == 200 and b"line,to,outcome" in b"".join(report.streaming_content)


def test_the_panel_does_not_show_or_steer_another_clients_job(demo_client, sms_world, in_schema):
    theirs = upload(demo_client, sms_world.other_auth, source="to\n+34612345601\n", text="x", **{"from": "OTHER"})
    job_id = theirs.json()["id"]
    http = panel_for(sms_world, in_schema)
    assert http.post(f"/sms/jobs/{job_id}/cancel/").status_code == 404
    assert http.get(f"/sms/jobs/{job_id}/report.csv").status_code == 404
    assert f"/sms/jobs/{job_id}/" not in http.get("/sms/jobs/").content.decode()


def test_the_console_lists_jobs_and_cancels_them(demo_client, sms_world, in_schema):
    job = upload(demo_client, sms_world.auth).json()
    login_as(demo_client, "demo", "admin@demo.localhost")
    page = demo_client.get("/admin/sms/smsjob/")
    assert page.status_code == 200 and "33% · 0 accepted, 1 refused" in page.content.decode()
    assert demo_client.get(f"/admin/sms/smsjob/{job['id']}/change/").status_code == 200
    response = demo_client.post(
        "/admin/sms/smsjob/", {"action": "cancel", "_selected_action": [job["id"]]}, follow=True
    )
    assert response.status_code == 200
    with in_schema("demo"):
        assert SmsJob.objects.get(pk=job["id"]).status == "cancelled"


def test_console_staff_who_may_only_view_jobs_cannot_steer_delete_or_bypass_the_report_permission(
    demo_client, sms_world, in_schema
):
    job = upload(demo_client, sms_world.auth).json()
    with in_schema("demo"):
        viewer = get_user_model().objects.create_user("viewer@demo.localhost", password="x", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_smsjob"))
        get_user_model().objects.create_user("nobody@demo.localhost", password="x", is_staff=True)
    login_as(demo_client, "demo", "viewer@demo.localhost")
    page = demo_client.get("/admin/sms/smsjob/")
    assert page.status_code == 200 and 'value="cancel"' not in page.content.decode()
    demo_client.post("/admin/sms/smsjob/", {"action": "cancel", "_selected_action": [job["id"]]})
    with in_schema("demo"):
        assert SmsJob.objects.get(pk=job["id"]).status == "running"  # the action was not run
        SmsJob.objects.filter(pk=job["id"]).update(status="done")
    assert demo_client.get(f"/admin/sms/smsjob/{job['id']}/delete/").status_code == 403
    assert demo_client.get(f"/admin/sms/smsjob/{job['id']}/report.csv").status_code == 200
    login_as(demo_client, "demo", "nobody@demo.localhost")  # staff, but no permission on jobs
    assert demo_client.get(f"/admin/sms/smsjob/{job['id']}/report.csv").status_code == 403


def test_the_panel_shows_job_times_in_the_operators_time_zone(sms_world, in_schema):
    from tenants.models import Operator

    zone = ZoneInfo(Operator.objects.get(schema_name="demo").time_zone)
    http = panel_for(sms_world, in_schema)
    at = (timezone.now() + timedelta(days=2)).astimezone(zone).replace(hour=9, minute=30, second=0, microsecond=0)
    created = http.post(
        "/sms/jobs/",
        {
            "file": SimpleUploadedFile("p.csv", FILE.encode()),
            "text": "Hi {name}",
            "sender": "TEXTCO",
            "scheduled_at": at.strftime("%Y-%m-%dT%H:%M"),  # typed in the operator's zone
        },
    )
    assert created.status_code == 302
    listing = http.get("/sms/jobs/").content.decode()
    assert at.strftime("%Y-%m-%d %H:%M") in listing
    assert at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") not in listing  # Madrid is never UTC+0


@override_settings(SMS_JOB_MAX_FILE_BYTES=200)
def test_a_file_over_the_size_limit_is_a_400_naming_the_file_in_the_api_and_the_panel(
    demo_client, sms_world, in_schema
):
    big = "to,name\n" + "".join(f"+346123456{i:02d},Name\n" for i in range(20))  # 20 lines, over 200 bytes
    response = upload(demo_client, sms_world.auth, source=big)
    assert response.status_code == 400 and "200 bytes" in response.json()["error"]["fields"]["file"][0]
    announced = demo_client.post(JOBS, {"text": "x"}, CONTENT_LENGTH=str(10**9), **sms_world.auth)
    # announced over the limit: refused before the body is read (sms.middleware), still naming the file
    assert announced.status_code == 413 and "file" in announced.json()["error"]["fields"]
    http = panel_for(sms_world, in_schema)
    page = http.post("/sms/jobs/", {"file": SimpleUploadedFile("p.csv", big.encode()), "text": "x", "sender": "TEXTCO"})
    assert page.status_code == 400 and "200 bytes" in page.content.decode()
    with in_schema("demo"):
        assert not SmsJob.objects.exists()
