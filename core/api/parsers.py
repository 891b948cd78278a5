"""Request parsers shared by the products' APIs."""

from rest_framework import exceptions
from rest_framework.parsers import BaseParser


class CsvParser(BaseParser):
    """A `text/csv` request body, as text (UTF-8, a byte-order mark dropped)."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise exceptions.ParseError(f"The CSV is not UTF-8: {exc}") from exc
