"""Routing and failover over real SMPP (simulators on loopback) through the submitter, in this process.

The submitter (`sms.runner.Runner`) is what the `sms.submit_pending` task drives in a worker; here the test drives it,
so the gateways' threads write to the database: the rows are committed, in an operator of this module's own.
"""

import time
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client
from django_tenants.utils import schema_context

from billing.models import Account, Cdr, LedgerEntry
from config.celery_app import app
from core.live import live_group
from sms.models import Gateway, ListEntry, Message, MessagePart, Route
from sms.runner import Runner
from sms.selectors import gateway_states
from sms.smpp_server import SmscSimulatorThread

from .conftest import operator_for_tests, sms_world_make
from .helpers import wait_until

SCHEMA = "s1route"


@pytest.fixture(scope="module")
def route_world(django_db_setup, django_db_blocker):
    with (
        django_db_blocker.unblock(),
        SmscSimulatorThread(receipt_delay=0.05) as good,
        SmscSimulatorThread(receipt_delay=0.05, reject_ratio=1.0) as refusing,
        operator_for_tests(SCHEMA),
    ):
        world = sms_world_make(schema=SCHEMA, staff=f"admin@{SCHEMA}.localhost", port=good.port)
        yield world, good, refusing
        app.control.purge()  # the wake-ups these tests queued for a worker that never ran


@pytest.fixture
def runner(route_world):
    runner = Runner()
    yield runner
    runner.stop(timeout=2)


@pytest.fixture
def clean_routes(route_world, django_db_blocker):
    """Each test adds its own gateways and routes in front of the module's default route, and removes them."""
    world = route_world[0]
    yield
    with django_db_blocker.unblock(), schema_context(SCHEMA):
        Route.objects.exclude(pk=world.route.pk).delete()
        Message.objects.update(route=None)
        Gateway.objects.exclude(pk=world.gateway.pk).update(enabled=False)


def gateway_add(name, port, *, priority, cost="0.03", client=None):
    gateway = Gateway.objects.create(name=name, host="127.0.0.1", port=port, system_id="esme", password="secret")
    Route.objects.create(gateway=gateway, priority=priority, price_per_part="0.05", cost_per_part=cost, client=client)
    return gateway


def send(world, text="hello", to="+34612345678") -> int:
    response = Client(HTTP_HOST=f"{SCHEMA}.localhost").post(
        "/api/v1/sms/messages", {"to": to, "text": text}, content_type="application/json", **world.auth
    )
    assert response.status_code == 201, response.content
    return response.json()["messages"][0]["id"]


def drive(runner, message_id, status="delivered", timeout=20):
    """Drain (as the task does) until the message reaches ``status``."""
    deadline = time.monotonic() + timeout
    while True:
        runner.drain(schema=SCHEMA, budget_s=0.2)
        with schema_context(SCHEMA):
            message = Message.objects.get(pk=message_id)
        if message.status == status:
            return message
        if time.monotonic() > deadline:
            raise AssertionError(f"message {message_id} is {message.status}, not {status}")
        time.sleep(0.05)


def test_a_permanent_refusal_fails_over_to_the_next_gateway(route_world, runner, clean_routes, django_db_blocker):
    world, good, refusing = route_world
    with django_db_blocker.unblock():
        with schema_context(SCHEMA):
            # Given the client's own route to a gateway that refuses everything, in front of the default route
            refuser = gateway_add("refuser", refusing.port, priority=1, client=world.client)
        message_id = send(world, text="failover please")
        message = drive(runner, message_id)
        with schema_context(SCHEMA):
            # Then the refusal moved it to the default gateway, whose cost it now carries
            assert message.gateway_id == world.gateway.pk and message.tried_gateways == [refuser.pk]
            parts = set(MessagePart.objects.filter(message_id=message_id).values_list("gateway_id", "status"))
            assert parts == {(refuser.pk, "rejected"), (world.gateway.pk, "delivered")}
            assert message.cost == Decimal("0.02")
            cdr = Cdr.objects.get(source="sms", source_id=str(message_id))
            assert (cdr.trunk, cdr.cost) == (world.gateway.name, Decimal("0.02"))
            assert LedgerEntry.objects.filter(idempotency_key=f"sms:charge:{message_id}").count() == 1


def test_a_gateway_that_is_not_bound_is_skipped(route_world, runner, clean_routes, django_db_blocker):
    world, good, refusing = route_world
    with django_db_blocker.unblock():
        with schema_context(SCHEMA):
            # Given a preferred gateway whose SMSC does not answer (nothing listens on its port)
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                dead_port = probe.getsockname()[1]
            down = gateway_add("down", dead_port, priority=1)
        message_id = send(world, text="around the dead one")
        message = drive(runner, message_id)
        with schema_context(SCHEMA):
            assert message.gateway_id == world.gateway.pk
            assert not MessagePart.objects.filter(message_id=message_id, gateway=down).exists()
        states = gateway_states(schema=SCHEMA)
        assert states[down.pk]["state"] in {"connecting", "unbound"} and states[world.gateway.pk]["state"] == "bound"


def test_refused_by_every_gateway_the_message_is_rejected_and_refunded(
    route_world, runner, clean_routes, django_db_blocker
):
    world, good, refusing = route_world
    with django_db_blocker.unblock():
        with schema_context(SCHEMA):
            # Given only refusing gateways for this client's numbers to the UK
            first = gateway_add("refuser-1", refusing.port, priority=1, client=world.client)
            Route.objects.filter(gateway=first).update(prefix="44")
            balance_before = Account.objects.get(pk=world.client.account_id).balance
            Route.objects.filter(pk=world.route.pk).update(enabled=False)
        try:
            message_id = send(world, to="+447400123456", text="nobody takes me")
            message = drive(runner, message_id, status="rejected")
        finally:
            with schema_context(SCHEMA):
                Route.objects.filter(pk=world.route.pk).update(enabled=True)
        with schema_context(SCHEMA):
            assert message.error_code == "0x00000045" and message.refunded_at is not None
            account = Account.objects.get(pk=world.client.account_id)
            assert account.balance == balance_before  # charged at claim, refunded when refused everywhere
            assert LedgerEntry.objects.filter(idempotency_key=f"sms:refund:{message_id}").count() == 1


def test_after_the_smsc_drops_every_bind_traffic_resumes_and_is_charged_once(
    route_world, runner, clean_routes, django_db_blocker
):
    world, good, refusing = route_world
    with django_db_blocker.unblock():
        ids = [send(world, text=f"drop {n}", to=f"+3461234{n:04d}") for n in range(20)]
        runner.drain(schema=SCHEMA, budget_s=0.2)
        good.run(good.simulator.drop_all)
        for message_id in ids:
            drive(runner, message_id)
        with schema_context(SCHEMA):
            for message_id in ids:
                assert LedgerEntry.objects.filter(idempotency_key=f"sms:charge:{message_id}").count() == 1


def test_gateway_state_is_published_live(route_world, runner, clean_routes, django_db_blocker):
    world, good, refusing = route_world
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(live_group(SCHEMA), channel)
    with django_db_blocker.unblock():
        runner.gateways_sync(schema=SCHEMA)
    event = async_to_sync(layer.receive)(channel)
    assert event["topic"] == "sms.gateway" and event["payload"]["name"] == world.gateway.name
    assert {"state", "queued", "in_flight", "throughput_per_s"} <= set(event["payload"])
    wait_until(lambda: gateway_states(schema=SCHEMA).get(world.gateway.pk, {}).get("state") == "bound", what="bound")


def test_an_incoming_stop_through_the_smsc_opts_the_number_out(route_world, runner, clean_routes, django_db_blocker):
    world, good, refusing = route_world
    with django_db_blocker.unblock():
        runner.gateways_sync(schema=SCHEMA)
        good.run(lambda: good.simulator.send_mo("esme", "+34612349999", "34600000001", "STOP"))
        with schema_context(SCHEMA):
            wait_until(
                lambda: ListEntry.objects.filter(kind="optout", number="+34612349999", client=world.client).exists(),
                what="the opt-out",
            )


@pytest.mark.django_db
def test_gateways_no_submitter_reported_on_are_unknown(sms_world, demo_client):
    # (Also makes pytest-django set the test database up when this module runs alone.)
    response = demo_client.get("/api/v1/sms/gateways", **sms_world.staff_auth)
    (gateway,) = [g for g in response.json()["results"] if g["id"] == sms_world.gateway.pk]
    assert gateway["state"] == "unknown" and "password" not in gateway
