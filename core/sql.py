"""Many rows in one statement, with their values written as SQL literals by Python, not adapted one by one.

psycopg2's ``execute_values`` calls ``cursor.mogrify`` for every row, which adapts every value through its adapter
protocol: about 3 µs per value here, the larger part of the SMS submitter's CPU (every message writes some 70
values). `literal` writes the same text for the types the hot paths use in a fraction of that, and hands any other
type to psycopg2.

Strings are written as escape strings (``E'…'``, backslashes and quotes doubled), whose meaning does not depend on
``standard_conforming_strings``; the connection's encoding is UTF-8 (Django sets it), in which no byte of a
multi-byte character is a quote or a backslash. NUL is refused, as psycopg2 refuses it.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Sequence
from decimal import Decimal

from django.db import connection
from psycopg2.extensions import adapt
from psycopg2.extras import Json


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# A negative number is parenthesised: ``-5::bigint`` would be ``-(5::bigint)`` (out of range for the smallest).


def _int(value: int) -> str:
    text = int.__repr__(value)  # digits, also for an int enum (whose str() is its name)
    return text if value >= 0 else "(" + text + ")"


def _decimal(value: Decimal) -> str:
    if not value.is_finite():
        return f"'{value}'"
    return str(value) if not value.is_signed() else "(" + str(value) + ")"


def _float(value: float) -> str:
    text = repr(value)
    if not text[-1].isdigit():
        return f"'{text}'"  # nan, inf, -inf
    return text if value >= 0 else "(" + text + ")"


def _array(values: Sequence) -> str:
    return "ARRAY[" + ",".join(map(literal, values)) + "]" if values else "'{}'"


_recent_times: dict[int, tuple[datetime.datetime, str]] = {}


def _datetime(value: datetime.datetime) -> str:
    """A timestamp's literal; the same object (a batch's ``now`` in every row) is formatted once (isoformat() of an
    aware datetime costs as much as all the other values of a row)."""
    seen = _recent_times.get(id(value))
    if seen is not None and seen[0] is value:
        return seen[1]
    text = "'" + value.isoformat() + "'"
    if len(_recent_times) > 64:
        _recent_times.clear()
    _recent_times[id(value)] = (value, text)
    return text


def _json(value: Json) -> str:
    return _text(value.dumps(value.adapted))


def _adapted(value) -> str:
    """Any other type, the way psycopg2 writes it."""
    adapter = adapt(value)
    if hasattr(adapter, "prepare"):
        connection.ensure_connection()
        adapter.prepare(connection.connection)
    return adapter.getquoted().decode()


_WRITERS = {
    str: _text,
    int: _int,
    bool: lambda value: "true" if value else "false",
    Decimal: _decimal,
    float: _float,
    datetime.datetime: _datetime,
    datetime.date: lambda value: "'" + value.isoformat() + "'",
    type(None): lambda value: "NULL",
    list: _array,
    tuple: _array,
    dict: lambda value: _text(json.dumps(value)),
    Json: _json,
    uuid.UUID: lambda value: "'" + str(value) + "'",
}


def _writer(kind: type):
    """The writer of a type not met before: its nearest base's (a str enum is written as a str), else psycopg2's."""
    writer = next((_WRITERS[base] for base in kind.__mro__ if base in _WRITERS), _adapted)
    _WRITERS[kind] = writer
    return writer


def literal(value) -> str:
    """``value`` as an SQL literal (give it a cast where its type must be known: ``'{}'``, a date, JSON)."""
    return (_WRITERS.get(type(value)) or _writer(type(value)))(value)


def values_list(rows: Sequence[Sequence], casts: Sequence[str | None]) -> str:
    """``(v, …), (v, …)`` for a VALUES list, each value cast to its column's SQL type (None: no cast)."""
    suffixes = ["::" + cast if cast else "" for cast in casts]
    writers = _WRITERS
    out = []
    for row in rows:
        if len(row) != len(suffixes):
            raise ValueError(f"a row of {len(row)} values for {len(suffixes)} columns")
        out.append(
            "("
            + ", ".join((writers.get(type(v)) or _writer(type(v)))(v) + s for v, s in zip(row, suffixes, strict=True))
            + ")"
        )
    return ", ".join(out)


def execute_values(
    cursor,
    sql: str,
    rows: Sequence[Sequence],
    casts: Sequence[str | None],
    *,
    fetch: bool = False,
    page_size: int = 10_000,
) -> list[tuple] | None:
    """Run ``sql`` with its ``%s`` replaced by the VALUES list of ``rows``, ``page_size`` rows per statement; what
    the statements return when ``fetch``.

    ``sql`` is run without parameters: a ``%`` in it is a percent sign, and ``%s`` is found in it only once.
    """
    if sql.count("%s") != 1:
        raise ValueError("the statement must hold one %s, for its VALUES list")
    head, _, tail = sql.partition("%s")
    fetched: list[tuple] = []
    for start in range(0, len(rows), page_size):
        cursor.execute(head + values_list(rows[start : start + page_size], casts) + tail)
        if fetch:
            fetched.extend(cursor.fetchall())
    return fetched if fetch else None
