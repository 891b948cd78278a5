"""Bulk-job uploads that announce a body too large for any acceptable file are refused (413) before it is read.

Django's CsrfViewMiddleware reads ``request.POST`` (so the whole multipart body, the file spooled to disk) for
every POST from a session login before the view can look at the size: the panel's ``/sms/jobs/`` upload and the
session-authenticated ``/api/v1/sms/jobs`` (DRF's SessionAuthentication runs the same check). So the size is
checked from ``Content-Length`` alone, on the job upload paths only, and refused with a 413 whose body names the
``file`` field: the JSON error shape under /api/, a plain page in the panel.

Two places, one rule (``sms.services.jobs.job_upload_too_large``: ``SMS_JOB_MAX_FILE_BYTES`` plus room for the
form's other fields):

- ``JobUploadSizeMiddleware`` in ``settings.MIDDLEWARE``, before ``CsrfViewMiddleware``: no multipart parsing, no
  upload written to a temporary file, under WSGI not a byte of the body read;
- ``job_upload_size_guard(app)`` around the ASGI application: Django's ASGI handler receives the whole body
  before any middleware runs, so only an ASGI wrapper answers before the client has sent it.
"""

from __future__ import annotations

import re

from django.http import HttpResponse
from django.utils.html import escape

from core.tenancy import error_json

from .services.jobs import job_file_too_large_message, job_upload_too_large

# The panel's upload page and the API's job list (the router takes the path with or without its trailing slash, and
# with a format suffix such as ``.json``).
JOB_UPLOAD_PATHS = re.compile(r"^/(?:api/v1/)?sms/jobs(?:\.[a-z0-9]+)?/?$")


def _refusal(path: str) -> HttpResponse:
    limit = job_file_too_large_message()
    if path.startswith("/api/"):
        return error_json(413, "payload_too_large", f"The file is too large. {limit}", {"file": [limit]})
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>File too large</title></head>'
        f"<body><h1>File too large</h1><p>The file is too large. {escape(limit)}</p></body></html>"
    )
    return HttpResponse(page, status=413, content_type="text/html; charset=utf-8")


class JobUploadSizeMiddleware:
    """413 for a job upload whose ``Content-Length`` is over the limit, before anything reads its body."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if job_upload_too_large(request.META.get("CONTENT_LENGTH")) and JOB_UPLOAD_PATHS.match(request.path_info):
            return _refusal(request.path_info)
        return self.get_response(request)


def job_upload_size_guard(app):
    """ASGI wrapper: the same refusal, answered from the request's headers without receiving its body."""

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and JOB_UPLOAD_PATHS.match(scope.get("path", "")):
            length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"")
            if job_upload_too_large(length.decode("latin-1")):
                response = _refusal(scope["path"])
                headers = [
                    (b"content-type", response["Content-Type"].encode()),
                    (b"content-length", str(len(response.content)).encode()),
                    (b"connection", b"close"),  # the unread body cannot be skipped: the connection ends here
                ]
                await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
                await send({"type": "http.response.body", "body": response.content})
                return
        await app(scope, receive, send)

    return guarded
