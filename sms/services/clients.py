"""Writes of the operator's SMS set-up that are more than saving a row: clients (with their customer, login and
billing account), callback secrets, and list imports from CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction

from billing.services import account_create, account_topup
from core.choices import CustomerKind
from core.services import customer_create

from ..choices import ListKind
from ..models import ListEntry, SmsClient
from ..models.clients import callback_secret_generate
from ..numbers import InvalidNumber, number_parse
from ..selectors import sms_config_get


@transaction.atomic
def sms_client_create(
    *,
    name: str,
    currency: str,
    subdomain: str | None = None,
    admin_email: str | None = None,
    admin_password: str | None = None,
    sender_ids: list[str] | None = None,
    credit: Decimal = Decimal(0),
    credit_limit: Decimal = Decimal(0),
    **settings,
) -> SmsClient:
    """A new SMS client: its customer (and first login), a prepaid billing account with ``credit``, its settings."""
    customer = customer_create(
        name=name,
        kind=CustomerKind.SMS_CLIENT,
        subdomain=subdomain,
        admin_email=admin_email,
        admin_password=admin_password,
    )
    account = account_create(
        name=name,
        code=f"sms-{customer.pk}",
        currency=currency,
        customer=customer,
        kind="prepaid",
        credit_limit=credit_limit,
    )
    if credit:
        account_topup(account=account, amount=credit, idempotency_key=f"sms-client:{customer.pk}:opening")
    client = SmsClient(customer=customer, account=account, sender_ids=list(sender_ids or []), **settings)
    client.full_clean()
    client.save()
    return client


def sms_client_secret_rotate(*, client: SmsClient) -> SmsClient:
    """A new callback secret; the old one stops signing at once."""
    client.callback_secret = callback_secret_generate()
    client.save(update_fields=["callback_secret", "updated_at"])
    return client


@dataclass
class ListImport:
    created: int = 0
    existing: int = 0
    errors: list[dict] = field(default_factory=list)  # {"line", "value", "reason"}


def list_entries_import(
    *, kind: str, source: str, client: SmsClient | None = None, note: str = "", dry_run: bool = False
) -> ListImport:
    """Import numbers (first column; a header line ``number`` is skipped; a second column is the note).

    Numbers are normalised to E.164. Any bad line imports nothing: every bad line is reported with its number.
    """
    if kind not in ListKind.values:
        raise ValueError(f"kind must be one of {', '.join(ListKind.values)}")
    result = ListImport()
    prefixes = sms_config_get().prefixes
    numbers: dict[str, str] = {}
    for line, row in enumerate(csv.reader(io.StringIO(source)), start=1):
        if not row or not "".join(row).strip():
            continue
        value = row[0].strip()
        if line == 1 and value.lower() in {"number", "msisdn", "phone", "to"}:
            continue
        try:
            number = number_parse(value, prefixes=prefixes).e164
        except InvalidNumber as exc:
            result.errors.append({"line": line, "value": value, "reason": str(exc)})
            continue
        numbers.setdefault(number, (row[1].strip() if len(row) > 1 else "") or note)
    if result.errors or not numbers:
        return result
    known = set(
        ListEntry.objects.filter(kind=kind, client=client, number__in=list(numbers)).values_list("number", flat=True)
    )
    result.existing = len(known)
    result.created = len(numbers) - len(known)
    if not dry_run:
        ListEntry.objects.bulk_create(
            [
                ListEntry(kind=kind, number=number, client=client, note=text[:200])
                for number, text in numbers.items()
                if number not in known
            ],
            ignore_conflicts=True,
            batch_size=5000,
        )
    return result
