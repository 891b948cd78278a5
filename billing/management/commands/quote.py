import json
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django_tenants.utils import tenant_context

from billing.models import Tariff
from billing.selectors import tariff_quote

from ._operator import operator_get


class Command(BaseCommand):
    help = "Price one call under a tariff and print the breakdown as JSON."

    def add_arguments(self, parser):
        parser.add_argument("--operator", required=True)
        parser.add_argument("--tariff", required=True)
        parser.add_argument("--to", required=True)
        parser.add_argument("--duration", type=int, required=True, help="answered seconds")
        parser.add_argument("--at", help="ISO time of the call's start (default: now)")
        parser.add_argument("--service", default="voice", choices=["voice", "sms", "ussd"])

    def handle(self, *args, **options):
        operator = operator_get(options["operator"])
        at = datetime.fromisoformat(options["at"]) if options["at"] else timezone.now()
        if at.utcoffset() is None:
            at = at.replace(tzinfo=timezone.get_default_timezone())
        with tenant_context(operator):
            tariff = Tariff.objects.filter(name=options["tariff"]).first()
            if tariff is None:
                raise CommandError(f"No tariff {options['tariff']!r}.")
            result = tariff_quote(
                tariff=tariff,
                number=options["to"].lstrip("+"),
                seconds=options["duration"],
                at=at,
                tz=operator.time_zone,
                service=options["service"],
            )
        if result is None:
            raise CommandError(f"no rate for {options['to']}")
        self.stdout.write(json.dumps(result, indent=2))
