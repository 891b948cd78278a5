"""The lean path of `POST /api/v1/sms/messages` with an API key: the hot path of the SMS aggregator.

Why: through Django's ASGI handler every request gets a new thread and, with it, a new database connection (and its
`SET search_path`s), then the whole middleware and DRF stack — several times the work of accepting a message. Here an
ASGI wrapper around the Django app reads such a request and runs it on one of SENDERS long-lived threads, each with
its database connection kept open (CONN_MAX_AGE still applies), doing what the regular path does:

- tenancy: `core.tenancy.resolve_host` (unknown host 404, suspended operator 403, unknown client subdomain 404);
- authentication: `Authorization: Api-Key <key>` through `core.selectors.api_key_find` (401) and `api_key_touch`;
- the answer: `sms.api.views.send_answer` — the same function the DRF view answers with (validation, admission,
  filters, credit, storage; 400/402/403/429 in the one error shape), so the two paths cannot differ.

Anything else (another path or method, a session login, a malformed Authorization header, a body that is not
``application/json`` or is larger than MAX_BODY) goes to Django untouched, its body replayed as it came.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from core.net import client_ip

log = logging.getLogger(__name__)

PATHS = frozenset({"/api/v1/sms/messages", "/api/v1/sms/messages/"})
MAX_BODY = 4 * 1024 * 1024  # 10,000 recipients with their own texts fit; anything bigger goes the regular way
SENDERS = 4
# Hosts and API keys are looked up once per CACHE_S per process rather than per request: a suspended operator or a
# revoked key may still get through the fast path for at most that long.
CACHE_S = 2.0
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]

_hosts: dict[str, tuple[float, object, str | None]] = {}  # host -> (looked up at, domain, client label)
_keys: dict[str, tuple[float, object]] = {}  # hashed key -> (looked up at, ApiKey or None)

UPKEEP_S = 1.0
_upkeep = threading.local()

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _senders() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="sms-send")
    return _executor


def senders_stop() -> None:
    """Close the sender threads and, with them, their database connections (tests; a server just exits)."""
    global _executor
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is not None:
        from django.db import connections

        every_thread = threading.Barrier(SENDERS, timeout=10)  # one close per thread, not four on one

        def close() -> None:
            connections.close_all()
            every_thread.wait()

        for _ in range(SENDERS):
            executor.submit(close)
        executor.shutdown(wait=True)


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "fields": {}}}


def sms_send_fast_path(app):
    """Wrap the Django ASGI app: send requests with an API key take the lean path, the rest goes to ``app``."""

    async def application(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
            return await app(scope, receive, send)
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1").split()
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if len(authorization) != 2 or authorization[0].lower() not in ("api-key", "bearer"):
            return await app(scope, receive, send)
        if content_type != b"application/json":
            return await app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY:
                return await app(scope, _replay(chunks, more, receive), send)
        host = headers.get(b"host", b"").decode("latin-1").split(":")[0].lower().rstrip(".")
        status, payload, extra = await asyncio.get_running_loop().run_in_executor(
            _senders(), _answer, host, authorization[1], b"".join(chunks), client_ip(scope)
        )
        body = json.dumps(payload).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
            *((name.lower().encode(), value.encode()) for name, value in extra),
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        return None

    return application


def _replay(chunks: list[bytes], more: bool, receive):
    """A `receive` that gives back what was read already, then the rest of the request."""
    pending = list(chunks)

    async def replayed():
        if pending:
            body = b"".join(pending)
            pending.clear()
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replayed


def _answer(host: str, raw_key: str, body: bytes, remote_ip: str | None) -> tuple[int, dict, list]:
    """On a sender thread: tenancy, authentication, then the send itself."""
    from django.db import close_old_connections, connection

    # Django's per-request connection upkeep (max age, and a health check: a `SELECT 1` before the first query),
    # at most once a second per sender thread; a connection that breaks in between fails one request and is closed.
    if time.monotonic() - getattr(_upkeep, "at", 0.0) >= UPKEEP_S:
        close_old_connections()
        _upkeep.at = time.monotonic()
    try:
        return _answer_in_schema(host, raw_key, body, remote_ip)
    except Exception:
        log.exception("POST /api/v1/sms/messages on %s failed", host)
        connection.close()  # whatever state the connection was left in, the next request starts clean
        return 500, _error("server_error", "Server error."), []


def _answer_in_schema(host: str, raw_key: str, body: bytes, remote_ip: str | None) -> tuple[int, dict, list]:
    from django.db import connection
    from django_tenants.utils import get_public_schema_name

    from core.models import Customer, hash_api_key
    from core.selectors import api_key_find, customer_for_user
    from core.services import api_key_touch
    from core.tenancy import resolve_host

    from .views import send_answer

    now = time.monotonic()
    if len(_hosts) > 10_000 or len(_keys) > 10_000:  # bounded, whatever callers send
        _hosts.clear()
        _keys.clear()
    cached = _hosts.get(host)
    if cached is None or now - cached[0] > CACHE_S:
        connection.set_schema_to_public()
        cached = _hosts[host] = (now, *resolve_host(host))
    _, domain, client_label = cached
    if domain is None or domain.tenant.schema_name == get_public_schema_name():
        return 404, _error("not_found", "Not found."), []
    tenant = domain.tenant
    if tenant.is_suspended:
        return 403, _error("operator_suspended", f"{tenant.brand} is suspended."), []
    tenant.domain_url = host
    if connection.schema_name != tenant.schema_name:  # a sender thread mostly serves one operator: its search_path
        connection.set_tenant(tenant)  # stays set from one request to the next (one `SET` per switch)
    else:
        connection.tenant = tenant
    if client_label and not Customer.objects.active().filter(subdomain=client_label).exists():
        return 404, _error("not_found", "Not found."), []
    hashed = f"{tenant.schema_name}:{hash_api_key(raw_key)}"  # a key lives in one schema
    cached_key = _keys.get(hashed)
    if cached_key is None or now - cached_key[0] > CACHE_S:
        cached_key = _keys[hashed] = (now, api_key_find(raw_key=raw_key))
    api_key = cached_key[1]
    if api_key is None:
        return 401, _error("authentication_failed", "Invalid or revoked API key."), [("WWW-Authenticate", "Api-Key")]
    api_key_touch(api_key=api_key)
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return 400, _error("parse_error", f"JSON parse error - {exc}"), []
    if not isinstance(payload, dict):
        fields = {"non_field_errors": ["Send a JSON object."]}
        return 400, {"error": {"code": "invalid", "message": "Invalid input: non_field_errors.", "fields": fields}}, []
    return send_answer(customer=customer_for_user(user=api_key.user), payload=payload, remote_ip=remote_ip)
