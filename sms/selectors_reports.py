"""SMS reports: today's totals, the per-message report and the summary per mobile operator by day or month.

What the numbers mean (the same in the API, the client panel and the operator console):

- a message counts on the day (operator's time zone) it was accepted (`created_at`);
- `messages` counts every message, whatever became of it; `parts` and `credit` count what was deducted, read from
  the message's charge record in billing (`Message.charge_cdr`, one join): a message still queued has its credit
  reserved, not deducted (no record yet); a rejected or expired one got it back, except the parts an SMSC had
  already accepted, which stay charged (the record keeps those parts and their price). The staff's `cost` is the
  record's cost likewise;
- `unit_price` is credit per part (the exact credit over the parts, 6 decimals); the operator's staff also see
  `cost` (what the gateways cost, over the same messages), `unit_cost` and `margin` (credit - cost);
- totals are lines in billing's sense (`billing.selectors.reports`): the exact sum of the records, rounded once,
  half-up, to MONEY_LINE_DECIMAL_PLACES; a single message's credit and cost keep their full precision.

Periods are instants, `start` inclusive and `end` exclusive, at most MAX_RANGE_DAYS long. Every selector takes the
caller's `customer` (None for the operator's staff) and sees only that customer's messages.
"""

from __future__ import annotations

import csv
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from itertools import islice
from zoneinfo import ZoneInfo

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Case, CharField, Count, DateTimeField, DecimalField, F, Q, Sum, Value, When
from django.db.models.functions import Coalesce, Trunc
from django.utils import timezone

from billing.selectors.reports import money_line, operator_time_zone
from core.models import Customer

from .choices import MessageStatus
from .models import Message, SmsClient

REPORT_GROUPS = ("day", "month")
MAX_RANGE_DAYS = 366
UNIT_PLACES = Decimal("0.000001")

# Deducted: what the message's charge record kept (no record: nothing charged yet).
CHARGED_PARTS = "charge_cdr__units"
CHARGED_CREDIT = "charge_cdr__price"
CHARGED_COST = "charge_cdr__cost"
FAILED_STATUSES = (MessageStatus.UNDELIVERED, MessageStatus.EXPIRED, MessageStatus.REJECTED)
PENDING_STATUSES = (MessageStatus.ACCEPTED, MessageStatus.SUBMITTING)

# The message type the client chose by its text: GSM 03.38 is plain text, UCS-2 is unicode.
MESSAGE_TYPES = {"gsm7": "text", "ucs2": "unicode"}


class ReportInvalid(ValueError):
    """A report's parameter is wrong; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class MessageFilters:
    """The per-message report's filters; empty ones do not filter."""

    statuses: tuple[str, ...] = ()
    number_prefix: str = ""  # E.164 digits, without +
    sender: str = ""
    country: str = ""
    mobile_operator: str = ""
    client: SmsClient | None = None  # staff only


# --- periods ------------------------------------------------------------------------------------------------------


def local_day_start(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone)


def local_today(*, tz: str | None = None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """Today in the operator's time zone: [midnight, next midnight)."""
    zone = ZoneInfo(tz or operator_time_zone())
    day = (now or timezone.now()).astimezone(zone).date()
    return local_day_start(day, zone), local_day_start(day + timedelta(days=1), zone)


def report_period_check(*, start: datetime, end: datetime) -> None:
    if end <= start:
        raise ReportInvalid("to", "`to` must be after `from`.")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise ReportInvalid("to", f"A report covers at most {MAX_RANGE_DAYS} days; ask for a shorter period.")


def local_days_period(*, first: date, last: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """Whole days ``first`` to ``last``, both included, in the operator's zone, as [start, end); ReportInvalid
    (field ``to``) when it ends before it starts or is too long. The panel's and the console's forms use it."""
    if last < first:
        raise ReportInvalid("to", "The period must end on or after its first day.")
    start, end = local_day_start(first, zone), local_day_start(last + timedelta(days=1), zone)
    report_period_check(start=start, end=end)
    return start, end


def _unit(amount: Decimal, parts: int) -> Decimal:
    return (amount / parts).quantize(UNIT_PLACES, rounding=ROUND_HALF_UP) if parts else Decimal(0)


def _scope(customer: Customer | None):
    queryset = Message.objects.all()
    return queryset if customer is None else queryset.of_customer(customer)


# --- today's totals -----------------------------------------------------------------------------------------------


def sms_today_totals(*, customer: Customer | None, tz: str | None = None, now: datetime | None = None) -> dict:
    """Today's messages (operator's time zone), parts and credit deducted, with the messages per status.

    One query, grouped by currency and status. `credit` and `currency` are the total when every message is in one
    currency (always so for a client); `by_currency` has one line per currency.
    """
    tz = tz or operator_time_zone()
    start, end = local_today(tz=tz, now=now)
    rows = (
        _scope(customer)
        .filter(created_at__gte=start, created_at__lt=end)
        .values("currency", "status")
        .annotate(messages=Count("id"), parts=Sum(CHARGED_PARTS), credit=Sum(CHARGED_CREDIT))
        .order_by()
    )
    by_status = dict.fromkeys(MessageStatus.values, 0)
    currencies: dict[str, dict] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["messages"]
        line = currencies.setdefault(row["currency"], {"messages": 0, "parts": 0, "credit": Decimal(0)})
        line["messages"] += row["messages"]
        line["parts"] += row["parts"] or 0
        line["credit"] += row["credit"] or Decimal(0)
    by_currency = [
        {"currency": currency, **line, "credit": money_line(line["credit"])}
        for currency, line in sorted(currencies.items())
    ]
    single = by_currency[0] if len(by_currency) == 1 else None
    return {
        "date": start.date(),
        "time_zone": tz,
        "start": start,
        "end": end,
        "messages": sum(by_status.values()),
        "parts": sum(line["parts"] for line in currencies.values()),
        "credit": single["credit"] if single else (Decimal(0) if not by_currency else None),
        "currency": single["currency"] if single else None,
        "pending": sum(by_status[s] for s in PENDING_STATUSES),
        "delivered": by_status[MessageStatus.DELIVERED],
        "failed": sum(by_status[s] for s in FAILED_STATUSES),
        "by_status": by_status,
        "by_currency": by_currency,
        "decimal_places": settings.MONEY_LINE_DECIMAL_PLACES,
    }


# --- the per-message report ---------------------------------------------------------------------------------------

MESSAGE_ROW_FIELDS = (
    "id",
    "created_at",
    "destination",
    "type",
    "encoding",
    "length",
    "parts",
    "sender",
    "country",
    "mobile_operator",
    "credit",
    "currency",
    "status",
    "error_code",
    "error_description",
    "client_reference",
)
STAFF_ROW_FIELDS = ("customer_id", "cost")


def sms_message_report(
    *, customer: Customer | None, start: datetime, end: datetime, filters: MessageFilters = MessageFilters()
):
    """The messages accepted in [start, end), newest first, as dicts (MESSAGE_ROW_FIELDS; staff also get the client's
    customer id and the cost). A lazy queryset: page it, or iterate it for an export."""
    report_period_check(start=start, end=end)
    if filters.client is not None and customer is not None:
        raise ReportInvalid("client", "Only the operator's staff may choose the client.")
    queryset = _scope(customer).filter(created_at__gte=start, created_at__lt=end)
    if filters.statuses:
        queryset = queryset.filter(status__in=filters.statuses)
    if filters.number_prefix:
        queryset = queryset.filter(destination__startswith="+" + filters.number_prefix)
    if filters.sender:
        queryset = queryset.filter(sender=filters.sender)
    if filters.country:
        queryset = queryset.filter(country=filters.country.upper())
    if filters.mobile_operator:
        queryset = queryset.filter(mobile_operator__iexact=filters.mobile_operator)
    if filters.client is not None:
        queryset = queryset.filter(customer_id=filters.client.customer_id)
    fields = MESSAGE_ROW_FIELDS + (STAFF_ROW_FIELDS if customer is None else ())
    return (
        queryset.annotate(
            credit=Coalesce(F(CHARGED_CREDIT), Value(Decimal(0)), output_field=DecimalField()),
            type=Case(
                *(When(encoding=encoding, then=Value(kind)) for encoding, kind in MESSAGE_TYPES.items()),
                default=F("encoding"),
                output_field=CharField(),
            ),
        )
        .order_by("-created_at", "-id")
        .values(*fields)
    )


MESSAGE_CSV_COLUMNS = [
    "message_id",
    "date",
    "number",
    "type",
    "length",
    "parts",
    "sender",
    "country",
    "operator",
    "credit",
    "currency",
    "status",
    "error_code",
    "description",
    "client_reference",
]
STAFF_CSV_COLUMNS = ["client_id", "client", "cost"]


class _Line:
    """A file-like that hands back what csv.writer writes, so each row can be streamed as it is made."""

    def write(self, text: str) -> str:
        return text


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def csv_cell(value):
    """A value safe to open in a spreadsheet: text that starts like a formula (= + - @, tab, CR: a client's text,
    sender, reference or a number as typed) gets a leading ' so it is shown as text, never run; plain numbers
    (``+34612345678``, ``-0.25``) stay as they are."""
    if isinstance(value, str) and value[:1] in _FORMULA_START and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_row(values: Iterable) -> list:
    """Every cell of a CSV line through `csv_cell`: each CSV this app writes goes through it."""
    return [csv_cell(value) for value in values]


def sms_client_names(customer_ids: Iterable[int] | None = None) -> dict[int, tuple[int, str]]:
    """SMS client id and name by customer id (of every client when no ids are given)."""
    clients = (
        SmsClient.objects.all() if customer_ids is None else SmsClient.objects.filter(customer_id__in=set(customer_ids))
    )
    rows = clients.values_list("customer_id", "id", "customer__name")
    return {customer_id: (client_id, name) for customer_id, client_id, name in rows}


def sms_message_report_csv(*, rows, staff: bool, tz: str | None = None, chunk_size: int = 2000) -> Iterator[str]:
    """The per-message report as CSV lines (MESSAGE_CSV_COLUMNS, then STAFF_CSV_COLUMNS for staff), dates in the
    operator's time zone. Reads the rows in chunks through a server-side cursor, so any range streams in constant
    memory."""
    zone = ZoneInfo(tz or operator_time_zone())
    writer = csv.writer(_Line(), lineterminator="\n")
    yield writer.writerow(MESSAGE_CSV_COLUMNS + (STAFF_CSV_COLUMNS if staff else []))
    names = sms_client_names() if staff else {}
    for row in rows.iterator(chunk_size=chunk_size):
        line = [
            row["id"],
            row["created_at"].astimezone(zone).isoformat(timespec="seconds"),
            row["destination"],
            row["type"],
            row["length"],
            row["parts"],
            row["sender"],
            row["country"],
            row["mobile_operator"],
            row["credit"],
            row["currency"],
            row["status"],
            row["error_code"],
            row["error_description"],
            row["client_reference"],
        ]
        if staff:
            client_id, name = names.get(row["customer_id"], ("", ""))
            line += [client_id, name, row["cost"]]
        yield writer.writerow(csv_row(line))


async def lines_async(lines: Iterator[str], *, batch: int = 500) -> AsyncIterator[str]:
    """`lines` for an ASGI server, read `batch` at a time in the request's thread (the one holding its database
    connection and cursor): Django would otherwise read a synchronous stream whole into memory before sending it."""
    take = partial(_batch_join, lines, batch)
    while chunk := await sync_to_async(take, thread_sensitive=True)():
        yield chunk


def _batch_join(lines: Iterator[str], batch: int) -> str:
    return "".join(islice(lines, batch))


# --- the summary per mobile operator -----------------------------------------------------------------------------


def sms_summary_report(
    *,
    customer: Customer | None,
    start: datetime,
    end: datetime,
    group: str = "day",
    tz: str | None = None,
    client: SmsClient | None = None,
    per_client: bool = False,
) -> dict:
    """Messages, parts and credit per day or month (operator's time zone), country and mobile operator, over
    [start, end): one aggregate query.

    A row: `period` (YYYY-MM-DD or YYYY-MM), `country`, `mobile_operator`, `currency`, `messages`, `delivered`,
    `failed`, `parts`, `unit_price`, `credit`; for staff (customer None) also `unit_cost`, `cost`, `margin`, and,
    with `per_client`, `client_id` and `client_name` (one row per client). `totals`: one line per currency.
    """
    if group not in REPORT_GROUPS:
        raise ReportInvalid("by", f"Choose one of {', '.join(REPORT_GROUPS)}.")
    report_period_check(start=start, end=end)
    staff = customer is None
    if not staff and (client is not None or per_client):
        raise ReportInvalid("client" if client is not None else "per_client", "Only the operator's staff may do this.")
    tz = tz or operator_time_zone()
    zone = ZoneInfo(tz)
    queryset = _scope(customer).filter(created_at__gte=start, created_at__lt=end)
    if client is not None:
        queryset = queryset.filter(customer_id=client.customer_id)
    keys = ["bucket", "country", "mobile_operator", "currency"] + (["customer_id"] if staff and per_client else [])
    measures = {
        "messages": Count("id"),
        "delivered": Count("id", filter=Q(status=MessageStatus.DELIVERED)),
        "failed": Count("id", filter=Q(status__in=FAILED_STATUSES)),
        "parts_sum": Sum(CHARGED_PARTS),
        # Named apart from the columns: an annotation called "price" or "cost" would shadow the field.
        "credit_sum": Sum(CHARGED_CREDIT),
    }
    if staff:
        measures["cost_sum"] = Sum(CHARGED_COST)
    # Unordered in SQL, sorted here: the groups are few, and without an ORDER BY PostgreSQL may hash them instead of
    # sorting every message of the period (its estimate of the number of groups is poor for the truncated date).
    rows = sorted(
        queryset.annotate(bucket=Trunc("created_at", group, output_field=DateTimeField(), tzinfo=zone))
        .values(*keys)
        .annotate(**measures)
        .order_by(),
        key=lambda row: tuple(row[k] for k in keys),
    )
    label = "%Y-%m-%d" if group == "day" else "%Y-%m"
    names = sms_client_names(row["customer_id"] for row in rows) if staff and per_client else {}

    def line(row: dict) -> dict:
        parts, credit = row["parts_sum"] or 0, row["credit_sum"] or Decimal(0)
        out = {
            "messages": row["messages"],
            "delivered": row["delivered"],
            "failed": row["failed"],
            "parts": parts,
            "unit_price": _unit(credit, parts),
            "credit": money_line(credit),
        }
        if staff:
            cost = row["cost_sum"] or Decimal(0)
            out.update(unit_cost=_unit(cost, parts), cost=money_line(cost), margin=money_line(credit - cost))
        return out

    report_rows = []
    totals: dict[str, dict] = {}
    for row in rows:
        entry = {
            "period": row["bucket"].astimezone(zone).strftime(label),
            "country": row["country"],
            "mobile_operator": row["mobile_operator"],
            "currency": row["currency"],
        }
        if "customer_id" in row:
            client_id, name = names.get(row["customer_id"], (None, ""))
            entry.update(client_id=client_id, client_name=name)
        report_rows.append({**entry, **line(row)})
        total = totals.setdefault(row["currency"], dict.fromkeys(measures, 0))
        for measure in measures:
            total[measure] += row[measure] or 0
    return {
        "group": group,
        "time_zone": tz,
        "start": start,
        "end": end,
        "decimal_places": settings.MONEY_LINE_DECIMAL_PLACES,
        "with_cost": staff,
        "per_client": staff and per_client,
        "rows": report_rows,
        "totals": [{"currency": currency, **line(total)} for currency, total in sorted(totals.items())],
    }


SUMMARY_CSV_COLUMNS = [
    "period",
    "country",
    "operator",
    "currency",
    "messages",
    "delivered",
    "failed",
    "parts",
    "unit_price",
    "credit",
]
SUMMARY_STAFF_CSV_COLUMNS = ["unit_cost", "cost", "margin"]


def sms_summary_report_csv(*, report: dict) -> Iterator[str]:
    """The summary as CSV lines: its rows, then one `total` line per currency."""
    writer = csv.writer(_Line(), lineterminator="\n")
    per_client, with_cost = report["per_client"], report["with_cost"]
    header = (
        SUMMARY_CSV_COLUMNS[:1]
        + (["client_id", "client"] if per_client else [])
        + SUMMARY_CSV_COLUMNS[1:]
        + (SUMMARY_STAFF_CSV_COLUMNS if with_cost else [])
    )
    yield writer.writerow(header)

    def values(period: str, row: dict, client: list) -> list:
        line = [period, *client, row.get("country", ""), row.get("mobile_operator", ""), row["currency"]]
        line += [row[k] for k in ("messages", "delivered", "failed", "parts", "unit_price", "credit")]
        return line + ([row["unit_cost"], row["cost"], row["margin"]] if with_cost else [])

    for row in report["rows"]:
        client = [row["client_id"], row["client_name"]] if per_client else []
        yield writer.writerow(csv_row(values(row["period"], row, client)))
    for total in report["totals"]:
        yield writer.writerow(csv_row(values("total", total, ["", ""] if per_client else [])))
