"""Pure parsers for the files operators upload: rate decks and CDR files.

No Django import: the import services call these, and they are tested and benchmarked alone.

Every parser reports bad input line by line (:class:`LineError`: 1-based physical line, column,
human reason) and keeps going, so one bad line never hides the others nor loses the good ones.
Money is ``Decimal``, never float. CDR times are returned in UTC.

* :func:`parse_rate_deck_csv` / :func:`write_rate_deck_csv`: the rate deck exchange format.
* :func:`parse_asterisk_master_csv`: Asterisk ``cdr_csv`` ``Master.csv``, streaming.
* :func:`read_asterisk_master_columns` / :func:`iter_asterisk_master_columns`: the same file into
  column arrays, fast, for bulk import (whole, or batch by batch): pyarrow's CSV parser on blocks of
  whole lines where it reads exactly as the csv module does, the csv module elsewhere.
* :func:`asterisk_trunk`: the supplier trunk a call left by, from Asterisk's ``dstchannel``.
* :func:`parse_freephone_cdrs`: the 8-800 platform's combined record, with an editable column profile.
* :func:`parse_mapped_cdr_csv`: any CSV with a header, through a saved {field: header} mapping.
* :func:`parse_positional_cdrs`: any CSV through a saved {field: column index} profile.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gc
import hashlib
import io
import itertools
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import IO, Any
from zoneinfo import ZoneInfo

import numpy as np

from billing.rating import MAX_PREFIX_DIGITS, MAX_PRICE, SERVICES, Rate, parse_increment

Source = str | bytes | IO[str] | IO[bytes] | Iterable[str]


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem in an uploaded file: where it is and what is wrong, in words an operator understands.

    ``line`` is the 1-based physical line where the record starts (the header is line 1);
    ``column`` names the column (None when the whole line is wrong).
    """

    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.reason}"


def _text_lines(source: Source) -> Iterable[str]:
    """Lines of CSV text from a string, bytes, a text or binary file, or an iterable of lines."""
    if isinstance(source, str):
        return io.StringIO(source, newline="")
    if isinstance(source, bytes):
        return io.StringIO(source.decode("utf-8-sig"), newline="")
    if isinstance(source, (io.RawIOBase, io.BufferedIOBase)):
        return io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
    return source


def _records(reader: Any) -> Iterator[tuple[int, list[str] | LineError]]:
    """(first physical line, fields) of each record of a ``csv.reader``; malformed CSV gives a LineError instead.

    The first line rather than the csv module's ``line_num`` (the last line) is reported, so a
    record with a quoted newline is found where it begins.
    """
    line_num = 0
    while True:
        start = line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            line_num = reader.line_num
            yield start, LineError(start, None, f"malformed CSV: {error}")
            continue
        line_num = reader.line_num
        if start == 1 and row and row[0].startswith("\ufeff"):
            row[0] = row[0][1:]  # a byte order mark left by spreadsheet exports
        yield start, row


# ---------------------------------------------------------------------------------------------
# Rate decks
# ---------------------------------------------------------------------------------------------

RATE_DECK_COLUMNS = (
    "prefix",
    "destination",
    "rate",
    "connect_fee",
    "increment",
    "min_charge",
    "effective_from",
    "service",
    "time_band",
)
REQUIRED_RATE_DECK_COLUMNS = ("prefix", "destination", "rate")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _parse_price(text: str, column: str) -> Decimal | str:
    """A non-negative price with at most 6 decimal places, or the reason it is not one."""
    if text.startswith("-") and _NUMBER.fullmatch(text[1:]):
        return f"{column} must not be negative, got {text!r}"
    if not _NUMBER.fullmatch(text):
        return f"{column} must be a number like 0.0125, got {text!r}"
    value = Decimal(text)
    if value >= MAX_PRICE:
        return f"{column} must be below {MAX_PRICE}, got {text!r}"
    if value != value.quantize(Decimal("0.000001")):
        return f"{column} must have at most 6 decimal places, got {text!r}"
    return value


def _parse_effective_from(text: str) -> datetime | str:
    """An ISO date (midnight UTC) or date-time (UTC unless it carries an offset), or the reason it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return (
            f"effective_from must be an ISO date like 2024-07-01 or date-time like 2024-07-01T00:00:00Z, got {text!r}"
        )
    if moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_rate_deck_csv(text_or_file: Source) -> tuple[list[Rate], list[LineError]]:
    """Read a rate deck CSV into :class:`Rate` rows plus a :class:`LineError` for every bad line.

    The header names the columns, in any order, case-insensitive: ``prefix``, ``destination``
    and ``rate`` are required; ``connect_fee`` (empty: 0), ``increment`` (empty: 60/60),
    ``min_charge`` (empty: 0), ``effective_from`` (empty: immediately; ISO date = midnight
    UTC, or ISO date-time; no offset means UTC), ``service`` (empty: voice) and ``time_band``
    (empty: all times) are optional. Unknown columns are ignored. A leading ``+`` on the
    prefix is dropped. Two rows with the same (prefix, effective_from, service, time_band) are
    an error on the later row. A missing required column is an error on line 1 and no rows
    are read. Every bad line is reported, each bad field of it separately; good lines are
    returned even when others are bad.
    """
    records = _records(csv.reader(_text_lines(text_or_file)))
    first = next(records, None)
    if first is None:
        return [], [LineError(1, None, "the file is empty; expected a header line: " + ",".join(RATE_DECK_COLUMNS))]
    if isinstance(first[1], LineError):
        return [], [first[1]]
    header = [name.strip().lower() for name in first[1]]
    errors: list[LineError] = []
    for name in sorted({n for n in header if n and header.count(n) > 1}):
        errors.append(LineError(1, name, f"column {name!r} appears more than once in the header"))
    for name in REQUIRED_RATE_DECK_COLUMNS:
        if name not in header:
            errors.append(
                LineError(1, name, f"missing required column {name!r}; the header must name prefix,destination,rate")
            )
    if errors:
        return [], errors
    position = {name: header.index(name) for name in RATE_DECK_COLUMNS if name in header}
    rates: list[Rate] = []
    seen: dict[tuple[str, datetime | None, str, str | None], int] = {}
    for line, row in records:
        if isinstance(row, LineError):
            errors.append(row)
            continue
        if not any(cell.strip() for cell in row):
            continue  # blank lines separate sections in hand-edited decks
        if len(row) > len(header):
            errors.append(LineError(line, None, f"the line has {len(row)} fields but the header has {len(header)}"))
            continue
        values = {name: (row[i].strip() if i < len(row) else "") for name, i in position.items()}
        values.update({name: "" for name in RATE_DECK_COLUMNS if name not in values})
        rate = _rate_from_values(values, line)
        if isinstance(rate, list):
            errors.extend(rate)
            continue
        key = (rate.prefix, rate.effective_from, rate.service, rate.time_band)
        if key in seen:
            errors.append(
                LineError(
                    line,
                    "prefix",
                    f"duplicate of line {seen[key]}: same prefix, effective_from, service and time_band",
                )
            )
            continue
        seen[key] = line
        rates.append(rate)
    return rates, errors


def _rate_from_values(values: dict[str, str], line: int) -> Rate | list[LineError]:
    """One rate from the text of its columns, or every problem found in them."""
    errors: list[LineError] = []

    def fail(column: str, reason: str) -> None:
        errors.append(LineError(line, column, reason))

    prefix = values["prefix"].removeprefix("+")
    if not prefix:
        fail("prefix", "prefix is required")
    elif not (prefix.isascii() and prefix.isdigit()):
        fail("prefix", f"prefix must be digits (E.164 without +), got {values['prefix']!r}")
    elif len(prefix) > MAX_PREFIX_DIGITS:
        fail("prefix", f"prefix must have at most {MAX_PREFIX_DIGITS} digits, got {len(prefix)}")
    prices: dict[str, Decimal] = {}
    for column in ("rate", "connect_fee", "min_charge"):
        text = values[column]
        if not text:
            if column == "rate":
                fail("rate", "rate is required")
            prices[column] = Decimal(0)
            continue
        parsed = _parse_price(text, column)
        if isinstance(parsed, str):
            fail(column, parsed)
        else:
            prices[column] = parsed
    first_increment, next_increment = 60, 60
    if values["increment"]:
        try:
            first_increment, next_increment = parse_increment(values["increment"])
        except (ValueError, TypeError) as error:
            fail("increment", str(error))
    effective_from: datetime | None = None
    if values["effective_from"]:
        parsed_moment = _parse_effective_from(values["effective_from"])
        if isinstance(parsed_moment, str):
            fail("effective_from", parsed_moment)
        else:
            effective_from = parsed_moment
    service = values["service"].lower() or "voice"
    if service not in SERVICES:
        fail("service", f"service must be one of {', '.join(sorted(SERVICES))}, got {values['service']!r}")
    if errors:
        return errors
    return Rate(
        prefix=prefix,
        destination=values["destination"],
        rate=prices["rate"],
        connect_fee=prices["connect_fee"],
        first_increment=first_increment,
        next_increment=next_increment,
        min_charge=prices["min_charge"],
        effective_from=effective_from,
        time_band=values["time_band"] or None,
        service=service,
    )


def write_rate_deck_csv(rates: Iterable[Rate]) -> str:
    """Write rates in the format :func:`parse_rate_deck_csv` reads (all columns, header first)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RATE_DECK_COLUMNS)
    for rate in rates:
        writer.writerow(
            [
                rate.prefix,
                rate.destination,
                format(rate.rate, "f"),
                format(rate.connect_fee, "f"),
                rate.increment,
                format(rate.min_charge, "f"),
                "" if rate.effective_from is None else rate.effective_from.isoformat(),
                rate.service,
                rate.time_band or "",
            ]
        )
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# CDRs: common pieces
# ---------------------------------------------------------------------------------------------

LEGS = ("origination", "termination", "combined")
_MAX_SECONDS = 2_147_483_647  # Asterisk keeps durations in a C int
_ISO_SECONDS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})")
_COMPACT_SECONDS = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})")
_COMPACT_FORMAT = "%Y%m%d%H%M%S"
_SIGNED_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedCdr:
    """One CDR as read from a switch file, before rating: one call leg, or both legs of a freephone call.

    ``start`` is UTC; ``duration`` includes ringing, ``billsec`` is the answered part.
    ``source_id`` identifies the record at its source (Asterisk uniqueid, platform record id,
    or a hash of the line) and is the idempotency key when the same file is imported twice.
    ``reported_cost`` is what the switch itself computed, kept for reconciliation only.
    ``trunk`` names the supplier trunk the call left by (its cost tariff prices it; empty: the
    default cost tariff). ``units`` counts SMS parts or USSD events (``service`` sms/ussd).
    ``correlation_id`` ties the legs of one call (empty: none).
    """

    line: int
    source_id: str
    caller: str
    callee: str
    start: datetime
    duration: int
    billsec: int
    account: str = ""
    disposition: str = "ANSWERED"
    forwarded_to: str | None = None
    service_code: str | None = None
    reported_cost: Decimal | None = None
    leg: str | None = None
    trunk: str = ""
    service: str = "voice"
    units: int = 0
    correlation_id: str = ""


def _line_hash(row: Sequence[str]) -> str:
    """A stable id for a record that has none: the same line always hashes the same."""
    joined = "\x1f".join(row).encode("utf-8", "surrogatepass")
    return "h" + hashlib.blake2b(joined, digest_size=12).hexdigest()


def _zone(tz: str | tzinfo) -> tzinfo:
    if tz in ("UTC", "Etc/UTC"):
        return UTC  # lets the vectorised paths skip the offset lookups
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _to_utc(naive: datetime, zone: tzinfo) -> datetime:
    if zone is UTC:
        return naive.replace(tzinfo=UTC)
    return naive.replace(tzinfo=zone).astimezone(UTC)


def _parse_seconds(text: str, column: str) -> int | str:
    if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= _MAX_SECONDS:
        return int(text)
    return f"{column} must be a whole number of seconds, got {text!r}"


def _parse_fixed_time(text: str, pattern: re.Pattern[str], column: str, example: str, zone: tzinfo) -> datetime | str:
    match = pattern.fullmatch(text)
    if match:
        try:
            return _to_utc(datetime(*(int(part) for part in match.groups())), zone)  # type: ignore[misc]
        except ValueError:
            pass
    return f"{column} must be a time like {example}, got {text!r}"


def _parse_time(text: str, column: str, time_format: str | None, zone: tzinfo) -> datetime | str:
    """A CDR time in the file's format: None = ISO 8601, "epoch" = Unix seconds, else a strptime format."""
    if time_format == _COMPACT_FORMAT:
        return _parse_fixed_time(text, _COMPACT_SECONDS, column, "20161013112944", zone)
    if time_format == "epoch":
        if text.isascii() and text.isdigit() and len(text) <= 11:
            return datetime.fromtimestamp(int(text), UTC)
        return f"{column} must be Unix epoch seconds, got {text!r}"
    try:
        moment = datetime.fromisoformat(text) if time_format is None else datetime.strptime(text, time_format)
    except ValueError:
        return f"{column} must be a time in the format {time_format or 'ISO 8601'}, got {text!r}"
    if moment.utcoffset() is not None:
        return moment.astimezone(UTC)
    return _to_utc(moment, zone)


def _error(line: int, problems: list[tuple[str | None, str]]) -> LineError:
    """One error per line: the first bad column is named, every problem is told."""
    return LineError(line, problems[0][0], "; ".join(reason for _, reason in problems))


# ---------------------------------------------------------------------------------------------
# Asterisk Master.csv
# ---------------------------------------------------------------------------------------------

ASTERISK_BASE_COLUMNS = (
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
)
# cdr_csv appends uniqueid (loguniqueid), userfield (loguserfield), then peeraccount, linkedid
# and sequence (newcdrcolumns), each only when enabled; the field count tells which.
ASTERISK_LAYOUTS: dict[int, tuple[str, ...]] = {
    16: ASTERISK_BASE_COLUMNS,
    17: (*ASTERISK_BASE_COLUMNS, "uniqueid"),
    18: (*ASTERISK_BASE_COLUMNS, "uniqueid", "userfield"),
    19: (*ASTERISK_BASE_COLUMNS, "peeraccount", "linkedid", "sequence"),
    20: (*ASTERISK_BASE_COLUMNS, "uniqueid", "peeraccount", "linkedid", "sequence"),
    21: (*ASTERISK_BASE_COLUMNS, "uniqueid", "userfield", "peeraccount", "linkedid", "sequence"),
}
_UNIQUEID = 16  # where uniqueid sits when the layout has one


def _asterisk_picker(count: int) -> Callable[[list[str]], tuple[str, ...]]:
    """The fields rating needs, from a record of ``count`` fields, as one C-level itemgetter call:
    (accountcode, src, dst, start, duration, billsec, disposition, uniqueid or "", dstchannel)."""
    if "uniqueid" in ASTERISK_LAYOUTS[count]:
        return operator.itemgetter(0, 1, 2, 9, 12, 13, 14, _UNIQUEID, 6)
    base = operator.itemgetter(0, 1, 2, 9, 12, 13, 14)
    return lambda row: (*base(row), "", row[6])


def asterisk_trunk(dstchannel: str) -> str:
    """The supplier trunk a call left by, from Asterisk's ``dstchannel``; empty when it left by none.

    ``SIP/carrier1-00000a1b`` and ``PJSIP/carrier1-000001`` name the peer ``carrier1`` (the part
    after the technology, before the channel's unique suffix; a peer may itself contain dashes).
    ``Local/…`` channels (dialplan loops, queues) and an empty dstchannel name no trunk.
    """
    technology, slash, rest = dstchannel.strip().partition("/")
    if not slash or technology.lower() == "local":
        return ""
    name, dash, _suffix = rest.rpartition("-")
    return (name if dash else rest)[:80]


_ASTERISK_PICKERS = {count: _asterisk_picker(count) for count in ASTERISK_LAYOUTS}


def _asterisk_pick(row: list[str]) -> tuple[str, ...] | None:
    """The picked fields of a record with a stable source id filled in; None for a record of the wrong shape."""
    picker = _ASTERISK_PICKERS.get(len(row))
    if picker is None:
        return None
    fields = picker(row)
    if not fields[7]:
        fields = (*fields[:7], _line_hash(row), fields[8])  # no uniqueid logged: the line itself identifies the CDR
    return fields


def _wrong_shape(row: list[str], line: int) -> LineError:
    return LineError(line, None, f"expected 16 to 21 fields (Asterisk Master.csv), got {len(row)}")


def _asterisk_fields_record(fields: tuple[str, ...], line: int, zone: tzinfo) -> ParsedCdr | LineError:
    """A ParsedCdr from picked Master.csv fields, or a LineError naming every bad one."""
    account, src, dst, start_text, duration_text, billsec_text, disposition, source_id, dstchannel = fields
    problems: list[tuple[str | None, str]] = []
    callee = dst.strip()
    if not callee:
        problems.append(("dst", "dst (the called number) is empty"))
    start = _parse_fixed_time(start_text, _ISO_SECONDS, "start", "2024-01-31 23:59:59", zone)
    if isinstance(start, str):
        problems.append(("start", start))
    duration = _parse_seconds(duration_text, "duration")
    if isinstance(duration, str):
        problems.append(("duration", duration))
    billsec = _parse_seconds(billsec_text, "billsec")
    if isinstance(billsec, str):
        problems.append(("billsec", billsec))
    if problems:
        return _error(line, problems)
    return ParsedCdr(
        line=line,
        source_id=source_id,
        caller=src.strip(),
        callee=callee,
        start=start,  # type: ignore[arg-type]
        duration=duration,  # type: ignore[arg-type]
        billsec=billsec,  # type: ignore[arg-type]
        account=account,
        disposition=disposition,
        trunk=asterisk_trunk(dstchannel),
    )


def parse_asterisk_master_csv(source: Source, *, tz: str | tzinfo = "UTC") -> Iterator[ParsedCdr | LineError]:
    """Stream an Asterisk ``cdr_csv`` Master.csv: one ParsedCdr or LineError per record, in file order.

    Columns are Asterisk's fixed order (accountcode, src, dst, dcontext, clid, channel,
    dstchannel, lastapp, lastdata, start, answer, end, duration, billsec, disposition,
    amaflags), then whichever of uniqueid, userfield, peeraccount, linkedid, sequence the
    server logs (see :data:`ASTERISK_LAYOUTS`). Times are the server's wall clock: ``tz`` is
    the server's zone (UTC when ``usegmtime=yes``). ``source_id`` is the uniqueid when logged,
    else a hash of the line. The file is never held in memory as a whole. Blank lines are skipped.
    """
    zone = _zone(tz)
    for line, row in _records(csv.reader(_text_lines(source))):
        if isinstance(row, LineError):
            yield row
        elif row:
            fields = _asterisk_pick(row)
            yield _wrong_shape(row, line) if fields is None else _asterisk_fields_record(fields, line, zone)


@dataclass(slots=True)
class CdrColumns:
    """Good Master.csv records as columns (lists and numpy arrays) ready for bulk rating and COPY.

    Row ``i`` of every column is one CDR; ``line`` tells where it came from. ``start`` is
    ``datetime64[s]`` in UTC. ``errors`` holds a LineError for every bad record, in line order.
    """

    line: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source_id: list[str] = field(default_factory=list)
    caller: list[str] = field(default_factory=list)
    callee: list[str] = field(default_factory=list)
    account: list[str] = field(default_factory=list)
    start: np.ndarray = field(default_factory=lambda: np.zeros(0, "datetime64[s]"))
    duration: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    billsec: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    disposition: list[str] = field(default_factory=list)
    trunk: list[str] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.source_id)


def read_asterisk_master_columns(source: Source, *, tz: str | tzinfo = "UTC", chunk_rows: int = 4096) -> CdrColumns:
    """Read a whole Master.csv into :class:`CdrColumns`, fast (the bulk import path).

    Same rules and same results as :func:`parse_asterisk_master_csv` (the tests check it).
    A file, bytes or text is read in blocks of 100,000 lines by pyarrow's CSV parser on a helper
    thread (see "the fast reader" below), times and durations validated with numpy: about 2.5 s
    of CPU per million 270-byte lines, most of it off the caller's thread. Anything else (an
    iterable of lines), and the blocks pyarrow cannot be sure of, go through the csv module:
    only the nine fields rating needs are kept as each record is read (one C-level itemgetter
    call) and validated with numpy on chunks of ``chunk_rows`` records (about 4 s per million).
    """
    batches = list(iter_asterisk_master_columns(source, tz=tz, batch_rows=None, chunk_rows=chunk_rows))
    return batches[0] if len(batches) == 1 else _concat(batches)


def iter_asterisk_master_columns(
    source: Source, *, tz: str | tzinfo = "UTC", batch_rows: int | None = 100_000, chunk_rows: int = 4096
) -> Iterator[CdrColumns]:
    """Read a Master.csv batch by batch: each :class:`CdrColumns` holds at least ``batch_rows`` good
    records (the last one fewer) with the errors met while reading them, so an importer can rate and
    write one batch while the next is read (the next block is parsed meanwhile on a helper thread).
    ``batch_rows=None``: one batch for the whole file. Line numbers are the file's. The garbage
    collector is paused while the generator runs.
    """
    with _gc_paused():
        binary = _binary_source(source)
        if binary is None:
            yield from _read_asterisk_master_columns(source, _zone(tz), chunk_rows, batch_rows)
        else:
            yield from _read_asterisk_fast(*binary, _zone(tz), chunk_rows, batch_rows)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of short-lived tuples are made.

    The reader creates no reference cycles, but the collector would still walk the
    young tuples (and, in a worker, the whole heap) over and over: a quarter of the time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_asterisk_master_columns(
    source: Source,
    zone: tzinfo,
    chunk_rows: int,
    batch_rows: int | None,
    *,
    first_line: int = 1,
    parts: list[CdrColumns] | None = None,
) -> Iterator[CdrColumns]:
    """The csv module's reader; ``first_line``: the file's line number of the source's first line; ``parts``:
    rows read before (by the fast reader), to complete the first batch with."""
    reader = csv.reader(_text_lines(source))
    pickers = _ASTERISK_PICKERS
    parts = parts or []
    errors: list[LineError] = []
    picked: list[tuple[str, ...]] = []
    lines: list[int] = []
    line_num = first_line - 1
    in_batch = sum(map(len, parts))
    while True:
        # The hot loop: no generator, no per-record function call beyond the csv module and the picker.
        try:
            for row in reader:
                start_line = line_num + 1
                line_num = first_line - 1 + reader.line_num
                picker = pickers.get(len(row))
                if picker is None:
                    if row:
                        errors.append(_wrong_shape(row, start_line))
                    continue
                fields = picker(row)
                if not fields[7]:
                    fields = (*fields[:7], _line_hash(row), fields[8])
                picked.append(fields)
                lines.append(start_line)
                if len(picked) >= chunk_rows:
                    parts.append(_asterisk_chunk(picked, lines, zone))
                    in_batch += len(picked)
                    picked, lines = [], []
                    if batch_rows is not None and in_batch >= batch_rows:
                        yield _batch(parts, errors)
                        parts, errors, in_batch = [], [], 0
            break
        except csv.Error as error:
            errors.append(LineError(line_num + 1, None, f"malformed CSV: {error}"))
            line_num = first_line - 1 + reader.line_num
    if picked:
        parts.append(_asterisk_chunk(picked, lines, zone))
    if parts or errors or batch_rows is None:
        yield _batch(parts, errors)


# --- the fast reader: pyarrow's CSV parser on blocks of whole lines -------------------------------------------------
#
# pyarrow's parser (quotes special only at a field's start, "" inside quotes, text after a closing quote kept, a
# quote inside an unquoted field kept) reads a record exactly as the csv module's default dialect does, 30 times
# faster and without the GIL. What it cannot tell the same way is *where* a record starts when one spans lines or
# when lines are blank, so each block is checked first (vectorised) and:
#
# * clean (every non-blank line is one record of the layout of the block's first record, no blank line, no line
#   over the csv module's field limit): read by pyarrow;
# * every record one line but some of another field count, blank lines, a huge line: that block alone is read by
#   the csv module (its records start and end where pyarrow's do, so the csv module reads it as in the whole file);
# * anything else (a record over several lines, a lone carriage return, bytes that are not UTF-8): the rest of the
#   file is read by the csv module from that block's first line on.

_FAST_BLOCK_LINES = 100_000
_WHITESPACE = "".join(char for char in map(chr, range(0x3001)) if char.isspace())  # what str.strip() strips


@dataclass(slots=True)
class _Block:
    """Whole lines of the file: their bytes, the file's line number of the first, and what the check found."""

    data: bytes
    first_line: int
    verdict: str = "rest"  # "clean", "alone" (the csv module reads this block alone) or "rest"
    table: Any = None  # pyarrow Table of the picked columns when clean
    layout: int = 0  # field count of the block's records when clean
    line_starts: np.ndarray | None = None
    line_ends: np.ndarray | None = None  # without the line terminator
    work: dict[str, Any] | None = None  # see _fast_work


class _Chained(io.RawIOBase):
    """Pieces of bytes, pulled one by one as they are read, as one readable binary stream."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._piece = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._piece:
            self._piece = next(self._pieces, None)
            if self._piece is None:
                self._piece = b""
                return 0
        size = min(len(buffer), len(self._piece))
        buffer[:size] = self._piece[:size]
        self._piece = self._piece[size:]
        return size


def _binary_source(source: Source) -> tuple[IO[bytes], bool] | None:
    """The source as UTF-8 bytes for the fast reader, and whether a leading byte order mark is dropped (as the
    csv module's path drops it); None when only the csv module's path reads it the same way.

    A text file is read through its binary buffer, from its start, as a file opened with ``newline=""`` reads
    (``import_cdrs`` opens it so): the two differ only for a carriage return alone inside a quoted field.
    """
    if isinstance(source, bytes):
        return io.BytesIO(source), True
    if isinstance(source, str | io.StringIO):
        text = source if isinstance(source, str) else source.getvalue()[source.tell() :]
        if text.count("\r") != text.count("\r\n"):
            return None  # a lone carriage return: how a StringIO splits it depends on its newline mode
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if isinstance(source, io.StringIO):
            source.seek(0, io.SEEK_END)
        return io.BytesIO(data), False
    buffer = getattr(source, "buffer", None)
    encoding = getattr(source, "encoding", None)
    if buffer is None or not isinstance(source, io.TextIOWrapper) or encoding is None:
        return None
    try:
        name = codecs.lookup(encoding).name
        at_start = source.tell() == 0
    except (LookupError, OSError, ValueError):
        return None
    if name not in ("utf-8", "utf-8-sig") or not at_start:
        return None
    if buffer.seekable():
        buffer.seek(0)  # the wrapper may have read ahead
    return buffer, name == "utf-8-sig"


def _line_blocks(stream: IO[bytes], drop_bom: bool, block_lines: int) -> Iterator[_Block]:
    """The stream in blocks of ``block_lines`` lines as a binary stream splits them (at ``\\n``)."""
    first_line = 1
    while data := b"".join(itertools.islice(stream, block_lines)):
        if first_line == 1 and drop_bom and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        yield _Block(data, first_line)
        first_line += block_lines


def _block_check(block: _Block, zone: tzinfo) -> _Block:
    """Decide how ``block`` is read (see above); parse it with pyarrow when it can be. Runs on a helper thread:
    numpy and pyarrow do the work with the GIL released."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    data = block.data
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return block
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return block
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    starts = np.r_[0, newlines + 1]
    ends = np.r_[newlines, len(data)]
    if starts[-1] == len(data):  # the block ends with its last line's newline
        starts, ends = starts[:-1], ends[:-1]
    carriage = np.zeros(ends.size, dtype=bool)
    inside = ends > starts
    carriage[inside] = np.frombuffer(data, dtype=np.uint8)[ends[inside] - 1] == 13
    ends = ends - carriage
    filled = ends > starts
    if not filled.any():
        block.verdict = "alone"
        return block
    first = int(np.flatnonzero(filled)[0])
    try:
        layout = len(next(csv.reader([data[starts[first] : ends[first]].decode("utf-8")]), []))
    except csv.Error:
        return block
    names = [f"f{i}" for i in range(max(layout, 1))]
    positions = sorted(set(_asterisk_columns_picked(layout))) if layout in ASTERISK_LAYOUTS else [0]
    picked = [names[i] for i in positions]
    odd_rows: list[Any] = []

    def odd(row: Any) -> str:
        odd_rows.append(row)
        return "skip"

    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data),
            read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
            parse_options=pa_csv.ParseOptions(
                newlines_in_values=True, ignore_empty_lines=True, invalid_row_handler=odd
            ),
            convert_options=pa_csv.ConvertOptions(
                include_columns=picked,
                column_types={name: pa.string() for name in picked},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, ValueError):
        return block
    records = table.num_rows + len(odd_rows)
    if records != int(filled.sum()):
        return block  # a record spans lines
    last = int(np.flatnonzero(filled)[-1])
    try:  # the last line must close its record, or the csv module would read on into the next block
        list(csv.reader([data[starts[last] : ends[last]].decode("utf-8")], strict=True))
    except csv.Error:
        return block
    longest = int((ends - starts).max())
    if odd_rows or not filled.all() or layout not in ASTERISK_LAYOUTS or longest > csv.field_size_limit():
        block.verdict = "alone"
        return block
    block.verdict, block.table, block.layout = "clean", table, layout
    block.line_starts, block.line_ends = starts, ends
    block.work = _fast_work(table, layout, zone)
    return block


def _asterisk_columns_picked(layout: int) -> tuple[int, ...]:
    """Positions of (accountcode, src, dst, start, duration, billsec, disposition, uniqueid, dstchannel) in a
    record of ``layout`` fields; uniqueid is 0 (a placeholder) when the layout has none."""
    unique = _UNIQUEID if "uniqueid" in ASTERISK_LAYOUTS[layout] else 0
    return (0, 1, 2, 9, 12, 13, 14, unique, 6)


class _ArrowValues(Sequence):
    """A pyarrow string column read value by value (for the few rows whose error is worded)."""

    def __init__(self, column: Any) -> None:
        self._column = column

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._column[index].to_pylist()
        return self._column[index].as_py()

    def __iter__(self) -> Iterator[str]:
        return iter(self._column.to_pylist())


def _arrow_bytes(column: Any) -> np.ndarray | None:
    """A pyarrow string column as a numpy bytes array (as ``np.array(values, dtype="S")``); None if not ASCII."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    count = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + count + 1]
    data = (
        np.frombuffer(array.buffers()[2], dtype=np.uint8) if array.buffers()[2] is not None else np.zeros(0, np.uint8)
    )
    lengths = np.diff(offsets)
    width = max(int(lengths.max()) if count else 0, 1)
    used = data[offsets[0] : offsets[-1]]
    if used.size and used.max() >= 0x80:
        return None
    if (lengths == width).all():  # fixed width (start times): the values lie back to back already
        return used.view(f"S{width}").reshape(count)
    matrix = np.zeros((count, width), dtype=np.uint8)
    positions = np.arange(width)
    mask = positions < lengths[:, None]
    matrix[mask] = data[(offsets[:-1, None] + positions)[mask]]
    return matrix.view(f"S{width}").reshape(count)


def _fast_work(table: Any, layout: int, zone: tzinfo) -> dict[str, Any]:
    """What the helper thread works out of a clean block's columns, vectorised and mostly without the GIL: start
    times, durations, the bad-value mask, src and dst stripped, the trunks (see :func:`_asterisk_chunk`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = {int(name[1:]): table.column(name).combine_chunks() for name in table.column_names}  # by position
    count = table.num_rows
    start_raw = _arrow_bytes(column[9])  # None: not ASCII, then every row is bad and the row parser words it
    start_epoch, bad = _iso_seconds_to_epoch(column[9].to_pylist() if start_raw is None else (), zone, raw=start_raw)
    both = pa.concat_arrays([column[12], column[13]])
    seconds_raw = _arrow_bytes(both)
    seconds, bad_seconds = _seconds_column(both.to_pylist() if seconds_raw is None else (), raw=seconds_raw)
    return {
        "column": column,
        "start_epoch": start_epoch,
        "seconds": seconds,
        "bad": bad | bad_seconds[:count] | bad_seconds[count:],
        "caller": pc.utf8_trim(column[1], characters=_WHITESPACE),
        "callee": pc.utf8_trim(column[2], characters=_WHITESPACE),
        "trunk": _arrow_trunks(column[6]),
    }


def _arrow_trunks(dstchannel: Any) -> Any:
    """:func:`asterisk_trunk` of a pyarrow string column, vectorised (None: a name over 80 characters, cut by
    :func:`asterisk_trunk` itself instead)."""
    import pyarrow.compute as pc

    channel = pc.utf8_trim(dstchannel, characters=_WHITESPACE)
    parts = pc.extract_regex(channel, r"(?s)^(?P<technology>[^/]*)/(?P<rest>.*)$")  # null: no slash
    local = pc.equal(pc.utf8_lower(parts.field("technology")), "local")
    name = pc.replace_substring_regex(parts.field("rest"), r"-[^-]*$", "")  # before the last dash, if any
    if len(name) and pc.max(pc.utf8_length(name)).as_py() > 80:
        return None
    return pc.if_else(pc.and_kleene(pc.is_valid(parts), pc.invert(local)), name, "")


def _fast_columns(block: _Block, zone: tzinfo) -> CdrColumns:
    """CdrColumns of a clean block, the same as the csv module's path gives."""
    work = block.work
    column = work["column"]
    count = block.table.num_rows
    lines = np.arange(block.first_line, block.first_line + count, dtype=np.int64)

    def listed(values: Any) -> list[str]:
        return values.to_numpy(zero_copy_only=False).tolist()

    has_unique = "uniqueid" in ASTERISK_LAYOUTS[block.layout]
    source_id = listed(column[_UNIQUEID]) if has_unique else [""] * count
    if not has_unique or "" in source_id:
        data = block.data
        for i, value in enumerate(source_id):
            if not value:  # no uniqueid logged: the line itself identifies the CDR, as in _asterisk_pick
                line = data[block.line_starts[i] : block.line_ends[i]].decode("utf-8")
                source_id[i] = _line_hash(next(csv.reader([line])))
    lazy = {position: _ArrowValues(values) for position, values in column.items()}  # to word errors
    trunks = listed(work["trunk"]) if work["trunk"] is not None else list(map(asterisk_trunk, lazy[6]))
    return _asterisk_columns(
        (listed(column[0]), lazy[1], lazy[2], lazy[9], lazy[12], lazy[13], listed(column[14]), source_id, lazy[6]),
        lines,
        zone,
        start_epoch=work["start_epoch"],
        seconds=work["seconds"],
        bad=work["bad"],
        caller=listed(work["caller"]),
        callee=listed(work["callee"]),
        trunks=trunks,
    )


def _read_asterisk_fast(
    stream: IO[bytes], drop_bom: bool, zone: tzinfo, chunk_rows: int, batch_rows: int | None
) -> Iterator[CdrColumns]:
    """The fast reader (see above): blocks checked and parsed one ahead on a helper thread."""
    blocks = _line_blocks(stream, drop_bom, min(batch_rows or _FAST_BLOCK_LINES, _FAST_BLOCK_LINES))
    parts: list[CdrColumns] = []
    in_batch = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdr-csv") as helper:

        def ahead() -> Future:
            return helper.submit(lambda: None if (block := next(blocks, None)) is None else _block_check(block, zone))

        coming = ahead()
        while (block := coming.result()) is not None:
            if block.verdict == "rest":
                rest = _Chained(itertools.chain([block.data], (later.data for later in blocks)))
                text = io.TextIOWrapper(io.BufferedReader(rest), encoding="utf-8", newline="")
                yield from _read_asterisk_master_columns(
                    text, zone, chunk_rows, batch_rows, first_line=block.first_line, parts=parts
                )
                return
            coming = ahead()
            if block.verdict == "clean":
                part = _fast_columns(block, zone)
            else:
                text = io.StringIO(block.data.decode("utf-8"), newline="")
                [part] = _read_asterisk_master_columns(text, zone, chunk_rows, None, first_line=block.first_line)
            parts.append(part)
            in_batch += len(part)
            while batch_rows is not None and in_batch >= batch_rows:
                whole = _batch(parts, [])
                batch, left = _rows_split(whole, batch_rows)
                yield batch
                parts, in_batch = ([left] if len(left) else []), len(left)
    if parts or batch_rows is None:
        yield _batch(parts, [])


def _rows_split(columns: CdrColumns, count: int) -> tuple[CdrColumns, CdrColumns]:
    """The first ``count`` rows, with the errors met before the next row, and the rest."""
    if len(columns) == count:
        return columns, CdrColumns()
    rows = np.arange(len(columns))
    head, tail = _select(columns, rows[:count]), _select(columns, rows[count:])
    next_line = int(columns.line[count])
    head.errors = [e for e in columns.errors if e.line < next_line]
    tail.errors = [e for e in columns.errors if e.line > next_line]
    return head, tail


def _batch(parts: list[CdrColumns], errors: list[LineError]) -> CdrColumns:
    result = _concat(parts) if parts else CdrColumns()
    result.errors = sorted(errors + result.errors, key=lambda e: e.line)
    return result


def _concat(parts: list[CdrColumns]) -> CdrColumns:
    """One CdrColumns of the rows of several, in order (errors too)."""
    if len(parts) == 1:
        return parts[0]
    result = CdrColumns(
        line=np.concatenate([p.line for p in parts]),
        start=np.concatenate([p.start for p in parts]),
        duration=np.concatenate([p.duration for p in parts]),
        billsec=np.concatenate([p.billsec for p in parts]),
    )
    for part in parts:
        result.source_id += part.source_id
        result.caller += part.caller
        result.callee += part.callee
        result.account += part.account
        result.disposition += part.disposition
        result.trunk += part.trunk
        result.errors += part.errors
    result.errors.sort(key=lambda e: e.line)
    return result


def _asterisk_chunk(picked: list[tuple[str, ...]], lines: list[int], zone: tzinfo) -> CdrColumns:
    """Vectorised twin of :func:`_asterisk_fields_record` for a chunk of picked records (same results)."""
    account, src, dst, start, duration, billsec, disposition, source_id, dstchannel = zip(*picked, strict=True)
    count = len(picked)
    start_epoch, bad = _iso_seconds_to_epoch(start, zone)
    seconds, bad_seconds = _seconds_column(duration + billsec)  # one conversion for both columns
    return _asterisk_columns(
        (account, src, dst, start, duration, billsec, disposition, source_id, dstchannel),
        lines,
        zone,
        start_epoch=start_epoch,
        seconds=seconds,
        bad=bad | bad_seconds[:count] | bad_seconds[count:],
        caller=list(map(str.strip, src)),
        callee=list(map(str.strip, dst)),
        trunks=list(map(asterisk_trunk, dstchannel)),
    )


def _asterisk_columns(
    fields: tuple[Sequence[str], ...],
    lines: Sequence[int] | np.ndarray,
    zone: tzinfo,
    *,
    start_epoch: np.ndarray,
    seconds: np.ndarray,
    bad: np.ndarray,
    caller: list[str],
    callee: list[str],
    trunks: list[str],
) -> CdrColumns:
    """Good rows and LineErrors of picked Master.csv fields given as columns, with what was worked out of them:
    start in epoch seconds, duration then billsec (``seconds``, twice as long), the rows the vectorised checks found
    bad, src and dst stripped, the trunks. The checks flag every row the row parser refuses (and an empty dst is
    flagged here); flagged rows then go through :func:`_asterisk_fields_record`, which words the error.
    """
    account, _src, _dst, _start, _duration, _billsec, disposition, source_id, _dstchannel = fields
    count = len(callee)
    duration_s, billsec_s = seconds[:count], seconds[count:]
    if "" in callee:
        bad = bad | np.array([not c for c in callee], dtype=bool)
    errors: list[LineError] = []
    for i in np.flatnonzero(bad).tolist():
        parsed = _asterisk_fields_record(tuple(column[i] for column in fields), int(lines[i]), zone)
        if isinstance(parsed, LineError):
            errors.append(parsed)
        else:  # pragma: no cover - the checks above mirror the row parser; if not, trust it, never drop a CDR
            bad[i] = False
            start_epoch[i] = int(parsed.start.timestamp())
            duration_s[i], billsec_s[i] = parsed.duration, parsed.billsec
    columns = CdrColumns(
        line=np.asarray(lines, dtype=np.int64),
        source_id=list(source_id),
        caller=caller,
        callee=callee,
        account=list(account),
        start=start_epoch.astype("datetime64[s]"),
        duration=duration_s,
        billsec=billsec_s,
        disposition=list(disposition),
        trunk=trunks,
        errors=errors,
    )
    return _select(columns, np.flatnonzero(~bad)) if errors else columns


def _select(columns: CdrColumns, keep: np.ndarray) -> CdrColumns:
    """The rows ``keep`` of every column."""
    pick = keep.tolist()
    return CdrColumns(
        line=columns.line[keep],
        source_id=[columns.source_id[i] for i in pick],
        caller=[columns.caller[i] for i in pick],
        callee=[columns.callee[i] for i in pick],
        account=[columns.account[i] for i in pick],
        start=columns.start[keep],
        duration=columns.duration[keep],
        billsec=columns.billsec[keep],
        disposition=[columns.disposition[i] for i in pick],
        trunk=[columns.trunk[i] for i in pick],
        errors=columns.errors,
    )


def _bytes_column(values: Sequence[str]) -> np.ndarray | None:
    try:
        return np.array(values, dtype="S")
    except UnicodeEncodeError:
        return None  # non-ASCII: let the row parser explain


def _seconds_column(values: Sequence[str], *, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Whole seconds as int64 and a mask of values :func:`_parse_seconds` would refuse (``raw``: the values as a
    numpy bytes array already)."""
    if raw is None:
        raw = _bytes_column(values)
    if raw is None or raw.dtype.itemsize == 0:
        count = len(values) if raw is None else len(raw)
        return np.zeros(count, np.int64), np.ones(count, dtype=bool)
    length = np.strings.str_len(raw)
    ok = np.strings.isdigit(raw) & (length > 0) & (length <= 10)
    seconds = np.where(ok, raw, b"0").astype(np.int64)
    ok &= seconds <= _MAX_SECONDS
    return np.where(ok, seconds, 0), ~ok


_DIGIT_POSITIONS = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
_SEPARATORS = {4: ord("-"), 7: ord("-"), 10: ord(" "), 13: ord(":"), 16: ord(":")}
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _iso_seconds_to_epoch(
    values: Sequence[str], zone: tzinfo, *, raw: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``YYYY-MM-DD HH:MM:SS`` wall-clock times in ``zone`` as UTC epoch seconds, plus a bad-value mask
    (``raw``: the values as a numpy bytes array already)."""
    count = len(values) if raw is None else len(raw)
    if raw is None:
        raw = _bytes_column(values)
    if raw is None or raw.dtype.itemsize < 19:
        return np.zeros(count, np.int64), np.ones(count, dtype=bool)
    matrix = raw.view(np.uint8).reshape(count, raw.dtype.itemsize)
    ok = np.strings.str_len(raw) == 19
    digits = matrix[:, _DIGIT_POSITIONS].astype(np.int64) - ord("0")
    ok &= ((digits >= 0) & (digits <= 9)).all(axis=1)
    for position, separator in _SEPARATORS.items():
        ok &= matrix[:, position] == separator
    d = digits
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month = d[:, 4] * 10 + d[:, 5]
    day = d[:, 6] * 10 + d[:, 7]
    hour = d[:, 8] * 10 + d[:, 9]
    minute = d[:, 10] * 10 + d[:, 11]
    second = d[:, 12] * 10 + d[:, 13]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    days_in_month = _DAYS_IN_MONTH[np.where(month_ok, month, 1)] + ((month == 2) & leap)
    ok &= (year >= 1) & month_ok & (day >= 1) & (day <= days_in_month) & (hour <= 23) & (minute <= 59)
    ok &= second <= 59
    # Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    shifted_year = year - (month <= 2)
    era = shifted_year // 400
    year_of_era = shifted_year - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = era * 146_097 + day_of_era - 719_468
    wall = days * 86_400 + hour * 3_600 + minute * 60 + second
    wall = np.where(ok, wall, 0)
    if zone is UTC:
        return wall, ~ok
    return wall - _wall_offsets(wall, zone), ~ok


def _wall_offsets(wall: np.ndarray, zone: tzinfo) -> np.ndarray:
    """UTC offset (seconds) of wall-clock epoch seconds in ``zone``, as ``datetime(..., tzinfo=zone)`` gives it.

    Computed once per distinct wall-clock minute; a minute in which the offset changes (only
    in pre-1900 local mean time) is computed value by value.
    """
    minutes, inverse = np.unique(wall // 60, return_inverse=True)
    offsets = np.empty(minutes.size, dtype=np.int64)
    straddles = np.zeros(minutes.size, dtype=bool)
    epoch = datetime(1970, 1, 1)
    for position, minute in enumerate(minutes.tolist()):
        naive = epoch + timedelta(minutes=minute)
        offsets[position] = naive.replace(tzinfo=zone).utcoffset() // timedelta(seconds=1)
        late = (naive + timedelta(seconds=59)).replace(tzinfo=zone).utcoffset() // timedelta(seconds=1)
        straddles[position] = late != offsets[position]
    result = offsets[inverse]
    for row in np.flatnonzero(straddles[inverse]).tolist():
        naive = epoch + timedelta(seconds=int(wall[row]))
        result[row] = naive.replace(tzinfo=zone).utcoffset() // timedelta(seconds=1)
    return result


# ---------------------------------------------------------------------------------------------
# Freephone (8-800) platform records
# ---------------------------------------------------------------------------------------------

# Column positions (0-based; negative counts from the end) in the freephone platform's combined
# record, worked out from the sample line
#   41,158148,,607,,800XXXXXXX,7499XXXXXXX,20161013112944,0,30,05,,7926XXXXXXX,,,,,8800,,,,,,,,,,11.05
# The format is undocumented; operators edit this profile when their platform differs.
FREEPHONE_DEFAULT_PROFILE: dict[str, int] = {
    "source_id": 1,  # 158148: record id
    "callee": 5,  # 800XXXXXXX: the freephone number dialled
    "caller": 6,  # 7499XXXXXXX: the calling subscriber (A)
    "start": 7,  # 20161013112944: YYYYMMDDHHMMSS
    "duration": 9,  # 30 seconds
    "forwarded_to": 12,  # 7926XXXXXXX: where the routing rules sent the call (B or M)
    "service_code": 17,  # 8800
    "reported_cost": -1,  # 11.05: cost of both legs as computed by the switch
}
_FREEPHONE_REQUIRED = ("source_id", "caller", "callee", "start", "duration")
_FREEPHONE_OPTIONAL = ("billsec", "account", "disposition", "forwarded_to", "service_code", "reported_cost")


def _check_profile(
    profile: Mapping[str, int], required: Sequence[str] = _FREEPHONE_REQUIRED, allowed: Sequence[str] = ()
) -> None:
    allowed = set(allowed) or set(_FREEPHONE_REQUIRED) | set(_FREEPHONE_OPTIONAL)
    unknown = set(profile) - allowed
    if unknown:
        raise ValueError(f"unknown fields in the column profile: {', '.join(sorted(unknown))}")
    missing = [name for name in required if name not in profile]
    if missing:
        raise ValueError(f"the column profile must give a column for: {', '.join(missing)}")
    for name, index in profile.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"the column of {name} must be an integer index, got {index!r}")


def parse_freephone_cdrs(
    source: Source,
    profile: Mapping[str, int] | None = None,
    *,
    tz: str | tzinfo = "UTC",
    time_format: str | None = _COMPACT_FORMAT,
    delimiter: str = ",",
    skip_header: bool = False,
) -> Iterator[ParsedCdr | LineError]:
    """Stream the freephone (8-800) platform's combined CDRs: both legs of a call in one record.

    ``profile`` maps CDR fields to 0-based column indexes (negative: from the end); the
    default is :data:`FREEPHONE_DEFAULT_PROFILE`. Required fields: source_id, caller, callee
    (the freephone number), start, duration; optional: billsec (default: duration, the
    platform records answered calls), account, disposition (default: ANSWERED when billsec >
    0), forwarded_to, service_code, reported_cost. ``tz`` is the platform's clock. Each record
    comes back with ``leg="combined"``. Raises ValueError at once for a bad profile.
    """
    profile = dict(FREEPHONE_DEFAULT_PROFILE if profile is None else profile)
    _check_profile(profile)
    return _positional_records(
        source, profile, zone=_zone(tz), time_format=time_format, delimiter=delimiter, skip_header=skip_header,
        leg="combined",
    )  # fmt: skip


def parse_positional_cdrs(
    source: Source,
    profile: Mapping[str, int],
    *,
    tz: str | tzinfo = "UTC",
    time_format: str | None = None,
    delimiter: str = ",",
    skip_header: bool = False,
) -> Iterator[ParsedCdr | LineError]:
    """Stream CDRs from any CSV through a saved profile {field: 0-based column index} (negative: from the end).

    Fields are those of :data:`CDR_FIELDS`; caller, callee, start and one of duration/billsec are
    required. ``time_format`` as in :func:`parse_mapped_cdr_csv`. ``skip_header`` skips line 1.
    Raises ValueError at once for a bad profile.
    """
    required = ("caller", "callee", "start")
    _check_profile(profile, required, CDR_FIELDS)
    if not ({"duration", "billsec"} & set(profile)):
        raise ValueError("the column profile must give a column for duration or billsec")
    return _positional_records(
        source, dict(profile), zone=_zone(tz), time_format=time_format, delimiter=delimiter, skip_header=skip_header
    )


def _positional_records(
    source: Source,
    profile: dict[str, int],
    *,
    zone: tzinfo,
    time_format: str | None,
    delimiter: str,
    skip_header: bool,
    leg: str | None = None,
) -> Iterator[ParsedCdr | LineError]:
    needed = max(max(i + 1 if i >= 0 else -i for i in profile.values()), 1)
    for line, row in _records(csv.reader(_text_lines(source), delimiter=delimiter)):
        if skip_header and line == 1:
            continue
        if isinstance(row, LineError):
            yield row
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < needed:
            yield LineError(line, None, f"expected at least {needed} fields, got {len(row)}")
            continue
        values = {name: row[index].strip() for name, index in profile.items()}
        yield _cdr_from_values(values, row, line, zone, time_format, leg=leg)


def _cdr_from_values(
    values: Mapping[str, str],
    row: Sequence[str],
    line: int,
    zone: tzinfo,
    time_format: str | None,
    *,
    leg: str | None = None,
) -> ParsedCdr | LineError:
    """Build a ParsedCdr from named text fields (freephone and mapped CSV share this)."""
    problems: list[tuple[str | None, str]] = []
    callee = values.get("callee", "")
    if not callee:
        problems.append(("callee", "callee (the called number) is empty"))
    start = _parse_time(values.get("start", ""), "start", time_format, zone)
    if isinstance(start, str):
        problems.append(("start", start))
    seconds: dict[str, int] = {}
    for name in ("duration", "billsec"):
        if values.get(name):
            parsed = _parse_seconds(values[name], name)
            if isinstance(parsed, str):
                problems.append((name, parsed))
            else:
                seconds[name] = parsed
        elif name in values:
            problems.append((name, f"{name} is empty"))
    reported_cost = None
    if values.get("reported_cost"):
        if _SIGNED_NUMBER.fullmatch(values["reported_cost"]):
            reported_cost = Decimal(values["reported_cost"])
        else:
            problems.append(("reported_cost", f"reported_cost must be a number, got {values['reported_cost']!r}"))
    if values.get("leg"):
        leg = values["leg"].lower()
        if leg not in LEGS:
            problems.append(("leg", f"leg must be one of {', '.join(LEGS)}, got {values['leg']!r}"))
    service = (values.get("service") or "voice").lower()
    if service not in SERVICES:
        problems.append(("service", f"service must be one of {', '.join(sorted(SERVICES))}, got {service!r}"))
    units = 0
    if values.get("units"):
        parsed_units = _parse_seconds(values["units"], "units")
        if isinstance(parsed_units, str):
            problems.append(("units", f"units must be a whole number, got {values['units']!r}"))
        else:
            units = parsed_units
    if problems:
        return _error(line, problems)
    duration = seconds.get("duration", seconds.get("billsec", 0))
    billsec = seconds.get("billsec", duration)
    return ParsedCdr(
        line=line,
        source_id=values.get("source_id") or _line_hash(row),
        caller=values.get("caller", ""),
        callee=callee,
        start=start,  # type: ignore[arg-type]
        duration=duration,
        billsec=billsec,
        account=values.get("account", ""),
        disposition=values.get("disposition") or ("ANSWERED" if billsec > 0 else "NO ANSWER"),
        forwarded_to=values.get("forwarded_to") or None,
        service_code=values.get("service_code") or None,
        reported_cost=reported_cost,
        leg=leg,
        trunk=values.get("trunk", ""),
        service=service,
        units=units,
        correlation_id=values.get("correlation_id", ""),
    )


# ---------------------------------------------------------------------------------------------
# Generic CSV with a saved column mapping
# ---------------------------------------------------------------------------------------------

CDR_FIELDS = (
    "source_id",
    "caller",
    "callee",
    "start",
    "duration",
    "billsec",
    "account",
    "disposition",
    "forwarded_to",
    "service_code",
    "reported_cost",
    "leg",
    "trunk",
    "service",
    "units",
    "correlation_id",
)


def parse_mapped_cdr_csv(
    source: Source,
    mapping: Mapping[str, str],
    *,
    tz: str | tzinfo = "UTC",
    time_format: str | None = None,
    delimiter: str = ",",
) -> Iterator[ParsedCdr | LineError]:
    """Stream CDRs from any CSV with a header, using an operator's saved mapping {field: header name}.

    Fields are those of :class:`ParsedCdr` (see :data:`CDR_FIELDS`); caller, callee, start and
    one of duration/billsec must be mapped (the other defaults to it). ``time_format`` is None
    for ISO 8601, ``"epoch"`` for Unix seconds, or a ``strptime`` format; times without an
    offset are in ``tz``. A header lacking a mapped column yields one LineError per missing
    column on line 1 and nothing else. Raises ValueError at once for a bad mapping.
    """
    unknown = set(mapping) - set(CDR_FIELDS)
    if unknown:
        raise ValueError(f"unknown CDR fields in the mapping: {', '.join(sorted(unknown))}")
    missing = [name for name in ("caller", "callee", "start") if name not in mapping]
    if missing or not ({"duration", "billsec"} & set(mapping)):
        raise ValueError("the mapping must name columns for caller, callee, start and duration or billsec")
    zone = _zone(tz)

    def records() -> Iterator[ParsedCdr | LineError]:
        stream = _records(csv.reader(_text_lines(source), delimiter=delimiter))
        first = next(stream, None)
        if first is None:
            yield LineError(1, None, "the file is empty; expected a header line")
            return
        if isinstance(first[1], LineError):
            yield first[1]
            return
        header = [name.strip() for name in first[1]]
        absent = [(name, column) for name, column in mapping.items() if column not in header]
        for name, column in absent:
            yield LineError(1, column, f"the header has no column {column!r} (mapped to {name})")
        if absent:
            return
        position = {name: header.index(column) for name, column in mapping.items()}
        for line, row in stream:
            if isinstance(row, LineError):
                yield row
                continue
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield LineError(line, None, f"the line has {len(row)} fields but the header has {len(header)}")
                continue
            values = {name: row[index].strip() for name, index in position.items()}
            yield _cdr_from_values(values, row, line, zone, time_format)

    return records()
