import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants.services import OperatorConflict, operator_provision


class Command(BaseCommand):
    help = "Provision an operator: schema, domain, first admin (emailed a set-password link). Prints JSON."

    def add_arguments(self, parser):
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--domain", required=True)
        parser.add_argument("--admin-email", required=True)
        parser.add_argument("--products", default="", help="comma-separated: mvno,pbx,sms")
        parser.add_argument("--time-zone", default="UTC")
        parser.add_argument("--currency", default="EUR")

    def handle(self, *args, **options):
        try:
            result = operator_provision(
                slug=options["slug"],
                name=options["name"],
                domain=options["domain"],
                admin_email=options["admin_email"],
                products=[p for p in options["products"].split(",") if p],
                time_zone=options["time_zone"],
                currency=options["currency"],
            )
        except OperatorConflict as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError(json.dumps(exc.message_dict)) from exc
        self.stdout.write(
            json.dumps(
                {"slug": result.operator.slug, "console_url": result.console_url, "admin_email": result.admin_email}
            )
        )
