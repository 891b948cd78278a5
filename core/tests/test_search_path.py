"""TENANT_LIMIT_SET_CALLS: `SET search_path` is issued once per schema switch, and never trusted after PostgreSQL
reverted it (a transaction or a savepoint rolled back): a query must always run in the schema that was set."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext


def current_search_path() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW search_path")
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_one_set_per_switch(world):
    connection.set_tenant(world.demo)
    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            current_search_path()
    sets = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SET search_path")]
    assert sets == ['SET search_path = "demo","public"']


@pytest.mark.django_db
def test_a_switch_reverted_by_a_savepoint_rollback_is_issued_again(world):
    connection.set_tenant(world.demo)
    assert current_search_path() == "demo, public"
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint
                connection.set_tenant(world.rival)
                assert current_search_path() == "rival, public"  # the SET ran inside the savepoint...
                raise RuntimeError
        except RuntimeError:
            pass
        # ...and ROLLBACK TO SAVEPOINT reverted it in PostgreSQL: the next query must not run in demo's schema
        assert current_search_path() == "rival, public"
