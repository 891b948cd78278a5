"""Reads of the billing engine. `decks`: rate decks and quotes."""

from .decks import quote_as_dict, rate_deck_get, tariff_quote
from .reports import (
    account_statement,
    account_statement_csv,
    money_line,
    operator_time_zone,
    revenue_report,
    unrated_report,
)

__all__ = [
    "quote_as_dict",
    "rate_deck_get",
    "tariff_quote",
    "account_statement",
    "account_statement_csv",
    "money_line",
    "operator_time_zone",
    "revenue_report",
    "unrated_report",
]
