"""Gateway state on /ws/live/: the submitter publishes bound / unbound and, every heartbeat, throughput and queue
depth to its operator's staff, and to nobody else.

Real pieces end to end: the SMSC simulator, a runner bound to it (its threads publish through the Redis channel
layer), the ASGI application with a staff session, and the API accepting messages the runner then submits.
"""

import asyncio
import gc

import pytest
from django.db import connections
from django.test import Client
from django_tenants.utils import schema_context

from config.celery_app import app as celery_app
from sms.runner import Runner
from sms.smpp_server import SmscSimulatorThread
from tests.sessions import live_communicator, session_key_for

from .conftest import operator_for_tests, sms_world_make

SCHEMA = "h5live"
GATEWAY = "h5-live-upstream"  # unique: the channel layer's Redis is shared with other test runs


@pytest.fixture(scope="module")
def live(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        with SmscSimulatorThread(receipt_delay=0.1) as smsc, operator_for_tests(SCHEMA):
            world = sms_world_make(
                schema=SCHEMA, staff=f"admin@{SCHEMA}.localhost", port=smsc.port, gateway_settings={"name": GATEWAY}
            )
            with schema_context(SCHEMA):
                session = session_key_for(f"admin@{SCHEMA}.localhost")
            yield smsc, world, session
            gc.collect()  # connections of finished channels threads
            celery_app.control.purge()  # wake-ups of the accepted messages: the test drains them itself


async def _in_thread(function, *args, **kwargs):
    """Run blocking code on a worker thread that closes its database connection afterwards."""

    def run():
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return await asyncio.to_thread(run)


async def _connected(host, session_key):
    communicator = live_communicator(host, session_key)
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["topic"] == "hello"
    return communicator


async def _gateway_event(communicator, condition, timeout=15.0):
    """The next event about our gateway that satisfies ``condition`` (other events are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = []
    while loop.time() < deadline:
        try:
            event = await communicator.receive_json_from(timeout=max(0.1, deadline - loop.time()))
        except TimeoutError:
            break
        if event["topic"] == "sms.gateway" and event["payload"].get("name") == GATEWAY:
            seen.append(event["payload"])
            if condition(event["payload"]):
                return event["payload"]
    raise AssertionError(f"no matching gateway event; saw {seen}")


async def _drain_others(communicator):
    """Everything another operator's staff received meanwhile (may hold other test runs' events, never ours)."""
    events = []
    while not await communicator.receive_nothing(timeout=0.2):
        events.append(await communicator.receive_json_from(timeout=1))
    return events


async def test_staff_see_bind_throughput_queue_depth_and_unbind_and_no_one_else_does(live, world):
    smsc, sms_world, session = live
    staff = await _connected(f"{SCHEMA}.localhost", session)
    rival = await _connected("rival.localhost", world.sessions["rival_staff"])
    demo = await _connected("demo.localhost", world.sessions["demo_staff"])
    runner = Runner()
    try:
        # When the submitter opens the operator's gateway, staff see it bound
        await _in_thread(runner.gateways_sync, schema=SCHEMA)
        bound = await _gateway_event(staff, lambda p: p["state"] == "bound")
        assert bound["id"] == sms_world.gateway.pk and bound["runner"] == runner.token
        assert {"queued", "in_flight", "outstanding", "throughput_per_s", "accepted"} <= set(bound)

        # and, while it sends, the heartbeat reports throughput and what it holds
        def send_and_drain():
            response = Client(HTTP_HOST=f"{SCHEMA}.localhost").post(
                "/api/v1/sms/messages",
                {"to": [f"+3461234{n:04d}" for n in range(40)], "text": "live"},
                content_type="application/json",
                **sms_world.auth,
            )
            assert response.status_code == 201, response.content
            while runner.drain(schema=SCHEMA, budget_s=1.0):
                pass

        await _in_thread(send_and_drain)
        busy = await _gateway_event(staff, lambda p: p["accepted"] >= 40 and p["throughput_per_s"] > 0)
        assert busy["state"] == "bound" and busy["queued"] >= 0 and busy["outstanding"] >= 0

        # When the SMSC drops the connection, staff see the gateway go down, then bound again
        await _in_thread(smsc.run, smsc.simulator.drop_all)
        await _gateway_event(staff, lambda p: p["state"] == "connecting")
        await _gateway_event(staff, lambda p: p["state"] == "bound")
    finally:
        await _in_thread(runner.stop)
    # and when the submitter stops, unbound
    await _gateway_event(staff, lambda p: p["state"] == "unbound")

    # Another operator's staff (and this platform's other operators) never got any of it
    for other in (rival, demo):
        events = await _drain_others(other)
        assert not [e for e in events if e["topic"] == "sms.gateway" and e["payload"].get("name") == GATEWAY]
        assert not [e for e in events if e["payload"].get("runner") == runner.token]
    for communicator in (staff, rival, demo):
        await communicator.disconnect()


@pytest.mark.django_db
def test_module_has_a_database():
    # Makes pytest-django own the test database when this module runs alone: the database conftest makes itself
    # in that case cannot be dropped while the channel layer's threads still hold connections.
    assert SCHEMA != "demo"
