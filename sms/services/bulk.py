"""One UPDATE for many rows with different values: ``UPDATE t SET … FROM (VALUES …) v WHERE t.id = v.id``."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection

from core.sql import execute_values


def rows_update(
    *, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple], where: str = "", returning: str = ""
) -> list[tuple]:
    """Update ``table`` row by row from ``rows`` (``(id, value, …)`` in the order of ``columns``).

    ``columns`` are ``(name, SQL type)`` pairs; a column name may be suffixed ``+`` to mean "set it only when the
    given value is not NULL". ``where`` adds conditions on ``t`` (e.g. ``t.status = 'submitting'``); only constants
    of our own go there. Returns the RETURNING rows, if asked.
    """
    if not rows:
        return []
    names = [name.rstrip("+") for name, _ in columns]
    assignments = ", ".join(
        f"{name.rstrip('+')} = coalesce(v.{name.rstrip('+')}, t.{name.rstrip('+')})"
        if name.endswith("+")
        else f"{name} = v.{name}"
        for name, _ in columns
    )
    sql = (
        f"UPDATE {table} t SET {assignments} FROM (VALUES %s) AS v (id, {', '.join(names)}) "
        f"WHERE t.id = v.id{' AND ' + where if where else ''}{' RETURNING ' + returning if returning else ''}"
    )
    with connection.cursor() as cursor:
        result = execute_values(
            cursor, sql, rows, ["bigint", *(sql_type for _, sql_type in columns)], fetch=bool(returning)
        )
    return list(result or [])


def rows_insert(*, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple], returning: str = "") -> list:
    """Insert many rows in one statement (``columns`` are ``(name, SQL type)`` pairs, rows in that order)."""
    if not rows:
        return []
    sql = f"INSERT INTO {table} ({', '.join(name for name, _ in columns)}) VALUES %s"
    if returning:
        sql += f" RETURNING {returning}"
    with connection.cursor() as cursor:
        result = execute_values(cursor, sql, rows, [sql_type for _, sql_type in columns], fetch=bool(returning))
    return list(result or [])
