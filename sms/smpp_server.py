"""An asyncio SMPP 3.4 SMSC simulator: binds ESMEs, accepts submit_sm, returns delivery receipts and MO messages.

Pure module (no Django import); the ``smsc_simulator`` management command wraps :func:`main`. It stands in for an
operator's SMSC in development and tests, so its behaviour follows SMPP 3.4 where an ESME can observe it:

- bind_transmitter / bind_receiver / bind_transceiver, answered with the SMSC's system_id and the
  ``sc_interface_version`` TLV; a wrong system_id or password gets ESME_RBINDFAIL (deliberately not
  RINVSYSID / RINVPASWD, which would tell a scanner which system_ids exist); a second bind gets ESME_RALYBND.
- submit_sm is answered with a hex message_id; ESME_RINVBNDSTS when the session may not submit.
- A delivery receipt (deliver_sm, esm_class 0x04, Appendix B text plus ``receipted_message_id``,
  ``message_state`` and, on failure, ``network_error_code`` TLVs) follows ``receipt_delay`` seconds later
  when ``registered_delivery`` asks for one (bits 0-1: 1 always, 2 on failure only, 3 on success only as
  SMPP 5.0 defines it). It goes to a receiver or transceiver session bound with the same system_id.
- Like a real SMSC it stores receipts and MO messages while no receiver session is bound, and sends them
  when one binds; deliver_sm PDUs unanswered when a session drops are stored again.
- enquire_link, unbind (the SMSC closes the connection after unbind_resp), generic_nack with ESME_RINVCMDID
  for commands it does not implement (query_sm, data_sm, submit_multi, cancel_sm, replace_sm, ...), and
  generic_nack ESME_RINVCMDLEN followed by a disconnect for a command_length it cannot frame.

For the ESME's tests: ``response_delay`` holds every submit_sm_resp that long (``max_pending_responses``
counts what an ESME had outstanding at once), ``idle_timeout`` closes sessions that send nothing (not even
enquire_link), ``receipt_tlvs=False`` sends text-only receipts as older SMSCs do, ``record_submits`` keeps every
accepted submit_sm (:class:`AcceptedSubmit`), a deliver_sm answered ESME_RX_T_APPN (0x64, "temporary") is
delivered again after ``redeliver_delay``, :meth:`SmscSimulator.mute_all` turns the open sessions deaf (a
half-dead link) and :meth:`SmscSimulator.unbind_all` unbinds them from the SMSC side.

Faults, reproducible with ``seed``: ``throttle_ratio`` of submit_sm get ESME_RTHROTTLED (0x58), ``reject_ratio``
get ESME_RSUBMITFAIL (0x45), and ``failure_ratio`` of the accepted ones end UNDELIV with err 001 in their
receipt. :meth:`SmscSimulator.drop_all` cuts every TCP connection for reconnect tests, and
:meth:`SmscSimulator.send_mo` injects an MO message (e.g. a subscriber's STOP).

The submit_sm path is lean on purpose (one buffer per read, struct, no per-PDU logging, one write per read,
receipts drained by one task in FIFO order since every receipt waits the same delay): it sustains several
thousand submit_sm per second on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import logging
import random
import signal
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from .encoding import UnsupportedDataCoding, decode, encode

__all__ = [
    "AcceptedSubmit",
    "SmppError",
    "SmscSimulator",
    "SmscSimulatorThread",
    "SubmitSm",
    "add_arguments",
    "address_ton_npi",
    "build_argument_parser",
    "deliver_sm_body",
    "main",
    "parse_submit_sm",
    "parse_tlvs",
    "pdu",
    "run",
    "serve",
    "tlv",
]

logger = logging.getLogger(__name__)

# --- SMPP 3.4 command ids (5.1.2.1) ---
GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_RECEIVER_RESP = 0x80000001
BIND_TRANSMITTER = 0x00000002
BIND_TRANSMITTER_RESP = 0x80000002
QUERY_SM = 0x00000003
SUBMIT_SM = 0x00000004
SUBMIT_SM_RESP = 0x80000004
DELIVER_SM = 0x00000005
DELIVER_SM_RESP = 0x80000005
UNBIND = 0x00000006
UNBIND_RESP = 0x80000006
BIND_TRANSCEIVER = 0x00000009
BIND_TRANSCEIVER_RESP = 0x80000009
ENQUIRE_LINK = 0x00000015
ENQUIRE_LINK_RESP = 0x80000015
RESPONSE_BIT = 0x80000000

# --- command_status values (5.1.3) ---
ESME_ROK = 0x00000000
ESME_RINVCMDLEN = 0x00000002
ESME_RINVCMDID = 0x00000003
ESME_RINVBNDSTS = 0x00000004
ESME_RALYBND = 0x00000005
ESME_RSYSERR = 0x00000008
ESME_RBINDFAIL = 0x0000000D
ESME_RSUBMITFAIL = 0x00000045
ESME_RTHROTTLED = 0x00000058
ESME_RX_T_APPN = 0x00000064  # deliver_sm_resp: ESME receiver temporary error, deliver again

# --- TLV tags (5.3.2) ---
TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_SC_INTERFACE_VERSION = 0x0210
TAG_NETWORK_ERROR_CODE = 0x0423
TAG_MESSAGE_PAYLOAD = 0x0424
TAG_MESSAGE_STATE = 0x0427

MESSAGE_STATE_DELIVERED = 2
MESSAGE_STATE_UNDELIVERABLE = 5
ESM_CLASS_DELIVERY_RECEIPT = 0x04
ESM_CLASS_UDHI = 0x40
INTERFACE_VERSION_34 = 0x34
NETWORK_TYPE_GSM = 3
GSM_ERROR_UNKNOWN_SUBSCRIBER = 1  # MAP error 1, the error an UNDELIV receipt reports here

HEADER = struct.Struct(">IIII")
HEADER_SIZE = HEADER.size
# A submit_sm with a full message_payload TLV stays well under this; anything longer is a framing error.
MAX_PDU_SIZE = 70_000
MAX_SEQUENCE = 0x7FFFFFFF
# Store-and-forward limit per system_id while no receiver is bound, so a forgotten bind cannot eat memory.
MAX_STORED_PER_SYSTEM_ID = 100_000

_RECEIVER_MODES = frozenset({"receiver", "transceiver"})
_TRANSMITTER_MODES = frozenset({"transmitter", "transceiver"})
_BIND_RESP_IDS = {
    "transmitter": BIND_TRANSMITTER_RESP,
    "receiver": BIND_RECEIVER_RESP,
    "transceiver": BIND_TRANSCEIVER_RESP,
}


class SmppError(ValueError):
    """A PDU body that cannot be parsed; answered with an error status."""


class SubmitSm(NamedTuple):
    """The mandatory fields of one submit_sm (5.2), plus the raw TLV octets that follow them."""

    service_type: bytes
    source_addr_ton: int
    source_addr_npi: int
    source_addr: bytes
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: bytes
    esm_class: int
    protocol_id: int
    priority_flag: int
    schedule_delivery_time: bytes
    validity_period: bytes
    registered_delivery: int
    replace_if_present_flag: int
    data_coding: int
    sm_default_msg_id: int
    short_message: bytes
    tlv_octets: bytes


def pdu(command_id: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    """One PDU on the wire: the 16-octet header (command_length, command_id, command_status, sequence) + body."""
    return HEADER.pack(HEADER_SIZE + len(body), command_id, status, sequence) + body


def _cstring(body: bytes, pos: int) -> tuple[bytes, int]:
    """Read a C-octet string at ``pos``; return it without its NUL and the position after the NUL."""
    end = body.find(b"\x00", pos)
    if end < 0:
        raise SmppError(f"C-octet string at offset {pos} has no NUL terminator")
    return body[pos:end], end + 1


def parse_submit_sm(body: bytes) -> SubmitSm:
    """Parse a submit_sm body (everything after the header)."""
    try:
        service_type, pos = _cstring(body, 0)
        source_addr_ton, source_addr_npi = body[pos], body[pos + 1]
        source_addr, pos = _cstring(body, pos + 2)
        dest_addr_ton, dest_addr_npi = body[pos], body[pos + 1]
        destination_addr, pos = _cstring(body, pos + 2)
        esm_class, protocol_id, priority_flag = body[pos], body[pos + 1], body[pos + 2]
        schedule_delivery_time, pos = _cstring(body, pos + 3)
        validity_period, pos = _cstring(body, pos)
        registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id, sm_length = body[pos : pos + 5]
    except (IndexError, ValueError) as exc:
        raise SmppError(f"submit_sm body is truncated: {exc}") from exc
    pos += 5
    short_message = body[pos : pos + sm_length]
    if len(short_message) != sm_length:
        raise SmppError(f"sm_length {sm_length} exceeds the {len(body) - pos} octets left in submit_sm")
    return SubmitSm(
        service_type,
        source_addr_ton,
        source_addr_npi,
        source_addr,
        dest_addr_ton,
        dest_addr_npi,
        destination_addr,
        esm_class,
        protocol_id,
        priority_flag,
        schedule_delivery_time,
        validity_period,
        registered_delivery,
        replace_if_present_flag,
        data_coding,
        sm_default_msg_id,
        short_message,
        body[pos + sm_length :],
    )


# Largest C-octet string sizes of submit_sm (SMPP 3.4 5.2), NUL included; longer values are cut, as smpplib cuts them.
_SUBMIT_CSTRING_MAX = {"source_addr": 21, "destination_addr": 21, "validity_period": 17}


def _cstring_field(name: str, value: str | None) -> bytes:
    return (value or "")[: _SUBMIT_CSTRING_MAX[name] - 1].encode("latin-1") + b"\x00"


def submit_sm_pdu(
    *,
    sequence: int,
    source: tuple[int, int, str],
    destination: tuple[int, int, str],
    esm_class: int,
    data_coding: int,
    registered_delivery: int,
    short_message: bytes,
    validity_period: str | None = None,
) -> bytes:
    """A whole submit_sm PDU (4.4.1), written directly: the submitter sends thousands a second, and smpplib's
    generic PDU builder was an eighth of its CPU. Addresses are ``(ton, npi, address)``; the same octets as
    smpplib's (sms/tests/test_smpp_codec.py compares them)."""
    if len(short_message) > 254:
        raise ValueError(f"short_message of {len(short_message)} octets: at most 254 fit")
    source_ton, source_npi, source_addr = source
    dest_ton, dest_npi, dest_addr = destination
    body = b"".join(
        (
            b"\x00",  # service_type: the SMSC's default
            bytes((source_ton, source_npi)),
            _cstring_field("source_addr", source_addr),
            bytes((dest_ton, dest_npi)),
            _cstring_field("destination_addr", dest_addr),
            bytes((esm_class, 0, 0)),  # protocol_id, priority_flag
            b"\x00",  # schedule_delivery_time: immediate
            _cstring_field("validity_period", validity_period),
            bytes((registered_delivery, 0, data_coding, 0, len(short_message))),  # .. replace, .., sm_length
            short_message,
        )
    )
    return pdu(SUBMIT_SM, 0, sequence, body)


def parse_tlvs(octets: bytes) -> dict[int, bytes]:
    """Optional parameters (tag, length, value) -> ``{tag: value}``; the first occurrence of a tag wins."""
    tlvs: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(octets):
        tag, length = struct.unpack_from(">HH", octets, pos)
        value = octets[pos + 4 : pos + 4 + length]
        if len(value) != length:
            raise SmppError(f"TLV 0x{tag:04X} claims {length} octets, {len(value)} left")
        tlvs.setdefault(tag, value)
        pos += 4 + length
    if pos != len(octets):
        raise SmppError(f"{len(octets) - pos} stray octets after the last TLV")
    return tlvs


def tlv(tag: int, value: bytes) -> bytes:
    """One optional parameter: tag, length, value."""
    return struct.pack(">HH", tag, len(value)) + value


def deliver_sm_body(
    *,
    source: tuple[int, int, bytes],
    destination: tuple[int, int, bytes],
    esm_class: int,
    data_coding: int,
    short_message: bytes,
    tlv_octets: bytes = b"",
) -> bytes:
    """A deliver_sm body (5.2): addresses are ``(ton, npi, digits)``; SMSC-side fields left at their defaults."""
    source_ton, source_npi, source_addr = source
    dest_ton, dest_npi, dest_addr = destination
    return b"".join(
        (
            b"\x00",  # service_type
            bytes((source_ton, source_npi)),
            source_addr,
            b"\x00",
            bytes((dest_ton, dest_npi)),
            dest_addr,
            b"\x00",
            bytes((esm_class, 0, 0)),  # protocol_id, priority_flag
            b"\x00\x00",  # schedule_delivery_time and validity_period must be NULL in deliver_sm
            bytes((0, 0, data_coding, 0, len(short_message))),  # registered_delivery .. sm_length
            short_message,
            tlv_octets,
        )
    )


def address_ton_npi(address: str) -> tuple[int, int, bytes]:
    """TON/NPI an SMSC would use for an address: international E.164, national digits, or alphanumeric."""
    if address.startswith("+"):
        return 1, 1, address[1:].encode("ascii")
    if address.isdigit():
        # Long digit strings are full international numbers; short ones are service (short) numbers.
        return (1, 1, address.encode("ascii")) if len(address) > 8 else (0, 1, address.encode("ascii"))
    return 5, 0, address.encode("ascii", errors="replace")  # alphanumeric sender id


class AcceptedSubmit(NamedTuple):
    """A submit_sm the simulator accepted (recorded with ``record_submits``)."""

    system_id: str
    submit: SubmitSm
    message_id: str
    at: float  # time.monotonic() when it arrived


class _Deliverable(NamedTuple):
    """A deliver_sm body on its way to an ESME: a delivery receipt or an MO message part."""

    body: bytes
    is_receipt: bool


class _Receipt(NamedTuple):
    """A receipt waiting for its receipt_delay to pass."""

    due: float  # event loop time
    system_id: str
    message_id: bytes
    submit: SubmitSm
    submitted_at: float  # wall clock, for the submit date
    failed: bool


class _SmppSession(asyncio.Protocol):
    """One ESME's TCP connection: frames PDUs, answers them, and carries deliver_sm towards the ESME."""

    def __init__(self, simulator: SmscSimulator) -> None:
        self.sim = simulator
        self.transport: asyncio.Transport | None = None
        self.system_id: str | None = None
        self.mode: str | None = None  # transmitter, receiver, transceiver once bound
        self.peer = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._close_after_flush = False
        self._sequence = 0
        self._status = ESME_ROK  # command_status of the PDU being handled
        self.muted = False  # SmscSimulator.mute_all(): read and ignore everything, as a half-dead link would
        self.last_received = 0.0  # event loop time of the last PDU, for idle_timeout
        self.pending_responses = 0  # submit_sm_resp held back by response_delay
        # deliver_sm sent but not answered yet, by sequence number: stored again if the session drops.
        self.in_flight: dict[int, _Deliverable] = {}
        self._handlers: dict[int, Callable[[int, bytes], bytes | None]] = {
            SUBMIT_SM: self._on_submit_sm,
            DELIVER_SM_RESP: self._on_deliver_sm_resp,
            ENQUIRE_LINK: self._on_enquire_link,
            BIND_TRANSMITTER: functools.partial(self._on_bind, "transmitter"),
            BIND_RECEIVER: functools.partial(self._on_bind, "receiver"),
            BIND_TRANSCEIVER: functools.partial(self._on_bind, "transceiver"),
            UNBIND: self._on_unbind,
            UNBIND_RESP: self._on_unbind_resp,
        }

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # TCP server only
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.last_received = asyncio.get_running_loop().time()
        self.sim._sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim._forget(self)
        logger.info("SMPP session %s (%s) closed", self.system_id, self.peer)

    def data_received(self, data: bytes) -> None:
        if self.muted:
            return
        self.last_received = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        consumed = 0
        available = len(buffer)
        handlers = self._handlers
        out = self._out
        while available - consumed >= HEADER_SIZE:
            length, command_id, self._status, sequence = HEADER.unpack_from(buffer, consumed)
            if length < HEADER_SIZE or length > MAX_PDU_SIZE:
                # The stream cannot be re-synchronised: say why and hang up, as 3.4 section 2.7 expects.
                out.append(pdu(GENERIC_NACK, ESME_RINVCMDLEN, sequence))
                self._close_after_flush = True
                consumed = available
                break
            if available - consumed < length:
                break
            body = bytes(buffer[consumed + HEADER_SIZE : consumed + length])
            consumed += length
            handler = handlers.get(command_id)
            if handler is not None:
                try:
                    response = handler(sequence, body)
                except SmppError:
                    response = pdu(command_id | RESPONSE_BIT, ESME_RINVCMDLEN, sequence)
            elif command_id & RESPONSE_BIT:
                response = None  # responses to nothing we sent (or generic_nack): nothing to answer
            else:
                response = pdu(GENERIC_NACK, ESME_RINVCMDID, sequence)
            if response is not None:
                out.append(response)
            if self._close_after_flush:
                break
        del buffer[:consumed]
        self.flush()

    # --- output ---

    def enqueue(self, octets: bytes) -> None:
        self._out.append(octets)

    def flush(self) -> None:
        """Write everything queued in one call: one syscall per batch instead of one per PDU."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self._out.clear()
            return
        if self._out:
            transport.write(b"".join(self._out))
            self._out.clear()
        if self._close_after_flush:
            transport.close()

    def send_deliver_sm(self, deliverable: _Deliverable) -> None:
        self._sequence = 1 if self._sequence >= MAX_SEQUENCE else self._sequence + 1
        self.in_flight[self._sequence] = deliverable
        self._out.append(pdu(DELIVER_SM, ESME_ROK, self._sequence, deliverable.body))
        if deliverable.is_receipt:
            self.sim.receipts_sent += 1
        else:
            self.sim.mo_sent += 1

    @property
    def can_receive(self) -> bool:
        return self.mode in _RECEIVER_MODES and self.transport is not None and not self.transport.is_closing()

    # --- PDU handlers: each returns the response octets, or None ---

    def _on_bind(self, mode: str, sequence: int, body: bytes) -> bytes | None:
        resp_id = _BIND_RESP_IDS[mode]
        system_id_raw, pos = _cstring(body, 0)
        password_raw, _ = _cstring(body, pos)
        if self.mode is not None:
            return pdu(resp_id, ESME_RALYBND, sequence)
        system_id = system_id_raw.decode("latin-1")
        if not self.sim._authorised(system_id, password_raw.decode("latin-1")):
            logger.info("SMPP bind refused for system_id %r from %s", system_id, self.peer)
            self.sim.bind_failures += 1
            return pdu(resp_id, ESME_RBINDFAIL, sequence)
        self.system_id = system_id
        self.mode = mode
        self.sim.binds += 1
        logger.info("SMPP %s bound as %s from %s", system_id, mode, self.peer)
        # Queued here rather than returned: the response must precede any stored deliver_sm the bind releases.
        interface_version = tlv(TAG_SC_INTERFACE_VERSION, bytes((INTERFACE_VERSION_34,)))
        self._out.append(pdu(resp_id, ESME_ROK, sequence, self.sim.smsc_system_id + b"\x00" + interface_version))
        self.sim._bound(self)
        return None

    def _on_unbind(self, sequence: int, body: bytes) -> bytes:
        self.sim.unbinds += 1
        self.sim._unbound(self)
        self.mode = None
        # The ESME is expected to close now; closing ourselves after the response saves a half-open socket.
        self._close_after_flush = True
        return pdu(UNBIND_RESP, ESME_ROK, sequence)

    def _on_unbind_resp(self, sequence: int, body: bytes) -> None:
        # The answer to an SMSC-initiated unbind (SmscSimulator.unbind_all): the session is over.
        self._close_after_flush = True

    def _on_enquire_link(self, sequence: int, body: bytes) -> bytes:
        self.sim.enquire_links += 1
        return pdu(ENQUIRE_LINK_RESP, ESME_ROK, sequence)

    def _on_deliver_sm_resp(self, sequence: int, body: bytes) -> None:
        deliverable = self.in_flight.pop(sequence, None)
        if deliverable is not None and self._status == ESME_RX_T_APPN and self.system_id is not None:
            # "Temporary application error": the ESME could not take it now; offer it again a little later.
            self.sim.redelivered += 1
            asyncio.get_running_loop().call_later(
                self.sim.redeliver_delay, self.sim._redeliver, self.system_id, deliverable
            )

    def _on_submit_sm(self, sequence: int, body: bytes) -> bytes:
        if self.mode not in _TRANSMITTER_MODES:
            return pdu(SUBMIT_SM_RESP, ESME_RINVBNDSTS, sequence)
        submit = parse_submit_sm(body)
        response = self.sim._accept_submit(self, sequence, submit)
        delay = self.sim.response_delay
        if not delay:
            return response
        # Answer later, as a busy SMSC does: what is held here is what the ESME has outstanding.
        self.pending_responses += 1
        sim = self.sim
        sim._pending_responses += 1
        sim.max_pending_responses = max(sim.max_pending_responses, sim._pending_responses)
        asyncio.get_running_loop().call_later(delay, self._respond_late, response)
        return None

    def _respond_late(self, response: bytes) -> None:
        self.pending_responses -= 1
        self.sim._pending_responses -= 1
        if self.transport is not None and not self.transport.is_closing():
            self._out.append(response)
            self.flush()


class SmscSimulator:
    """An SMSC simulator speaking SMPP 3.4 on a local TCP port.

    ``system_ids`` maps system_id to password; None accepts any login. ``seed`` makes throttling, rejections,
    failures and message ids reproducible. Counters: ``binds``, ``submits`` (every submit_sm from a bound
    transmitter), ``throttled``, ``rejected``, ``failed`` (accepted but UNDELIV), and ``receipts_sent`` /
    ``mo_sent`` (deliver_sm PDUs written to an ESME; one stored again after a dropped link counts again).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        receipt_delay: float = 0.5,
        failure_ratio: float = 0.0,
        throttle_ratio: float = 0.0,
        reject_ratio: float = 0.0,
        system_ids: dict[str, str] | None = None,
        seed: int | None = None,
        smsc_system_id: str = "OpenCarrierSMSC",
        response_delay: float = 0.0,
        idle_timeout: float = 0.0,
        receipt_tlvs: bool = True,
        record_submits: bool = False,
        redeliver_delay: float = 0.5,
    ) -> None:
        for name, ratio in (
            ("failure_ratio", failure_ratio),
            ("throttle_ratio", throttle_ratio),
            ("reject_ratio", reject_ratio),
        ):
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {ratio}")
        for name, seconds in (
            ("receipt_delay", receipt_delay),
            ("response_delay", response_delay),
            ("idle_timeout", idle_timeout),
            ("redeliver_delay", redeliver_delay),
        ):
            if seconds < 0:
                raise ValueError(f"{name} must not be negative, got {seconds}")
        self.host = host
        self.port = port
        self.receipt_delay = receipt_delay
        self.failure_ratio = failure_ratio
        self.throttle_ratio = throttle_ratio
        self.reject_ratio = reject_ratio
        self.response_delay = response_delay
        self.idle_timeout = idle_timeout
        self.receipt_tlvs = receipt_tlvs
        self.redeliver_delay = redeliver_delay
        # Every accepted submit_sm, when record_submits.
        self.accepted: list[AcceptedSubmit] | None = [] if record_submits else None
        self.system_ids = dict(system_ids) if system_ids is not None else None
        self.smsc_system_id = smsc_system_id.encode("ascii")
        self._rng = random.Random(seed)  # fault injection, not security
        # Ten hex digits like many SMSCs; a random start keeps ids unique across simulator restarts.
        self._next_message_id = self._rng.randrange(0x10_0000_0000, 0xF0_0000_0000)

        self.binds = 0
        self.submits = 0
        self.throttled = 0
        self.rejected = 0
        self.failed = 0
        self.receipts_sent = 0
        self.mo_sent = 0
        self.bind_failures = 0
        self.unbinds = 0
        self.enquire_links = 0
        self.idle_closed = 0
        self.redelivered = 0
        self.max_pending_responses = 0
        self._pending_responses = 0
        self._idle_task: asyncio.Task[None] | None = None

        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_SmppSession] = set()
        self._receivers: dict[str, list[_SmppSession]] = {}
        self._round_robin = 0
        self._stored: dict[str, collections.deque[_Deliverable]] = {}
        self._receipts: collections.deque[_Receipt] = collections.deque()
        self._receipts_waiting = asyncio.Event()
        self._receipt_task: asyncio.Task[None] | None = None

    # --- lifecycle ---

    async def start(self) -> None:
        """Listen; ``port`` holds the bound port afterwards (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._receipts_waiting = asyncio.Event()
        self._server = await loop.create_server(lambda: _SmppSession(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._receipt_task = asyncio.create_task(self._send_receipts_when_due(), name="smsc-receipts")
        if self.idle_timeout:
            self._idle_task = asyncio.create_task(self._close_idle_sessions(), name="smsc-idle")
        logger.info("SMSC simulator listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening, unbind every session (SMSC-initiated unbind) and close the connections."""
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            if session.mode is not None:
                session.enqueue(pdu(UNBIND, ESME_ROK, MAX_SEQUENCE))
            session._close_after_flush = True
            session.flush()
        for task in (self._receipt_task, self._idle_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._receipt_task = self._idle_task = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Let connection_lost callbacks run before the caller closes the loop.
        await asyncio.sleep(0)

    async def drop_all(self) -> int:
        """Abort every TCP connection without unbind, as a crashed SMSC or a cut link would; return how many."""
        sessions = list(self._sessions)
        for session in sessions:
            if session.transport is not None:
                session.transport.abort()
        await asyncio.sleep(0)
        return len(sessions)

    async def unbind_all(self) -> int:
        """Send unbind to every bound session (an SMSC-initiated unbind, e.g. for maintenance) while still
        listening; each connection closes once the ESME answers. Returns how many were asked."""
        bound = [session for session in self._sessions if session.mode is not None]
        for session in bound:
            self._unbound(session)
            session.mode = None
            session.enqueue(pdu(UNBIND, ESME_ROK, MAX_SEQUENCE))
            session.flush()
        return len(bound)

    async def mute_all(self) -> int:
        """Make every open session ignore whatever it receives from now on (no answers, not even to
        enquire_link) while the TCP connection stays up: a half-dead link. New connections answer normally."""
        sessions = list(self._sessions)
        for session in sessions:
            session.muted = True
        return len(sessions)

    def stats(self) -> dict[str, int]:
        """Counters, plus the open sessions and the deliver_sm stored for absent receivers."""
        return {
            "binds": self.binds,
            "bind_failures": self.bind_failures,
            "unbinds": self.unbinds,
            "enquire_links": self.enquire_links,
            "submits": self.submits,
            "throttled": self.throttled,
            "rejected": self.rejected,
            "failed": self.failed,
            "receipts_sent": self.receipts_sent,
            "mo_sent": self.mo_sent,
            "redelivered": self.redelivered,
            "max_pending_responses": self.max_pending_responses,
            "sessions": len(self._sessions),
            "stored": sum(len(q) for q in self._stored.values()),
        }

    # --- MO ---

    async def send_mo(self, system_id: str, source: str, dest: str, text: str) -> int:
        """Deliver a mobile-originated message (deliver_sm, esm_class 0) to ``system_id``'s receiver.

        ``source`` is the subscriber's number, ``dest`` the short number it texted. A long text goes as
        concatenated parts (UDHI). Stored until a receiver binds when none is. Returns the part count.
        """
        message = encode(text)
        esm_class = ESM_CLASS_UDHI if message.part_count > 1 else 0
        for part in message.parts:
            self._deliver_mo(system_id, source, dest, esm_class, message.data_coding, part)
        self._flush_receivers(system_id)
        return message.part_count

    async def send_mo_parts(
        self,
        system_id: str,
        source: str,
        dest: str,
        text: str,
        *,
        order: list[int] | None = None,
        reference: int = 7,
        concat: str = "udh8",
        force_ucs2: bool = False,
    ) -> int:
        """Deliver a long MO as concatenated parts the way handsets and SMSCs vary: ``concat`` is ``"udh8"``
        (UDH IE 0x00), ``"udh16"`` (IE 0x08, 16-bit reference) or ``"sar"`` (no UDH; sar_msg_ref_num,
        sar_total_segments, sar_segment_seqnum TLVs). ``order`` lists the part indexes (from 0) to send, in that
        order, repeats and omissions allowed (duplicates, lost parts). Returns the message's part count."""
        message = encode(text, force_ucs2=force_ucs2, reference=reference % 256)
        if message.part_count < 2:
            raise ValueError("the text fits one part: use send_mo")
        total = message.part_count
        for index in range(total) if order is None else order:
            body = message.parts[index][6:]  # encode's UDH: 05 00 03 ref total seq
            esm_class, tlv_octets = ESM_CLASS_UDHI, b""
            if concat == "udh8":
                short_message = message.parts[index]
            elif concat == "udh16":
                short_message = bytes((6, 8, 4, reference >> 8 & 0xFF, reference & 0xFF, total, index + 1)) + body
            elif concat == "sar":
                short_message, esm_class = body, 0
                tlv_octets = (
                    tlv(0x020C, struct.pack(">H", reference & 0xFFFF))
                    + tlv(0x020E, bytes((total,)))
                    + tlv(0x020F, bytes((index + 1,)))
                )
            else:
                raise ValueError(f"concat must be udh8, udh16 or sar, not {concat!r}")
            self._deliver_mo(system_id, source, dest, esm_class, message.data_coding, short_message, tlv_octets)
        self._flush_receivers(system_id)
        return total

    def _deliver_mo(
        self,
        system_id: str,
        source: str,
        dest: str,
        esm_class: int,
        data_coding: int,
        short_message: bytes,
        tlv_octets: bytes = b"",
    ) -> None:
        body = deliver_sm_body(
            source=address_ton_npi(source),
            destination=address_ton_npi(dest),
            esm_class=esm_class,
            data_coding=data_coding,
            short_message=short_message,
            tlv_octets=tlv_octets,
        )
        self._deliver(system_id, _Deliverable(body, is_receipt=False))

    # --- internals used by sessions ---

    def _authorised(self, system_id: str, password: str) -> bool:
        if self.system_ids is None:
            return True
        expected = self.system_ids.get(system_id)
        return expected is not None and expected == password

    def _accept_submit(self, session: _SmppSession, sequence: int, submit: SubmitSm) -> bytes:
        """Decide the fate of one submit_sm and return its submit_sm_resp."""
        self.submits += 1
        rng = self._rng
        if self.throttle_ratio and rng.random() < self.throttle_ratio:
            self.throttled += 1
            return pdu(SUBMIT_SM_RESP, ESME_RTHROTTLED, sequence)
        if self.reject_ratio and rng.random() < self.reject_ratio:
            self.rejected += 1
            return pdu(SUBMIT_SM_RESP, ESME_RSUBMITFAIL, sequence)
        failed = bool(self.failure_ratio) and rng.random() < self.failure_ratio
        if failed:
            self.failed += 1

        message_id = format(self._next_message_id, "x").encode("ascii")
        self._next_message_id += 1
        if self.accepted is not None:
            self.accepted.append(AcceptedSubmit(session.system_id or "", submit, message_id.decode(), time.monotonic()))

        wanted = submit.registered_delivery & 0x03
        if wanted == 1 or (wanted == 2 and failed) or (wanted == 3 and not failed):
            receipts = self._receipts
            if not receipts:
                self._receipts_waiting.set()
            receipts.append(
                _Receipt(
                    asyncio.get_running_loop().time() + self.receipt_delay,
                    session.system_id or "",
                    message_id,
                    submit,
                    time.time(),
                    failed,
                )
            )
        return pdu(SUBMIT_SM_RESP, ESME_ROK, sequence, message_id + b"\x00")

    def _bound(self, session: _SmppSession) -> None:
        if session.mode in _RECEIVER_MODES:
            assert session.system_id is not None  # set by the bind
            self._receivers.setdefault(session.system_id, []).append(session)
            stored = self._stored.pop(session.system_id, None)
            while stored:
                session.send_deliver_sm(stored.popleft())

    def _unbound(self, session: _SmppSession) -> None:
        if session.system_id is None:
            return
        receivers = self._receivers.get(session.system_id)
        if receivers and session in receivers:
            receivers.remove(session)
            if not receivers:
                del self._receivers[session.system_id]

    def _forget(self, session: _SmppSession) -> None:
        """A connection is gone: stop routing to it and store what it never acknowledged."""
        self._sessions.discard(session)
        self._unbound(session)
        if session.in_flight and session.system_id is not None:
            unacknowledged = list(session.in_flight.values())
            session.in_flight.clear()
            for deliverable in unacknowledged:
                self._deliver(session.system_id, deliverable)
            self._flush_receivers(session.system_id)

    def _deliver(self, system_id: str, deliverable: _Deliverable) -> None:
        """Queue a deliver_sm on a receiver of ``system_id`` (round robin), or store it until one binds."""
        receivers = [s for s in self._receivers.get(system_id, ()) if s.can_receive]
        if receivers:
            self._round_robin += 1
            receivers[self._round_robin % len(receivers)].send_deliver_sm(deliverable)
            return
        stored = self._stored.get(system_id)
        if stored is None:
            stored = self._stored[system_id] = collections.deque(maxlen=MAX_STORED_PER_SYSTEM_ID)
        stored.append(deliverable)

    def _redeliver(self, system_id: str, deliverable: _Deliverable) -> None:
        self._deliver(system_id, deliverable)
        self._flush_receivers(system_id)

    async def _close_idle_sessions(self) -> None:
        """Close sessions that sent nothing (not even enquire_link) for idle_timeout, as SMSCs do."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.idle_timeout / 4)
            now = loop.time()
            for session in list(self._sessions):
                if session.transport is not None and now - session.last_received > self.idle_timeout:
                    logger.info("SMPP session %s idle for %.1f s: closing", session.system_id, self.idle_timeout)
                    self.idle_closed += 1
                    session.transport.abort()

    def _flush_receivers(self, system_id: str) -> None:
        for session in self._receivers.get(system_id, ()):
            session.flush()

    async def _send_receipts_when_due(self) -> None:
        """Send receipts as their delay passes. One task for all: every receipt waits the same delay, so FIFO."""
        loop = asyncio.get_running_loop()
        receipts = self._receipts
        while True:
            if not receipts:
                self._receipts_waiting.clear()
                await self._receipts_waiting.wait()
                continue
            wait = receipts[0].due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            now = loop.time()
            done_at = time.time()
            touched: set[str] = set()
            while receipts and receipts[0].due <= now:
                receipt = receipts.popleft()
                body = _receipt_body(receipt, done_at, with_tlvs=self.receipt_tlvs)
                self._deliver(receipt.system_id, _Deliverable(body, is_receipt=True))
                touched.add(receipt.system_id)
            for system_id in touched:
                self._flush_receivers(system_id)
            # Give submit_sm traffic a turn between large receipt batches.
            await asyncio.sleep(0)


def _receipt_body(receipt: _Receipt, done_at: float, *, with_tlvs: bool = True) -> bytes:
    """The deliver_sm body of one delivery receipt: Appendix B text plus (unless not ``with_tlvs``, as older
    SMSCs do) the 3.4 receipt TLVs."""
    submit = receipt.submit
    if receipt.failed:
        stat, err, dlvrd, state = "UNDELIV", GSM_ERROR_UNKNOWN_SUBSCRIBER, "000", MESSAGE_STATE_UNDELIVERABLE
    else:
        stat, err, dlvrd, state = "DELIVRD", 0, "001", MESSAGE_STATE_DELIVERED
    text = (
        f"id:{receipt.message_id.decode('ascii')} sub:001 dlvrd:{dlvrd}"
        f" submit date:{time.strftime('%y%m%d%H%M', time.gmtime(receipt.submitted_at))}"
        f" done date:{time.strftime('%y%m%d%H%M', time.gmtime(done_at))}"
        f" stat:{stat} err:{err:03d} text:{_receipt_text(submit)}"
    )
    tlv_octets = tlv(TAG_RECEIPTED_MESSAGE_ID, receipt.message_id + b"\x00") + tlv(TAG_MESSAGE_STATE, bytes((state,)))
    if receipt.failed:
        tlv_octets += tlv(TAG_NETWORK_ERROR_CODE, struct.pack(">BH", NETWORK_TYPE_GSM, err))
    if not with_tlvs:
        tlv_octets = b""
    # A receipt travels back: from the handset (the original destination) to the sender.
    return deliver_sm_body(
        source=(submit.dest_addr_ton, submit.dest_addr_npi, submit.destination_addr),
        destination=(submit.source_addr_ton, submit.source_addr_npi, submit.source_addr),
        esm_class=ESM_CLASS_DELIVERY_RECEIPT,
        data_coding=0,
        short_message=text.encode("ascii"),
        tlv_octets=tlv_octets,
    )


def _receipt_text(submit: SubmitSm) -> str:
    """The first 20 characters of the original message, in ASCII so any ESME can read the receipt."""
    payload = submit.short_message
    if not payload and submit.tlv_octets:
        try:
            payload = parse_tlvs(submit.tlv_octets).get(TAG_MESSAGE_PAYLOAD, b"")
        except SmppError:
            payload = b""
    try:
        text = decode(payload, submit.data_coding, esm_class=submit.esm_class)
    except (UnsupportedDataCoding, ValueError):
        return ""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text[:20])


# --- running it from synchronous code ---

T = TypeVar("T")


class SmscSimulatorThread:
    """Runs an :class:`SmscSimulator` on its own event loop in a daemon thread, for synchronous tests and tools.

    Example::

        with SmscSimulatorThread(receipt_delay=0.1, system_ids={"esme": "secret"}) as smsc:
            client = smpplib.client.Client("127.0.0.1", smsc.port)
            ...
            smsc.run(lambda: smsc.simulator.send_mo("esme", "+447700900123", "4446", "STOP"))
    """

    def __init__(self, **simulator_kwargs: object) -> None:
        self._simulator_kwargs = simulator_kwargs
        self.simulator: SmscSimulator | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="smsc-simulator", daemon=True)

    @property
    def port(self) -> int:
        assert self.simulator is not None, "call start() first"
        return self.simulator.port

    def start(self, timeout: float = 5.0) -> SmscSimulatorThread:
        self._thread.start()

        async def create_and_start() -> SmscSimulator:
            # Created on the simulator's loop so its asyncio objects belong to that loop.
            simulator = SmscSimulator(**self._simulator_kwargs)  # type: ignore[arg-type]
            await simulator.start()
            return simulator

        self.simulator = self.run(create_and_start, timeout=timeout)
        return self

    def run(self, coroutine_function: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
        """Run ``coroutine_function()`` on the simulator's loop and wait for its result."""

        async def call() -> T:
            return await coroutine_function()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the simulator and its loop; calling it again does nothing."""
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        if self.simulator is not None:
            self.run(self.simulator.stop, timeout=timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SmscSimulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- command line ---


def _parse_account(value: str) -> tuple[str, str]:
    system_id, sep, password = value.partition(":")
    if not sep or not system_id:
        raise argparse.ArgumentTypeError(f"expected SYSTEM_ID:PASSWORD, got {value!r}")
    return system_id, password


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, on any argparse parser (this module's own, or the management command's)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=2775, help="TCP port (default 2775, the SMPP port; 0 picks one)")
    parser.add_argument("--receipt-delay", type=float, default=0.5, help="seconds before a receipt is sent")
    parser.add_argument("--failure-ratio", type=float, default=0.0, help="share of messages ending UNDELIV")
    parser.add_argument("--throttle-ratio", type=float, default=0.0, help="share of submit_sm answered ESME_RTHROTTLED")
    parser.add_argument("--reject-ratio", type=float, default=0.0, help="share of submit_sm answered ESME_RSUBMITFAIL")
    parser.add_argument("--response-delay", type=float, default=0.0, help="seconds before each submit_sm_resp")
    parser.add_argument("--seed", type=int, default=None, help="make faults and message ids reproducible")
    parser.add_argument(
        "--account",
        type=_parse_account,
        action="append",
        metavar="SYSTEM_ID:PASSWORD",
        help="accept only these logins (repeatable); without it any login binds",
    )
    parser.add_argument("--stats-interval", type=float, default=0.0, help="print counters every N seconds")


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sms.smpp_server",
        description="SMPP 3.4 SMSC simulator listening on 127.0.0.1: accepts submit_sm, returns delivery receipts.",
    )
    add_arguments(parser)
    return parser


async def serve(simulator: SmscSimulator, *, stats_interval: float = 0.0, stop: asyncio.Event | None = None) -> None:
    """Run ``simulator`` until ``stop`` is set (or the task is cancelled), printing its counters every
    ``stats_interval`` seconds if set."""
    stop = stop or asyncio.Event()
    await simulator.start()
    print(f"SMSC simulator listening on {simulator.host}:{simulator.port}", flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=stats_interval or None)
            if stats_interval and not stop.is_set():
                print(simulator.stats(), flush=True)
    finally:
        await simulator.stop()
        print(simulator.stats(), flush=True)


def run(options: Mapping[str, Any]) -> None:
    """Run a simulator built from parsed options (argparse dest names) until SIGINT or SIGTERM."""

    async def run_until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Handled explicitly: a shell starts background jobs with SIGINT ignored, and supervisors send SIGTERM.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        accounts = options.get("account")
        simulator = SmscSimulator(
            options.get("host") or "127.0.0.1",
            options["port"],
            receipt_delay=options["receipt_delay"],
            failure_ratio=options["failure_ratio"],
            throttle_ratio=options["throttle_ratio"],
            reject_ratio=options["reject_ratio"],
            response_delay=options.get("response_delay") or 0.0,
            system_ids=dict(accounts) if accounts else None,
            seed=options.get("seed"),
        )
        await serve(simulator, stats_interval=options.get("stats_interval") or 0.0, stop=stop)

    asyncio.run(run_until_signalled())


def main(argv: list[str] | None = None) -> int:
    """Command line entry: run the simulator (on 127.0.0.1 unless --host says otherwise) until Ctrl-C or SIGTERM."""
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run(vars(args))
    except ValueError as exc:  # a ratio or delay out of range
        print(f"smsc simulator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
