"""CDRs: store, rate and charge them; rate the ones kept unrated once their rate or account appears."""

from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from .ledger import BulkCharge, ledger_charge_many


def _rate_cdr(cdr, account, tz: str) -> None:
    """Fill a CDR's rating fields in place: priced under its account's tariff, or unrated with the reason."""
    from .. import rating
    from ..selectors import rate_deck_get

    if account is None:
        cdr.status, cdr.unrated_reason = "unrated", f"unknown account {cdr.account_code!r}"
        return
    if account.tariff is None:
        cdr.status, cdr.unrated_reason = "unrated", f"account {account.code} has no tariff"
        return
    quote = rating.rate_one(
        rate_deck_get(tariff=account.tariff),
        number=cdr.callee,
        seconds=cdr.billsec,
        at=cdr.start,
        tz=tz,
        service=cdr.service,
        units=cdr.units or 1,
    )
    if quote is None:
        cdr.status, cdr.unrated_reason = "unrated", f"no rate for {cdr.callee}"
        return
    cdr.account = account
    cdr.status, cdr.unrated_reason = "rated", ""
    cdr.matched_prefix, cdr.destination = quote.prefix, quote.destination
    cdr.billed_seconds, cdr.price, cdr.currency = quote.billed_seconds, quote.amount, account.tariff.currency


def _charge_rated(cdrs: list) -> int:
    return ledger_charge_many(
        [
            BulkCharge(
                account_id=c.account_id,
                amount=c.price,
                idempotency_key=f"cdr:{c.source}:{c.source_id}",
                description=f"{c.service} to {c.callee}",
                cdr_id=c.pk,
            )
            for c in cdrs
            if c.status == "rated" and c.price and c.price > 0
        ]
    )


def cdrs_ingest(*, source: str, records, tz: str, chunk_size: int = 5000) -> dict:
    """Store, rate and charge CDRs (csvformats.ParsedCdr, or LineError for bad lines) from one source.

    The same (source, source id) twice is stored and charged once; bad lines are reported and the good
    ones imported; CDRs that cannot be rated are kept as unrated with the reason.
    """
    from ..csvformats import LineError
    from ..models import Account, Cdr

    summary = {"read": 0, "imported": 0, "duplicates": 0, "unrated": 0, "rejected": [], "charged": {}}
    accounts = {a.code: a for a in Account.objects.select_related("tariff")}
    chunk: list = []

    def flush():
        if not chunk:
            return
        known = set(
            Cdr.objects.filter(source=source, source_id__in=[c.source_id for c in chunk]).values_list(
                "source_id", flat=True
            )
        )
        fresh, seen = [], set()
        for parsed in chunk:
            if parsed.source_id in known or parsed.source_id in seen:
                summary["duplicates"] += 1
                continue
            seen.add(parsed.source_id)
            cdr = Cdr(
                source=source,
                source_id=parsed.source_id,
                leg=parsed.leg or "origination",
                account_code=parsed.account,
                caller=parsed.caller,
                callee=parsed.callee,
                start=parsed.start,
                duration=parsed.duration,
                billsec=parsed.billsec,
                extra={
                    k: str(v)
                    for k, v in (
                        ("forwarded_to", parsed.forwarded_to),
                        ("service_code", parsed.service_code),
                        ("reported_cost", parsed.reported_cost),
                    )
                    if v is not None
                },
            )
            _rate_cdr(cdr, accounts.get(parsed.account), tz)
            if cdr.status == "unrated":
                summary["unrated"] += 1
            fresh.append(cdr)
        with transaction.atomic():
            Cdr.objects.bulk_create(fresh, batch_size=chunk_size)
            _charge_rated(fresh)
        for cdr in fresh:
            if cdr.status == "rated":
                summary["charged"][cdr.currency] = summary["charged"].get(cdr.currency, Decimal(0)) + cdr.price
        summary["imported"] += len(fresh)
        chunk.clear()

    for record in records:
        summary["read"] += 1
        if isinstance(record, LineError):
            summary["rejected"].append({"line": record.line, "column": record.column, "reason": record.reason})
            continue
        chunk.append(record)
        if len(chunk) >= chunk_size:
            flush()
    flush()
    summary["charged"] = {currency: str(total) for currency, total in summary["charged"].items()}
    return summary


def cdrs_rate_pending(*, tz: str | None = None) -> int:
    """Rate the CDRs kept as unrated, now that a rate or an account may have appeared. Returns how many."""
    from ..models import Account, Cdr

    tz = tz or getattr(getattr(connection, "tenant", None), "time_zone", "UTC")
    accounts = {a.code: a for a in Account.objects.select_related("tariff")}
    pending = list(Cdr.objects.filter(status="unrated")[:50000])
    now = timezone.now()
    for cdr in pending:
        _rate_cdr(cdr, accounts.get(cdr.account_code), tz)
        cdr.updated_at = now  # bulk_update does not apply auto_now
    done = [c for c in pending if c.status == "rated"]
    with transaction.atomic():
        Cdr.objects.bulk_update(
            done,
            [
                "account",
                "status",
                "unrated_reason",
                "matched_prefix",
                "destination",
                "billed_seconds",
                "price",
                "currency",
                "updated_at",
            ],
            batch_size=5000,
        )
        _charge_rated(done)
    return len(done)
