"""Reads for an operator's billing team: account statements, revenue / cost / margin, unrated CDRs.

Rounding rule (the setting ``MONEY_LINE_DECIMAL_PLACES``, default 2): every record (CDR price, ledger
entry) keeps its full precision (6 decimals); a statement or report *line* is the exact sum of its
records, rounded once, half-up, to ``MONEY_LINE_DECIMAL_PLACES``. Five calls of 0.005 make a line of
0.025 → 0.03 (not 5 × 0.01 = 0.05 from rounding each call, nor 0.02 from banker's rounding); three
calls of 0.0105 make 0.0315 → 0.03. Totals are lines too: they are rounded from the exact sum, never
summed from rounded lines, so printed lines may differ from their printed total by a few cents.

Periods are instants: ``start`` inclusive, ``end`` exclusive. Usage is grouped by each CDR's call
start; ledger entries (and so balances) by the moment they were posted.
"""

import csv
import io
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection
from django.db.models import Count, DateTimeField, F, Max, Min, Q, Sum
from django.db.models.functions import Trunc

from ..choices import CdrStatus, EntryKind
from ..models import Account, Cdr, LedgerEntry

REPORT_GROUPS = ("day", "month")


def operator_time_zone() -> str:
    """The IANA time zone of the operator whose schema is active (its reports and time bands use it)."""
    tenant = getattr(connection, "tenant", None)
    zone = getattr(tenant, "time_zone", None)
    if zone:
        return zone
    from tenants.models import Operator  # public schema; a bare schema_context carries no Operator row

    return Operator.objects.filter(schema_name=connection.schema_name).values_list("time_zone", flat=True).first() or (
        "UTC"
    )


def money_line(amount: Decimal | None) -> Decimal:
    """One statement line: the exact amount rounded once, half-up, to MONEY_LINE_DECIMAL_PLACES."""
    places = Decimal(1).scaleb(-settings.MONEY_LINE_DECIMAL_PLACES)
    return (amount or Decimal(0)).quantize(places, rounding=ROUND_HALF_UP)


def _minutes(seconds: int | None) -> Decimal:
    return (Decimal(seconds or 0) / 60).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _balance_before(account: Account, moment: datetime) -> Decimal:
    total = LedgerEntry.objects.filter(account=account, created_at__lt=moment).aggregate(total=Sum("amount"))["total"]
    return total or Decimal(0)


def account_statement(*, account: Account, start: datetime, end: datetime) -> dict:
    """An account's statement for [start, end): balances, usage by service and destination, ledger entries.

    - ``opening_balance`` / ``closing_balance``: the sum of the account's entries posted before
      ``start`` / ``end``, each rounded once;
    - ``usage``: the account's rated CDRs whose call started in the period, one line per (service,
      destination): count, billed seconds and minutes, units (SMS parts, USSD events) and the exact
      sum of their current prices (after any confirmed rerate) rounded once; ``usage_total`` rounds
      the exact sum of all of them; ``unrated_cdrs`` counts the period's CDRs not priced yet;
    - ``entries``: every ledger entry posted in the period (each one a line, rounded), oldest first;
      ``totals_by_kind`` one line per entry kind, ``entries_total`` the period's movement.

    Every amount follows the module's rounding rule (see its docstring): full precision per record,
    half-up once per line to ``settings.MONEY_LINE_DECIMAL_PLACES``. Without rounding,
    closing = opening + the period's entries exactly.
    """
    cdrs = Cdr.objects.filter(account=account, start__gte=start, start__lt=end)
    usage_rows = (
        cdrs.filter(status=CdrStatus.RATED)
        .values("service", "destination")
        .annotate(count=Count("id"), billed_seconds=Sum("billed_seconds"), units=Sum("units"), amount=Sum("price"))
        .order_by("service", "destination")
    )
    usage = [
        {
            "service": row["service"],
            "destination": row["destination"],
            "count": row["count"],
            "billed_seconds": row["billed_seconds"] or 0,
            "billed_minutes": _minutes(row["billed_seconds"]),
            "units": row["units"] or 0,
            "amount": money_line(row["amount"]),
        }
        for row in usage_rows
    ]
    usage_exact = sum((row["amount"] or Decimal(0) for row in usage_rows), Decimal(0))
    period_entries = LedgerEntry.objects.filter(account=account, created_at__gte=start, created_at__lt=end)
    kinds = {
        row["kind"]: row
        for row in period_entries.values("kind").annotate(count=Count("id"), amount=Sum("amount")).order_by()
    }
    opening = _balance_before(account, start)
    movement = sum((row["amount"] for row in kinds.values()), Decimal(0))
    return {
        "account": {
            "id": account.pk,
            "code": account.code,
            "name": account.name,
            "currency": account.currency,
            "kind": account.kind,
            "customer_id": account.customer_id,
        },
        "period": {"start": start, "end": end},
        "decimal_places": settings.MONEY_LINE_DECIMAL_PLACES,
        "opening_balance": money_line(opening),
        "closing_balance": money_line(opening + movement),
        "usage": usage,
        "usage_total": {"count": sum(row["count"] for row in usage), "amount": money_line(usage_exact)},
        "unrated_cdrs": cdrs.filter(status=CdrStatus.UNRATED).count(),
        "entries": [
            {
                "id": entry["id"],
                "created_at": entry["created_at"],
                "kind": entry["kind"],
                "description": entry["description"],
                "cdr_id": entry["cdr_id"],
                "amount": money_line(entry["amount"]),
            }
            for entry in period_entries.order_by("created_at", "id").values(
                "id", "created_at", "kind", "description", "cdr_id", "amount"
            )
        ],
        "totals_by_kind": [
            {"kind": kind, "count": kinds[kind]["count"], "amount": money_line(kinds[kind]["amount"])}
            for kind in EntryKind.values
            if kind in kinds
        ],
        "entries_total": money_line(movement),
    }


STATEMENT_CSV_COLUMNS = ["section", "item", "detail", "date", "count", "billed_minutes", "units", "amount", "currency"]


def account_statement_csv(*, statement: dict) -> str:
    """The statement as one CSV table (columns STATEMENT_CSV_COLUMNS), in the order it reads on paper.

    ``section`` is one of account, balance, usage, usage_total, entry, kind_total, entries_total; amounts
    are the rounded lines of :func:`account_statement`.
    """
    account, currency = statement["account"], statement["account"]["currency"]
    start, end = statement["period"]["start"].isoformat(), statement["period"]["end"].isoformat()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATEMENT_CSV_COLUMNS)
    writer.writerow(["account", account["code"], account["name"], f"{start}/{end}", "", "", "", "", currency])
    writer.writerow(["balance", "opening", "", start, "", "", "", statement["opening_balance"], currency])
    for line in statement["usage"]:
        writer.writerow(
            [
                "usage",
                line["service"],
                line["destination"],
                "",
                line["count"],
                line["billed_minutes"],
                line["units"],
                line["amount"],
                currency,
            ]
        )
    total = statement["usage_total"]
    writer.writerow(["usage_total", "", "", "", total["count"], "", "", total["amount"], currency])
    for entry in statement["entries"]:
        writer.writerow(
            [
                "entry",
                entry["kind"],
                entry["description"],
                entry["created_at"].isoformat(),
                "",
                "",
                "",
                entry["amount"],
                currency,
            ]
        )
    for line in statement["totals_by_kind"]:
        writer.writerow(["kind_total", line["kind"], "", "", line["count"], "", "", line["amount"], currency])
    writer.writerow(["entries_total", "", "", "", "", "", "", statement["entries_total"], currency])
    writer.writerow(["balance", "closing", "", end, "", "", "", statement["closing_balance"], currency])
    return out.getvalue()


def revenue_report(*, start: datetime, end: datetime, group: str = "day", tz: str | None = None) -> dict:
    """The operator's revenue, cost and margin per day or month (in its time zone) and currency, over [start, end).

    One SQL aggregation over the rated CDRs by call start: ``revenue`` sums prices, ``cost`` the
    supplier costs, ``margin`` price - cost over the CDRs whose cost is known (``uncosted_cdrs``
    counts the others, whose margin is unknown, so margin may differ from revenue - cost). Lines are
    rounded per the module's rule; ``totals`` has one line per currency for the whole period.
    """
    if group not in REPORT_GROUPS:
        raise ValueError(f"group must be one of {', '.join(REPORT_GROUPS)}")
    tz = tz or operator_time_zone()
    zone = ZoneInfo(tz)
    rated = Cdr.objects.filter(status=CdrStatus.RATED, start__gte=start, start__lt=end)
    measures = {
        "cdrs": Count("id"),
        "billed_seconds": Sum("billed_seconds"),
        # Named apart from the columns: an annotation called "cost" would shadow the field in the margin's F().
        "revenue_sum": Sum("price"),
        "cost_sum": Sum("cost"),
        "margin_sum": Sum(F("price") - F("cost"), filter=Q(cost__isnull=False)),
        "uncosted_cdrs": Count("id", filter=Q(cost__isnull=True)),
    }
    rows = (
        rated.annotate(bucket=Trunc("start", group, output_field=DateTimeField(), tzinfo=zone))
        .values("bucket", "currency")
        .annotate(**measures)
        .order_by("bucket", "currency")
    )
    label = "%Y-%m-%d" if group == "day" else "%Y-%m"

    def line(row: dict) -> dict:
        return {
            "currency": row["currency"],
            "cdrs": row["cdrs"],
            "billed_minutes": _minutes(row["billed_seconds"]),
            "revenue": money_line(row["revenue_sum"]),
            "cost": money_line(row["cost_sum"]),
            "margin": money_line(row["margin_sum"]),
            "uncosted_cdrs": row["uncosted_cdrs"],
        }

    return {
        "group": group,
        "time_zone": tz,
        "start": start,
        "end": end,
        "decimal_places": settings.MONEY_LINE_DECIMAL_PLACES,
        "rows": [{"period": row["bucket"].astimezone(zone).strftime(label), **line(row)} for row in rows],
        "totals": [line(row) for row in rated.values("currency").annotate(**measures).order_by("currency")],
    }


def unrated_report() -> dict:
    """The CDRs kept unrated, per reason (most frequent first): how many and the oldest and newest call start."""
    unrated = Cdr.objects.filter(status=CdrStatus.UNRATED)
    overall = unrated.aggregate(count=Count("id"), oldest=Min("start"))
    reasons = (
        unrated.values("unrated_reason")
        .annotate(count=Count("id"), oldest=Min("start"), newest=Max("start"))
        .order_by("-count", "oldest", "unrated_reason")
    )
    return {
        "count": overall["count"],
        "oldest": overall["oldest"],
        "reasons": [
            {"reason": r["unrated_reason"], "count": r["count"], "oldest": r["oldest"], "newest": r["newest"]}
            for r in reasons
        ],
    }
