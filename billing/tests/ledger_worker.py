"""Run as a separate process by the ledger concurrency tests: hammer one account with charges or holds."""

import os
import sys
from decimal import Decimal

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
django.setup()

from django.db import transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from billing.models import Account  # noqa: E402
from billing.services import InsufficientCredit, credit_draw, ledger_post, reservation_hold  # noqa: E402


def main(schema: str, mode: str, account_id: int, worker: int, count: int) -> None:
    held = refused = 0
    with schema_context(schema):
        account = Account.objects.get(pk=account_id)
        for i in range(count):
            if mode == "charge":
                # Every worker also posts keys shared by all workers: those must land once in total.
                key = f"shared-{i}" if i % 5 == 0 else f"w{worker}-{i}"
                ledger_post(account=account, kind="charge", amount=Decimal("0.013333"), idempotency_key=key)
            elif mode == "draw":  # one SMS request's credit, from the account's grants
                try:
                    with transaction.atomic():
                        credit_draw(
                            account_id=account_id,
                            amount=Decimal("0.70"),
                            use_ends_at=timezone.now(),
                            key=f"draw-w{worker}-{i}",
                        )
                    held += 1
                except InsufficientCredit:
                    refused += 1
            else:
                try:
                    reservation_hold(account=account, amount=Decimal("0.70"), idempotency_key=f"hold-w{worker}-{i}")
                    held += 1
                except InsufficientCredit:
                    refused += 1
    print(f"{held} {refused}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
