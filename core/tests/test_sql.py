"""core.sql writes literals itself instead of psycopg2: whatever it writes must read back in PostgreSQL as the very
value given (and never as SQL), under either setting of standard_conforming_strings."""

import datetime
import enum
import json
import random
import uuid
from decimal import Decimal

import pytest
from django.db import connection, models
from psycopg2.extras import Json

from core.sql import execute_values, literal, values_list

TRICKY = [
    "",
    "'",
    "''",
    "\\",
    "\\'",
    "'\\",
    "it's",
    "C:\\path\\n",
    "'); DROP TABLE core_customer; --",
    "E'\\x41'",
    "$$ $tag$",
    "100% %s %(name)s",
    "line\nbreak\r\ttab",
    "ñ € 😀 中文 \u200b",
    "\x01\x1f\x7f",
]


def read_back(sql_literal: str, cast: str = "text"):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {sql_literal}::{cast}")
        return cursor.fetchone()[0]


@pytest.fixture(params=["on", "off"])
def conforming(request, db):
    with connection.cursor() as cursor:
        cursor.execute(f"SET standard_conforming_strings = {request.param}")
    yield request.param
    with connection.cursor() as cursor:
        cursor.execute("RESET standard_conforming_strings")


def test_strings_read_back_as_given(conforming):
    rng = random.Random(7)
    alphabet = "'\\\"%$;-EabcX\n\t€😀 "
    generated = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(200)]
    for text in TRICKY + generated:
        assert read_back(literal(text)) == text, repr(text)


def test_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        literal("a\x00b")


class Colour(models.TextChoices):
    RED = "r'ed", "Red"


class Level(enum.IntEnum):
    HIGH = 3


class Mixed(int, enum.Enum):
    ONE = 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "cast", "expected"),
    [
        (0, "bigint", 0),
        (-9_223_372_036_854_775_808, "bigint", -9_223_372_036_854_775_808),
        (True, "boolean", True),
        (False, "boolean", False),
        (Decimal("0.050000"), "numeric", Decimal("0.050000")),
        (Decimal("-12.5"), "numeric", Decimal("-12.5")),
        (Decimal("1E+3"), "numeric", Decimal("1000")),
        (Decimal("-0.000001"), "numeric(20,6)", Decimal("-0.000001")),
        (1.5, "double precision", 1.5),
        (None, "text", None),
        (datetime.date(2026, 2, 28), "date", datetime.date(2026, 2, 28)),
        (uuid.UUID(int=12345), "uuid", str(uuid.UUID(int=12345))),
        ([], "bigint[]", []),
        ([1, 2, 3], "bigint[]", [1, 2, 3]),
        (["a'b", "c\\d", ""], "varchar[]", ["a'b", "c\\d", ""]),
        ({"a": "it's", "b": [1, None]}, "jsonb", {"a": "it's", "b": [1, None]}),
        (Json({"k": "\\"}), "jsonb", {"k": "\\"}),
        (Colour.RED, "text", "r'ed"),
        (Level.HIGH, "int", 3),
        (Mixed.ONE, "int", 1),
    ],
)
def test_values_read_back_as_given(value, cast, expected):
    got = read_back(literal(value), cast)
    if cast == "uuid":
        got = str(got)
    if cast == "jsonb":  # Django's connection leaves jsonb as text
        got = json.loads(got)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.django_db
def test_special_numbers():
    assert read_back(literal(Decimal("NaN")), "numeric").is_nan()
    assert read_back(literal(float("inf")), "double precision") == float("inf")
    assert read_back(literal(float("-inf")), "double precision") == float("-inf")


@pytest.mark.django_db
def test_timestamps_keep_their_instant():
    aware = datetime.datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=5)))
    assert read_back(literal(aware), "timestamptz") == aware
    utc = datetime.datetime(2026, 11, 22, 9, 0, tzinfo=datetime.UTC)
    first = literal(utc)
    assert first == "'2026-11-22T09:00:00+00:00'"
    assert literal(utc) is first  # the same object again: formatted once, then taken from the cache
    other = utc + datetime.timedelta(microseconds=1)
    assert read_back(literal(other), "timestamptz") == other


@pytest.mark.django_db
def test_execute_values_pages_and_fetches():
    rows = [(n, f"name '{n}'", Decimal(n) / 4) for n in range(25)]
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE t_sql (id bigint, name text, amount numeric)")
        execute_values(cursor, "INSERT INTO t_sql VALUES %s", rows, ["bigint", "text", "numeric"], page_size=10)
        fetched = execute_values(
            cursor,
            "SELECT t.id, t.name, t.amount, '100%' FROM t_sql t JOIN (VALUES %s) v (id) ON v.id = t.id ORDER BY 1",
            [(n,) for n in range(0, 25, 2)],
            ["bigint"],
            fetch=True,
            page_size=4,
        )
    assert fetched == [(n, f"name '{n}'", Decimal(n) / 4, "100%") for n in range(0, 25, 2)]


def test_rows_must_fit_the_columns_and_the_statement_its_values():
    with pytest.raises(ValueError, match="a row of 2 values for 3 columns"):
        values_list([(1, 2)], ["bigint", "bigint", "bigint"])
    with pytest.raises(ValueError, match="one %s"):
        execute_values(None, "SELECT 1", [(1,)], ["bigint"])
    with pytest.raises(ValueError, match="one %s"):  # a literal holding %s would be taken for the list
        execute_values(None, "SELECT '%s', v FROM (VALUES %s) v", [(1,)], ["bigint"])


@pytest.mark.django_db
def test_negative_numbers_in_an_expression_are_not_comments():
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1-{literal(-1)}, 1-{literal(Decimal('-1.5'))}, 1-{literal(-0.5)}")
        assert cursor.fetchone() == (2, Decimal("2.5"), 1.5)
