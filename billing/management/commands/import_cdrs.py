import json

from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import tenant_context

from billing.services import CdrFormatError, cdr_format_parse, cdrs_import_bulk, cdrs_ingest

from ._operator import operator_get


class Command(BaseCommand):
    help = (
        "Import, rate and charge a CDR file; prints a JSON summary (read, imported, duplicates, unrated, rejected "
        "with line and reason, charged and cost per currency, per leg). Asterisk files take the bulk path "
        "(COPY, vectorised rating) unless --exact."
    )

    def add_arguments(self, parser):
        parser.add_argument("--operator", required=True)
        parser.add_argument("--format", required=True, choices=["asterisk", "freephone", "generic"])
        parser.add_argument(
            "--mapping",
            help="the name of a saved CDR format (generic: required; freephone: an edited profile, default: the "
            "platform's), or for generic an inline JSON {field: header}",
        )
        parser.add_argument("--exact", action="store_true", help="asterisk: rate and store record by record")
        parser.add_argument("file")

    def handle(self, *args, **options):
        operator = operator_get(options["operator"])
        fmt, mapping = options["format"], options["mapping"]
        inline = None
        if mapping and mapping.lstrip().startswith("{"):
            try:
                inline, mapping = json.loads(mapping), None
            except json.JSONDecodeError as error:
                raise CommandError(f"--mapping is not valid JSON: {error}") from error
        with tenant_context(operator), open(options["file"], encoding="utf-8-sig", newline="") as source:
            if fmt == "asterisk" and not options["exact"] and not (mapping or inline):
                summary = cdrs_import_bulk(source=source, tz=operator.time_zone)
            else:
                try:
                    feed = cdr_format_parse(
                        fmt=fmt, source=source, mapping_name=mapping, mapping=inline, tz=operator.time_zone
                    )
                except CdrFormatError as error:
                    raise CommandError(str(error)) from error
                summary = cdrs_ingest(source=feed.source, records=feed.records, tz=operator.time_zone)
        self.stdout.write(json.dumps(summary, indent=2))
