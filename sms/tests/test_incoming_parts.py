"""Long MO messages: parts (UDH 8/16-bit reference or sar_* TLVs) are joined into one stored message.

First the service alone (inside the test transaction), then over real SMPP: the simulator sends the parts in mixed
order to a runner bound to it (its threads write with their own connections: an operator of its own).
"""

import time

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from sms.encoding import encode
from sms.kv import kv
from sms.models import IncomingMessage, ListEntry
from sms.runner import Runner
from sms.services.incoming import incoming_parts_expire, reassembly_window_s
from sms.services.submission import IncomingIn, incoming_record
from sms.smpp_server import SmscSimulatorThread

from .conftest import operator_for_tests, sms_world_make
from .helpers import wait_until

NUMBER = "+34600000001"  # a sender id of the test client: MO sent to it belong to the client


def _clear_buffers(schema: str) -> None:
    pattern = f"oc:{connection.settings_dict['NAME']}:sms:{schema}:mo-*"
    for name in kv().scan_iter(match=pattern, count=1000):
        kv().delete(name)


@pytest.fixture
def buffers():
    _clear_buffers("demo")
    yield
    _clear_buffers("demo")


def parts_of(text, *, reference=9, force_ucs2=False, source="+447700900123", destination=NUMBER):
    """IncomingIn parts as the gateway reports them (text decoded, body without its UDH)."""
    message = encode(text, force_ucs2=force_ucs2, reference=reference)
    total = message.part_count
    from sms.encoding import decode

    return [
        IncomingIn(
            source,
            destination,
            decode(payload, message.data_coding, esm_class=0x40),
            message.data_coding,
            0x40,
            (reference, total, index + 1),
            payload[6:],
        )
        for index, payload in enumerate(message.parts)
    ]


def stored(source="+447700900123"):
    return list(IncomingMessage.objects.filter(source=source).order_by("id"))


@pytest.mark.django_db
def test_parts_in_any_order_with_duplicates_make_one_message(
    sms_world, in_schema, buffers, django_capture_on_commit_callbacks
):
    text = "Part of a long reply from a subscriber, " * 6  # 240 GSM characters: 2 parts
    first, second = parts_of(text)
    with in_schema("demo"), django_capture_on_commit_callbacks(execute=True):
        assert incoming_record(gateway_id=sms_world.gateway.pk, messages=[second]) == []
        assert incoming_record(gateway_id=sms_world.gateway.pk, messages=[second]) == []  # a duplicate
        assert stored() == []
        (row,) = incoming_record(gateway_id=sms_world.gateway.pk, messages=[first])
        # a late duplicate of a part of a stored message is dropped
        assert incoming_record(gateway_id=sms_world.gateway.pk, messages=[second]) == []
        (message,) = stored()
    assert message.pk == row.pk and message.text == text
    assert message.customer_id == sms_world.client.customer_id and message.esm_class == 0x40


@pytest.mark.django_db
def test_a_ucs2_character_split_between_parts_and_a_gsm_escape_split_read_right(
    sms_world, in_schema, buffers, django_capture_on_commit_callbacks
):
    # UCS-2: an emoji's surrogate pair cut in the middle, as some handsets do
    octets = ("Привет " * 10 + "😀 ок").encode("utf-16-be")
    cut = octets.index("😀".encode("utf-16-be")) + 2
    source = "+447700900124"
    ucs2 = [
        IncomingIn(source, NUMBER, "?", 8, 0x40, (0x1234, 2, 2), octets[cut:]),
        IncomingIn(source, NUMBER, "?", 8, 0x40, (0x1234, 2, 1), octets[:cut]),
    ]
    # GSM 7-bit: ESC at the end of part 1, its extension code (€) at the start of part 2
    gsm = [
        IncomingIn("+447700900125", NUMBER, "x", 0, 0x40, (3, 2, 1), b"Price: 5\x1b"),
        IncomingIn("+447700900125", NUMBER, "x", 0, 0x40, (3, 2, 2), b"\x65 only"),
    ]
    with in_schema("demo"), django_capture_on_commit_callbacks(execute=True):
        incoming_record(gateway_id=sms_world.gateway.pk, messages=ucs2 + gsm)
        assert [m.text for m in stored(source)] == ["Привет " * 10 + "😀 ок"]
        assert [m.text for m in stored("+447700900125")] == ["Price: 5€ only"]


@pytest.mark.django_db
def test_stop_is_read_from_the_whole_text(sms_world, in_schema, buffers, django_capture_on_commit_callbacks):
    stop = parts_of("STOP " + "please no more offers " * 10, reference=1, source="+447700900126")
    not_stop = parts_of("Hello " + "x" * 147 + "stop sending", reference=2, source="+447700900127")
    assert not_stop[1].text.startswith("stop")  # the second part alone would read as a STOP
    with in_schema("demo"), django_capture_on_commit_callbacks(execute=True):
        incoming_record(gateway_id=sms_world.gateway.pk, messages=list(reversed(stop)) + not_stop)
        ((opted_out,), (kept,)) = stored("+447700900126"), stored("+447700900127")
        assert opted_out.is_stop and not kept.is_stop
        numbers = set(ListEntry.objects.filter(kind="optout").values_list("number", flat=True))
        assert "+447700900126" in numbers and "+447700900127" not in numbers


@pytest.mark.django_db
def test_parts_that_never_complete_are_stored_as_what_arrived_after_the_window(
    sms_world, in_schema, buffers, django_capture_on_commit_callbacks
):
    text = "Lost in the network " * 20  # 400 characters: 3 parts
    first, second, third = parts_of(text, source="+447700900128")
    with in_schema("demo"), django_capture_on_commit_callbacks(execute=True):
        incoming_record(gateway_id=sms_world.gateway.pk, messages=[third, first])
        assert incoming_parts_expire(now=time.time() + reassembly_window_s() - 30) == 0  # still within the window
        assert stored("+447700900128") == []
        assert incoming_parts_expire(now=time.time() + reassembly_window_s() + 1) == 1
        (message,) = stored("+447700900128")
        assert incoming_parts_expire(now=time.time() + reassembly_window_s() + 1) == 0  # stored once
        # the missing part, when it finally comes, does not make a second message
        assert incoming_record(gateway_id=sms_world.gateway.pk, messages=[second]) == []
    assert message.text == first.text + "[…]" + third.text + " [incomplete: 2 of 3 parts]"
    assert message.customer_id == sms_world.client.customer_id and message.gateway_id == sms_world.gateway.pk


@pytest.mark.django_db
def test_a_transaction_that_fails_leaves_the_parts_for_later(sms_world, in_schema, buffers):
    """The buffer is dropped only when the stored message commits: a rolled-back store loses nothing."""
    from django.db import transaction

    first, second = parts_of("Try again later " * 12, source="+447700900129")
    with in_schema("demo"):
        with pytest.raises(RuntimeError), transaction.atomic():
            incoming_record(gateway_id=sms_world.gateway.pk, messages=[first, second])
            raise RuntimeError("the database went away")
        assert stored("+447700900129") == []
        # the claim is stale after a while: the sweep then stores the (whole) message
        assert incoming_parts_expire(now=time.time() + reassembly_window_s() + 120) == 1
        (message,) = stored("+447700900129")
    assert message.text == "Try again later " * 12


# --- over real SMPP ---------------------------------------------------------------------------------------------

SCHEMA = "h5mo"


@pytest.fixture(scope="module")
def bound(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        with SmscSimulatorThread() as smsc, operator_for_tests(SCHEMA):
            world = sms_world_make(schema=SCHEMA, staff=f"admin@{SCHEMA}.localhost", port=smsc.port)
            runner = Runner()
            try:
                runner.gateways_sync(schema=SCHEMA)
                wait_until(lambda: all(h.bound for h in runner._handles.values()), what="the bind")
                yield smsc, world
            finally:
                runner.stop()
                with schema_context(SCHEMA):
                    _clear_buffers(SCHEMA)


def received(django_db_blocker, source, count=1):
    def rows():
        with django_db_blocker.unblock(), schema_context(SCHEMA):
            found = list(IncomingMessage.objects.filter(source=source).order_by("id"))
        return found if len(found) >= count else None

    return wait_until(rows, timeout=20, what=f"MO from {source}")


@pytest.mark.parametrize(
    ("concat", "order", "force_ucs2", "source"),
    [
        ("udh8", [2, 0, 0, 1], False, "+447700900201"),
        ("udh16", [1, 2, 1, 0], False, "+447700900202"),
        ("sar", [2, 1, 0], False, "+447700900203"),
        ("udh8", [1, 0, 2], True, "+447700900204"),
    ],
)
def test_parts_over_smpp_in_mixed_order_are_stored_once(bound, django_db_blocker, concat, order, force_ucs2, source):
    smsc, world = bound
    text = "Long reply over SMPP, part after part; " * 10 if not force_ucs2 else "Ответ подлиннее, 😀 " * 10
    total = smsc.run(
        lambda: smsc.simulator.send_mo_parts(
            "esme", source, NUMBER, text, order=order, reference=300, concat=concat, force_ucs2=force_ucs2
        )
    )
    assert total == 3
    (message,) = received(django_db_blocker, source)
    assert message.text == text
    assert message.customer_id == world.client.customer_id and message.gateway_id == world.gateway.pk
    time.sleep(0.3)  # nothing else arrives for it (the duplicate part made no second message)
    with django_db_blocker.unblock(), schema_context(SCHEMA):
        assert IncomingMessage.objects.filter(source=source).count() == 1


def test_a_long_stop_over_smpp_opts_the_subscriber_out(bound, django_db_blocker):
    smsc, world = bound
    source = "+447700900205"
    smsc.run(
        lambda: smsc.simulator.send_mo_parts(
            "esme", source, NUMBER, "Stop " + "sending me these messages " * 8, order=[1, 0], reference=5
        )
    )
    (message,) = received(django_db_blocker, source)
    assert message.is_stop
    with django_db_blocker.unblock(), schema_context(SCHEMA):
        assert ListEntry.objects.filter(kind="optout", number=source, client=world.client).exists()


def test_a_short_mo_still_arrives_at_once(bound, django_db_blocker):
    smsc, _ = bound
    smsc.run(lambda: smsc.simulator.send_mo("esme", "+447700900206", NUMBER, "YES"))
    (message,) = received(django_db_blocker, "+447700900206")
    assert message.text == "YES" and not message.is_stop


def test_a_malformed_udh_is_stored_whole_acknowledged_and_the_bind_stays_up(bound, django_db_blocker):
    """esm_class says a UDH leads the short message but its length octet runs past it (with sar_* TLVs too, or not):
    the deliver_sm is one whole MO with every octet as its text, answered at once; the reader carries on."""
    from sms.encoding import ESM_CLASS_UDHI, decode
    from sms.smpp_server import _Deliverable, address_ton_npi, deliver_sm_body, tlv

    smsc, world = bound
    short_message = bytes((0x0B, 0x00, 0x03, 0x2A)) + b"Hiya"  # a UDH of 12 octets announced in 8
    sar = tlv(0x020C, b"\x00\x07") + tlv(0x020E, b"\x02") + tlv(0x020F, b"\x01")
    sources = {"+447700900207": b"", "+447700900208": sar}
    binds = smsc.simulator.binds

    async def deliver_malformed():
        for source, tlv_octets in sources.items():
            body = deliver_sm_body(
                source=address_ton_npi(source),
                destination=address_ton_npi(NUMBER),
                esm_class=ESM_CLASS_UDHI,
                data_coding=0,
                short_message=short_message,
                tlv_octets=tlv_octets,
            )
            smsc.simulator._deliver("esme", _Deliverable(body, is_receipt=False))
        smsc.simulator._flush_receivers("esme")

    smsc.run(deliver_malformed)
    for source in sources:
        (message,) = received(django_db_blocker, source)
        assert message.text == decode(short_message, 0)  # the raw octets, UDH included: nothing lost
        assert message.customer_id == world.client.customer_id and message.gateway_id == world.gateway.pk

    async def unanswered():
        return sum(len(session.in_flight) for session in smsc.simulator._receivers.get("esme", ()))

    wait_until(lambda: smsc.run(unanswered) == 0, timeout=10, what="the deliver_sm_resp")
    # the same link is still up and reading: no rebind, and the next MO arrives
    smsc.run(lambda: smsc.simulator.send_mo("esme", "+447700900209", NUMBER, "AFTER"))
    (after,) = received(django_db_blocker, "+447700900209")
    assert after.text == "AFTER" and smsc.simulator.binds == binds
    time.sleep(0.3)  # and nothing was delivered twice
    with django_db_blocker.unblock(), schema_context(SCHEMA):
        assert IncomingMessage.objects.filter(source__in=list(sources)).count() == 2
