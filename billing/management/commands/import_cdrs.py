import json

from django.core.management.base import BaseCommand
from django_tenants.utils import tenant_context

from billing import csvformats
from billing.services import cdrs_ingest

from ._operator import operator_get


class Command(BaseCommand):
    help = "Import, rate and charge a CDR file; prints a JSON summary (read, imported, duplicates, rejected…)."

    def add_arguments(self, parser):
        parser.add_argument("--operator", required=True)
        parser.add_argument("--format", required=True, choices=["asterisk", "freephone", "generic"])
        parser.add_argument("--mapping", help="generic: JSON {field: header}")
        parser.add_argument("file")

    def handle(self, *args, **options):
        operator = operator_get(options["operator"])
        with tenant_context(operator), open(options["file"], encoding="utf-8-sig", newline="") as source:
            fmt = options["format"]
            if fmt == "asterisk":
                records = csvformats.parse_asterisk_master_csv(source, tz=operator.time_zone)
            elif fmt == "freephone":
                records = csvformats.parse_freephone_cdrs(source, tz=operator.time_zone)
            else:
                records = csvformats.parse_mapped_cdr_csv(
                    source, mapping=json.loads(options["mapping"] or "{}"), tz=operator.time_zone
                )
            summary = cdrs_ingest(source=fmt, records=records, tz=operator.time_zone)
        self.stdout.write(json.dumps(summary, indent=2))
