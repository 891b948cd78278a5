"""SmppGateway against an SMSC this project did not write: node-smpp (npm ``smpp``), driven by
``sms/tests/peers/node_smpp_smsc.js`` and installed from the npm registry into ./var/peers on first use.

node-smpp encodes and frames PDUs its own way (its own TLV writer, IA5 data_coding 1 for plain MO text, UCS-2
for the rest), so these tests catch what a gateway tested only against our own simulator would not.
"""

import time

import pytest

from sms.gateway import GatewayConfig, SmppGateway
from sms.tests.peers.node_smpp import NodeSmsc
from sms.tests.test_gateway import WAIT, Recorder, parts, wait_until

ACCOUNTS = {"esme": "secret"}


@pytest.fixture
def start_node_smsc():
    running: list[NodeSmsc] = []

    def start(*args: str) -> NodeSmsc:
        smsc = NodeSmsc(*args, accounts=ACCOUNTS)
        running.append(smsc)
        return smsc

    yield start
    for smsc in running:
        smsc.stop()


@pytest.fixture
def node_smsc(start_node_smsc) -> NodeSmsc:
    return start_node_smsc()


@pytest.fixture
def start_gateway():
    started: list[SmppGateway] = []

    def start(smsc: NodeSmsc, **overrides) -> SmppGateway:
        recorder = Recorder()
        settings = {
            "name": "node",
            "host": "127.0.0.1",
            "port": smsc.port,
            "system_id": "esme",
            "password": "secret",
            "system_type": "OC",
            "tps": 10_000,
            "window": 20,
            "reconnect_max_s": 0.5,
            **overrides,
        }
        gateway = SmppGateway(
            GatewayConfig(**settings),
            on_result=recorder.on_result,
            on_receipt=recorder.on_receipt,
            on_incoming=recorder.on_incoming,
            on_state=recorder.on_state,
        )
        gateway.recorder = recorder
        started.append(gateway)
        gateway.start()
        wait_until(lambda: gateway.state == "bound", "the bind to node-smpp")
        return gateway

    yield start
    for gateway in started:
        gateway.stop(timeout=WAIT)


def test_binds_submits_and_gets_tlv_receipts_from_node_smpp(node_smsc, start_gateway):
    gateway = start_gateway(node_smsc)

    gateway.submit(parts(25))
    wait_until(lambda: len(gateway.recorder.receipts) == 25, "25 receipts")

    (bind,) = node_smsc.of("bind")
    assert (bind["mode"], bind["system_id"], bind["system_type"], bind["ok"]) == (
        "bind_transceiver",
        "esme",
        "OC",
        True,
    )
    submits = {event["text"]: event for event in node_smsc.of("submit")}
    assert set(submits) == {f"m message {i}" for i in range(25)}
    first = submits["m message 0"]
    assert (first["source"], first["source_ton"], first["destination"]) == ("OpenCarrier", 5, "447700900000")
    results = gateway.recorder.results_by_ref()
    assert {results[f"m{i}"].smsc_message_id for i in range(25)} == {e["message_id"] for e in submits.values()}
    assert {r.command_status for r in results.values()} == {0}
    receipts = gateway.recorder.receipts
    assert {r.smsc_message_id for r in receipts} == {e["message_id"] for e in submits.values()}
    assert {(r.state, r.error_code) for r in receipts} == {("DELIVRD", "000")}
    # Every receipt was acknowledged with ESME_ROK, as node-smpp saw it.
    acks = node_smsc.wait_for("deliver_sm_resp", 25)
    assert {ack["status"] for ack in acks} == {0}


def test_text_only_receipts_from_node_smpp(start_node_smsc, start_gateway):
    smsc = start_node_smsc("--no-receipt-tlvs")
    gateway = start_gateway(smsc)

    gateway.submit(parts(5))
    wait_until(lambda: len(gateway.recorder.receipts) == 5, "5 receipts")

    assert {r.smsc_message_id for r in gateway.recorder.receipts} == {
        r.smsc_message_id for r in gateway.recorder.results
    }
    assert {r.state for r in gateway.recorder.receipts} == {"DELIVRD"}
    assert all("text:m message" in r.text for r in gateway.recorder.receipts)


@pytest.mark.parametrize(
    ("text", "requested", "data_coding"),
    [("STOP", None, 0x01), ("Café au lait", 0x03, 0x03), ("Отписаться", None, 0x08)],
    ids=["ia5", "latin1", "ucs2"],
)
def test_mo_from_node_smpp_is_decoded(node_smsc, start_gateway, text, requested, data_coding):
    # node-smpp picks the data_coding itself unless told; it labels GSM 03.38 text 0x01 (IA5), so a Latin-1
    # accent is asked for explicitly here (a node-smpp quirk, not something the gateway can undo).
    gateway = start_gateway(node_smsc)

    node_smsc.command(cmd="mo", source="447700900123", destination="4446", text=text, data_coding=requested)
    wait_until(lambda: gateway.recorder.incoming, "the MO")

    (message,) = gateway.recorder.incoming
    assert (message.source, message.destination, message.text) == ("447700900123", "4446", text)
    assert message.data_coding == data_coding  # chosen by node-smpp, not by us
    assert node_smsc.wait_for("deliver_sm_resp")[0]["status"] == 0
    assert gateway.recorder.receipts == []


def test_throttling_by_node_smpp_is_retried_and_each_part_accepted_once(start_node_smsc, start_gateway):
    smsc = start_node_smsc("--throttle-first", "6")
    gateway = start_gateway(smsc)

    gateway.submit(parts(12))
    assert gateway.wait_idle(WAIT)

    assert len(smsc.of("throttled")) == 6
    accepted = [event["text"] for event in smsc.of("submit")]
    assert sorted(accepted) == sorted(f"m message {i}" for i in range(12))
    results = gateway.recorder.results_by_ref()
    assert len(results) == 12 and {r.command_status for r in results.values()} == {0}
    assert gateway.stats()["throttled"] == 6


def test_reconnects_when_node_smpp_drops_the_connection(node_smsc, start_gateway):
    gateway = start_gateway(node_smsc)
    gateway.submit(parts(3, prefix="before"))
    assert gateway.wait_idle(WAIT)

    node_smsc.command(cmd="drop")
    node_smsc.wait_for("dropped")
    wait_until(lambda: len(node_smsc.of("bind")) == 2 and gateway.state == "bound", "the rebind")
    gateway.submit(parts(3, prefix="after"))
    assert gateway.wait_idle(WAIT)

    assert len(gateway.recorder.results_by_ref()) == 6
    assert gateway.stats()["reconnects"] == 1


def test_transmitter_and_receiver_binds_with_node_smpp(node_smsc, start_gateway):
    gateway = start_gateway(node_smsc, bind_mode="transmitter_receiver")

    gateway.submit(parts(4))
    wait_until(lambda: len(gateway.recorder.receipts) == 4, "4 receipts on the receiver bind")
    gateway.stop(timeout=WAIT)

    assert sorted(event["mode"] for event in node_smsc.of("bind")) == ["bind_receiver", "bind_transmitter"]
    assert len(node_smsc.wait_for("unbind", 2)) == 2


def test_enquire_link_and_clean_unbind_with_node_smpp(node_smsc, start_gateway):
    gateway = start_gateway(node_smsc, enquire_link_s=0.2)

    time.sleep(1.0)
    assert len(node_smsc.of("enquire_link")) >= 3
    assert gateway.state == "bound"
    gateway.stop(timeout=WAIT)

    assert len(node_smsc.wait_for("unbind")) == 1
    assert gateway.state == "unbound"


def test_wrong_password_is_refused_by_node_smpp_and_retried(node_smsc):
    recorder = Recorder()
    gateway = SmppGateway(
        GatewayConfig(
            name="node",
            host="127.0.0.1",
            port=node_smsc.port,
            system_id="esme",
            password="nope",
            reconnect_max_s=0.3,
        ),
        on_result=recorder.on_result,
        on_receipt=recorder.on_receipt,
        on_incoming=recorder.on_incoming,
    )
    gateway.start()
    try:
        node_smsc.wait_for("bind", 3)
        assert gateway.state == "connecting"
        assert not any(event["ok"] for event in node_smsc.of("bind"))
    finally:
        gateway.stop(timeout=WAIT)
