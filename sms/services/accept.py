"""Accepting messages from a client: validate, admit, filter, route, price, reserve credit, store — per request.

A request is one message or a batch of up to MAX_BATCH recipients, in one of three shapes:

- ``{"to": "+34612345678", "from": "ACME", "text": "…"}`` — one message;
- ``{"to": ["+34612345678", …], "from": …, "text": …}`` — one text to many numbers;
- ``{"messages": [{"to": …, "text": …}, …], "from": …}`` — each message its own; fields given next to
  ``messages`` are the defaults of every message.

Optional fields: ``callback_url``, ``validity`` (seconds), ``scheduled_at`` (ISO 8601), ``client_reference``.

The order of the checks, and what each answers:

1. the caller must be an SMS client (403), calling from an allowed address (403);
2. every field of every message is validated first; any error refuses the whole request (400, every error named by
   field and position, e.g. ``messages[3].to``) and nothing is written, reserved or counted;
3. the client's queue must have room (429) and its TPS allow the request (429 with Retry-After);
4. filters, per message (a refused message is stored as ``rejected`` with its reason, and not charged): no route,
   blacklist, do-not-disturb, opt-out, spam rule, duplicate, fraud limit;
5. credit for the whole request's price, drawn from the client's credit grants (402 with the balance when it does not
   fit: then nothing is stored at all);
6. one bulk insert of the messages and their first events; after commit, one wake-up of the submitters.
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from billing.models import Account
from billing.services import InsufficientCredit, credit_draw
from core.sql import execute_values

from ..choices import EventStatus, MessageStatus, RejectReason
from ..encoding import MessageTooLong, count_parts
from ..kv import gcra, key, kv
from ..models import ListEntry, Message, MessageEvent
from ..numbers import InvalidNumber, ParsedNumber, number_parse, sender_is_valid
from ..selectors import ClientSpec, SmsConfig, queue_depths, sms_config_get
from .callbacks import callback_url_problem
from .events import NewEvent, events_record
from .fraud import FraudCandidate, FraudOutcome, fraud_alert_once, fraud_check

log = logging.getLogger(__name__)

MAX_BATCH = 10_000
MAX_REFERENCE = 100
MIN_VALIDITY_S = 60
MAX_VALIDITY_S = 7 * 24 * 3600
MAX_SCHEDULE_AHEAD = timedelta(days=365)
QUEUE_DEPTH_CACHE_S = 1
DUPLICATE_LOCK_BUCKETS = 1024
MESSAGE_FIELDS = ("to", "from", "text", "callback_url", "validity", "scheduled_at", "client_reference")
LIST_REASONS = (
    ("blacklist", RejectReason.BLACKLIST),
    ("dnd", RejectReason.DND),
    ("optout", RejectReason.OPT_OUT),
)
_url_validator = URLValidator(schemes=["http", "https"])


def default_validity_s() -> int:
    return int(getattr(settings, "SMS_DEFAULT_VALIDITY_S", 48 * 3600))


class RequestInvalid(Exception):
    """The request breaks the rules; ``fields`` names each field (with the position in a batch) and why."""

    def __init__(self, fields: dict[str, list[str]]):
        self.fields = fields
        super().__init__(", ".join(fields))


class RequestRefused(Exception):
    """The client may not send this now (403 not a client / address not allowed, 429 too fast / queue full)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        super().__init__(message)


class CreditInsufficient(Exception):
    def __init__(self, *, account: Account, needed: Decimal):
        self.balance, self.available, self.currency, self.needed = (
            account.balance,
            account.available,
            account.currency,
            needed,
        )
        super().__init__(f"the request needs {needed} {account.currency}, {account.available} is available")


@dataclass(slots=True)
class Draft:
    """One message of a request while it is being accepted."""

    position: int
    number: ParsedNumber
    sender: str
    text: str
    callback_url: str
    validity_s: int
    scheduled_at: datetime | None
    client_reference: str
    encoding: str = ""
    length: int = 0
    parts: int = 0
    route_chain: tuple = ()
    price_per_part: Decimal = Decimal(0)
    price: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    reject_code: str = ""
    reject_description: str = ""

    def reject(self, reason: RejectReason, detail: str = "") -> None:
        if not self.reject_code:
            self.reject_code = reason.value
            self.reject_description = f"{reason.label}: {detail}" if detail else str(reason.label)


@dataclass(frozen=True)
class AcceptedRequest:
    request_id: uuid.UUID
    messages: list  # AcceptedMessage, in the order of the request
    currency: str

    @property
    def total_price(self) -> Decimal:
        return sum((m.price for m in self.messages if m.status != MessageStatus.REJECTED), Decimal(0))


def messages_accept(
    *, customer, payload: dict, remote_ip: str | None = None, now: datetime | None = None, job_id: int | None = None
) -> AcceptedRequest:
    """Accept a client's request (see the module docstring for its shapes and checks); ``job_id``: the bulk job
    whose rows these are (sms.services.jobs), stored with each message."""
    now = now or timezone.now()
    schema = connection.schema_name
    config = sms_config_get(schema=schema)
    client = config.clients.get(customer.pk) if customer is not None else None
    if client is None:
        raise RequestRefused(403, "not_sms_client", "Only an SMS client's logins can send messages.")
    if not client.ip_allowed(remote_ip):
        raise RequestRefused(403, "ip_not_allowed", f"Calls from {remote_ip} are not allowed for this client.")

    drafts = _drafts_parse(payload, client=client, config=config, now=now)
    _admit(schema=schema, client=client, count=len(drafts), now=now)
    _route_and_price(drafts, client=client, config=config)
    # One transaction from the filters to the commit: the duplicate check's locks are held until the messages it
    # let through are stored.
    with transaction.atomic(), connection.cursor() as cursor:
        _filter(drafts, client=client, config=config, now=now, cursor=cursor)
        candidates = [
            FraudCandidate(d.position, d.sender, d.number.mobile_operator, d.price) for d in drafts if not d.reject_code
        ]
        fraud = fraud_check(schema=schema, client=client, limits=config.fraud_limits, candidates=candidates, now=now)
        for draft in drafts:
            limit = fraud.refused.get(draft.position)
            if limit is not None:
                draft.reject(RejectReason.FRAUD_LIMIT, limit.name)
        try:
            accepted = _store(
                drafts,
                customer=customer,
                client=client,
                config=config,
                fraud=fraud,
                now=now,
                cursor=cursor,
                job_id=job_id,
            )
        except BaseException:
            fraud.compensate()
            raise
    if fraud.hits:
        _alert(schema=schema, client=client, fraud=fraud, now=now)
    return accepted


# --- 2. validation ------------------------------------------------------------------------------------------------


def _drafts_parse(payload: dict, *, client: ClientSpec, config: SmsConfig, now: datetime) -> list[Draft]:
    if not isinstance(payload, dict):
        raise RequestInvalid({"non_field_errors": ["Send a JSON object."]})
    if "messages" in payload:
        shape = "messages"
        items = payload["messages"]
        if not isinstance(items, list) or not items:
            raise RequestInvalid({"messages": ["Give a non-empty list of messages."]})
        entries = list(enumerate(items))
    elif isinstance(payload.get("to"), list):
        shape = "list"
        if not payload["to"]:
            raise RequestInvalid({"to": ["Give at least one number."]})
        entries = [(index, {"to": number}) for index, number in enumerate(payload["to"])]
    else:
        shape = "single"
        entries = [(0, {})]
    if len(entries) > MAX_BATCH:
        field = "messages" if shape == "messages" else "to"
        raise RequestInvalid({field: [f"At most {MAX_BATCH} recipients per request; this one has {len(entries)}."]})

    def field_name(position: int, field: str) -> str:
        if shape == "messages":
            return f"messages[{position}].{field}"
        if shape == "list" and field == "to":
            return f"to[{position}]"
        return field

    # Fields given once for the whole request are checked once, under their plain names.
    shared = {f: payload[f] for f in MESSAGE_FIELDS if f in payload and (f != "to" or shape == "single")}
    shared_clean, shared_errors = _fields_check(shared, client=client, config=config, now=now)
    errors: dict[str, list[str]] = dict(shared_errors)
    drafts = []
    for position, item in entries:
        if not isinstance(item, dict):
            errors[f"messages[{position}]"] = ["Each message is a JSON object."]
            continue
        clean, item_errors = _fields_check(item, client=client, config=config, now=now) if item else ({}, {})
        for field, messages in item_errors.items():
            errors[field_name(position, field)] = messages
        merged = {**shared_clean, **clean}
        for field in ("to", "from", "text"):
            if field in merged or field in item_errors or field in shared_errors:
                continue
            if field == "from" and client.sender_ids:
                merged["from"] = client.sender_ids[0]
            else:
                errors.setdefault(field_name(position, field), ["This field is required."])
        if len(errors) >= 1000:
            break  # enough to fix for one round trip
        if errors:
            continue
        drafts.append(
            Draft(
                position=position,
                number=merged["to"],
                sender=merged["from"],
                text=merged["text"],
                callback_url=merged.get("callback_url", ""),
                validity_s=merged.get("validity", default_validity_s()),
                scheduled_at=merged.get("scheduled_at"),
                client_reference=merged.get("client_reference", ""),
            )
        )
    if errors:
        raise RequestInvalid(errors)
    return drafts


def _fields_check(values: dict, *, client: ClientSpec, config: SmsConfig, now: datetime):
    """Validate the message fields present in ``values``: (clean values, errors by field)."""
    clean: dict = {}
    errors: dict[str, list[str]] = {}
    if "to" in values:
        raw = values["to"]
        if not isinstance(raw, str) or not raw.strip():
            errors["to"] = ["Give the number as a string in international format, e.g. +34612345678."]
        else:
            try:
                clean["to"] = number_parse(raw, prefixes=config.prefixes)
            except InvalidNumber as exc:
                errors["to"] = [str(exc)]
    if "from" in values:
        sender = values["from"]
        if not isinstance(sender, str) or not sender_is_valid(sender):
            errors["from"] = ["A sender id is 1-11 letters and digits, or a number of up to 15 digits."]
        elif client.sender_ids and sender not in client.sender_ids:
            errors["from"] = [f"{sender!r} is not one of this client's sender ids: {', '.join(client.sender_ids)}."]
        else:
            clean["from"] = sender
    if "text" in values:
        text = values["text"]
        if not isinstance(text, str) or not text.strip():
            errors["text"] = ["The text must not be empty."]
        else:
            try:
                count_parts(text)
            except MessageTooLong as exc:
                errors["text"] = [f"The text is too long: {exc}."]
            else:
                clean["text"] = text
    if values.get("callback_url") not in (None, ""):
        url = values["callback_url"]
        try:
            if not isinstance(url, str) or len(url) > 500:
                raise ValidationError("too long")
            _url_validator(url)
        except ValidationError:
            errors["callback_url"] = ["Give an http or https URL of at most 500 characters."]
        else:
            if problem := callback_url_problem(url):  # the SSRF guard (no DNS lookup here: see callbacks)
                errors["callback_url"] = [problem]
            else:
                clean["callback_url"] = url
    if values.get("validity") is not None:
        validity = values["validity"]
        if (
            isinstance(validity, bool)
            or not isinstance(validity, int)
            or not MIN_VALIDITY_S <= validity <= MAX_VALIDITY_S
        ):
            errors["validity"] = [f"Seconds, from {MIN_VALIDITY_S} to {MAX_VALIDITY_S}."]
        else:
            clean["validity"] = validity
    if values.get("scheduled_at") not in (None, ""):
        raw = values["scheduled_at"]
        moment = parse_datetime(raw) if isinstance(raw, str) else None
        if moment is None:
            errors["scheduled_at"] = ["An ISO 8601 date and time, e.g. 2030-01-31T09:00:00Z."]
        else:
            if timezone.is_naive(moment):
                moment = moment.replace(tzinfo=UTC)
            if moment > now + MAX_SCHEDULE_AHEAD:
                errors["scheduled_at"] = ["At most a year ahead."]
            else:
                clean["scheduled_at"] = moment if moment > now else None
    if values.get("client_reference") not in (None, ""):
        reference = values["client_reference"]
        if not isinstance(reference, str) or len(reference) > MAX_REFERENCE:
            errors["client_reference"] = [f"A string of at most {MAX_REFERENCE} characters."]
        else:
            clean["client_reference"] = reference
    return clean, errors


# --- 3. admission -------------------------------------------------------------------------------------------------


def _admit(*, schema: str, client: ClientSpec, count: int, now: datetime) -> None:
    """Refuse (429) when the client's queue is full or its TPS would be exceeded."""
    if client.max_queued:
        waiting = client_queue_depth(schema=schema, customer_id=client.customer_id, now=now)
        if waiting + count > client.max_queued:
            raise RequestRefused(
                429,
                "queue_full",
                f"{waiting} messages are still waiting to be sent (at most {client.max_queued}); try again shortly.",
                retry_after=1,
            )
    if client.tps_limit:
        wait_ms = gcra()(
            keys=[key(schema, "tps", client.client_id)],
            args=[int(now.timestamp() * 1000), math.ceil(count * 1000 / client.tps_limit), 1000],
        )
        if wait_ms:
            raise RequestRefused(
                429,
                "throttled",
                f"Over the client's {client.tps_limit} messages per second.",
                retry_after=max(1, math.ceil(int(wait_ms) / 1000)),
            )


def client_queue_depth(*, schema: str, customer_id: int, now: datetime) -> int:
    """Messages of the client waiting for submission, as counted within the last QUEUE_DEPTH_CACHE_S seconds."""
    cache_key = key(schema, "queue-depth")
    redis = kv()
    cached, counted = redis.hmget(cache_key, [customer_id, "-"])  # "-": the hash is there (the count is fresh)
    if counted is None:
        depths = queue_depths(now=now)
        pipe = redis.pipeline(transaction=False)
        pipe.delete(cache_key)
        pipe.hset(cache_key, mapping={"-": 0, **{str(c): n for c, n in depths.items()}})
        pipe.expire(cache_key, QUEUE_DEPTH_CACHE_S)
        pipe.execute()
        return depths.get(customer_id, 0)
    return int(cached or 0)


# --- 4. routing and filters ---------------------------------------------------------------------------------------


def _route_and_price(drafts: list[Draft], *, client: ClientSpec, config: SmsConfig) -> None:
    routes = config.routes
    gateways = config.gateways
    counted: dict[tuple[str, bool], tuple[str, int, int]] = {}
    for draft in drafts:
        number = draft.number
        chain = routes.chain(
            client_id=client.client_id,
            digits=number.digits,
            country=number.country,
            mobile_operator=number.mobile_operator,
        )
        chain = [rule for rule in chain if rule.gateway_id in gateways]
        force_ucs2 = bool(chain) and gateways[chain[0].gateway_id].default_encoding == "ucs2"
        parts = counted.get((draft.text, force_ucs2))
        if parts is None:
            parts = counted[(draft.text, force_ucs2)] = count_parts(draft.text, force_ucs2=force_ucs2)
        draft.encoding, draft.parts, draft.length = parts
        if not chain:
            draft.reject(RejectReason.NO_ROUTE, draft.number.e164)
            continue
        draft.route_chain = tuple(chain)
        draft.price_per_part = chain[0].price_per_part
        draft.price = chain[0].price_per_part * draft.parts
        draft.cost = chain[0].cost_per_part * draft.parts


def _filter(drafts: list[Draft], *, client: ClientSpec, config: SmsConfig, now: datetime, cursor) -> None:
    live = [d for d in drafts if not d.reject_code]
    if not live:
        return
    numbers = {d.number.e164 for d in live}
    listed: dict[str, set[str]] = {}
    cursor.execute(  # one lean query per request, whatever its size
        f"SELECT number, kind FROM {ListEntry._meta.db_table} "
        "WHERE number = ANY(%s) AND (client_id IS NULL OR client_id = %s)",
        [list(numbers), client.client_id],
    )
    for number, kind in cursor.fetchall():
        listed.setdefault(number, set()).add(kind)
    spam = config.spam
    spam_verdicts: dict[str, str | None] = {}
    recent: set[tuple[str, str]] = set()
    if client.duplicate_window_s:
        # Requests of one client to the same numbers take their turn here until they commit, so two at once cannot
        # both find no earlier copy: a transaction lock per (client, bucket of numbers), taken in bucket order.
        buckets = sorted({zlib.crc32(number.encode()) % DUPLICATE_LOCK_BUCKETS for number in numbers})
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock(%s, bucket)) FROM unnest(%s::int[]) AS bucket",
            [client.customer_id, buckets],
        )
        since = now - timedelta(seconds=client.duplicate_window_s)
        recent = set(
            Message.objects.filter(customer_id=client.customer_id, destination__in=numbers, created_at__gte=since)
            .exclude(status=MessageStatus.REJECTED)
            .values_list("destination", "text")
        )
    for draft in live:
        kinds = listed.get(draft.number.e164)
        if kinds:
            for kind, reason in LIST_REASONS:
                if kind in kinds:
                    draft.reject(reason)
                    break
            continue
        if spam:
            if draft.text not in spam_verdicts:
                spam_verdicts[draft.text] = spam.match(draft.text)
            rule = spam_verdicts[draft.text]
            if rule:
                draft.reject(RejectReason.SPAM, rule)
                continue
        if client.duplicate_window_s:
            pair = (draft.number.e164, draft.text)
            if pair in recent:
                draft.reject(RejectReason.DUPLICATE)
                continue
            recent.add(pair)


# --- 5-6. credit and storage --------------------------------------------------------------------------------------


# The columns of one insert of a request's messages; `_store` builds each row in this order (no ORM per row: a
# request may hold 10,000 messages and the acceptance path is the hot one).
_MESSAGE_COLUMNS = (
    ("customer_id", "bigint"),
    ("request_id", "uuid"),
    ("sender", "text"),
    ("destination", "text"),
    ("text", "text"),
    ("encoding", "text"),
    ("length", "integer"),
    ("parts", "smallint"),
    ("price_per_part", "numeric"),
    ("price", "numeric"),
    ("cost", "numeric"),
    ("currency", "text"),
    ("status", "text"),
    ("error_code", "text"),
    ("error_description", "text"),
    ("smsc_message_ids", "varchar[]"),
    ("route_id", "bigint"),
    ("gateway_id", "bigint"),
    ("route_chain", "bigint[]"),
    ("tried_gateways", "bigint[]"),
    ("client_reference", "text"),
    ("callback_url", "text"),
    ("valid_until", "timestamptz"),
    ("scheduled_at", "timestamptz"),
    ("country", "text"),
    ("mobile_operator", "text"),
    ("reservation_id", "bigint"),
    ("claimed_by", "text"),
    ("not_before", "timestamptz"),
    ("done_at", "timestamptz"),
    ("job_id", "bigint"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)


@dataclass(slots=True)
class AcceptedMessage:
    """One message of an accepted request, as stored (what the answer shows)."""

    id: int | None
    customer_id: int
    destination: str
    sender: str
    status: str
    encoding: str
    parts: int
    length: int
    price: Decimal
    currency: str
    error_code: str
    error_description: str
    client_reference: str
    callback_url: str
    scheduled_at: datetime | None
    valid_until: datetime
    not_before: datetime

    @property
    def pk(self) -> int | None:
        return self.id


def _store(
    drafts: list[Draft],
    *,
    customer,
    client: ClientSpec,
    config: SmsConfig,
    fraud: FraudOutcome,
    now: datetime,
    cursor,
    job_id: int | None,
) -> AcceptedRequest:
    request_id = uuid.uuid4()
    currency = client.currency
    total = sum((d.price for d in drafts if not d.reject_code), Decimal(0))
    messages = []
    for draft in drafts:
        rejected = bool(draft.reject_code)
        start = draft.scheduled_at or now
        messages.append(
            AcceptedMessage(
                id=None,
                customer_id=client.customer_id,
                destination=draft.number.e164,
                sender=draft.sender,
                status=MessageStatus.REJECTED.value if rejected else MessageStatus.ACCEPTED.value,
                encoding=draft.encoding,
                parts=draft.parts,
                length=draft.length,
                price=Decimal(0) if rejected else draft.price,
                currency=currency,
                error_code=draft.reject_code,
                error_description=draft.reject_description,
                client_reference=draft.client_reference,
                callback_url=draft.callback_url,
                scheduled_at=draft.scheduled_at,
                valid_until=start + timedelta(seconds=draft.validity_s),
                not_before=start,
            )
        )
    accepted = [m for m in messages if m.status == MessageStatus.ACCEPTED]
    with transaction.atomic(savepoint=False):  # the caller's transaction (no savepoint round trips)
        # Credit is drawn from one of the account's credit grants (billing.services.grants): concurrent requests of
        # one client take different grants and do not queue on its account row.
        reservation_id = None
        if total > 0:
            try:
                reservation_id = credit_draw(
                    account_id=client.account_id,
                    amount=total,
                    use_ends_at=max(m.valid_until for m in accepted),
                    key=f"sms:request:{request_id}",
                    cursor=cursor,
                )
            except InsufficientCredit as exc:
                raise CreditInsufficient(account=exc.account, needed=total) from exc
        rows = []
        for draft, m in zip(drafts, messages, strict=True):
            chain = draft.route_chain
            rejected = m.status == MessageStatus.REJECTED
            rows.append(
                (
                    m.customer_id,
                    request_id,
                    m.sender,
                    m.destination,
                    draft.text,
                    m.encoding,
                    m.length,
                    m.parts,
                    draft.price_per_part,
                    m.price,
                    Decimal(0) if rejected else draft.cost,
                    currency,
                    m.status,
                    m.error_code,
                    m.error_description,
                    [],
                    chain[0].id if chain else None,
                    chain[0].gateway_id if chain else None,
                    [rule.id for rule in chain],
                    [],
                    m.client_reference,
                    m.callback_url,
                    m.valid_until,
                    m.scheduled_at,
                    draft.number.country,
                    draft.number.mobile_operator[:80],
                    None if rejected else reservation_id,
                    "",
                    m.not_before,
                    now if rejected else None,
                    job_id,
                    now,
                    now,
                )
            )
        for m, message_id in zip(messages, _messages_insert(rows, cursor=cursor), strict=True):
            m.id = message_id
        refused = [m for m in messages if m.status == MessageStatus.REJECTED]
        if refused:
            events_record(
                events=[
                    NewEvent(
                        message_id=m.id,
                        customer_id=m.customer_id,
                        status=EventStatus.REJECTED,
                        at=now,
                        error_code=m.error_code,
                        error_description=m.error_description,
                        callback_url=m.callback_url,
                        client_reference=m.client_reference,
                        destination=m.destination,
                        sender=m.sender,
                        parts=m.parts,
                        price=m.price,
                        currency=m.currency,
                    )
                    for m in refused
                ],
                callback_urls={client.customer_id: client.callback_url},
            )
        if any(m.not_before <= now for m in accepted):
            schema = connection.schema_name
            transaction.on_commit(lambda: _submission_kick(schema))
    return AcceptedRequest(request_id=request_id, messages=messages, currency=currency)


def _messages_insert(rows: list[tuple], *, cursor) -> list[int]:
    """Insert a request's messages and the `accepted` event of each accepted one in one statement; their ids."""
    columns = ", ".join(name for name, _ in _MESSAGE_COLUMNS)
    sql = f"""WITH stored AS (
                INSERT INTO {Message._meta.db_table} ({columns}) VALUES %s RETURNING id, status, created_at),
              events AS (
                INSERT INTO {MessageEvent._meta.db_table}
                  (message_id, status, error_code, error_description, callback_batch_id, created_at)
                SELECT id, status, '', '', NULL, created_at FROM stored WHERE status = '{MessageStatus.ACCEPTED.value}')
              SELECT id FROM stored"""
    result = execute_values(cursor, sql, rows, [sql_type for _, sql_type in _MESSAGE_COLUMNS], fetch=True)
    return [row[0] for row in result]


def _submission_kick(schema: str) -> None:
    """Wake the submitters, off the request's thread: the answer does not wait for Redis (should the process die
    before the wake-up, the periodic `sms.maintain` kicks within seconds)."""
    from .wakeups import submission_kick

    _kicker().submit(_kick_logged, submission_kick, schema)


def _kick_logged(kick, schema: str) -> None:
    try:
        kick(schema=schema)
    except Exception:
        log.exception("waking the submitters of %s failed", schema)


@functools.cache
def _kicker() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="sms-kick")


def _alert(*, schema: str, client: ClientSpec, fraud: FraudOutcome, now: datetime) -> None:
    """Once per limit, client, scope and period: tell the operator (a task, after the refusals are stored)."""
    from ..tasks import fraud_alert

    for (limit_id, scope_value), limit in fraud.hits.items():
        if fraud_alert_once(schema=schema, limit=limit, client=client, scope_value=scope_value, now=now):
            kwargs = {"limit_id": limit_id, "customer_id": client.customer_id, "scope": scope_value}
            transaction.on_commit(functools.partial(fraud_alert.apply_async, queue="default", kwargs=kwargs))
