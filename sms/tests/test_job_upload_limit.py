"""A bulk-job upload that announces more than SMS_JOB_MAX_FILE_BYTES (plus room for the form) is refused with 413
before its body is read: in the panel and the API on a session login (where CSRF checking would read the whole
multipart body first), with an API key, and in front of the ASGI application without receiving the body at all.

The test client's CONTENT_LENGTH announces a body far larger than the one it holds: reading it would fail, so a 413
shows nothing read it.
"""

import pytest
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings

from config.asgi import application
from config.celery_app import app
from conftest import login_as
from sms.middleware import job_upload_size_guard
from sms.models import SmsJob

pytestmark = pytest.mark.django_db

JOBS_API = "/api/v1/sms/jobs"
JOBS_PAGE = "/sms/jobs/"
FILE = "to,name\n+34612345601,Ann\n"
HUGE = str(10**9)


@pytest.fixture(autouse=True)
def _purge_broker():
    yield
    app.control.purge()  # feeders queued by the uploads that were accepted


def session_for(world, in_schema) -> tuple[Client, str]:
    """A logged-in client login of the panel with CSRF checks on (as a browser gets them) and its CSRF token."""
    http = Client(HTTP_HOST="demo.localhost", enforce_csrf_checks=True)
    with in_schema("demo"):
        user = get_user_model().objects.get(customer_member__customer=world.client.customer)
    login_as(http, "demo", user.username)
    assert http.get(JOBS_PAGE).status_code == 200  # sets the CSRF cookie
    return http, http.cookies["csrftoken"].value


def form(token: str, source: str = FILE) -> dict:
    return {
        "file": SimpleUploadedFile("p.csv", source.encode(), "text/csv"),
        "text": "Hi {name}",
        "sender": "TEXTCO",
        "csrfmiddlewaretoken": token,
    }


def test_the_panel_refuses_an_announced_oversize_upload_before_reading_it(sms_world, in_schema):
    http, token = session_for(sms_world, in_schema)
    response = http.post(JOBS_PAGE, form(token), CONTENT_LENGTH=HUGE)
    assert response.status_code == 413 and "text/html" in response["Content-Type"]
    assert "The file is too large. At most 20 MB." in response.content.decode()
    with in_schema("demo"):
        assert not SmsJob.objects.exists()


def test_the_api_on_a_session_login_refuses_it_with_the_error_shape_naming_the_file(sms_world, in_schema):
    http, token = session_for(sms_world, in_schema)
    for path in (JOBS_API, JOBS_API + "/"):
        response = http.post(path, form(token), CONTENT_LENGTH=HUGE, HTTP_X_CSRFTOKEN=token)
        assert response.status_code == 413, response.content
        error = response.json()["error"]
        assert (error["code"], error["fields"]) == ("payload_too_large", {"file": ["At most 20 MB."]})


def test_the_api_with_a_key_refuses_it_alike(demo_client, sms_world):
    response = demo_client.post(JOBS_API, {"text": "x"}, CONTENT_LENGTH=HUGE, **sms_world.auth)
    assert response.status_code == 413 and response.json()["error"]["fields"] == {"file": ["At most 20 MB."]}


@override_settings(SMS_JOB_MAX_FILE_BYTES=200)
def test_the_limit_is_the_file_limit_plus_room_for_the_form_and_other_paths_are_not_concerned(sms_world, in_schema):
    http, token = session_for(sms_world, in_schema)
    # A file a little over the limit still fits the room: the view refuses it, naming the file, as before
    over_file = FILE + "+34612345602,Bob\n" * 20
    assert http.post(JOBS_PAGE, form(token, over_file)).status_code == 400
    # A body over the limit and the room is refused before anything reads it
    over_room = FILE + "+34612345602,Bob\n" * 4000  # about 68 kB
    refused = http.post(JOBS_PAGE, form(token, over_room))
    assert refused.status_code == 413 and "At most 200 bytes." in refused.content.decode()
    # A small file is uploaded, CSRF checks and all
    assert http.post(JOBS_PAGE, form(token)).status_code == 302
    with in_schema("demo"):
        job = SmsJob.objects.get(customer=sms_world.client.customer)
    # Other paths are not limited by it: a large steering POST reaches its view (and CSRF)
    steer = http.post(f"/sms/jobs/{job.pk}/pause/", {"csrfmiddlewaretoken": token, "pad": "x" * 70_000})
    assert steer.status_code == 302
    with in_schema("demo"):
        assert SmsJob.objects.get(pk=job.pk).status == "paused"


# --- in front of the ASGI application -------------------------------------------------------------------------


def scope(path: str, length: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"demo.localhost"), (b"content-length", length.encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


@pytest.mark.parametrize(
    ("path", "content_type"),
    [(JOBS_API, b"application/json"), (JOBS_API + ".json", b"application/json"), (JOBS_PAGE, b"text/html")],
)
async def test_the_platforms_asgi_application_answers_413_without_receiving_the_body(path, content_type):
    communicator = ApplicationCommunicator(application, scope(path, HUGE))  # as config.asgi wires the guard
    # no http.request message is ever sent: the answer comes from the headers alone
    start = await communicator.receive_output(timeout=5)
    body = await communicator.receive_output(timeout=5)
    headers = dict(start["headers"])
    assert start["status"] == 413 and headers[b"content-type"].startswith(content_type)
    assert headers[b"connection"] == b"close" and b"At most 20 MB." in body["body"]
    await communicator.wait(timeout=5)


async def test_the_asgi_guard_passes_other_requests_through():
    reached = []

    async def inner(scope, receive, send):
        reached.append((scope["path"], (await receive())["body"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = job_upload_size_guard(inner)
    for path, length in [(JOBS_API, "1000"), ("/api/v1/sms/messages", HUGE), ("/sms/jobs/7/pause/", HUGE)]:
        communicator = ApplicationCommunicator(guarded, scope(path, length))
        await communicator.send_input({"type": "http.request", "body": b"x", "more_body": False})
        assert (await communicator.receive_output(timeout=5))["status"] == 204
        await communicator.wait(timeout=5)
    assert reached == [(JOBS_API, b"x"), ("/api/v1/sms/messages", b"x"), ("/sms/jobs/7/pause/", b"x")]
