from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import schema_context

from core.services import api_key_create
from tenants.models import Operator


class Command(BaseCommand):
    help = "Print a new API key for a user of an operator (--operator SLUG) or of the platform (--platform)."

    def add_arguments(self, parser):
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--operator", help="operator slug")
        scope.add_argument("--platform", action="store_true", help="a platform staff key")
        parser.add_argument("--email", required=True, help="the user the key acts as")
        parser.add_argument("--name", required=True, help="a label for the key")

    def handle(self, *args, **options):
        schema = "public" if options["platform"] else options["operator"]
        if not options["platform"] and not Operator.objects.operators().filter(schema_name=schema).exists():
            raise CommandError(f"No operator with slug {schema!r}.")
        with schema_context(schema):
            user = get_user_model().objects.filter(email__iexact=options["email"]).first()
            if user is None:
                raise CommandError(f"No user {options['email']!r} in {schema}.")
            if options["platform"] and not user.is_staff:
                raise CommandError(f"{user.email} is not platform staff.")
            issued = api_key_create(user=user, name=options["name"])
        self.stdout.write(issued.raw_key)
