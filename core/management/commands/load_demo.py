import json

from django.core.management.base import BaseCommand

from core.demo import demo_load


class Command(BaseCommand):
    help = "Load the demo (platform admin, operator 'demo', client 'acme') once; print its logins as JSON."

    def handle(self, *args, **options):
        self.stdout.write(json.dumps(demo_load(), indent=2))
