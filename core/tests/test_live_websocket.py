"""/ws/live/: an operator's staff get its events and never another operator's; others are refused."""

import asyncio

import pytest
from channels.layers import get_channel_layer

from core.live import live_group
from tests.sessions import live_communicator

pytestmark = pytest.mark.django_db(transaction=False)


async def _publish(schema: str, topic: str, payload: dict) -> None:
    await get_channel_layer().group_send(live_group(schema), {"type": "live.event", "topic": topic, "payload": payload})


async def test_staff_receive_only_their_operators_events(world):
    demo = live_communicator("demo.localhost", world.sessions["demo_staff"])
    rival = live_communicator("rival.localhost", world.sessions["rival_staff"])
    assert (await demo.connect())[0] and (await rival.connect())[0]
    assert (await demo.receive_json_from(timeout=5))["topic"] == "hello"
    assert (await rival.receive_json_from(timeout=5))["topic"] == "hello"

    await _publish("demo", "gateway", {"name": "smsc-1", "state": "bound"})
    assert await demo.receive_json_from(timeout=5) == {
        "topic": "gateway",
        "payload": {"name": "smsc-1", "state": "bound"},
    }
    assert await rival.receive_nothing(timeout=0.5)

    await _publish("rival", "gateway", {"name": "rival-smsc"})
    assert (await rival.receive_json_from(timeout=5))["payload"] == {"name": "rival-smsc"}
    assert await demo.receive_nothing(timeout=0.5)
    await demo.disconnect()
    await rival.disconnect()


async def test_another_operators_session_is_anonymous_here(world):
    # rival's session key means nothing in demo's session table.
    communicator = live_communicator("demo.localhost", world.sessions["rival_staff"])
    connected, code = await communicator.connect()
    assert not connected and code == 4403


@pytest.mark.parametrize(
    ("host", "session"),
    [
        ("demo.localhost", None),  # anonymous
        ("demo.localhost", "acme_user"),  # a customer's login is not operator staff
        ("demo.localhost", "demo_nonstaff"),
        ("acme.demo.localhost", "demo_staff"),  # client subdomains have no live operator feed
        ("localhost", None),  # the platform domain
        ("nowhere.localhost", None),
    ],
)
async def test_everyone_else_is_refused(world, host, session):
    communicator = live_communicator(host, world.sessions.get(session) if session else None)
    connected, code = await communicator.connect()
    assert not connected and code == 4403
    await asyncio.sleep(0)
