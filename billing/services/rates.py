"""Rate decks: CSV import into a tariff."""

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from .ingest import cdrs_rate_pending_schedule


@dataclass(frozen=True)
class RatesImport:
    rates: int
    errors: list  # csvformats.LineError, each with line, column, reason
    dry_run: bool

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {
            "imported": 0 if (self.errors or self.dry_run) else self.rates,
            "valid_rates": self.rates,
            "dry_run": self.dry_run,
            "errors": [{"line": e.line, "column": e.column, "reason": e.reason} for e in self.errors],
        }


def rates_import(*, tariff, source, dry_run: bool = False) -> RatesImport:
    """Import a rate-deck CSV into a tariff. Any bad line: nothing is written and every bad line is reported.

    A row with the same (prefix, service, effective_from, time band) as a stored one replaces its prices;
    other rows add versions, so future-dated rates wait for their date next to today's.
    """
    from ..csvformats import parse_rate_deck_csv
    from ..models import Rate, Tariff

    rates, errors = parse_rate_deck_csv(source)
    if errors or dry_run:
        return RatesImport(rates=len(rates), errors=errors, dry_run=dry_run)
    rows = [
        Rate(
            tariff=tariff,
            prefix=r.prefix,
            destination=r.destination,
            service=r.service,
            rate=r.rate,
            connect_fee=r.connect_fee,
            first_increment=r.first_increment,
            next_increment=r.next_increment,
            min_charge=r.min_charge,
            effective_from=r.effective_from,
            time_band=r.time_band or "",
        )
        for r in rates
    ]
    with transaction.atomic():
        Rate.objects.bulk_create(
            rows,
            batch_size=5000,
            update_conflicts=True,
            unique_fields=["tariff", "prefix", "service", "effective_from", "time_band"],
            update_fields=["destination", "rate", "connect_fee", "first_increment", "next_increment", "min_charge"],
        )
        Tariff.objects.filter(pk=tariff.pk).update(updated_at=timezone.now())
        tariff.refresh_from_db(fields=["updated_at"])
        cdrs_rate_pending_schedule()  # unrated CDRs waiting for these rates, in the background
    return RatesImport(rates=len(rates), errors=[], dry_run=False)
