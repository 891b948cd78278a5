"""`python manage.py smsc_simulator`: the SMPP 3.4 SMSC simulator of ``sms.smpp_server`` in the foreground.

Used by ``make run``'s demo (the demo gateway points at it) and by the benchmarks. It listens on 127.0.0.1 unless
``--host`` says otherwise, and stops on Ctrl-C or SIGTERM, printing its counters.
"""

import logging

from django.core.management.base import BaseCommand, CommandError

from sms import smpp_server


class Command(BaseCommand):
    help = (
        "Run an SMPP 3.4 SMSC simulator (binds, submit_sm, delivery receipts after --receipt-delay, a share of "
        "failures, throttling and rejections) on 127.0.0.1 until Ctrl-C."
    )

    def add_arguments(self, parser):
        smpp_server.add_arguments(parser)

    def handle(self, *args, **options):
        if options["verbosity"] > 1:
            logging.getLogger("sms.smpp_server").setLevel(logging.INFO)
        try:
            smpp_server.run(options)
        except ValueError as exc:  # a ratio or a delay out of range
            raise CommandError(str(exc)) from exc
        except OSError as exc:  # the port is taken, or the address is not ours
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc}") from exc
