"""Run as a separate process by the minute-package race test: import calls of one account in small chunks."""

import os
import sys
from datetime import UTC, datetime, timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
django.setup()

from django_tenants.utils import schema_context  # noqa: E402

from billing.csvformats import ParsedCdr  # noqa: E402
from billing.services import cdrs_ingest  # noqa: E402


def main(schema: str, account: str, worker: int, own: int, shared: int) -> None:
    start = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    ids = [f"w{worker}-{n}" for n in range(own)] + [f"shared-{n}" for n in range(shared)]
    records = [
        ParsedCdr(
            line=n + 1,
            source_id=source_id,
            caller="100",
            callee="34911234567",
            start=start + timedelta(minutes=n, seconds=worker),
            duration=65,
            billsec=60,
            account=account,
        )
        for n, source_id in enumerate(ids)
    ]
    with schema_context(schema):
        summary = cdrs_ingest(source="race", records=records, tz="UTC", chunk_size=3)
    print(summary["imported"], summary["duplicates"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
