"""Reads of the billing engine. `decks`: rate decks and quotes."""

from .decks import quote_as_dict, rate_deck_get, tariff_quote

__all__ = ["quote_as_dict", "rate_deck_get", "tariff_quote"]
