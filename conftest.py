"""Test session: one test database with the platform, operator "demo" (with client "acme") and operator "rival".

Schemas are made once per session, not per test; each test then runs in a transaction that is rolled back.
Data that other processes or threads must see (a Celery worker, a web server, websocket consumers) is
committed here, in the session set-up.
"""

from dataclasses import dataclass, field

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import setup_databases, teardown_databases
from django_tenants.utils import schema_context

from core.demo import demo_load
from core.services import user_create
from tenants.models import Operator
from tenants.services import operator_provision
from tests.sessions import session_key_for


@dataclass
class World:
    demo: Operator
    rival: Operator
    logins: dict
    rival_staff_password: str
    sessions: dict = field(default_factory=dict)  # name -> session key, committed


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker, tmp_path_factory):
    own_databases = None
    with django_db_blocker.unblock():
        if not connection.settings_dict["NAME"].startswith("test_"):
            # pytest-django makes the test database only when a collected test is marked django_db; a run of
            # unmarked tests that commit through django_db_blocker (the multi-process ones) must not write the
            # session's operators into the developer's database.
            own_databases = setup_databases(verbosity=0, interactive=False, aliases={"default"})
        cache.clear()  # throttle counters of an earlier run must not leak into this one
        call_command("prepare_platform", verbosity=0)
        logins = demo_load(logins_file=tmp_path_factory.mktemp("demo") / "logins.json", samples=False)
        operator_provision(
            slug="rival",
            name="Rival Mobile",
            domain="rival.localhost",
            admin_email="admin@rival.localhost",
            send_welcome=False,
        )
        with schema_context("rival"):
            staff = get_user_model().objects.get(username="admin@rival.localhost")
            staff.set_password("rival-staff-pass")
            staff.save()
        world = World(
            demo=Operator.objects.get(schema_name="demo"),
            rival=Operator.objects.get(schema_name="rival"),
            logins=logins,
            rival_staff_password="rival-staff-pass",
        )
        with schema_context("demo"):
            world.sessions["demo_staff"] = session_key_for("admin@demo.localhost")
            world.sessions["acme_user"] = session_key_for("boss@acme.example")
            user_create(email="watcher@demo.localhost", password="x-demo-watcher", is_staff=False)
            world.sessions["demo_nonstaff"] = session_key_for("watcher@demo.localhost")
        with schema_context("rival"):
            world.sessions["rival_staff"] = session_key_for("admin@rival.localhost")
        connection.set_schema_to_public()
    pytest.world = world
    yield
    if own_databases is not None:
        with django_db_blocker.unblock():
            teardown_databases(own_databases, verbosity=0)


@pytest.fixture
def world(django_db_setup) -> World:
    return pytest.world


@pytest.fixture(autouse=True)
def _public_schema_after_each_test():
    yield
    connection.set_schema_to_public()


def host_client(host: str, **extra) -> Client:
    return Client(HTTP_HOST=host, **extra)


@pytest.fixture
def platform_client():
    return host_client("localhost")


@pytest.fixture
def demo_client():
    return host_client("demo.localhost")


@pytest.fixture
def acme_client():
    return host_client("acme.demo.localhost")


@pytest.fixture
def rival_client():
    return host_client("rival.localhost")


@pytest.fixture
def in_schema():
    """`with in_schema("demo"): ...` — run ORM code in an operator's schema inside the test transaction."""
    return schema_context


def login_as(client: Client, schema: str, username: str) -> None:
    """Log a test client in: the session must be written to the operator's own session table."""
    with schema_context(schema):
        client.force_login(get_user_model().objects.get(username=username))
