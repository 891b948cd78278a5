"""Writes of the billing engine. Every caller (views, admin, commands, tasks, other apps) goes through these.

`ledger`: entries, bulk charges, top-ups, reservations, accounts; `rates`: rate-deck imports; `ingest`: CDRs.
"""

from .bulk_import import cdrs_import_bulk
from .cdr_formats import CdrFeed, CdrFormatError, cdr_format_parse
from .grants import credit_draw, grants_idle_release
from .ingest import cdrs_ingest, cdrs_rate_pending, cdrs_rate_pending_schedule
from .ledger import (
    BulkCharge,
    InsufficientCredit,
    PreratedUsage,
    ReservationClosed,
    Settlement,
    account_create,
    account_topup,
    ledger_charge_many,
    ledger_entries_post,
    ledger_post,
    reservation_commit,
    reservation_hold,
    reservation_hold_quick,
    reservation_id_next,
    reservation_release,
    reservation_settle_many,
    reservations_expire,
    usage_charge_many,
)
from .rates import RatesImport, rates_import
from .rerate import (
    RerateInvalid,
    RerateNotReady,
    RerateStale,
    rerate_confirm,
    rerate_confirm_request,
    rerate_preview,
    rerate_request,
)

__all__ = [
    "BulkCharge",
    "InsufficientCredit",
    "RatesImport",
    "ReservationClosed",
    "account_create",
    "account_topup",
    "cdrs_ingest",
    "cdrs_rate_pending",
    "cdrs_rate_pending_schedule",
    "cdrs_import_bulk",
    "credit_draw",
    "grants_idle_release",
    "CdrFeed",
    "CdrFormatError",
    "cdr_format_parse",
    "ledger_charge_many",
    "ledger_entries_post",
    "ledger_post",
    "rates_import",
    "reservation_commit",
    "reservation_hold",
    "reservation_release",
    "reservations_expire",
    "RerateInvalid",
    "RerateStale",
    "RerateNotReady",
    "rerate_confirm",
    "rerate_confirm_request",
    "rerate_preview",
    "rerate_request",
    "PreratedUsage",
    "Settlement",
    "reservation_settle_many",
    "usage_charge_many",
    "reservation_hold_quick",
    "reservation_id_next",
]
