"""The SMSC simulator against smpplib, an SMPP client this project did not write, and against raw PDUs.

The simulator runs on its own event loop in a background thread; smpplib is synchronous. Every wait is
bounded: socket timeouts are short and every read loop has a deadline.
"""

import socket
import struct
import time

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from sms.encoding import decode
from sms.receipts import parse_receipt
from sms.smpp_server import (
    ESME_RBINDFAIL,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_RINVCMDLEN,
    ESME_RSUBMITFAIL,
    ESME_RTHROTTLED,
    GENERIC_NACK,
    SUBMIT_SM_RESP,
    SmscSimulator,
    SmscSimulatorThread,
    build_argument_parser,
)

WAIT = 5.0  # seconds: the upper bound of every wait in this module
RECEIPT_DELAY = 0.05
ACCOUNTS = {"esme": "secret", "other": "pw"}


class Esme:
    """An smpplib client plus what it received, read with bounded waits."""

    def __init__(self, port: int) -> None:
        self.client = smpplib.client.Client("127.0.0.1", port, timeout=0.2, allow_unknown_opt_params=True)
        self.submit_resps: list = []
        self.delivered: list = []
        self.errors: list = []
        # smpplib calls these with pdu= as a keyword.
        self.client.set_message_sent_handler(lambda pdu, **_: self.submit_resps.append(pdu))
        self.client.set_message_received_handler(lambda pdu, **_: self.delivered.append(pdu))
        self.client.set_error_pdu_handler(self.errors.append)

    def bind(self, mode: str = "transceiver", system_id: str = "esme", password: str = "secret"):
        self.client.connect()
        return getattr(self.client, f"bind_{mode}")(system_id=system_id, password=password)

    def submit(self, text: bytes = b"Your code is 1234", registered_delivery: int = 1, **kwargs):
        return self.client.send_message(
            source_addr_ton=5,
            source_addr="OpenCarrier",
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr="447700900123",
            short_message=text,
            registered_delivery=registered_delivery,
            **kwargs,
        )

    def read_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            try:
                self.client.read_once(auto_send_enquire_link=False)
            except TimeoutError:
                pass

    def close(self) -> None:
        if self.client._socket is not None:
            self.client.disconnect()


@pytest.fixture
def start_smsc():
    """Start simulators on 127.0.0.1, port 0; all are stopped after the test."""
    running: list[SmscSimulatorThread] = []

    def start(**kwargs) -> SmscSimulatorThread:
        kwargs.setdefault("receipt_delay", RECEIPT_DELAY)
        kwargs.setdefault("system_ids", ACCOUNTS)
        smsc = SmscSimulatorThread(**kwargs).start(timeout=WAIT)
        running.append(smsc)
        return smsc

    yield start
    for smsc in running:
        smsc.stop(timeout=WAIT)


@pytest.fixture
def smsc(start_smsc) -> SmscSimulatorThread:
    return start_smsc(seed=1)


@pytest.fixture
def esme_factory():
    made: list[Esme] = []

    def make(port: int) -> Esme:
        esme = Esme(port)
        made.append(esme)
        return esme

    yield make
    for esme in made:
        esme.close()


@pytest.fixture
def esme(smsc, esme_factory) -> Esme:
    esme = esme_factory(smsc.port)
    esme.bind()
    return esme


class RawEsme:
    """A bare TCP peer for PDUs smpplib will not send (wrong state, unknown commands, broken framing)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sequence = 0

    def send(self, command_id: int, body: bytes = b"", length: int | None = None) -> int:
        self.sequence += 1
        self.sock.sendall(struct.pack(">IIII", length or 16 + len(body), command_id, 0, self.sequence) + body)
        return self.sequence

    def read(self) -> tuple[int, int, int, bytes]:
        header = self._exactly(16)
        length, command_id, status, sequence = struct.unpack(">IIII", header)
        return command_id, status, sequence, self._exactly(length - 16)

    def is_closed_by_peer(self) -> bool:
        return self.sock.recv(1) == b""

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed by the SMSC")
            data += chunk
        return data


@pytest.fixture
def raw_esme(smsc):
    peer = RawEsme(smsc.port)
    yield peer
    peer.sock.close()


def minimal_submit_sm(text: bytes = b"hi") -> bytes:
    return (
        b"\x00\x00\x00src\x00\x01\x01447700900123\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00" + bytes((len(text),)) + text
    )


def bind_body(system_id: bytes = b"esme", password: bytes = b"secret") -> bytes:
    return system_id + b"\x00" + password + b"\x00\x00\x34\x00\x00\x00"


# --- binding ---


def test_bind_transceiver_answers_with_the_smsc_system_id(smsc, esme_factory):
    esme = esme_factory(smsc.port)

    resp = esme.bind()

    assert resp.status == smpplib.consts.SMPP_ESME_ROK
    assert resp.system_id == b"OpenCarrierSMSC"
    assert resp.sc_interface_version == 0x34
    assert smsc.simulator.binds == 1


@pytest.mark.parametrize(("system_id", "password"), [("esme", "wrong"), ("nobody", "secret")])
def test_bad_credentials_get_bind_fail(smsc, esme_factory, system_id, password):
    esme = esme_factory(smsc.port)

    with pytest.raises(smpplib.exceptions.PDUError) as refused:
        esme.bind(system_id=system_id, password=password)

    assert refused.value.args[1] == ESME_RBINDFAIL
    assert smsc.simulator.binds == 0


def test_without_accounts_any_login_binds(start_smsc, esme_factory):
    smsc = start_smsc(system_ids=None)

    assert esme_factory(smsc.port).bind(system_id="anyone", password="x").status == 0


def test_second_bind_on_one_session_is_refused(smsc, raw_esme):
    raw_esme.send(0x00000009, bind_body())
    assert raw_esme.read()[1] == 0

    raw_esme.send(0x00000009, bind_body())

    command_id, status, _, _ = raw_esme.read()
    assert (command_id, status) == (0x80000009, 0x05)  # ESME_RALYBND


# --- submit_sm and receipts ---


def test_submit_sm_gets_a_hex_message_id_and_a_matching_receipt(esme):
    submitted = esme.submit(registered_delivery=1)
    esme.read_until(lambda: esme.submit_resps and esme.delivered, "submit_sm_resp and receipt")

    (resp,) = esme.submit_resps
    message_id = resp.message_id.decode()
    assert resp.sequence == submitted.sequence
    int(message_id, 16)  # a hex string

    (deliver_sm,) = esme.delivered
    assert deliver_sm.esm_class == 0x04  # SMSC delivery receipt
    assert deliver_sm.source_addr == b"447700900123"  # from the handset back to the sender
    assert deliver_sm.destination_addr == b"OpenCarrier"
    receipt = parse_receipt(
        short_message=deliver_sm.short_message,
        tlvs={"receipted_message_id": deliver_sm.receipted_message_id, "message_state": deliver_sm.message_state},
    )
    assert receipt.message_id == message_id
    assert receipt.state == "delivered"
    assert receipt.error_code == "000"
    assert receipt.text == "Your code is 1234"
    # The text alone (no TLVs) carries the same id.
    assert parse_receipt(short_message=deliver_sm.short_message, tlvs={}).message_id == message_id


def test_no_receipt_unless_registered_delivery_asks(smsc, esme):
    esme.submit(registered_delivery=0)
    esme.submit(registered_delivery=1)
    esme.read_until(lambda: len(esme.submit_resps) == 2 and esme.delivered, "the second message's receipt")
    time.sleep(RECEIPT_DELAY * 4)
    esme.client.poll()

    assert [d.receipted_message_id for d in esme.delivered] == [esme.submit_resps[1].message_id]
    assert smsc.simulator.receipts_sent == 1


def test_failure_only_receipts_are_not_sent_for_delivered_messages(smsc, esme):
    esme.submit(registered_delivery=2)
    esme.submit(registered_delivery=1)
    esme.read_until(lambda: len(esme.submit_resps) == 2 and esme.delivered, "the second message's receipt")

    assert [d.receipted_message_id for d in esme.delivered] == [esme.submit_resps[1].message_id]


def test_receipt_goes_to_the_receiver_session_of_the_same_system_id(smsc, esme_factory):
    transmitter = esme_factory(smsc.port)
    transmitter.bind("transmitter")
    receiver = esme_factory(smsc.port)
    receiver.bind("receiver")
    stranger = esme_factory(smsc.port)
    stranger.bind("receiver", system_id="other", password="pw")

    transmitter.submit()
    transmitter.read_until(lambda: transmitter.submit_resps, "submit_sm_resp")
    receiver.read_until(lambda: receiver.delivered, "receipt on the receiver")
    stranger.client.poll()

    assert receiver.delivered[0].receipted_message_id == transmitter.submit_resps[0].message_id
    assert stranger.delivered == []


def test_throttle_ratio_one_throttles_every_submit(start_smsc, esme_factory):
    smsc = start_smsc(throttle_ratio=1.0)
    esme = esme_factory(smsc.port)
    esme.bind()

    esme.submit()
    esme.read_until(lambda: esme.errors, "the throttled submit_sm_resp")

    assert [(e.command, e.status) for e in esme.errors] == [("submit_sm_resp", ESME_RTHROTTLED)]
    assert (smsc.simulator.submits, smsc.simulator.throttled) == (1, 1)


def test_reject_ratio_one_rejects_every_submit(start_smsc, esme_factory):
    smsc = start_smsc(reject_ratio=1.0)
    esme = esme_factory(smsc.port)
    esme.bind()

    esme.submit()
    esme.read_until(lambda: esme.errors, "the rejected submit_sm_resp")

    assert esme.errors[0].status == ESME_RSUBMITFAIL
    assert smsc.simulator.rejected == 1


def test_failure_ratio_one_ends_every_message_undelivered(start_smsc, esme_factory):
    smsc = start_smsc(failure_ratio=1.0)
    esme = esme_factory(smsc.port)
    esme.bind()

    esme.submit(registered_delivery=2)  # receipt on failure only
    esme.read_until(lambda: esme.delivered, "the failure receipt")

    deliver_sm = esme.delivered[0]
    receipt = parse_receipt(
        short_message=deliver_sm.short_message,
        tlvs={
            "receipted_message_id": deliver_sm.receipted_message_id,
            "message_state": deliver_sm.message_state,
            "network_error_code": deliver_sm.network_error_code,
        },
    )
    assert (receipt.state, receipt.error_code, receipt.dlvrd) == ("undelivered", "001", 0)
    assert b"stat:UNDELIV" in deliver_sm.short_message
    assert smsc.simulator.failed == 1


def test_faults_are_reproducible_with_a_seed(start_smsc, esme_factory):
    outcomes = []
    for _ in range(2):
        smsc = start_smsc(seed=42, failure_ratio=0.3, throttle_ratio=0.2)
        esme = esme_factory(smsc.port)
        esme.bind()
        for _ in range(40):
            esme.submit(registered_delivery=0)
        # smpplib hands error responses to both the error handler and the sent handler.
        esme.read_until(lambda esme=esme: len(esme.submit_resps) == 40, "40 responses")
        accepted = [r.message_id for r in esme.submit_resps if r.status == 0]
        outcomes.append((accepted, smsc.simulator.throttled, smsc.simulator.failed))

    assert outcomes[0] == outcomes[1]
    message_ids, throttled, failed = outcomes[0]
    assert 0 < throttled < 40 and 0 < failed < 40
    assert len(message_ids) == 40 - throttled


def test_receipts_wait_for_a_receiver_to_bind(smsc, esme_factory):
    transmitter = esme_factory(smsc.port)
    transmitter.bind("transmitter")
    transmitter.submit()
    transmitter.read_until(lambda: transmitter.submit_resps, "submit_sm_resp")
    time.sleep(RECEIPT_DELAY * 4)  # due while no receiver is bound: the SMSC stores it

    receiver = esme_factory(smsc.port)
    receiver.bind("receiver")
    receiver.read_until(lambda: receiver.delivered, "the stored receipt")

    assert receiver.delivered[0].receipted_message_id == transmitter.submit_resps[0].message_id


# --- MO ---


def test_mo_is_delivered_as_a_plain_deliver_sm(smsc, esme):
    parts = smsc.run(lambda: smsc.simulator.send_mo("esme", "+447700900123", "4446", "STOP"))
    esme.read_until(lambda: esme.delivered, "the MO")

    (mo,) = esme.delivered
    assert parts == 1
    assert (mo.esm_class, mo.data_coding) == (0, 0)
    assert (mo.source_addr, mo.source_addr_ton, mo.destination_addr) == (b"447700900123", 1, b"4446")
    assert mo.short_message == b"STOP"
    assert parse_receipt(short_message=mo.short_message, tlvs={}) is None
    assert smsc.simulator.mo_sent == 1


def test_long_unicode_mo_arrives_in_concatenated_parts(smsc, esme):
    text = "Отпишите меня, пожалуйста. " * 4
    parts = smsc.run(lambda: smsc.simulator.send_mo("esme", "447700900123", "4446", text))
    esme.read_until(lambda: len(esme.delivered) == parts, "every MO part")

    assert parts == 2
    assert all(mo.esm_class == 0x40 and mo.data_coding == 0x08 for mo in esme.delivered)
    assert "".join(decode(mo.short_message, mo.data_coding, esm_class=mo.esm_class) for mo in esme.delivered) == text


# --- link management ---


def test_enquire_link_is_answered(esme):
    enquire_link = smpplib.smpp.make_pdu("enquire_link", client=esme.client)
    esme.client.send_pdu(enquire_link)

    resp = esme.client.read_pdu()

    assert (resp.command, resp.status, resp.sequence) == ("enquire_link_resp", 0, enquire_link.sequence)


def test_unbind_is_answered_and_the_smsc_closes_the_connection(smsc, raw_esme):
    raw_esme.send(0x00000009, bind_body())
    raw_esme.read()

    sequence = raw_esme.send(0x00000006)

    assert raw_esme.read()[:3] == (0x80000006, 0, sequence)
    assert raw_esme.is_closed_by_peer()


def test_drop_all_disconnects_clients_which_can_then_rebind(smsc, esme, esme_factory):
    dropped = smsc.run(smsc.simulator.drop_all)

    with pytest.raises(smpplib.exceptions.ConnectionError):
        esme.read_until(lambda: False, "the disconnect")
    assert dropped == 1
    esme.close()
    again = esme_factory(smsc.port)
    assert again.bind().status == 0


def test_receipts_unacknowledged_when_the_link_drops_are_sent_again(smsc, raw_esme, esme_factory):
    raw_esme.send(0x00000009, bind_body())
    raw_esme.read()
    raw_esme.send(0x00000004, minimal_submit_sm())
    _, _, _, message_id = raw_esme.read()
    command_id, _, _, _ = raw_esme.read()  # the receipt: deliberately not answered
    assert command_id == 0x00000005

    smsc.run(smsc.simulator.drop_all)
    esme = esme_factory(smsc.port)
    esme.bind()
    esme.read_until(lambda: esme.delivered, "the receipt again")

    assert esme.delivered[0].receipted_message_id + b"\x00" == message_id


def test_stop_unbinds_bound_sessions(start_smsc):
    smsc = start_smsc()
    peer = RawEsme(smsc.port)
    peer.send(0x00000009, bind_body())
    peer.read()

    smsc.stop(timeout=WAIT)

    assert peer.read()[0] == 0x00000006  # unbind from the SMSC
    assert peer.is_closed_by_peer()
    peer.sock.close()


# --- protocol errors ---


def test_submit_sm_before_bind_is_refused(raw_esme):
    raw_esme.send(0x00000004, minimal_submit_sm())

    assert raw_esme.read()[:2] == (SUBMIT_SM_RESP, ESME_RINVBNDSTS)


def test_receiver_session_may_not_submit(raw_esme):
    raw_esme.send(0x00000001, bind_body())
    assert raw_esme.read()[:2] == (0x80000001, 0)

    raw_esme.send(0x00000004, minimal_submit_sm())

    assert raw_esme.read()[:2] == (SUBMIT_SM_RESP, ESME_RINVBNDSTS)


def test_unknown_command_gets_generic_nack(raw_esme):
    sequence = raw_esme.send(0x000000FF)

    assert raw_esme.read()[:3] == (GENERIC_NACK, ESME_RINVCMDID, sequence)


def test_truncated_submit_sm_gets_an_error_response_and_the_link_survives(raw_esme):
    raw_esme.send(0x00000009, bind_body())
    raw_esme.read()

    raw_esme.send(0x00000004, b"\x00\x01\x01no-terminator")
    assert raw_esme.read()[:2] == (SUBMIT_SM_RESP, ESME_RINVCMDLEN)

    raw_esme.send(0x00000004, minimal_submit_sm())
    assert raw_esme.read()[:2] == (SUBMIT_SM_RESP, 0)


def test_impossible_command_length_gets_generic_nack_and_a_disconnect(raw_esme):
    raw_esme.send(0x00000015, length=8)

    assert raw_esme.read()[:2] == (GENERIC_NACK, ESME_RINVCMDLEN)
    assert raw_esme.is_closed_by_peer()


# --- configuration ---


def test_ratios_outside_zero_to_one_are_refused():
    with pytest.raises(ValueError, match="throttle_ratio"):
        SmscSimulator(throttle_ratio=1.5)


def test_command_line_accounts():
    args = build_argument_parser().parse_args(["--port", "2776", "--account", "esme:secret", "--failure-ratio", "0.1"])

    assert (args.port, args.account, args.failure_ratio) == (2776, [("esme", "secret")], 0.1)
    with pytest.raises(SystemExit):
        build_argument_parser().parse_args(["--account", "no-password-separator"])


def test_command_line_listens_on_loopback_unless_told():
    assert build_argument_parser().parse_args([]).host == "127.0.0.1"
    assert build_argument_parser().parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"


# --- behaviour for ESME tests: late answers, idle sessions, muted links, receipts without TLVs ---


def test_response_delay_holds_answers_and_counts_them_outstanding(start_smsc, esme_factory):
    smsc = start_smsc(response_delay=0.2)
    esme = esme_factory(smsc.port)
    esme.bind()

    began = time.monotonic()
    for _ in range(3):
        esme.submit(registered_delivery=0)
    esme.read_until(lambda: len(esme.submit_resps) == 3, "three late answers")

    assert time.monotonic() - began >= 0.2
    assert smsc.simulator.max_pending_responses == 3


def test_idle_sessions_are_closed_but_enquire_link_keeps_them(start_smsc, esme_factory):
    smsc = start_smsc(idle_timeout=0.3)
    idle = esme_factory(smsc.port)
    idle.bind()
    busy = esme_factory(smsc.port)
    busy.bind()

    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        busy.client.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=busy.client))
        time.sleep(0.05)
        busy.client.poll()

    with pytest.raises(smpplib.exceptions.ConnectionError):
        idle.read_until(lambda: False, "the disconnect")
    assert smsc.simulator.idle_closed == 1
    assert smsc.simulator.enquire_links >= 10


def test_muted_sessions_answer_nothing_and_new_ones_answer(smsc, esme, esme_factory):
    assert smsc.run(smsc.simulator.mute_all) == 1

    esme.client.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=esme.client))
    time.sleep(0.3)
    esme.client.poll()
    fresh = esme_factory(smsc.port)

    assert smsc.simulator.enquire_links == 0
    assert fresh.bind().status == 0


def test_receipts_without_tlvs_carry_the_id_in_the_text_only(start_smsc, esme_factory):
    smsc = start_smsc(receipt_tlvs=False)
    esme = esme_factory(smsc.port)
    esme.bind()

    esme.submit()
    esme.read_until(lambda: esme.submit_resps and esme.delivered, "the receipt")

    (deliver_sm,) = esme.delivered
    assert deliver_sm.receipted_message_id is None and deliver_sm.message_state is None
    receipt = parse_receipt(short_message=deliver_sm.short_message, tlvs={})
    assert receipt.message_id == esme.submit_resps[0].message_id.decode()


def test_a_receipt_refused_as_temporary_is_delivered_again(start_smsc):
    smsc = start_smsc(redeliver_delay=0.05)
    peer = RawEsme(smsc.port)
    peer.send(0x00000009, bind_body())
    peer.read()
    peer.send(0x00000004, minimal_submit_sm())
    peer.read()  # submit_sm_resp
    command_id, _, sequence, body = peer.read()
    assert command_id == 0x00000005

    peer.sock.sendall(struct.pack(">IIII", 17, 0x80000005, 0x64, sequence) + b"\x00")  # ESME_RX_T_APPN
    again = peer.read()
    peer.sock.sendall(struct.pack(">IIII", 17, 0x80000005, 0, again[2]) + b"\x00")

    assert (again[0], again[3]) == (0x00000005, body)
    assert smsc.simulator.redelivered == 1
    peer.sock.close()


def test_accepted_submits_are_recorded_when_asked(start_smsc, esme_factory):
    smsc = start_smsc(record_submits=True)
    esme = esme_factory(smsc.port)
    esme.bind()

    esme.submit(b"recorded")
    esme.read_until(lambda: esme.submit_resps, "the answer")

    (accepted,) = smsc.simulator.accepted
    assert (accepted.system_id, accepted.submit.short_message) == ("esme", b"recorded")
    assert accepted.message_id == esme.submit_resps[0].message_id.decode()
