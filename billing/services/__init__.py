"""Writes of the billing engine. Every caller (views, admin, commands, tasks, other apps) goes through these.

`ledger`: entries, bulk charges, top-ups, reservations, accounts; `rates`: rate-deck imports; `ingest`: CDRs.
"""

from .ingest import cdrs_ingest, cdrs_rate_pending
from .ledger import (
    BulkCharge,
    InsufficientCredit,
    ReservationClosed,
    account_create,
    account_topup,
    ledger_charge_many,
    ledger_post,
    reservation_commit,
    reservation_hold,
    reservation_release,
    reservations_expire,
)
from .rates import RatesImport, rates_import

__all__ = [
    "BulkCharge",
    "InsufficientCredit",
    "RatesImport",
    "ReservationClosed",
    "account_create",
    "account_topup",
    "cdrs_ingest",
    "cdrs_rate_pending",
    "ledger_charge_many",
    "ledger_post",
    "rates_import",
    "reservation_commit",
    "reservation_hold",
    "reservation_release",
    "reservations_expire",
]
