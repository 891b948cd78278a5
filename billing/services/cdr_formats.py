"""CDR files in the operator's formats: which parser, which saved column profile, which source name.

The command (``import_cdrs``) and any other file path call :func:`cdr_format_parse`, then ``cdrs_ingest`` (or, for
Asterisk files, the bulk importer); the REST API builds ``csvformats.ParsedCdr`` itself and calls ``cdrs_ingest``
with source ``api``: every path ends in the same ingest service.

Saved formats (``billing.CdrFormat``):

* ``freephone``: an edited column profile of the freephone platform's record, ``columns`` = {field: 0-based column
  index} (negative counts from the end), as :data:`csvformats.FREEPHONE_DEFAULT_PROFILE`;
* ``generic``: any CSV, ``columns`` = {field: header name} (the file has a header) or {field: column index}.

``time_format``: empty means the kind's default (freephone: ``YYYYMMDDHHMMSS``; generic: ISO 8601); ``epoch`` means
Unix seconds; anything else is a ``strptime`` pattern. Times without an offset are in the operator's time zone.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .. import csvformats
from ..models import CdrFormat

FORMATS = ("asterisk", "freephone", "generic")
_COMPACT = "%Y%m%d%H%M%S"


class CdrFormatError(ValueError):
    """The format, or the saved mapping named, cannot read files (unknown, or a bad profile): the message says why."""


@dataclass(frozen=True)
class CdrFeed:
    """Records read from a file (``ParsedCdr`` or ``LineError``, lazily) and the source name to store them under.

    The source name is ``asterisk``, ``freephone``, ``generic`` (a mapping given inline) or ``generic:<name>`` (a
    saved generic mapping: two CSV exports from different systems never mistake each other's ids for duplicates).
    """

    source: str
    records: Iterator


def cdr_format_parse(
    *,
    fmt: str,
    source,
    mapping_name: str | None = None,
    mapping: Mapping | None = None,
    tz: str,
) -> CdrFeed:
    """How to read a CDR file: the records of ``source`` (a path's open file, text, bytes) in format ``fmt``.

    ``mapping_name`` names a saved ``CdrFormat`` of the same kind (required for generic unless ``mapping`` gives
    the columns inline); freephone without one uses the platform's default profile. Raises
    :class:`CdrFormatError` for an unknown format or mapping, or a mapping that cannot read anything.
    """
    if fmt not in FORMATS:
        raise CdrFormatError(f"unknown CDR format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "asterisk":
        if mapping_name or mapping:
            raise CdrFormatError("Asterisk Master.csv has a fixed column order; it takes no mapping")
        return CdrFeed(source="asterisk", records=csvformats.parse_asterisk_master_csv(source, tz=tz))
    saved = _saved(fmt, mapping_name) if mapping_name else None
    try:
        if fmt == "freephone":
            return CdrFeed(source="freephone", records=_freephone(source, saved, tz))
        if saved is None and mapping is None:
            raise CdrFormatError("a generic CSV needs --mapping: the name of a saved generic format (or inline JSON)")
        return CdrFeed(
            source=f"generic:{saved.name}"[:40] if saved else "generic",
            records=_generic(source, saved.columns if saved else mapping, saved, tz),
        )
    except ValueError as error:
        if isinstance(error, CdrFormatError):
            raise
        name = f"format {saved.name!r}" if saved else "the mapping"
        raise CdrFormatError(f"{name} cannot read CDRs: {error}") from error


def _saved(fmt: str, name: str) -> CdrFormat:
    saved = CdrFormat.objects.filter(name=name, kind=fmt).first()
    if saved is None:
        known = ", ".join(CdrFormat.objects.filter(kind=fmt).values_list("name", flat=True)) or "none"
        raise CdrFormatError(f"no saved {fmt} CDR format named {name!r} (saved {fmt} formats: {known})")
    return saved


def _freephone(source, saved: CdrFormat | None, tz: str) -> Iterator:
    if saved is None:
        return csvformats.parse_freephone_cdrs(source, tz=tz)
    return csvformats.parse_freephone_cdrs(
        source,
        _indexes(saved.columns),
        tz=tz,
        time_format=saved.time_format or _COMPACT,
        delimiter=saved.delimiter or ",",
        skip_header=saved.has_header,
    )


def _generic(source, columns: Mapping, saved: CdrFormat | None, tz: str) -> Iterator:
    if not isinstance(columns, Mapping) or not columns:
        raise CdrFormatError("the mapping must be a JSON object {field: header name or column index}")
    delimiter = (saved.delimiter if saved else ",") or ","
    time_format = (saved.time_format if saved else "") or None
    if all(isinstance(value, str) for value in columns.values()):
        return csvformats.parse_mapped_cdr_csv(
            source, dict(columns), tz=tz, time_format=time_format, delimiter=delimiter
        )
    return csvformats.parse_positional_cdrs(
        source,
        _indexes(columns),
        tz=tz,
        time_format=time_format,
        delimiter=delimiter,
        skip_header=bool(saved and saved.has_header),
    )


def _indexes(columns: Mapping) -> dict[str, int]:
    if not isinstance(columns, Mapping):
        raise CdrFormatError("the column profile must be a JSON object {field: column index}")
    return dict(columns)
