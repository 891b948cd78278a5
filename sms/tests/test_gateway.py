"""SmppGateway (sms/gateway.py) against the SMSC simulator over real TCP: binds, window, TPS, throttling, results,
receipts, MO, reconnects, enquire_link, unbind, bad credentials.

The simulator runs on its own event loop in a background thread; the gateway has threads of its own. Every wait is
bounded (WAIT), and every gateway and simulator is stopped after its test.
"""

import dataclasses
import itertools
import socket
import struct
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from sms.encoding import encode
from sms.gateway import (
    ESME_RINVDSTADR,
    ESME_RINVEXPIRY,
    ESME_RINVMSGLEN,
    ESME_RINVSRCADR,
    GatewayConfig,
    IncomingMessage,
    SmppGateway,
    SubmitPart,
)
from sms.smpp_server import ESME_RSUBMITFAIL, SmscSimulatorThread

WAIT = 10.0
ACCOUNTS = {"esme": "secret"}


class Recorder:
    """The gateway's callbacks: everything they were given, and how often they were called."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results = []
        self.receipts = []
        self.incoming = []
        self.states = []
        self.calls = Counter()
        self.fail = Counter()  # callback name -> how many more calls should raise

    def _take(self, name: str, store: list, items: list) -> None:
        with self.lock:
            self.calls[name] += 1
            if self.fail[name] > 0:
                self.fail[name] -= 1
                raise RuntimeError(f"{name} failed on purpose")
            store.extend(items)

    def on_result(self, items):
        self._take("on_result", self.results, items)

    def on_receipt(self, items):
        self._take("on_receipt", self.receipts, items)

    def on_incoming(self, items):
        self._take("on_incoming", self.incoming, items)

    def on_state(self, state):
        with self.lock:
            self.states.append(state)

    def results_by_ref(self) -> dict:
        with self.lock:
            refs = Counter(result.ref for result in self.results)
            assert max(refs.values(), default=1) == 1, f"a part got more than one result: {refs.most_common(3)}"
            return {result.ref: result for result in self.results}


def wait_until(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def parts(count: int, *, prefix: str = "m", registered_delivery: int = 1, source: str = "OpenCarrier"):
    return [
        SubmitPart(
            ref=f"{prefix}{index}",
            source=source,
            destination=f"+4477009{index:05d}",
            short_message=f"{prefix} message {index}".encode(),
            data_coding=0,
            esm_class=0,
            registered_delivery=registered_delivery,
        )
        for index in range(count)
    ]


@pytest.fixture
def start_smsc():
    running: list[SmscSimulatorThread] = []

    def start(**kwargs) -> SmscSimulatorThread:
        kwargs.setdefault("receipt_delay", 0.05)
        kwargs.setdefault("system_ids", ACCOUNTS)
        kwargs.setdefault("record_submits", True)
        kwargs.setdefault("seed", 7)
        smsc = SmscSimulatorThread(**kwargs).start(timeout=WAIT)
        running.append(smsc)
        return smsc

    yield start
    for smsc in running:
        smsc.stop(timeout=WAIT)


@pytest.fixture
def smsc(start_smsc) -> SmscSimulatorThread:
    return start_smsc()


@pytest.fixture
def start_gateway():
    """Start a gateway against a simulator; it is stopped after the test."""
    started: list[SmppGateway] = []

    def start(smsc: SmscSimulatorThread, recorder: Recorder | None = None, *, bound: bool = True, **overrides):
        recorder = recorder or Recorder()
        settings = {
            "name": "upstream",
            "host": "127.0.0.1",
            "port": smsc.port,
            "system_id": "esme",
            "password": "secret",
            "tps": 10_000,
            "window": 50,
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
        if bound:
            wait_until(lambda: gateway.state == "bound", "the bind")
        return gateway

    yield start
    for gateway in started:
        gateway.stop(timeout=WAIT)


# --- binding, submitting, results ---


def test_binds_submits_and_reports_each_result_with_the_smsc_message_id(smsc, start_gateway):
    gateway = start_gateway(smsc)

    gateway.submit(parts(40))
    assert gateway.wait_idle(WAIT)

    results = gateway.recorder.results_by_ref()
    assert set(results) == {f"m{i}" for i in range(40)}
    assert {r.command_status for r in results.values()} == {0}
    accepted = {a.submit.short_message.decode(): a.message_id for a in smsc.simulator.accepted}
    assert all(results[f"m{i}"].smsc_message_id == accepted[f"m message {i}"] for i in range(40))
    assert gateway.recorder.states == ["connecting", "bound"]
    assert gateway.recorder.calls["on_result"] < 40  # batches, not one call per result


def test_submit_sm_carries_the_configured_addressing(smsc, start_gateway):
    gateway = start_gateway(smsc, dest_ton=1, dest_npi=1)

    gateway.submit([*parts(1, prefix="alpha"), *parts(1, prefix="long", source="+447700900999")])
    gateway.submit(parts(1, prefix="short", source="4446"))
    assert gateway.wait_idle(WAIT)

    submits = {a.submit.short_message.decode().split()[0]: a.submit for a in smsc.simulator.accepted}
    alpha, long_number, short_code = submits["alpha"], submits["long"], submits["short"]
    assert (alpha.source_addr_ton, alpha.source_addr_npi, alpha.source_addr) == (5, 0, b"OpenCarrier")
    assert (long_number.source_addr_ton, long_number.source_addr_npi, long_number.source_addr) == (
        1,
        1,
        b"447700900999",
    )
    assert (short_code.source_addr_ton, short_code.source_addr) == (3, b"4446")
    assert (alpha.dest_addr_ton, alpha.dest_addr_npi, alpha.destination_addr) == (1, 1, b"447700900000")
    assert alpha.registered_delivery == 1


def test_concatenated_parts_keep_their_udh_and_data_coding(smsc, start_gateway):
    gateway = start_gateway(smsc)
    message = encode("Привет, мир! " * 12)  # UCS-2, three parts with UDH
    assert message.part_count == 3

    gateway.submit(
        [
            SubmitPart(
                ref=("msg", index),
                source="OpenCarrier",
                destination="447700900123",
                short_message=part,
                data_coding=message.data_coding,
                esm_class=0x40,
            )
            for index, part in enumerate(message.parts)
        ]
    )
    assert gateway.wait_idle(WAIT)

    sent = [a.submit for a in smsc.simulator.accepted]
    assert [s.short_message for s in sent] == list(message.parts)
    assert {(s.data_coding, s.esm_class) for s in sent} == {(0x08, 0x40)}


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"short_message": b"x" * 255}, ESME_RINVMSGLEN),
        ({"source": "A" * 21}, ESME_RINVSRCADR),
        ({"source": "Café"}, ESME_RINVSRCADR),
        ({"destination": ""}, ESME_RINVDSTADR),
        ({"destination": "+" + "4" * 21}, ESME_RINVDSTADR),
        ({"validity_period": "000001000000000R+"}, ESME_RINVEXPIRY),
    ],
    ids=["message", "long-source", "non-ascii-source", "no-destination", "long-destination", "validity"],
)
def test_a_part_no_submit_sm_can_carry_is_reported_final_without_being_sent(smsc, start_gateway, change, status):
    gateway = start_gateway(smsc)
    (good,) = parts(1)
    bad = dataclasses.replace(good, ref="bad", **change)

    gateway.submit([bad, good])
    assert gateway.wait_idle(WAIT)

    results = gateway.recorder.results_by_ref()
    assert (results["bad"].command_status, results["bad"].smsc_message_id) == (status, None)
    assert results["m0"].command_status == 0
    assert smsc.simulator.submits == 1


def test_rejected_submits_are_reported_final_and_not_retried(start_smsc, start_gateway):
    smsc = start_smsc(reject_ratio=1.0)
    gateway = start_gateway(smsc)

    gateway.submit(parts(10))
    assert gateway.wait_idle(WAIT)

    results = gateway.recorder.results_by_ref()
    assert len(results) == 10
    assert {(r.command_status, r.smsc_message_id) for r in results.values()} == {(ESME_RSUBMITFAIL, None)}
    assert smsc.simulator.submits == 10
    assert gateway.stats()["rejected"] == 10


# --- window and TPS ---


def test_window_bounds_the_submits_outstanding_at_the_smsc(start_smsc, start_gateway):
    smsc = start_smsc(response_delay=0.05)
    gateway = start_gateway(smsc, window=7)

    gateway.submit(parts(80))
    assert gateway.wait_idle(WAIT)

    # The simulator holds each answer 50 ms: everything the gateway had outstanding was held there at once.
    assert smsc.simulator.max_pending_responses == 7
    assert len(gateway.recorder.results_by_ref()) == 80


def test_a_wider_window_is_used_in_full(start_smsc, start_gateway):
    smsc = start_smsc(response_delay=0.05)
    gateway = start_gateway(smsc, window=30)

    gateway.submit(parts(120))
    assert gateway.wait_idle(WAIT)

    assert smsc.simulator.max_pending_responses == 30


def test_tps_limit_spreads_submits_evenly(smsc, start_gateway):
    gateway = start_gateway(smsc, tps=100)

    gateway.submit(parts(150))
    assert gateway.wait_idle(WAIT)

    arrivals = sorted(a.at for a in smsc.simulator.accepted)
    assert len(arrivals) == 150
    elapsed = arrivals[-1] - arrivals[0]
    assert 1.35 < elapsed < 4.0  # 150 at 100/s: 1.5 s less the small bucket's head start (more on a busy machine)
    # Smooth, not bursty: the first 300 ms carry about 30, not the burst of a bucket holding a second's worth.
    assert sum(1 for t in arrivals if t < arrivals[0] + 0.3) <= 40


# --- throttling ---


def test_throttled_submits_are_retried_and_accepted_exactly_once(start_smsc, start_gateway):
    smsc = start_smsc(throttle_ratio=0.3)
    gateway = start_gateway(smsc)

    gateway.submit(parts(200))
    assert gateway.wait_idle(WAIT * 2)

    results = gateway.recorder.results_by_ref()
    assert len(results) == 200
    assert {r.command_status for r in results.values()} == {0}  # never reported as throttled
    accepted = Counter(a.submit.short_message for a in smsc.simulator.accepted)
    assert len(accepted) == 200 and set(accepted.values()) == {1}
    assert smsc.simulator.throttled > 20
    assert gateway.stats()["throttled"] == smsc.simulator.throttled
    assert smsc.simulator.submits == 200 + smsc.simulator.throttled


def test_a_throttling_smsc_slows_the_gateway_down_until_it_accepts_again(start_smsc, start_gateway):
    smsc = start_smsc(throttle_ratio=1.0)
    gateway = start_gateway(smsc)

    gateway.submit(parts(20))
    time.sleep(1.0)
    throttled_in_one_second = smsc.simulator.throttled
    assert gateway.recorder.results == []  # nothing final yet, nothing dropped
    assert gateway.stats()["queued"] + gateway.stats()["in_flight"] == 20
    smsc.simulator.throttle_ratio = 0.0
    assert gateway.wait_idle(WAIT)

    # Backing off: far fewer attempts than a gateway resending at full speed would make.
    assert 20 <= throttled_in_one_second < 200
    assert len(gateway.recorder.results_by_ref()) == 20


# --- receipts and MO ---


@pytest.mark.parametrize("receipt_tlvs", [True, False], ids=["tlv", "text-only"])
def test_receipts_reach_on_receipt_with_the_submit_message_id(start_smsc, start_gateway, receipt_tlvs):
    smsc = start_smsc(receipt_tlvs=receipt_tlvs, failure_ratio=0.5)
    gateway = start_gateway(smsc)

    gateway.submit(parts(20))
    wait_until(lambda: len(gateway.recorder.receipts) == 20, "20 receipts")

    message_ids = {r.smsc_message_id for r in gateway.recorder.results}
    receipts = {r.smsc_message_id: r for r in gateway.recorder.receipts}
    assert set(receipts) == message_ids
    assert {r.state for r in receipts.values()} == {"DELIVRD", "UNDELIV"}
    undelivered = [r for r in receipts.values() if r.state == "UNDELIV"]
    assert len(undelivered) == smsc.simulator.failed
    assert {r.error_code for r in undelivered} == {"001"}
    assert all(r.done_at is not None and r.done_at.tzinfo is not None for r in receipts.values())
    assert all(r.text.startswith(f"id:{r.smsc_message_id} ") for r in receipts.values())
    assert gateway.stats()["receipts"] == 20


def test_receipts_come_after_the_result_of_their_part(start_smsc, start_gateway):
    smsc = start_smsc(receipt_delay=0.0)
    order = []
    recorder = Recorder()
    recorder.on_result = lambda items: order.extend(("result", r.smsc_message_id) for r in items)
    recorder.on_receipt = lambda items: order.extend(("receipt", r.smsc_message_id) for r in items)
    gateway = start_gateway(smsc, recorder)

    gateway.submit(parts(100))
    wait_until(lambda: sum(1 for kind, _ in order if kind == "receipt") == 100, "100 receipts")

    first_seen = {}
    for position, (kind, message_id) in enumerate(order):
        first_seen.setdefault((kind, message_id), position)
    assert all(first_seen[("result", mid)] < first_seen[("receipt", mid)] for kind, mid in order if kind == "receipt")


def test_mo_reaches_on_incoming_decoded(smsc, start_gateway):
    gateway = start_gateway(smsc)

    smsc.run(lambda: smsc.simulator.send_mo("esme", "+447700900123", "4446", "STOP"))
    wait_until(lambda: gateway.recorder.incoming, "the MO")

    assert gateway.recorder.incoming == [
        IncomingMessage(source="447700900123", destination="4446", text="STOP", data_coding=0, esm_class=0)
    ]
    assert gateway.recorder.receipts == []


def test_a_concatenated_mo_arrives_part_by_part(smsc, start_gateway):
    gateway = start_gateway(smsc)
    text = "Отпишите меня, пожалуйста. " * 4

    count = smsc.run(lambda: smsc.simulator.send_mo("esme", "447700900123", "4446", text))
    wait_until(lambda: len(gateway.recorder.incoming) == count, "every MO part")

    assert count == 2
    assert [m.esm_class & 0x40 for m in gateway.recorder.incoming] == [0x40, 0x40]
    assert "".join(m.text for m in gateway.recorder.incoming) == text


def test_deliver_sm_is_acknowledged_only_after_the_callback_took_it(start_smsc, start_gateway):
    smsc = start_smsc(redeliver_delay=0.1)
    recorder = Recorder()
    recorder.fail["on_incoming"] = 1
    gateway = start_gateway(smsc, recorder)

    smsc.run(lambda: smsc.simulator.send_mo("esme", "447700900123", "4446", "HELP"))
    wait_until(lambda: recorder.incoming, "the MO offered again")

    # The failed callback answered ESME_RX_T_APPN, so the SMSC delivered it again; the gateway lived on.
    assert [m.text for m in recorder.incoming] == ["HELP"]
    assert smsc.simulator.redelivered == 1
    assert gateway.stats()["callback_errors"] == 1
    assert gateway.state == "bound"


def test_an_exception_in_on_result_is_logged_and_the_gateway_goes_on(smsc, start_gateway, caplog):
    recorder = Recorder()
    recorder.fail["on_result"] = 1
    gateway = start_gateway(smsc, recorder)

    gateway.submit(parts(1, prefix="lost"))
    assert gateway.wait_idle(WAIT)
    gateway.submit(parts(3, prefix="after"))
    assert gateway.wait_idle(WAIT)

    assert sorted(r.ref for r in recorder.results) == ["after0", "after1", "after2"]
    assert "on_result raised" in caplog.text
    assert gateway.state == "bound"


# --- link management ---


def test_reconnects_after_the_smsc_drops_the_bind_and_resubmits_what_was_in_flight(start_smsc, start_gateway):
    smsc = start_smsc(response_delay=0.6)  # long enough that the window is still outstanding at the drop
    gateway = start_gateway(smsc, window=10)

    gateway.submit(parts(30))
    wait_until(lambda: smsc.simulator.submits >= 10, "a full window at the SMSC")
    in_flight_at_drop = gateway.stats()["in_flight"]
    assert smsc.run(smsc.simulator.drop_all) == 1
    assert gateway.wait_idle(WAIT)

    results = gateway.recorder.results_by_ref()  # one result per part, none lost
    assert set(results) == {f"m{i}" for i in range(30)}
    assert {r.command_status for r in results.values()} == {0}
    assert in_flight_at_drop == 10
    assert smsc.simulator.binds == 2
    assert gateway.stats()["reconnects"] == 1
    assert gateway.recorder.states == ["connecting", "bound", "connecting", "bound"]
    # At-least-once: the parts in flight at the drop were accepted by the SMSC but never answered, and were
    # submitted again; everything else exactly once.
    accepted = Counter(a.submit.short_message for a in smsc.simulator.accepted)
    assert len(accepted) == 30
    assert sum(accepted.values()) - 30 == in_flight_at_drop


def test_an_smsc_initiated_unbind_is_answered_and_the_gateway_binds_again(smsc, start_gateway):
    gateway = start_gateway(smsc)

    assert smsc.run(smsc.simulator.unbind_all) == 1
    wait_until(lambda: smsc.simulator.binds == 2 and gateway.state == "bound", "the rebind")
    gateway.submit(parts(2))

    assert gateway.wait_idle(WAIT)
    assert "unbound by the SMSC" in gateway.stats()["last_error"]
    assert len(gateway.recorder.results_by_ref()) == 2


def test_a_link_that_stops_answering_is_detected_and_replaced(smsc, start_gateway):
    gateway = start_gateway(smsc, enquire_link_s=0.2)

    smsc.run(smsc.simulator.mute_all)
    wait_until(lambda: smsc.simulator.binds == 2 and gateway.state == "bound", "a fresh bind")

    assert "enquire_link unanswered" in gateway.stats()["last_error"]
    gateway.submit(parts(3))
    assert gateway.wait_idle(WAIT)
    assert len(gateway.recorder.results_by_ref()) == 3


def test_enquire_link_keeps_an_idle_bind_alive(start_smsc, start_gateway):
    smsc = start_smsc(idle_timeout=0.6)
    gateway = start_gateway(smsc, enquire_link_s=0.15)

    time.sleep(2.0)

    assert smsc.simulator.idle_closed == 0
    assert smsc.simulator.binds == 1
    assert smsc.simulator.enquire_links >= 8
    assert gateway.state == "bound"


def test_without_enquire_link_an_idle_bind_is_dropped_and_bound_again(start_smsc, start_gateway):
    smsc = start_smsc(idle_timeout=0.4)
    gateway = start_gateway(smsc, enquire_link_s=30)

    wait_until(lambda: smsc.simulator.binds >= 2 and gateway.state == "bound", "the rebind")

    assert smsc.simulator.idle_closed >= 1
    assert gateway.stats()["reconnects"] >= 1


def test_stop_unbinds_cleanly(smsc, start_gateway):
    gateway = start_gateway(smsc)
    gateway.submit(parts(5))
    assert gateway.wait_idle(WAIT)

    gateway.stop(timeout=WAIT)

    wait_until(lambda: smsc.simulator.stats()["sessions"] == 0, "the session to close")
    assert smsc.simulator.unbinds == 1
    assert gateway.state == "unbound"
    assert gateway.recorder.states[-1] == "unbound"
    with pytest.raises(RuntimeError):
        gateway.submit(parts(1))


def test_stop_waits_for_answers_in_flight(start_smsc, start_gateway):
    smsc = start_smsc(response_delay=0.3)
    gateway = start_gateway(smsc)
    gateway.submit(parts(5))
    wait_until(lambda: smsc.simulator.submits == 5, "the submits at the SMSC")

    gateway.stop(timeout=WAIT)

    assert len(gateway.recorder.results_by_ref()) == 5
    assert smsc.simulator.unbinds == 1


def test_wrong_password_stays_unbound_and_retries_with_back_off(smsc, start_gateway):
    gateway = start_gateway(smsc, bound=False, password="wrong", reconnect_max_s=0.5)

    time.sleep(1.6)

    # Back-off 0.25, 0.5, 0.5, ...: about four attempts, not hundreds.
    assert 3 <= smsc.simulator.bind_failures <= 6
    assert smsc.simulator.binds == 0
    assert gateway.state == "connecting"
    assert "bind_transceiver refused with status 0x0000000D" in gateway.stats()["last_error"]
    assert "bound" not in gateway.recorder.states


def test_an_unreachable_smsc_is_retried_until_it_listens(start_smsc, start_gateway):
    with socket.socket() as probe:  # a port nobody listens on, yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = start_gateway(SimpleNamespace(port=port), bound=False, reconnect_max_s=0.2)
    time.sleep(0.5)
    assert gateway.state == "connecting"
    assert "cannot connect" in gateway.stats()["last_error"]

    start_smsc(port=port)

    wait_until(lambda: gateway.state == "bound", "the bind once the SMSC listens")
    gateway.submit(parts(2))
    assert gateway.wait_idle(WAIT)
    assert gateway.stats()["reconnects"] >= 2


def test_an_smsc_that_drops_every_bind_at_once_gets_growing_back_off(start_gateway):
    # A raw SMSC: answers bind_transceiver with ESME_ROK, then hangs up.
    listener = socket.create_server(("127.0.0.1", 0))
    binds: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                header = conn.recv(16)
                if len(header) == 16:
                    _, command_id, _, sequence = struct.unpack(">IIII", header)
                    conn.recv(1024)
                    binds.append(time.monotonic())
                    conn.sendall(struct.pack(">IIII", 17, command_id | 0x80000000, 0, sequence) + b"\x00")

    threading.Thread(target=serve, daemon=True).start()
    try:
        start_gateway(SimpleNamespace(port=listener.getsockname()[1]), bound=False, reconnect_max_s=2.0)
        time.sleep(1.6)
    finally:
        listener.close()

    # 0.25 s, 0.5 s, 1 s between binds; a back-off reset by every bind would have made six or seven.
    assert 3 <= len(binds) <= 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(binds)]
    assert gaps == sorted(gaps)


def test_transmitter_and_receiver_binds_carry_submits_and_receipts(smsc, start_gateway):
    gateway = start_gateway(smsc, bind_mode="transmitter_receiver")

    gateway.submit(parts(10))
    wait_until(lambda: len(gateway.recorder.receipts) == 10, "10 receipts")
    smsc.run(lambda: smsc.simulator.send_mo("esme", "447700900123", "4446", "YES"))
    wait_until(lambda: gateway.recorder.incoming, "the MO")

    assert smsc.simulator.binds == 2
    assert {r.smsc_message_id for r in gateway.recorder.receipts} == {
        r.smsc_message_id for r in gateway.recorder.results
    }
    gateway.stop(timeout=WAIT)
    assert smsc.simulator.unbinds == 2


def test_stats_report_the_counters(smsc, start_gateway):
    gateway = start_gateway(smsc)
    gateway.submit(parts(10))
    assert gateway.wait_idle(WAIT)
    wait_until(lambda: gateway.stats()["receipts"] == 10, "the receipts")

    stats = gateway.stats()

    assert {k: stats[k] for k in ("state", "queued", "in_flight", "submitted", "results", "receipts")} == {
        "state": "bound",
        "queued": 0,
        "in_flight": 0,
        "submitted": 10,
        "results": 10,
        "receipts": 10,
    }
    assert {"throughput_per_s", "reconnects", "throttled"} <= set(stats)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bind_mode", "receiver", "bind_mode"),
        ("window", 0, "window"),
        ("tps", 0, "tps"),
        ("port", 0, "port"),
        ("password", "ninechars", "limited"),
    ],
)
def test_config_refuses_values_an_smsc_cannot_take(field, value, message):
    settings = {"name": "g", "host": "127.0.0.1", "port": 2775, "system_id": "esme", "password": "secret"}

    with pytest.raises(ValueError, match=message):
        GatewayConfig(**{**settings, field: value})
