import json

from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import tenant_context

from billing.models import Tariff
from billing.services import rates_import

from ._operator import operator_get


class Command(BaseCommand):
    help = "Import a rate-deck CSV into a tariff (created if missing). Any bad line: nothing is imported."

    def add_arguments(self, parser):
        parser.add_argument("--operator", required=True)
        parser.add_argument("--tariff", required=True)
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("file")

    def handle(self, *args, **options):
        operator = operator_get(options["operator"])
        with tenant_context(operator), open(options["file"], encoding="utf-8-sig", newline="") as source:
            tariff, _ = Tariff.objects.get_or_create(name=options["tariff"], defaults={"currency": operator.currency})
            result = rates_import(tariff=tariff, source=source, dry_run=options["dry_run"])
        self.stdout.write(json.dumps(result.as_dict(), indent=2))
        if not result.ok:
            raise CommandError(f"{len(result.errors)} bad lines; nothing imported")
