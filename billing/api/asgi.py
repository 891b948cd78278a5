"""The lean path of `POST /api/v1/billing/cdrs` for ONE CDR per request, with group commit.

Why: a switch or partner that posts every call as it ends sends one CDR per request, at hundreds or thousands a
second. Through Django's ASGI handler each request gets a thread and a database connection of its own and runs the
whole middleware and DRF stack, and the ingest service's fixed cost (accounts, cost tariffs, the duplicate check,
insert, ledger) is paid per CDR. Here the request is read by an ASGI wrapper around the Django app and handed to one
ingest thread per process, which takes every request waiting at that moment and does for all of them at once what
the DRF view does for one (group commit):

- tenancy: `core.tenancy.resolve_host` (unknown host 404, suspended operator 403, unknown client subdomain 404);
- authentication: `Authorization: Api-Key <key>` through `core.selectors.api_key_find` (invalid or revoked 401) and
  `api_key_touch`; permission: the operator's staff only (`IsOperatorStaff`'s rule: 403);
- throttling: `core.api.throttling.PerKeyThrottle`'s cache key and rate, in the same sliding-window history DRF keeps,
  so requests on either path count against the same limit (429 with Retry-After);
- validation: `serializers.cdr_record_parse`, the same check as the batch path (400 naming the field);
- ingest: one `billing.services.cdrs_ingest(source="api", ...)` per operator for the whole group, in one database
  session kept by the thread; each request then gets its own summary (imported or duplicate, unrated, charged).

Only the simple case takes this path: an `Api-Key` header and a JSON body `{"records": [one record]}` that is not a
freephone combined record. Everything else (batches, session logins, other paths and methods, malformed bodies) is
passed to Django untouched, so the answers and errors there are the regular API's.

Known limit: when two processes store the same new source id at the same instant, both clients hear "imported";
the CDR is still stored and charged once.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

PATHS = frozenset({"/api/v1/billing/cdrs", "/api/v1/billing/cdrs/"})
MAX_BODY = 64 * 1024  # one CDR is a few hundred bytes; anything bigger goes the regular way
MAX_GROUP = 2000  # requests handled together at most


@dataclass
class Pending:
    """One request waiting for the ingest thread, and how to answer it."""

    hostname: str
    raw_key: str
    record: dict
    loop: object
    future: object
    answer: tuple | None = None  # (status, payload, extra headers)

    def reply(self, status: int, payload: dict, headers: list | None = None) -> None:
        self.answer = (status, payload, headers or [])


@dataclass
class _Group:
    """The requests of one batch for one operator schema."""

    tenant: object
    items: list = field(default_factory=list)


def _error(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


class CdrGroupCommitter:
    """The ingest thread of one process: takes every waiting request, answers each (see the module docstring)."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="cdr-group-commit", daemon=True)
        self.thread.start()

    def submit(self, item: Pending) -> None:
        self.queue.put(item)

    def _run(self) -> None:
        while True:
            items = [self.queue.get()]
            while len(items) < MAX_GROUP:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle(items)
            except Exception:  # noqa: BLE001 - the thread must live on; these requests get a 500
                log.exception("single-CDR group of %d requests failed", len(items))
                self._reset_connection()
            for item in items:
                if item.answer is None:
                    item.reply(500, _error("server_error", "Server error."))
                try:
                    item.loop.call_soon_threadsafe(_resolve, item.future, item.answer)
                except RuntimeError:  # its event loop is gone (the server is stopping)
                    pass

    @staticmethod
    def _reset_connection() -> None:
        from django.db import connection

        try:
            connection.close()
        except Exception:  # noqa: BLE001
            log.exception("closing the ingest thread's database connection failed")

    # --- one group ----------------------------------------------------------------------------------

    def _handle(self, items: list[Pending]) -> None:
        from django.db import connection

        groups = self._tenancy(items)
        for group in groups.values():
            connection.set_tenant(group.tenant)
            accepted = self._authorize(group.items)
            records = self._validate(accepted, ZoneInfo(group.tenant.time_zone or "UTC"))
            if records:
                self._ingest_safely(records, group.tenant.time_zone or "UTC")
        connection.set_schema_to_public()

    def _tenancy(self, items: list[Pending]) -> dict[str, _Group]:
        from django.db import connection
        from django_tenants.utils import get_public_schema_name

        from core.models import Customer
        from core.tenancy import resolve_host

        connection.set_schema_to_public()
        hosts: dict[str, tuple] = {}
        for hostname in {item.hostname for item in items}:
            hosts[hostname] = resolve_host(hostname)
        groups: dict[str, _Group] = {}
        for item in items:
            domain, client_label = hosts[item.hostname]
            if domain is None or domain.tenant.schema_name == get_public_schema_name():
                item.reply(404, _error("not_found", "Not found."))
                continue
            tenant = domain.tenant
            if tenant.is_suspended:
                item.reply(403, _error("operator_suspended", f"{tenant.brand} is suspended."))
                continue
            key = tenant.schema_name if not client_label else f"{tenant.schema_name}|{client_label}"
            groups.setdefault(key, _Group(tenant=tenant)).items.append(item)
        for key, group in list(groups.items()):
            if "|" in key:  # a client's subdomain: the client must exist, as the tenancy middleware checks
                connection.set_tenant(group.tenant)
                if not Customer.objects.active().filter(subdomain=key.split("|", 1)[1]).exists():
                    for item in group.items:
                        item.reply(404, _error("not_found", "Not found."))
                    del groups[key]
        return groups

    def _authorize(self, items: list[Pending]) -> list[Pending]:
        """Authentication, permission and throttling, per key once per group."""
        from core.api.throttling import PerKeyThrottle
        from core.selectors import api_key_find, customer_for_user
        from core.services import api_key_touch

        by_key: dict[str, list[Pending]] = {}
        for item in items:
            by_key.setdefault(item.raw_key, []).append(item)
        accepted = []
        for raw_key, waiting in by_key.items():
            api_key = api_key_find(raw_key=raw_key)
            if api_key is None:
                for item in waiting:
                    item.reply(
                        401,
                        _error("authentication_failed", "Invalid or revoked API key."),
                        [(b"www-authenticate", b"Api-Key")],
                    )
                continue
            api_key_touch(api_key=api_key)
            user = api_key.user
            if not (user.is_staff and customer_for_user(user=user) is None):
                for item in waiting:
                    item.reply(403, _error("permission_denied", "Only the operator's staff may do this."))
                continue
            allowed, wait = _throttle_many(PerKeyThrottle(), api_key, user, len(waiting))
            for item in waiting[allowed:]:
                seconds = max(1, int(wait + 0.999))
                item.reply(
                    429,
                    _error("throttled", f"Request was throttled. Expected available in {seconds} seconds."),
                    [(b"retry-after", str(seconds).encode())],
                )
            accepted += waiting[:allowed]
        return accepted

    def _validate(self, items: list[Pending], zone: ZoneInfo) -> list[tuple[Pending, object]]:
        from .serializers import cdr_batch_rejected_error, cdr_ingest_summary, cdr_record_parse

        good = []
        for item in items:
            parsed = cdr_record_parse(item.record, 0, zone)
            if isinstance(parsed, list):
                result = cdr_ingest_summary(received=1, rejected=parsed, summary=None)
                item.reply(400, {"error": cdr_batch_rejected_error(result)})
            else:
                good.append((item, parsed))
        return good

    def _ingest_safely(self, records: list[tuple[Pending, object]], tz: str) -> None:
        """The group at once; if that fails, each record alone, so one bad record cannot fail the others."""
        try:
            self._ingest(records, tz)
            return
        except Exception:  # noqa: BLE001
            log.exception("single-CDR group ingest failed; retrying its %d records one by one", len(records))
        for record in records:
            try:
                self._ingest([record], tz)
            except Exception:  # noqa: BLE001
                log.exception("single-CDR ingest failed")
                self._reset_connection()
                record[0].reply(500, _error("server_error", "Server error."))

    def _ingest(self, records: list[tuple[Pending, object]], tz: str) -> None:
        from django.utils import timezone

        from billing.models import Cdr
        from billing.services import cdrs_ingest

        from .serializers import API_CDR_SOURCE

        ids = [parsed.source_id[:120] for _, parsed in records]
        began = timezone.now()
        cdrs_ingest(source=API_CDR_SOURCE, records=[parsed for _, parsed in records], tz=tz)
        # Rows stored by this call carry a created_at from after `began`; older ones were there before (duplicates).
        stored = {
            row[0]: row[1:]
            for row in Cdr.objects.filter(source=API_CDR_SOURCE, source_id__in=set(ids), created_at__gte=began)
            .values_list("source_id", "leg", "status", "price", "cost", "currency")
            .order_by()
        }
        answered: set[str] = set()
        for (item, _), source_id in zip(records, ids, strict=True):
            if source_id in answered or source_id not in stored:
                item.reply(200, _summary(duplicate=True))
                continue
            answered.add(source_id)
            item.reply(200, _summary(duplicate=False, row=stored[source_id]))


def _summary(*, duplicate: bool, row: tuple | None = None) -> dict:
    """What the batch path answers for a batch of this one record."""
    result = {
        "received": 1,
        "imported": 0,
        "duplicates": 0,
        "unrated": 0,
        "rejected": [],
        "charged": {},
        "cost": {},
        "legs": {},
    }
    if duplicate:
        result["duplicates"] = 1
        return result
    leg, status, price, cost, currency = row
    result["imported"] = 1
    result["legs"] = {leg: {"cdrs": 1, "charged": {}}}
    if status != "rated":
        result["unrated"] = 1
        return result
    result["charged"] = result["legs"][leg]["charged"] = {currency: str(price)}
    if cost is not None:
        result["cost"] = {currency: str(cost)}
    return result


def _throttle_many(throttle, api_key, user, count: int) -> tuple[int, float]:
    """Let up to `count` requests of one key through DRF's per-key throttle at once: (how many may pass, wait).

    Same cache key, rate and history (a list of request times, newest first) as `SimpleRateThrottle.allow_request`,
    read and written once for the whole group instead of once per request.
    """
    if throttle.rate is None:
        return count, 0.0
    key = throttle.get_cache_key(SimpleNamespace(auth=api_key, user=user), None)
    now = throttle.timer()
    history = [moment for moment in throttle.cache.get(key, []) if moment > now - throttle.duration]
    allowed = max(0, min(count, throttle.num_requests - len(history)))
    history = [now] * allowed + history
    throttle.cache.set(key, history, throttle.duration)
    wait = 0.0
    if allowed < count and history:
        wait = throttle.duration - (now - history[-1])
    return allowed, wait


def _resolve(future, answer) -> None:
    if not future.done():
        future.set_result(answer)


# --- ASGI ------------------------------------------------------------------------------------------------


def _header(scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


def _fast_candidate(scope) -> str | None:
    """The raw API key when the request may take the lean path (before reading its body), else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
        return None
    if not _header(scope, b"content-type").split(b";")[0].strip() == b"application/json":
        return None
    parts = _header(scope, b"authorization").decode("latin-1").split()
    if len(parts) != 2 or parts[0].lower() not in ("api-key", "bearer"):
        return None
    return parts[1]


def _single_record(body: bytes) -> dict | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or set(data) != {"records"}:
        return None
    records = data["records"]
    if not isinstance(records, list) or len(records) != 1 or not isinstance(records[0], dict):
        return None
    if records[0].get("leg") == "combined":  # freephone records become two CDRs: the regular path answers them
        return None
    return records[0]


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


class SingleCdrFastPath:
    """ASGI wrapper: single-CDR posts go to the group-commit thread; every other request to `app` unchanged."""

    def __init__(self, app):
        self.app = app
        self._committer: CdrGroupCommitter | None = None
        self._lock = threading.Lock()

    @property
    def committer(self) -> CdrGroupCommitter:
        if self._committer is None:
            with self._lock:  # started lazily, in the worker process that serves requests
                if self._committer is None:
                    self._committer = CdrGroupCommitter()
        return self._committer

    async def __call__(self, scope, receive, send):
        raw_key = _fast_candidate(scope)
        if raw_key is None:
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more and size <= MAX_BODY:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        body = b"".join(chunks)
        record = None if more else _single_record(body)
        if record is None:
            return await self.app(scope, _replay(body, more, receive), send)
        import asyncio

        loop = asyncio.get_running_loop()
        hostname = _header(scope, b"host").decode("latin-1").split(":")[0].lower().rstrip(".")
        item = Pending(hostname=hostname, raw_key=raw_key, record=record, loop=loop, future=loop.create_future())
        self.committer.submit(item)
        status, payload, headers = await item.future
        content = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"vary", b"Accept, Authorization"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _replay(body: bytes, more: bool, receive):
    """A `receive` that gives the part of the body already read, then the rest from the client."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replayed


def single_cdr_fast_path(app):
    return SingleCdrFastPath(app)
