"""Upstream SMPP 3.4 client: one operator-configured connection to an SMSC, built on smpplib.

Pure module (no Django import). The worker-side glue (``sms/runner.py``) creates one :class:`SmppGateway` per
enabled gateway, feeds it :class:`SubmitPart` objects and stores what comes back through three callbacks.

What it does
    - Keeps the bind open: one ``bind_transceiver``, or a ``bind_transmitter`` plus a ``bind_receiver``
      (``bind_mode="transmitter_receiver"``; the two are treated as one unit: if either drops, both rebind).
    - ``enquire_link`` when a link has been quiet for ``enquire_link_s``; unanswered within
      ``min(enquire_link_s, 10 s)`` the link is dead and is reconnected. enquire_link from the SMSC is answered.
    - Reconnects with exponential back-off (0.25 s doubling, capped at ``reconnect_max_s``; reset only by a
      bind that lasted STABLE_BIND_S, so an SMSC that accepts binds and drops them at once is not hammered); a
      refused bind (wrong password) counts as a failed attempt like a refused TCP connection. An SMSC-initiated
      unbind is answered (unbind_resp) and followed by a reconnect.
    - At most ``window`` submit_sm outstanding, and the ``tps`` limit as a token bucket holding at most 20 ms
      of traffic (so sending is smooth, never a burst of a full second).
    - ESME_RTHROTTLED (0x58) and ESME_RMSGQFUL (0x14) are never reported: the part is retried after its own
      back-off (0.1 s doubling per attempt, capped at 2 s), and when the SMSC throttles twice in a row without
      accepting anything in between, all sending pauses (50 ms doubling, capped at 5 s). Every other
      command_status is final and reported through ``on_result`` (a ``generic_nack`` for a submit_sm counts
      as a final answer with its status). A part no submit_sm can carry (short_message over 254 octets,
      an empty, non-ASCII or over-long address, a validity over 16 characters) is answered at once with the
      status an SMSC would give (ESME_RINVMSGLEN, RINVSRCADR, RINVDSTADR, RINVEXPIRY) and never sent.
    - Delivery semantics are **at-least-once**: parts in flight when a bind drops (sent, no submit_sm_resp
      yet) are submitted again after the reconnect, first in line. The SMSC may already have accepted some
      of them (their answers were lost with the connection), so a handset may in rare cases receive such a
      part twice. The caller still gets exactly one result per part: answers that arrive for a connection
      already given up are ignored. A submit_sm unanswered for ``SUBMIT_RESP_TIMEOUT_S`` is treated like a
      dead link. Throttled parts are not sent twice: a throttling answer means the SMSC did not take it.
    - deliver_sm: a delivery receipt (esm_class message type 0x04 SMSC receipt, 0x08 SME ack or 0x20
      intermediate notification, or any deliver_sm with a ``receipted_message_id`` TLV) is parsed with
      :func:`sms.receipts.parse_receipt` (TLVs preferred, Appendix B text otherwise) and reported through
      ``on_receipt``; anything else is an MO message, decoded with :func:`sms.encoding.decode` (UDH
      stripped) and reported through ``on_incoming``. **Concatenated MO messages are passed part by part**
      (one :class:`IncomingMessage` per deliver_sm, in arrival order, with ``concat`` and ``body`` set from the
      UDH or the sar_* TLVs); reassembly is the caller's (``sms.services.incoming``).
      data_sm from the SMSC is handled the same way (message_payload) and answered with data_sm_resp.
    - Every deliver_sm is answered with deliver_sm_resp **after** its callback returned, so a receipt is
      not acknowledged before the caller has it: ESME_ROK if the callback returned, ESME_RX_T_APPN (0x64,
      "temporary, send again") if it raised, which asks the SMSC to redeliver. A receipt that cannot be
      parsed at all is acknowledged (ESME_ROK) and logged, since sending it again would not help.

Threads and callbacks
    Per gateway: a *link* thread (connects, binds, sends submit_sm and enquire_link, reconnects), one
    *reader* thread per TCP connection, and a *dispatcher* thread that calls the callbacks in batches: it
    waits up to ``BATCH_LINGER_S`` after the first item for more, then calls ``on_result`` (everything
    collected), ``on_receipt``, ``on_incoming`` in that order, so a result is always handed over before a
    receipt read after it. An exception in a callback is logged and does not stop the gateway; results
    whose callback raised are not offered again (they would be charged twice).

Addresses
    ``dest_ton`` / ``dest_npi`` apply to every destination (a leading ``+`` is dropped). The sender's TON/NPI
    follow the sender: alphanumeric ids go as 5/0, ``+`` numbers as international 1/1, and digits with the
    configured ``source_ton`` / ``source_npi`` (if that is the alphanumeric 5, long numbers go as 1/1 and short
    codes as 3/0, since SMSCs refuse digits flagged alphanumeric).

Encoding
    smpplib builds and frames submit_sm, enquire_link, unbind and the binds (on a socket with TCP_NODELAY: one
    write per PDU batch, no Nagle delay). deliver_sm is read by the project's own lean parser of
    ``sms.smpp_server`` (15 times faster than smpplib's generic PDU classes; smpplib remains the fall-back and
    reads data_sm). submit_sm responses and the small fixed answers are read and written with ``struct``.

Stopping
    :meth:`SmppGateway.stop` stops sending, waits (within ``timeout``) for the answers to what is in flight
    and for the callbacks, then unbinds cleanly (unbind / unbind_resp) and closes. Parts still queued are not
    sent and not reported; :meth:`SmppGateway.stats` ``queued`` tells how many. A gateway is started once.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from .encoding import ESM_CLASS_UDHI, UnsupportedDataCoding, decode, parse_concat, split_udh
from .receipts import parse_receipt
from .smpp_server import SmppError, parse_submit_sm, parse_tlvs, submit_sm_pdu

__all__ = [
    "BIND_MODES",
    "GatewayConfig",
    "IncomingMessage",
    "IncomingReceipt",
    "SmppGateway",
    "SubmitPart",
    "SubmitResult",
    "THROTTLING_STATUSES",
]

logger = logging.getLogger(__name__)

BIND_MODES = ("transceiver", "transmitter_receiver")

ESME_ROK = 0x00000000
ESME_RINVMSGLEN = 0x00000001
ESME_RINVCMDID = 0x00000003
ESME_RSYSERR = 0x00000008
ESME_RINVSRCADR = 0x0000000A
ESME_RINVDSTADR = 0x0000000B
ESME_RMSGQFUL = 0x00000014
ESME_RTHROTTLED = 0x00000058
ESME_RINVEXPIRY = 0x00000062
ESME_RX_T_APPN = 0x00000064  # ESME receiver temporary application error: the SMSC should deliver again
THROTTLING_STATUSES = frozenset({ESME_RTHROTTLED, ESME_RMSGQFUL})

# Command ids (SMPP 3.4, 5.1.2.1) for the few PDUs answered without smpplib's help.
GENERIC_NACK = 0x80000000
DELIVER_SM = 0x00000005
DATA_SM = 0x00000103
UNBIND = 0x00000006
ENQUIRE_LINK = 0x00000015
RESPONSE_BIT = 0x80000000

TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_NETWORK_ERROR_CODE = 0x0423
TAG_MESSAGE_PAYLOAD = 0x0424
TAG_MESSAGE_STATE = 0x0427
SAR_TAGS = {0x020C: "sar_msg_ref_num", 0x020E: "sar_total_segments", 0x020F: "sar_segment_seqnum"}

ESM_CLASS_TYPE_MASK = 0x3C
RECEIPT_TYPES = frozenset({0x04, 0x08, 0x20})  # SMSC delivery receipt, SME delivery ack, intermediate notification
MAX_SHORT_MESSAGE = 254  # sm_length is one octet (5.2.21); longer parts must be split by the caller
MAX_ADDRESS = 20  # source_addr / destination_addr: C-octet strings of at most 21 octets (5.2.8, 5.2.9)

CONNECT_TIMEOUT_S = 10.0  # TCP connect and bind response
SUBMIT_RESP_TIMEOUT_S = 30.0  # a submit_sm unanswered this long means the link is broken
ENQUIRE_LINK_TIMEOUT_MAX_S = 10.0
RECONNECT_INITIAL_S = 0.25
STABLE_BIND_S = 10.0  # a bind that lasted this long resets the reconnect back-off
RETRY_INITIAL_S = 0.1  # per-part back-off after a throttling answer
RETRY_MAX_S = 2.0
PAUSE_INITIAL_S = 0.05  # whole-link pause once the SMSC throttles repeatedly
PAUSE_MAX_S = 5.0
TOKEN_BUCKET_S = 0.02  # the bucket holds this much traffic: smooth sending, no bursts
BATCH_LINGER_S = 0.02  # the dispatcher waits this long after the first item for more
BATCH_MAX = 5000
THROUGHPUT_WINDOW_S = 5
MAX_PDU_SIZE = 70_000
RECV_SIZE = 256 * 1024

_STATES = {
    "delivered": "DELIVRD",
    "undelivered": "UNDELIV",
    "expired": "EXPIRED",
    "rejected": "REJECTD",
    "deleted": "DELETED",
    "unknown": "UNKNOWN",
    "accepted": "ACCEPTD",
    "enroute": "ACCEPTD",  # intermediate: on its way, not final
}


# --- the interface ---


@dataclass(frozen=True)
class GatewayConfig:
    """One upstream SMPP connection as the operator configured it."""

    name: str
    host: str
    port: int
    system_id: str
    password: str
    system_type: str = ""
    bind_mode: str = "transceiver"  # "transceiver" | "transmitter_receiver"
    tps: float = 100
    window: int = 10
    source_ton: int = 5
    source_npi: int = 0
    dest_ton: int = 1
    dest_npi: int = 1
    enquire_link_s: float = 30.0
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.bind_mode not in BIND_MODES:
            raise ValueError(f"bind_mode must be one of {', '.join(BIND_MODES)}, got {self.bind_mode!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if not self.tps > 0:
            raise ValueError(f"tps must be positive, got {self.tps}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if not self.enquire_link_s > 0:
            raise ValueError(f"enquire_link_s must be positive, got {self.enquire_link_s}")
        if not self.reconnect_max_s > 0:
            raise ValueError(f"reconnect_max_s must be positive, got {self.reconnect_max_s}")
        if len(self.system_id) > 15 or len(self.password) > 8 or len(self.system_type) > 12:
            # The C-octet string limits of bind (5.2.1-5.2.3); smpplib would truncate silently.
            raise ValueError("system_id, password and system_type are limited to 15, 8 and 12 characters")


@dataclass(frozen=True)
class SubmitPart:
    """One submit_sm to send: a message part, already encoded (and with its UDH when concatenated)."""

    ref: Hashable  # the caller's, handed back in the SubmitResult
    source: str
    destination: str
    short_message: bytes
    data_coding: int
    esm_class: int
    registered_delivery: int = 1
    validity_period: str | None = None


@dataclass(frozen=True)
class SubmitResult:
    """The final answer to one SubmitPart: command_status 0 with the SMSC's message id, or an error status."""

    ref: Hashable
    command_status: int
    smsc_message_id: str | None


@dataclass(frozen=True)
class IncomingReceipt:
    """A delivery receipt, to be matched to a part by ``smsc_message_id`` (see sms.receipts.message_id_variants).

    ``state``: DELIVRD, UNDELIV, EXPIRED, REJECTD, DELETED, UNKNOWN or ACCEPTD (intermediate notifications,
    ENROUTE, come as ACCEPTD). ``done_at`` is read as UTC (the SMSC's clock; SMPP carries no zone).
    ``text`` is the receipt's whole short_message as received (the Appendix B string), for the record.
    """

    smsc_message_id: str
    state: str
    error_code: str | None
    done_at: datetime | None
    text: str


@dataclass(frozen=True)
class IncomingMessage:
    """One mobile-originated deliver_sm; a concatenated MO arrives as one of these per part."""

    source: str
    destination: str
    text: str
    data_coding: int
    esm_class: int
    # A part of a concatenated message (UDH IE 0x00/0x08, or the sar_* TLVs): (reference, total, sequence from 1)
    # and its payload without the UDH, so the caller can join the parts' octets before decoding (sms.services.incoming).
    concat: tuple[int, int, int] | None = None
    body: bytes = b""


# --- internals ---


@dataclass(slots=True)
class _Queued:
    """A part waiting for (another) submit_sm, with its attempt count."""

    part: SubmitPart
    attempts: int = 0
    sent_at: float = 0.0


class _Sequence:
    """smpplib's sequence generator interface, safe to use from the link, reader and dispatcher threads."""

    MAX_SEQUENCE = 0x7FFFFFFF

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sequence = 0

    @property
    def sequence(self) -> int:
        return self._sequence

    def next_sequence(self) -> int:
        with self._lock:
            self._sequence = 1 if self._sequence >= self.MAX_SEQUENCE else self._sequence + 1
            return self._sequence


class _LinkBroken(Exception):
    """The TCP connection or the bind is gone (or was found dead)."""


class _Link:
    """One TCP connection and bind: an smpplib Client, a send lock, and liveness bookkeeping."""

    def __init__(self, gateway: SmppGateway, mode: str) -> None:
        config = gateway.config
        self.gateway = gateway
        self.mode = mode  # transceiver, transmitter, receiver
        self.client = smpplib.client.Client(
            config.host,
            config.port,
            timeout=CONNECT_TIMEOUT_S,
            sequence_generator=_Sequence(),
            logger_name=f"{__name__}.{config.name}.{mode}",
            allow_unknown_opt_params=True,
        )
        self.sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self.broken = threading.Event()
        self.reason = ""
        self.last_received = time.monotonic()
        self.enquire_link_sent_at: float | None = None  # outstanding enquire_link
        self.unbind_answered = threading.Event()
        self.reader: threading.Thread | None = None

    @property
    def can_submit(self) -> bool:
        return self.mode != "receiver"

    def open(self) -> None:
        """Connect and bind; raises _LinkBroken with the reason on failure."""
        config = self.gateway.config
        client = self.client
        try:
            client.connect()
            self.sock = client._socket
            # smpplib writes one PDU per send: without TCP_NODELAY Nagle's algorithm caps it at a few dozen/s.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            getattr(client, f"bind_{self.mode}")(
                system_id=config.system_id,
                password=config.password,
                system_type=config.system_type,
                interface_version=0x34,
            )
        except smpplib.exceptions.PDUError as exc:
            status = exc.args[1] if len(exc.args) > 1 else None
            self.close()
            raise _LinkBroken(f"bind_{self.mode} refused with status 0x{status or 0:08X}") from exc
        except (smpplib.exceptions.ConnectionError, OSError) as exc:
            self.close()
            raise _LinkBroken(f"cannot connect to {config.host}:{config.port}: {exc or type(exc).__name__}") from exc
        self.last_received = time.monotonic()

    def send(self, octets: bytes) -> None:
        sock = self.sock
        if sock is None or self.broken.is_set():
            raise _LinkBroken(self.reason or "link closed")
        try:
            with self._send_lock:
                sock.sendall(octets)
        except OSError as exc:
            self.mark_broken(f"send failed: {exc}")
            raise _LinkBroken(self.reason) from exc

    def send_quietly(self, octets: bytes) -> bool:
        try:
            self.send(octets)
        except _LinkBroken:
            return False
        return True

    def make(self, command: str, **kwargs: object) -> smpplib.command.Command:
        return smpplib.smpp.make_pdu(command, client=self.client, **kwargs)

    def mark_broken(self, reason: str) -> None:
        if not self.broken.is_set():
            self.reason = reason
            self.broken.set()
            self.gateway._wake_link_thread()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self.client._socket = None
        self.client.state = smpplib.consts.SMPP_CLIENT_STATE_CLOSED
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class SmppGateway:
    """An upstream SMPP connection with its queue, window, TPS limit, retries and callbacks."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        on_result: Callable[[list[SubmitResult]], None],
        on_receipt: Callable[[list[IncomingReceipt]], None],
        on_incoming: Callable[[list[IncomingMessage]], None],
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_result = on_result
        self._on_receipt = on_receipt
        self._on_incoming = on_incoming
        self._on_state = on_state
        self.state = "unbound"

        # Sending side, guarded by _lock; the link thread waits on _wake.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[_Queued] = collections.deque()
        self._retry: list[tuple[float, int, _Queued]] = []  # heap by due time
        self._retry_order = itertools.count()
        self._in_flight: dict[tuple[int, int], _Queued] = {}  # (link id, sequence) -> part
        self._paused_until = 0.0
        self._consecutive_throttles = 0
        self._tokens = 0.0
        self._tokens_at = time.monotonic()

        # Dispatching side, guarded by _dispatch_lock.
        self._dispatch_lock = threading.Lock()
        self._dispatch_ready = threading.Condition(self._dispatch_lock)
        self._results: list[SubmitResult] = []
        self._receipts: list[tuple[IncomingReceipt, _Link, int, int]] = []  # receipt, link, sequence, command id
        self._incoming: list[tuple[IncomingMessage, _Link, int, int]] = []
        self._dispatching = False

        self._stopping = threading.Event()
        self._draining = threading.Event()  # stop(): no new submits go out
        self._started = False
        self._threads: list[threading.Thread] = []
        self._counters = collections.Counter()
        self._throughput: collections.deque[list[int]] = collections.deque()  # [second, results]
        self._throughput_lock = threading.Lock()
        self.last_error = ""

    # --- public API ---

    def start(self) -> None:
        """Start binding in the background; returns at once (watch ``state`` or ``on_state``)."""
        if self._started:
            raise RuntimeError(f"gateway {self.config.name} was already started")
        self._started = True
        name = self.config.name
        for target, suffix in ((self._run_links, "link"), (self._run_dispatcher, "dispatch")):
            thread = threading.Thread(target=target, name=f"smpp-{name}-{suffix}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5) -> None:
        """Stop sending, let in-flight answers and callbacks finish (within ``timeout``), unbind, close."""
        if not self._started or self._stopping.is_set():
            return
        deadline = time.monotonic() + timeout
        self._draining.set()
        self._wake_link_thread()
        while time.monotonic() < deadline - 0.1 * timeout:
            with self._lock:
                waiting = bool(self._in_flight) and self.state == "bound"
            if not waiting and self._callbacks_idle():
                break
            time.sleep(0.01)
        self._stopping.set()
        self._wake_link_thread()
        with self._dispatch_lock:
            self._dispatch_ready.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._set_state("unbound")

    def submit(self, parts: Sequence[SubmitPart]) -> None:
        """Queue parts for sending; returns at once. Results come through ``on_result``."""
        if self._stopping.is_set() or self._draining.is_set():
            raise RuntimeError(f"gateway {self.config.name} is stopped")
        refused: list[SubmitResult] = []
        queued = []
        for part in parts:
            status = _part_status(part)
            if status:
                refused.append(SubmitResult(part.ref, status, None))
            else:
                queued.append(_Queued(part))
        with self._lock:
            self._queue.extend(queued)
            self._wake.notify()
        if refused:
            self._emit_results(refused)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued, waiting for a retry or in flight, and every callback has returned."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = bool(self._queue or self._retry or self._in_flight)
            if not busy and self._callbacks_idle():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def stats(self) -> dict:
        """Counters and gauges for the console and /ws/live/."""
        with self._lock:
            queued = len(self._queue) + len(self._retry)
            in_flight = len(self._in_flight)
        counters = self._counters
        return {
            "name": self.config.name,
            "state": self.state,
            "queued": queued,
            "in_flight": in_flight,
            "submitted": counters["submitted"],  # submit_sm PDUs written, retries included
            "results": counters["results"],  # final answers reported
            "accepted": counters["accepted"],
            "rejected": counters["rejected"],
            "receipts": counters["receipts"],
            "incoming": counters["incoming"],
            "throughput_per_s": self._throughput_per_s(),
            "reconnects": counters["reconnects"],
            "throttled": counters["throttled"],
            "callback_errors": counters["callback_errors"],
            "last_error": self.last_error,
        }

    # --- link thread: connect, bind, send, reconnect ---

    def _run_links(self) -> None:
        backoff = min(RECONNECT_INITIAL_S, self.config.reconnect_max_s)
        first = True
        while not self._stopping.is_set():
            if not first:
                self._counters["reconnects"] += 1
            first = False
            self._set_state("connecting")
            try:
                links = self._open_links()
                if links is not None:
                    bound_at = time.monotonic()
                    self._set_state("bound")
                    try:
                        self._send_until_broken(links)
                    finally:
                        self._close_links(links)
                    # A bind that lasted resets the back-off; one dropped at once (a flapping SMSC) does not.
                    if time.monotonic() - bound_at >= STABLE_BIND_S:
                        backoff = min(RECONNECT_INITIAL_S, self.config.reconnect_max_s)
            except Exception:  # a bug must not end the gateway: log it and reconnect
                logger.exception("SMPP gateway %s: link thread failed", self.config.name)
                self.last_error = "internal error (see the log)"
            if self._stopping.is_set():
                break
            self._set_state("connecting")
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, self.config.reconnect_max_s)
        self._set_state("unbound")

    def _open_links(self) -> list[_Link] | None:
        modes = ("transceiver",) if self.config.bind_mode == "transceiver" else ("transmitter", "receiver")
        links: list[_Link] = []
        try:
            for mode in modes:
                link = _Link(self, mode)
                link.open()
                links.append(link)
        except _LinkBroken as exc:
            self.last_error = str(exc)
            logger.warning("SMPP gateway %s: %s", self.config.name, exc)
            for link in links:
                self._unbind(link, timeout=1.0)
                link.close()
            return None
        logger.info("SMPP gateway %s bound (%s)", self.config.name, self.config.bind_mode)
        for link in links:
            link.reader = threading.Thread(
                target=self._read, args=(link,), name=f"smpp-{self.config.name}-{link.mode}-read", daemon=True
            )
            link.reader.start()
        return links

    def _close_links(self, links: list[_Link]) -> None:
        """After a break or on stop: unbind what still works, close, put unanswered parts back in front."""
        if self._stopping.is_set():
            for link in links:
                if not link.broken.is_set():
                    self._unbind(link, timeout=1.0)
        for link in links:
            link.mark_broken(link.reason or "closing")
            link.close()
        for link in links:
            if link.reader is not None and link.reader is not threading.current_thread():
                link.reader.join(2.0)
        with self._lock:
            unanswered = list(self._in_flight.values())
            self._in_flight.clear()
            # At-least-once: whatever got no answer is sent again, first in line, in its original order.
            self._queue.extendleft(reversed(unanswered))
            self._tokens = 0.0
        reason = "; ".join(sorted({link.reason for link in links if link.reason not in ("", "closing")}))
        if reason and not self._stopping.is_set():
            self.last_error = reason
            logger.warning(
                "SMPP gateway %s: link lost (%s); %d part(s) in flight will be resubmitted",
                self.config.name,
                reason,
                len(unanswered),
            )

    def _unbind(self, link: _Link, timeout: float) -> None:
        if link.sock is None:
            return
        if link.reader is None:  # not reading yet (a half-opened pair): read the answer here
            try:
                link.client.unbind()
            except (smpplib.exceptions.PDUError, smpplib.exceptions.ConnectionError, OSError):
                pass
            return
        if link.send_quietly(link.make("unbind").generate()):
            link.unbind_answered.wait(timeout)

    def _send_until_broken(self, links: list[_Link]) -> None:
        config = self.config
        submit_link = next(link for link in links if link.can_submit)
        link_id = id(submit_link)
        burst = max(1.0, config.tps * TOKEN_BUCKET_S)
        enquire_timeout = min(config.enquire_link_s, ENQUIRE_LINK_TIMEOUT_MAX_S)
        while True:
            now = time.monotonic()
            # Liveness: enquire_link on quiet links, dead when unanswered.
            for link in links:
                if link.broken.is_set() or self._stopping.is_set():
                    return
                if link.enquire_link_sent_at is not None:
                    if now - link.enquire_link_sent_at > enquire_timeout:
                        link.mark_broken(f"enquire_link unanswered for {enquire_timeout:g} s")
                        return
                elif now - link.last_received >= config.enquire_link_s:
                    link.enquire_link_sent_at = now
                    try:
                        link.send(link.make("enquire_link").generate())
                    except _LinkBroken:
                        return

            batch: list[tuple[int, _Queued]] = []
            with self._lock:
                oldest_sent_at = next(iter(self._in_flight.values())).sent_at if self._in_flight else now
            if now - oldest_sent_at > SUBMIT_RESP_TIMEOUT_S:
                submit_link.mark_broken(f"submit_sm unanswered for {SUBMIT_RESP_TIMEOUT_S:g} s")
                return
            with self._lock:
                self._move_due_retries(now)
                self._tokens = min(burst, self._tokens + (now - self._tokens_at) * config.tps)
                self._tokens_at = now
                room = config.window - len(self._in_flight)
                if self._draining.is_set() or now < self._paused_until:
                    room = 0
                count = min(room, len(self._queue), int(self._tokens))
                if count > 0:
                    self._tokens -= count
                    sequence = submit_link.client.sequence_generator
                    for _ in range(count):
                        queued = self._queue.popleft()
                        queued.sent_at = now
                        queued.attempts += 1
                        seq = sequence.next_sequence()
                        self._in_flight[(link_id, seq)] = queued
                        batch.append((seq, queued))
                else:
                    self._wake.wait(self._next_wake(now, room, burst))
                    continue
            pdus = []
            unsendable: list[SubmitResult] = []
            for seq, queued in batch:
                try:
                    pdus.append(self._submit_sm(seq, queued.part))
                except Exception as exc:  # noqa: BLE001 - one odd part must not stop the link
                    logger.warning("SMPP gateway %s: cannot encode part %r: %s", self.config.name, queued.part.ref, exc)
                    with self._lock:
                        self._in_flight.pop((link_id, seq), None)
                    unsendable.append(SubmitResult(queued.part.ref, ESME_RSYSERR, None))
            if unsendable:
                self._emit_results(unsendable)
            self._counters["submitted"] += len(pdus)
            try:
                submit_link.send(b"".join(pdus))
            except _LinkBroken:
                return

    def _next_wake(self, now: float, room: int, burst: float) -> float:
        """How long the link thread may sleep: until a token, a retry, the pause end or a liveness check."""
        wait = 0.1
        if self._queue and room > 0 and self._tokens < 1:
            wait = min(wait, (1 - self._tokens) / self.config.tps)
        if self._retry:
            wait = min(wait, self._retry[0][0] - now)
        if self._paused_until > now:
            wait = min(wait, self._paused_until - now)
        return max(wait, 0.0005)

    def _move_due_retries(self, now: float) -> None:
        retry = self._retry
        due = []
        while retry and retry[0][0] <= now:
            due.append(heapq.heappop(retry)[2])
        if due:
            self._queue.extendleft(reversed(due))

    def _submit_sm(self, sequence: int, part: SubmitPart) -> bytes:
        config = self.config
        return submit_sm_pdu(
            sequence=sequence,
            source=_source_address(part.source, config.source_ton, config.source_npi),
            destination=(config.dest_ton, config.dest_npi, part.destination.lstrip("+")),
            esm_class=part.esm_class,
            data_coding=part.data_coding,
            registered_delivery=part.registered_delivery,
            validity_period=part.validity_period,
            short_message=part.short_message,
        )

    def _wake_link_thread(self) -> None:
        with self._lock:
            self._wake.notify_all()

    # --- reader threads ---

    def _read(self, link: _Link) -> None:
        sock = link.sock
        buffer = bytearray()
        try:
            while not link.broken.is_set() and sock is not None:
                try:
                    readable, _, _ = select.select([sock], [], [], 0.25)
                    if not readable:
                        continue
                    chunk = sock.recv(RECV_SIZE)
                except (OSError, ValueError) as exc:
                    link.mark_broken(f"receive failed: {exc}")
                    return
                if not chunk:
                    link.mark_broken("connection closed by the SMSC")
                    return
                buffer += chunk
                link.last_received = time.monotonic()
                pdus = []
                pos = 0
                available = len(buffer)
                while available - pos >= 16:
                    (length,) = struct.unpack_from(">I", buffer, pos)
                    if length < 16 or length > MAX_PDU_SIZE:
                        link.mark_broken(f"unframeable PDU (command_length {length})")
                        return
                    if available - pos < length:
                        break
                    pdus.append(bytes(buffer[pos : pos + length]))
                    pos += length
                del buffer[:pos]
                if pdus:
                    self._handle(link, pdus)
        except Exception:  # a bug here must not leave a silent half-dead link behind
            logger.exception("SMPP gateway %s: reader failed", self.config.name)
            link.mark_broken("reader failed")

    def _handle(self, link: _Link, pdus: list[bytes]) -> None:
        results: list[SubmitResult] = []
        replies: list[bytes] = []
        receipts: list[tuple[IncomingReceipt, _Link, int, int]] = []
        incoming: list[tuple[IncomingMessage, _Link, int, int]] = []
        answered: list[tuple[int, int, str | None]] = []  # (sequence, status, message_id) of submit_sm answers
        for raw in pdus:
            _, command_id, status, sequence = struct.unpack_from(">IIII", raw)
            if command_id == 0x80000004 or (command_id == GENERIC_NACK and (id(link), sequence) in self._in_flight):
                message_id = None
                if status == ESME_ROK and len(raw) > 16:
                    message_id = _message_id(raw)
                answered.append((sequence, status, message_id))
            elif command_id in (DELIVER_SM, DATA_SM):
                self._on_deliver(link, raw, command_id, sequence, receipts, incoming, replies)
            elif command_id == ENQUIRE_LINK:
                replies.append(_header(0x80000015, ESME_ROK, sequence))
            elif command_id == 0x80000015:
                link.enquire_link_sent_at = None
            elif command_id == UNBIND:
                replies.append(_header(0x80000006, ESME_ROK, sequence))
                link.send_quietly(b"".join(replies))
                link.mark_broken("unbound by the SMSC")
                return
            elif command_id == 0x80000006:
                link.unbind_answered.set()
            elif command_id & RESPONSE_BIT:
                pass  # an answer to something we did not ask (or a generic_nack for an enquire_link)
            else:
                replies.append(_header(GENERIC_NACK, ESME_RINVCMDID, sequence))
        if answered:
            self._on_answers(link, answered, results)
        if replies:
            link.send_quietly(b"".join(replies))
        if results or receipts or incoming:
            with self._dispatch_lock:
                self._results.extend(results)
                self._receipts.extend(receipts)
                self._incoming.extend(incoming)
                self._dispatch_ready.notify()

    def _on_answers(self, link: _Link, answered: list, results: list[SubmitResult]) -> None:
        now = time.monotonic()
        link_id = id(link)
        throttled = 0
        with self._lock:
            for sequence, status, message_id in answered:
                queued = self._in_flight.pop((link_id, sequence), None)
                if queued is None:
                    continue  # an answer after the link was given up: the part was already requeued
                if status in THROTTLING_STATUSES:
                    throttled += 1
                    self._consecutive_throttles += 1
                    delay = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** min(queued.attempts - 1, 16))
                    heapq.heappush(self._retry, (now + delay, next(self._retry_order), queued))
                    if self._consecutive_throttles >= 2:
                        pause = min(PAUSE_MAX_S, PAUSE_INITIAL_S * 2 ** min(self._consecutive_throttles - 2, 16))
                        self._paused_until = max(self._paused_until, now + pause)
                    continue
                if status == ESME_ROK:
                    self._consecutive_throttles = 0
                results.append(SubmitResult(queued.part.ref, status, message_id))
            self._wake.notify()
        if throttled:
            self._counters["throttled"] += throttled

    def _on_deliver(
        self,
        link: _Link,
        raw: bytes,
        command_id: int,
        sequence: int,
        receipts: list,
        incoming: list,
        replies: list[bytes],
    ) -> None:
        """Turn a deliver_sm / data_sm into a receipt or an MO; unusable ones are answered at once."""
        try:
            fields = _deliver_fields(link, raw, command_id)
        except Exception as exc:  # noqa: BLE001 - any PDU an SMSC can send must not stop the reader
            logger.warning("SMPP gateway %s: unreadable deliver_sm %d: %s", self.config.name, sequence, exc)
            replies.append(_deliver_resp(command_id, ESME_ROK, sequence))
            return
        esm_class = fields["esm_class"]
        tlvs = fields["tlvs"]
        payload = fields["payload"]
        if (esm_class & ESM_CLASS_TYPE_MASK) in RECEIPT_TYPES or tlvs.get("receipted_message_id"):
            receipt = parse_receipt(short_message=payload, tlvs=tlvs, tzinfo=UTC)
            if receipt is None:
                logger.warning("SMPP gateway %s: receipt without id or state: %r", self.config.name, payload[:160])
                replies.append(_deliver_resp(command_id, ESME_ROK, sequence))
                return
            text = payload.decode("latin-1") if isinstance(payload, bytes) else str(payload)
            item = IncomingReceipt(
                smsc_message_id=receipt.message_id,
                state=_STATES.get(receipt.state, "UNKNOWN"),
                error_code=receipt.error_code or None,
                done_at=receipt.done_date,
                text=text,
            )
            receipts.append((item, link, sequence, command_id))
            return
        data_coding = fields["data_coding"]
        text = _mo_text(payload, data_coding, esm_class)
        concat, body = _concatenation(payload, esm_class, tlvs)
        message = IncomingMessage(
            source=fields["source"],
            destination=fields["destination"],
            text=text,
            data_coding=data_coding,
            esm_class=esm_class,
            concat=concat,
            body=body,
        )
        incoming.append((message, link, sequence, command_id))

    # --- dispatcher thread: callbacks in batches, then deliver_sm_resp ---

    def _run_dispatcher(self) -> None:
        while True:
            with self._dispatch_lock:
                while not (self._results or self._receipts or self._incoming):
                    if self._stopping.is_set():
                        return
                    self._dispatch_ready.wait(0.25)
                first_seen = time.monotonic()
            # Linger a little so callbacks get batches, not single items.
            while time.monotonic() - first_seen < BATCH_LINGER_S and not self._stopping.is_set():
                with self._dispatch_lock:
                    if len(self._results) + len(self._receipts) + len(self._incoming) >= BATCH_MAX:
                        break
                time.sleep(0.002)
            with self._dispatch_lock:
                results, self._results = self._results, []
                receipts, self._receipts = self._receipts, []
                incoming, self._incoming = self._incoming, []
                self._dispatching = True
            try:
                self._dispatch(results, receipts, incoming)
            finally:
                with self._dispatch_lock:
                    self._dispatching = False

    def _dispatch(self, results: list[SubmitResult], receipts: list, incoming: list) -> None:
        if results:
            self._count_results(results)
            self._call(self._on_result, results)
        acks: dict[int, tuple[_Link, list[bytes]]] = {}
        for items, callback, counter in (
            (receipts, self._on_receipt, "receipts"),
            (incoming, self._on_incoming, "incoming"),
        ):
            if not items:
                continue
            self._counters[counter] += len(items)
            status = ESME_ROK if self._call(callback, [item for item, _, _, _ in items]) else ESME_RX_T_APPN
            for _, link, sequence, command_id in items:
                acks.setdefault(id(link), (link, []))[1].append(_deliver_resp(command_id, status, sequence))
        for link, replies in acks.values():
            link.send_quietly(b"".join(replies))

    def _call(self, callback: Callable[[list], None], items: list) -> bool:
        try:
            callback(items)
        except Exception:
            self._counters["callback_errors"] += 1
            logger.exception("SMPP gateway %s: %s raised", self.config.name, getattr(callback, "__name__", callback))
            return False
        return True

    def _emit_results(self, results: list[SubmitResult]) -> None:
        with self._dispatch_lock:
            self._results.extend(results)
            self._dispatch_ready.notify()

    def _callbacks_idle(self) -> bool:
        with self._dispatch_lock:
            return not (self._dispatching or self._results or self._receipts or self._incoming)

    def _count_results(self, results: list[SubmitResult]) -> None:
        accepted = sum(1 for result in results if result.command_status == ESME_ROK)
        counters = self._counters
        counters["results"] += len(results)
        counters["accepted"] += accepted
        counters["rejected"] += len(results) - accepted
        second = int(time.monotonic())
        throughput = self._throughput
        with self._throughput_lock:
            if throughput and throughput[-1][0] == second:
                throughput[-1][1] += len(results)
            else:
                throughput.append([second, len(results)])
            while throughput and throughput[0][0] < second - THROUGHPUT_WINDOW_S:
                throughput.popleft()

    def _throughput_per_s(self) -> float:
        """Final results per second over the last few whole seconds."""
        now = time.monotonic()
        current = int(now)
        with self._throughput_lock:
            total = sum(
                count for second, count in self._throughput if current - THROUGHPUT_WINDOW_S <= second < current
            )
        return round(total / THROUGHPUT_WINDOW_S, 1)

    # --- state ---

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                logger.exception("SMPP gateway %s: on_state raised", self.config.name)


# --- PDU helpers ---


def _header(command_id: int, status: int, sequence: int) -> bytes:
    return struct.pack(">IIII", 16, command_id, status, sequence)


def _deliver_resp(command_id: int, status: int, sequence: int) -> bytes:
    """deliver_sm_resp / data_sm_resp with an empty message_id (5.2.28: unused, set to NULL)."""
    return struct.pack(">IIII", 17, command_id | RESPONSE_BIT, status, sequence) + b"\x00"


def _message_id(raw: bytes) -> str | None:
    end = raw.find(b"\x00", 16)
    message_id = raw[16:end] if end >= 0 else raw[16:]
    return message_id.decode("ascii", errors="replace") or None


def _deliver_fields(link: _Link, raw: bytes, command_id: int) -> dict:
    """Addresses, esm_class, data_coding, the payload and the receipt TLVs of a deliver_sm or data_sm.

    A deliver_sm has submit_sm's layout, so the project's own lean parser (``sms.smpp_server``) reads it: it
    takes 8 us where smpplib's generic PDU classes take about 120 us, which matters at thousands of receipts a
    second. smpplib reads data_sm, and any deliver_sm the lean parser refuses.
    """
    if command_id == DELIVER_SM:
        try:
            deliver = parse_submit_sm(raw[16:])
            tlvs = parse_tlvs(deliver.tlv_octets)
        except SmppError:
            pass
        else:
            return {
                "source": deliver.source_addr.decode("latin-1"),
                "destination": deliver.destination_addr.decode("latin-1"),
                "esm_class": deliver.esm_class,
                "data_coding": deliver.data_coding,
                "payload": deliver.short_message or tlvs.get(TAG_MESSAGE_PAYLOAD, b""),
                "tlvs": {
                    "receipted_message_id": tlvs.get(TAG_RECEIPTED_MESSAGE_ID),
                    "message_state": tlvs.get(TAG_MESSAGE_STATE),
                    "network_error_code": tlvs.get(TAG_NETWORK_ERROR_CODE),
                    **{name: tlvs[tag] for tag, name in SAR_TAGS.items() if tag in tlvs},
                },
            }
    pdu = smpplib.smpp.parse_pdu(raw, client=link.client, allow_unknown_opt_params=True)
    payload = getattr(pdu, "short_message", None) or getattr(pdu, "message_payload", None) or b""
    return {
        "source": _text(pdu.source_addr),
        "destination": _text(pdu.destination_addr),
        "esm_class": pdu.esm_class or 0,
        "data_coding": pdu.data_coding or 0,
        "payload": bytes(payload),
        "tlvs": {
            "receipted_message_id": getattr(pdu, "receipted_message_id", None),
            "message_state": getattr(pdu, "message_state", None),
            "network_error_code": getattr(pdu, "network_error_code", None),
            **{name: getattr(pdu, name) for name in SAR_TAGS.values() if getattr(pdu, name, None) is not None},
        },
    }


def _concatenation(payload: bytes, esm_class: int, tlvs: dict) -> tuple[tuple[int, int, int] | None, bytes]:
    """(reference, total, sequence) of an MO part and its payload without the UDH; (None, b"") for a whole one.

    A malformed UDH (esm_class says there is one, but its length octet runs past the short_message) makes the
    deliver_sm a whole message, whatever its sar_* TLVs say: there is no body to join, and ``_mo_text`` keeps every
    octet as its text. It is stored and acknowledged like any MO, never dropped and never fatal to the reader.
    """
    body = payload
    if esm_class & ESM_CLASS_UDHI:
        try:
            udh, body = split_udh(payload)
        except ValueError:
            return None, b""
        info = parse_concat(udh)
        if info is not None and info.total > 1:
            return (info.reference, info.total, info.sequence), body
    if "sar_msg_ref_num" in tlvs and "sar_total_segments" in tlvs and "sar_segment_seqnum" in tlvs:
        try:
            numbers = [_tlv_int(tlvs[name]) for name in SAR_TAGS.values()]
        except (TypeError, ValueError):
            return None, b""
        if numbers[1] > 1:
            return (numbers[0], numbers[1], numbers[2]), body
    return None, b""


def _mo_text(payload: bytes, data_coding: int, esm_class: int) -> str:
    """An MO's text; with a malformed UDH (see ``_concatenation``) the raw short_message, UDH octets included."""
    try:
        return decode(payload, data_coding, esm_class=esm_class)
    except UnsupportedDataCoding:
        return payload.decode("latin-1")
    except ValueError:  # split_udh: the UDH length runs past the payload
        return _mo_text(payload, data_coding, esm_class & ~ESM_CLASS_UDHI)


def _tlv_int(value: object) -> int:
    return int.from_bytes(value, "big") if isinstance(value, bytes) else int(value)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return "" if value is None else str(value)


def _part_status(part: SubmitPart) -> int:
    """ESME_ROK for a part that fits a submit_sm, else the status an SMSC would refuse it with.

    Caught here rather than by smpplib, which would truncate an over-long address or validity silently.
    """
    if len(part.short_message) > MAX_SHORT_MESSAGE:
        return ESME_RINVMSGLEN
    if not part.source or len(part.source.lstrip("+")) > MAX_ADDRESS or not part.source.isascii():
        return ESME_RINVSRCADR
    destination = part.destination.lstrip("+")
    if not destination or len(destination) > MAX_ADDRESS or not destination.isascii():
        return ESME_RINVDSTADR
    if part.validity_period is not None and (len(part.validity_period) > 16 or not part.validity_period.isascii()):
        return ESME_RINVEXPIRY
    return ESME_ROK


def _source_address(source: str, ton: int, npi: int) -> tuple[int, int, str]:
    """TON/NPI for a sender: alphanumeric ids get 5/0, ``+`` numbers 1/1, digits the configured values.

    A digit-only sender with an alphanumeric TON configured is sent as international (long numbers) or
    national (short codes), since SMSCs reject digits flagged alphanumeric or rewrite them unpredictably.
    """
    if source.startswith("+") and source[1:].isdigit():
        return 1, 1, source[1:]
    if source.isdigit():
        if ton == 5:
            return (1, 1, source) if len(source) > 8 else (3, 0, source)
        return ton, npi, source
    return 5, 0, source
