"""The submitter: the process-side glue that holds the SMPP binds and drives submission.

How the SMPP connections are started and scaled
    Binds live in the Celery worker processes that consume the ``sms`` queue. Each such process has one
    :class:`Runner` (created on its first task). The first ``sms.submit_pending`` task for an operator opens one
    :class:`sms.gateway.SmppGateway` per enabled gateway of that operator and keeps it open (enquire_link, reconnect
    with back-off are the gateway's); a gateway whose settings change is rebound (the key is a hash of its
    settings), a disabled or deleted one is unbound; a gateway that stays unbound for GATEWAY_DOWN_RECYCLE_S gives
    its waiting parts back to the queue, so they fail over to another route. A worker shutting down unbinds cleanly
    and puts what it had not sent back in the queue.

    One sms worker process per host is the usual set-up (``celery -A config worker -Q sms --pool solo``, or
    ``--concurrency 1``): a gateway's TPS and window are per bind, so N processes open N binds per gateway and may
    send N times its TPS — give each gateway the TPS its SMSC allows per bind, or split gateways across workers.
    Submission is not tied to a process: any process may claim any due message (``FOR UPDATE SKIP LOCKED``), so
    more processes (on more hosts) add binds and throughput, and a dead one's messages are taken over (below).

The flow
    ``drain`` (called by the ``sms.submit_pending`` task) claims due messages in chunks (charging them in the same
    transaction: ``sms.services.submission``), encodes them and queues the parts on the gateway chosen for each
    (the first gateway of its failover chain that is bound), as long as the gateways have room (CAPACITY_*), for
    at most a time budget, then returns so other operators' tasks get their turn. The gateways' threads call back
    with results, receipts and MO messages in batches; each batch is written in one transaction before the callback
    returns (so a receipt is acknowledged to the SMSC only once stored). A part refused for good by one gateway is
    submitted through the next bound gateway of its chain; when none is left the message is refused (and its unsent
    parts refunded); when the remaining gateways are only unbound, it goes back to the queue for later.

Liveness
    The runner writes a heartbeat key to Redis every HEARTBEAT_S (TTL HEARTBEAT_TTL_S). The periodic ``sms.maintain``
    task puts back in the queue the messages claimed by a runner whose heartbeat is gone (a worker killed with -9):
    submission is at-least-once, charging exactly-once (see ``sms.services.submission``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC

from django.db import close_old_connections, connection
from django_tenants.utils import schema_context

from .encoding import encode
from .gateway import GatewayConfig, IncomingMessage, IncomingReceipt, SmppGateway, SubmitPart, SubmitResult
from .kv import key, kv
from .selectors import GatewaySpec, sms_config_get
from .services.submission import (
    IncomingIn,
    MessageOutcome,
    PartOutcome,
    ReceiptIn,
    Submission,
    incoming_record,
    messages_claim,
    receipts_record,
    submission_results_record,
)

log = logging.getLogger(__name__)

CLAIM_MAX = 500  # messages per claim transaction
HEARTBEAT_S = 2.0
HEARTBEAT_TTL_S = 8
BIND_WAIT_S = 3.0  # a new gateway gets this long to bind before the first claim
GATEWAY_DOWN_RECYCLE_S = 30.0
UNMATCHED_RECEIPT_KEEP_S = 60.0
DB_RETRY_S = 30.0
GATEWAY_LOST = 0xFFFF_FFFF  # a pseudo command_status: the part was lost with its gateway


@dataclass
class _Handle:
    """One open gateway of one operator in this process."""

    schema: str
    spec: GatewaySpec
    gateway: SmppGateway
    refs: set = field(default_factory=set)  # parts handed to it without a final answer yet
    down_since: float | None = None
    retired: bool = False

    @property
    def id(self) -> int:
        return self.spec.id

    @property
    def bound(self) -> bool:
        return not self.retired and self.gateway.state == "bound"

    @property
    def capacity(self) -> int:
        settings = self.spec.settings
        return max(settings["window"] * 4, int(settings["tps"] * 2), 100)


@dataclass
class _Progress:
    """A claimed message whose parts are with the gateways."""

    submission: Submission
    remaining: set[int]
    parts: dict[int, SubmitPart]
    refused: int | None = None  # a command_status with which some part was refused everywhere
    requeue: bool = False  # some part is waiting for a gateway that is not bound now


class Runner:
    def __init__(self) -> None:
        self.token = f"{socket.gethostname()[:16]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._handles: dict[tuple[str, int], _Handle] = {}
        self._progress: dict[tuple[str, int], _Progress] = {}
        self._deferred: list[tuple[str, Callable, dict]] = []  # writes that failed, retried by the heartbeat
        self._unmatched: dict[tuple[str, int], list[tuple[float, ReceiptIn]]] = defaultdict(list)
        self._schemas: set[str] = set()
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._db_connections: set = set()  # the database connections of the gateways' threads, closed at stop

    # --- lifecycle ---

    def _ensure_started(self) -> None:
        if self._heartbeat is None:
            with self._lock:
                if self._heartbeat is None:
                    self._beat()
                    self._heartbeat = threading.Thread(target=self._run_heartbeat, name="sms-heartbeat", daemon=True)
                    self._heartbeat.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Unbind every gateway (answers in flight are awaited) and give back to the queue what was not sent."""
        self._stopping.set()
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for handle in handles:
            self._retire(handle, timeout=timeout)
        kv().delete(key("runner", self.token))
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=HEARTBEAT_S + 1)
        with self._lock:
            raw_connections, self._db_connections = list(self._db_connections), set()
        for raw in raw_connections:  # their threads are gone or idle now
            try:
                raw.close()
            except Exception:
                pass

    # --- draining (the sms.submit_pending task) ---

    def drain(self, *, schema: str, budget_s: float = 1.0) -> bool:
        """Submit due messages of ``schema`` for up to ``budget_s``; True if more are due (call again)."""
        self._ensure_started()
        self._schemas.add(schema)
        self.gateways_sync(schema=schema)
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline and not self._stopping.is_set():
            room = self._room(schema)
            if room <= 0:
                time.sleep(0.005)
                continue
            submissions = messages_claim(
                token=self.token, limit=min(room, CLAIM_MAX), choose=lambda gateways: self._choose(schema, gateways)
            )
            if not submissions:
                return False
            self._submit(schema, submissions)
        return True

    def _room(self, schema: str) -> int:
        with self._lock:
            handles = [h for (s, _), h in self._handles.items() if s == schema and h.bound]
            return sum(max(0, h.capacity - len(h.refs)) for h in handles) if handles else CLAIM_MAX

    def _choose(self, schema: str, gateways: list[int]) -> int | None:
        for gateway_id in gateways:
            handle = self._handles.get((schema, gateway_id))
            if handle is not None and handle.bound:
                return gateway_id
        return None

    def _submit(self, schema: str, submissions: list[Submission]) -> None:
        by_handle: dict[int, list[SubmitPart]] = defaultdict(list)
        complete: list[MessageOutcome] = []
        lost: list[Submission] = []
        with self._lock:
            for submission in submissions:
                encoded = encode(
                    submission.text,
                    force_ucs2=submission.encoding == "ucs2",
                    reference=submission.message_id % 256,
                )
                if encoded.part_count != submission.parts:
                    log.error(
                        "message %s: %d parts encoded, %d priced",
                        submission.message_id,
                        encoded.part_count,
                        submission.parts,
                    )
                parts = {
                    index: SubmitPart(
                        ref=(schema, submission.message_id, index),
                        source=submission.sender,
                        destination=submission.destination.lstrip("+"),
                        short_message=payload,
                        data_coding=encoded.data_coding,
                        esm_class=encoded.esm_class,
                        registered_delivery=1,
                        validity_period=_smpp_time(submission.valid_until),
                    )
                    for index, payload in enumerate(encoded.parts)
                    if index not in submission.accepted
                }
                if not parts:
                    complete.append(MessageOutcome(submission))  # recovered with every part already out
                    continue
                handle = self._handles.get((schema, submission.gateway_id))
                if handle is None or handle.retired:
                    lost.append(submission)  # its gateway closed since the claim chose it
                    continue
                self._progress[(schema, submission.message_id)] = _Progress(submission, set(parts), parts)
                for part in parts.values():
                    handle.refs.add(part.ref)
                by_handle[submission.gateway_id].extend(parts.values())
            handles = {gateway_id: self._handles[(schema, gateway_id)] for gateway_id in by_handle}
        for gateway_id, parts in by_handle.items():
            try:
                handles[gateway_id].gateway.submit(parts)
            except RuntimeError:  # retired meanwhile
                self._parts_lost(handles[gateway_id], [part.ref for part in parts])
        if complete or lost:
            self._write(schema, submission_results_record, parts=[], completed=complete, unclaimed=lost)

    # --- gateways ---

    def gateways_sync(self, *, schema: str) -> None:
        """Open the operator's enabled gateways that are not open, rebind changed ones, close removed ones."""
        with schema_context(schema):
            specs = sms_config_get(schema=schema).gateways
        started = []
        retiring = []
        with self._lock:
            for (handle_schema, gateway_id), handle in list(self._handles.items()):
                if handle_schema != schema:
                    continue
                spec = specs.get(gateway_id)
                if spec is None or spec.config_key != handle.spec.config_key:
                    del self._handles[(handle_schema, gateway_id)]
                    retiring.append(handle)
            for gateway_id, spec in specs.items():
                if (schema, gateway_id) not in self._handles:
                    handle = self._open(schema, spec)
                    if handle is not None:
                        self._handles[(schema, gateway_id)] = handle
                        started.append(handle)
        for handle in retiring:
            handle.retired = True
            threading.Thread(target=self._retire, args=(handle,), name="sms-retire", daemon=True).start()
        if started:
            deadline = time.monotonic() + BIND_WAIT_S
            while time.monotonic() < deadline and not all(h.gateway.state == "bound" for h in started):
                time.sleep(0.01)

    def _open(self, schema: str, spec: GatewaySpec) -> _Handle | None:
        try:
            config = GatewayConfig(**spec.settings)
        except ValueError as exc:
            log.error("%s: gateway %s cannot be opened: %s", schema, spec.name, exc)
            return None
        holder: list[_Handle] = []
        gateway = SmppGateway(
            config,
            on_result=lambda results: self._on_result(holder[0], results),
            on_receipt=lambda receipts: self._on_receipt(holder[0], receipts),
            on_incoming=lambda messages: self._on_incoming(holder[0], messages),
            on_state=lambda state: self._on_state(holder[0], state),
        )
        handle = _Handle(schema=schema, spec=spec, gateway=gateway)
        holder.append(handle)
        gateway.start()
        return handle

    def _retire(self, handle: _Handle, timeout: float = 10.0) -> None:
        """Unbind a gateway; parts it never answered go back to the queue (or fail over at the next claim)."""
        handle.retired = True
        try:
            handle.gateway.stop(timeout=timeout)
        except Exception:
            log.exception("stopping gateway %s", handle.spec.name)
        with self._lock:
            lost = list(handle.refs)
            handle.refs.clear()
        if lost:
            self._parts_lost(handle, lost)
        self._state_publish(handle, "unbound")

    def _parts_lost(self, handle: _Handle, refs: list) -> None:
        """Parts a gateway will never answer: their messages go back to the queue once their other parts are done."""
        unclaimed: list[Submission] = []
        with self._lock:
            for schema, message_id, index in refs:
                progress = self._progress.get((schema, message_id))
                if progress is None or index not in progress.remaining:
                    continue
                progress.remaining.discard(index)
                progress.requeue = True
                if not progress.remaining:
                    del self._progress[(schema, message_id)]
                    unclaimed.append(progress.submission)
        if unclaimed:
            self._write(handle.schema, submission_results_record, parts=[], completed=[], unclaimed=unclaimed)

    # --- gateway callbacks (the gateways' dispatcher threads) ---

    def _on_result(self, handle: _Handle, results: list[SubmitResult]) -> None:
        schema = handle.schema
        outcomes: list[PartOutcome] = []
        completed: list[MessageOutcome] = []
        unclaimed: list[Submission] = []
        resubmit: dict[int, list[SubmitPart]] = defaultdict(list)
        with self._lock:
            for result in results:
                _, message_id, index = result.ref
                handle.refs.discard(result.ref)
                outcomes.append(
                    PartOutcome(message_id, index, handle.id, result.command_status, result.smsc_message_id)
                )
                progress = self._progress.get((schema, message_id))
                if progress is None or index not in progress.remaining:
                    continue
                submission = progress.submission
                if result.command_status == 0:
                    submission.accepted[index] = (result.smsc_message_id or "", handle.id)
                    progress.remaining.discard(index)
                else:
                    submission.tried.add(handle.id)
                    untried = [g for g, _ in submission.chain if g not in submission.tried]
                    following = self._choose(schema, untried)
                    if following is not None:
                        self._handles[(schema, following)].refs.add(result.ref)
                        resubmit[following].append(progress.parts[index])
                        continue
                    progress.remaining.discard(index)
                    if untried:
                        progress.requeue = True
                    else:
                        progress.refused = result.command_status
                if not progress.remaining:
                    del self._progress[(schema, message_id)]
                    if progress.refused is not None:
                        completed.append(MessageOutcome(submission, rejected_status=progress.refused))
                    elif progress.requeue:
                        unclaimed.append(submission)
                    else:
                        completed.append(MessageOutcome(submission))
            targets = {g: self._handles[(schema, g)] for g in resubmit}
        for gateway_id, parts in resubmit.items():
            try:
                targets[gateway_id].gateway.submit(parts)
            except RuntimeError:  # retired meanwhile
                self._parts_lost(targets[gateway_id], [p.ref for p in parts])
        self._write(schema, submission_results_record, parts=outcomes, completed=completed, unclaimed=unclaimed)

    def _on_receipt(self, handle: _Handle, receipts: list[IncomingReceipt]) -> None:
        fresh = [ReceiptIn(r.smsc_message_id, r.state, r.error_code or "", _aware(r.done_at)) for r in receipts]
        self._receipts_apply(handle, fresh, raise_errors=True)

    def _receipts_apply(self, handle: _Handle, fresh: list[ReceiptIn], *, raise_errors: bool) -> None:
        pending_key = (handle.schema, handle.id)
        now = time.monotonic()
        with self._lock:
            waiting = self._unmatched.pop(pending_key, [])
        seen_at = {id(r): seen for seen, r in waiting}
        batch = [r for _, r in waiting] + fresh
        if not batch:
            return
        try:
            unmatched = self._write(handle.schema, receipts_record, gateway_id=handle.id, receipts=batch, _raise=True)
        except Exception:
            with self._lock:  # offered again later; the fresh ones also by the SMSC (deliver_sm answered "again")
                self._unmatched[pending_key].extend((seen_at.get(id(r), now), r) for r in batch if id(r) in seen_at)
            if raise_errors:
                raise
            return
        keep = [(seen_at.get(id(r), now), r) for r in unmatched]
        dropped = [r for seen, r in keep if now - seen > UNMATCHED_RECEIPT_KEEP_S]
        if dropped:
            log.warning(
                "%s: %d receipt(s) from gateway %s match no message, e.g. %s",
                handle.schema,
                len(dropped),
                handle.spec.name,
                dropped[0].smsc_message_id,
            )
        with self._lock:
            self._unmatched[pending_key].extend((seen, r) for seen, r in keep if now - seen <= UNMATCHED_RECEIPT_KEEP_S)

    def _on_incoming(self, handle: _Handle, messages: list[IncomingMessage]) -> None:
        rows = [
            IncomingIn(m.source, m.destination, m.text, m.data_coding, m.esm_class, m.concat, m.body) for m in messages
        ]
        self._write(handle.schema, incoming_record, gateway_id=handle.id, messages=rows, _raise=True)

    def _on_state(self, handle: _Handle, state: str) -> None:
        handle.down_since = None if state == "bound" else (handle.down_since or time.monotonic())
        self._state_publish(handle, state)

    # --- database writes from gateway threads ---

    def _write(self, schema: str, function: Callable, _raise: bool = False, **kwargs):
        """Run a service in ``schema``, retrying for up to DB_RETRY_S; then defer it (or raise when asked, so the
        SMSC is told to send the receipt / MO again)."""
        deadline = time.monotonic() + DB_RETRY_S
        delay = 0.1
        while True:
            try:
                if connection.schema_name != schema:  # a gateway thread writes for one operator: its search_path
                    connection.set_schema(schema)  # stays set between batches (one `SET` per switch)
                result = function(**kwargs)
                if connection.connection is not None:
                    self._db_connections.add(connection.connection)
                return result
            except Exception:
                log.exception("%s: %s failed", schema, function.__name__)
                connection.close()
                close_old_connections()
                if time.monotonic() + delay > deadline or self._stopping.is_set():
                    if _raise:
                        raise
                    with self._lock:
                        self._deferred.append((schema, function, kwargs))
                    return None
                time.sleep(delay)
                delay = min(delay * 2, 5)

    # --- heartbeat: liveness, live state, retries ---

    def _beat(self) -> None:
        kv().set(key("runner", self.token), json.dumps({"pid": os.getpid(), "at": time.time()}), ex=HEARTBEAT_TTL_S)

    def _run_heartbeat(self) -> None:
        last_sync = time.monotonic()
        while not self._stopping.wait(HEARTBEAT_S):
            try:
                self._beat()
                self._stats_publish()
                self._deferred_retry()
                self._recycle_dead_gateways()
                with self._lock:
                    waiting = [(k, self._handles.get(k)) for k, v in self._unmatched.items() if v]
                for _, handle in waiting:
                    if handle is not None:
                        self._receipts_apply(handle, [], raise_errors=False)
                if time.monotonic() - last_sync > 10:
                    last_sync = time.monotonic()
                    for schema in list(self._schemas):
                        self.gateways_sync(schema=schema)
            except Exception:
                log.exception("sms runner heartbeat")
                connection.close()

    def _deferred_retry(self) -> None:
        with self._lock:
            deferred, self._deferred = self._deferred, []
        for schema, function, kwargs in deferred:
            self._write(schema, function, **kwargs)

    def _recycle_dead_gateways(self) -> None:
        now = time.monotonic()
        with self._lock:
            dead = [
                h
                for h in self._handles.values()
                if h.refs and h.down_since is not None and now - h.down_since > GATEWAY_DOWN_RECYCLE_S
            ]
            for handle in dead:
                del self._handles[(handle.schema, handle.id)]
        for handle in dead:
            log.warning(
                "%s: gateway %s unbound for %.0f s; its parts go back to the queue",
                handle.schema,
                handle.spec.name,
                now - handle.down_since,
            )
            self._retire(handle, timeout=1.0)
            self.gateways_sync(schema=handle.schema)

    def _state_publish(self, handle: _Handle, state: str | None = None) -> None:
        stats = handle.gateway.stats()
        if state:
            stats["state"] = state
        stats.update(
            {
                "id": handle.id,
                "name": handle.spec.name,
                "runner": self.token,
                "outstanding": len(handle.refs),
                "reported_at": time.time(),
            }
        )
        try:
            kv().hset(key(handle.schema, "gateways"), str(handle.id), json.dumps(stats, default=str))
            kv().expire(key(handle.schema, "gateways"), 120)
            from core.live import live_event_publish

            live_event_publish(schema=handle.schema, topic="sms.gateway", payload=stats)
        except Exception:
            log.exception("publishing the state of gateway %s", handle.spec.name)

    def _stats_publish(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            self._state_publish(handle)


def _aware(moment):
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _smpp_time(moment) -> str:
    """An SMPP absolute time (5.2.18) in UTC: YYMMDDhhmmsstnnp with t=0, nn=00, p='+'."""
    return moment.astimezone(UTC).strftime("%y%m%d%H%M%S") + "000+"


_runner: Runner | None = None
_runner_lock = threading.Lock()


def runner_get() -> Runner:
    """This process's runner, created on first use."""
    global _runner
    if _runner is None:
        with _runner_lock:
            if _runner is None:
                _runner = Runner()
    return _runner


def runner_stop() -> None:
    global _runner
    if _runner is not None:
        _runner.stop()
        _runner = None
