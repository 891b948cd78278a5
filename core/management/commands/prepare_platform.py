from django.core.management import call_command
from django.core.management.base import BaseCommand

from tenants.services import platform_tenant_ensure, template_schema_ensure


class Command(BaseCommand):
    help = "Migrate every schema, refresh the template new operators are cloned from, ensure the platform domain."

    def handle(self, *args, **options):
        verbosity = options["verbosity"]
        call_command("migrate_schemas", interactive=False, verbosity=max(verbosity - 1, 0))
        platform_tenant_ensure()
        changed = template_schema_ensure(verbosity=max(verbosity - 1, 0))
        if verbosity:
            self.stdout.write("schemas migrated" + ("; template refreshed" if changed else ""))
