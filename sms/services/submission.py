"""Submission, the database side: claim due messages (and charge them), record the SMSCs' answers, receipts and
MO messages, expire what waited too long, and recover what a dead submitter left behind.

The submitter process (`sms.runner`) calls these; each call is one transaction over a batch.

Charging rule ("no message is sent without its charge, none is charged without being sent")
    A message is charged in the transaction that claims it for submission, before any submit_sm leaves: a ledger
    charge with the key ``sms:charge:<id>`` plus a rated billing CDR (``source="sms"``, ``source_id=<id>``), and
    its share of the request's reservation is settled. A message that is never sent gets its credit back: released
    from the reservation if it was not charged yet, refunded (key ``sms:refund:<id>``, for the parts no SMSC
    accepted) if it was. Submission is **at-least-once**: a submitter killed between the claim and the SMSC's answer
    leaves the message ``submitting``; once its heartbeat is gone, `submissions_recover` puts it back in the queue
    and it is submitted again — still charged once (the keys), possibly received twice by the SMSC. Parts an SMSC
    already accepted (recorded in `MessagePart`) are not sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from billing.choices import EntryKind, Service
from billing.models import Cdr
from billing.services import (
    PreratedUsage,
    Settlement,
    ledger_entries_post,
    reservation_settle_many,
    usage_charge_many,
)

from ..choices import EventStatus, MessageStatus, PartStatus, RejectReason
from ..models import IncomingMessage, ListEntry, Message, MessagePart
from ..models.messages import CDR_SOURCE
from ..receipts import message_id_variants, normalise_message_id
from ..selectors import SmsConfig, sms_config_get
from .bulk import rows_insert, rows_update
from .events import NewEvent, events_record
from .incoming import incoming_parts_join, incoming_parts_release

log = logging.getLogger(__name__)

PART_COLUMNS = (
    ("message_id", "bigint"),
    ("part_index", "smallint"),
    ("gateway_id", "bigint"),
    ("smsc_message_id", "text"),
    ("command_status", "bigint"),
    ("status", "text"),
    ("error_code", "text"),
    ("submitted_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
DEFER_S = 5  # a message no gateway can take now waits this long before it is tried again

_MESSAGE_FIELDS = (
    "id",
    "customer_id",
    "sender",
    "destination",
    "text",
    "encoding",
    "parts",
    "price_per_part",
    "price",
    "currency",
    "valid_until",
    "route_chain",
    "tried_gateways",
    "reservation_id",
    "charged_at",
    "callback_url",
    "client_reference",
    "country",
    "mobile_operator",
)


def _message_rows(condition: str, params: list) -> list[dict]:
    """``Message.objects.filter(...).values(*_MESSAGE_FIELDS)`` in plain SQL (``condition`` follows WHERE): the ORM
    builds the same statement anew at every call, a tenth of the submitter's CPU in its busiest transactions."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(_MESSAGE_FIELDS)} FROM {Message._meta.db_table} WHERE {condition}", params)
        return [dict(zip(_MESSAGE_FIELDS, row, strict=True)) for row in cursor.fetchall()]


# Receipt states (SMPP Appendix B stat) -> part and message status; absent: intermediate, nothing changes.
RECEIPT_STATES = {
    "DELIVRD": PartStatus.DELIVERED,
    "UNDELIV": PartStatus.UNDELIVERED,
    "DELETED": PartStatus.UNDELIVERED,
    "EXPIRED": PartStatus.EXPIRED,
    "REJECTD": PartStatus.REJECTED,
}
PART_TO_MESSAGE = {
    PartStatus.DELIVERED: MessageStatus.DELIVERED,
    PartStatus.UNDELIVERED: MessageStatus.UNDELIVERED,
    PartStatus.EXPIRED: MessageStatus.EXPIRED,
    PartStatus.REJECTED: MessageStatus.REJECTED,
}
FINAL_PART_STATES = frozenset(PART_TO_MESSAGE)
_FINAL_PART_STATES_SQL = ", ".join(f"'{state.value}'" for state in FINAL_PART_STATES)

# GSM MAP / SMSC error codes receipts commonly carry (3GPP TS 29.002), for the client's description.
NETWORK_ERRORS = {
    "000": "No error",
    "001": "Unknown subscriber",
    "005": "Unidentified subscriber",
    "006": "Absent subscriber (SM)",
    "009": "Illegal subscriber",
    "011": "Teleservice not provisioned",
    "012": "Illegal equipment",
    "013": "Call barred",
    "021": "Facility not supported",
    "027": "Absent subscriber",
    "031": "Subscriber busy for MT SMS",
    "032": "SM delivery failure",
    "033": "Message waiting list full",
    "034": "System failure",
    "035": "Data missing",
    "036": "Unexpected data value",
}
# submit_sm_resp command_status values an SMSC refuses with (SMPP 3.4 5.1.3).
SMPP_ERRORS = {
    0x01: "Message length is invalid",
    0x02: "Command length is invalid",
    0x04: "Incorrect bind status",
    0x08: "System error",
    0x0A: "Invalid source address",
    0x0B: "Invalid destination address",
    0x0C: "Message id is invalid",
    0x0D: "Bind failed",
    0x14: "Message queue full",
    0x33: "Invalid number of destinations",
    0x40: "Invalid destination flag",
    0x45: "submit_sm failed",
    0x48: "Invalid source address TON",
    0x49: "Invalid source address NPI",
    0x50: "Invalid destination address TON",
    0x51: "Invalid destination address NPI",
    0x58: "Throttling error",
    0x61: "Invalid scheduled delivery time",
    0x62: "Invalid validity period",
    0xFFFF_FFFF: "Gateway stopped before the SMSC answered",
}


def smpp_error_description(command_status: int) -> str:
    return SMPP_ERRORS.get(command_status, "Refused by the SMSC")


def network_error_description(state: str, error_code: str) -> str:
    base = {"DELIVRD": "Delivered", "EXPIRED": "Validity period expired at the SMSC"}.get(state, state.title())
    if error_code and error_code.strip("0"):
        code = error_code.zfill(3)
        return f"{NETWORK_ERRORS.get(code, 'Network error')} (error {code})"
    return base


# --- claiming -----------------------------------------------------------------------------------------------------


@dataclass
class Submission:
    """A claimed message: what to send, where it may go (failover order), what went out of it already."""

    message_id: int
    customer_id: int
    sender: str
    destination: str  # E.164 with +
    text: str
    encoding: str
    parts: int
    price_per_part: Decimal
    price: Decimal
    currency: str
    valid_until: datetime
    chain: list[tuple[int, Decimal]]  # (gateway id, cost per part)
    gateway_id: int
    tried: set[int] = field(default_factory=set)
    accepted: dict[int, tuple[str, int]] = field(default_factory=dict)  # part index -> (SMSC id, gateway id)
    callback_url: str = ""
    client_reference: str = ""

    def cost_per_part(self, gateway_id: int) -> Decimal:
        return next((cost for g, cost in self.chain if g == gateway_id), Decimal(0))

    def event(self, status: str, at: datetime, error_code: str = "", error_description: str = "") -> NewEvent:
        return NewEvent(
            message_id=self.message_id,
            customer_id=self.customer_id,
            status=status,
            at=at,
            error_code=error_code,
            error_description=error_description,
            callback_url=self.callback_url,
            client_reference=self.client_reference,
            destination=self.destination,
            sender=self.sender,
            parts=self.parts,
            price=self.price,
            currency=self.currency,
        )


@dataclass
class _Closing:
    row: dict
    status: str
    code: str
    description: str
    refund_parts: int | None = None  # parts to refund when charged; None: all


def messages_claim(
    *, token: str, limit: int, choose: Callable[[list[int]], int | None], now: datetime | None = None
) -> list[Submission]:
    """Claim up to ``limit`` due messages for the submitter ``token`` and charge them; returns what to send.

    ``choose`` gets the gateways a message may still go to (failover order) and returns the one to use now, or
    None when none of them can take it now (the message then waits DEFER_S). Messages past their validity expire
    here (credit back), messages with no gateway left are rejected (credit back).
    """
    now = now or timezone.now()
    config = sms_config_get()
    submissions: list[Submission] = []
    with transaction.atomic():
        rows = _message_rows(  # Message.objects.due(now), oldest first, skipping rows another submitter holds
            "status = %s AND not_before <= %s ORDER BY not_before, id LIMIT %s FOR UPDATE SKIP LOCKED",
            [MessageStatus.ACCEPTED.value, now, limit],
        )
        if not rows:
            return []
        closing: list[_Closing] = []
        deferred: list[int] = []
        to_charge: list[tuple[dict, Submission]] = []
        for row in rows:
            if row["customer_id"] not in config.clients:
                reason = RejectReason.NO_ROUTE
                closing.append(_Closing(row, MessageStatus.REJECTED, reason, "The sender is no longer an SMS client"))
                continue
            if row["valid_until"] < now:
                closing.append(_Closing(row, MessageStatus.EXPIRED, RejectReason.VALIDITY, RejectReason.VALIDITY.label))
                continue
            chain = _chain(row, config)
            tried = set(row["tried_gateways"])
            candidates = [gateway_id for gateway_id, _ in chain if gateway_id not in tried]
            if not candidates:
                reason = RejectReason.SMSC_REJECTED if chain else RejectReason.NO_ROUTE
                closing.append(_Closing(row, MessageStatus.REJECTED, reason, reason.label))
                continue
            gateway_id = choose(candidates)
            if gateway_id is None:
                deferred.append(row["id"])
                continue
            submission = Submission(
                message_id=row["id"],
                customer_id=row["customer_id"],
                sender=row["sender"],
                destination=row["destination"],
                text=row["text"],
                encoding=row["encoding"],
                parts=row["parts"],
                price_per_part=row["price_per_part"],
                price=row["price"],
                currency=row["currency"],
                valid_until=row["valid_until"],
                chain=chain,
                gateway_id=gateway_id,
                tried=tried,
                callback_url=row["callback_url"],
                client_reference=row["client_reference"],
            )
            submissions.append(submission)
            if row["charged_at"] is None:
                to_charge.append((row, submission))

        table = Message._meta.db_table
        charging = {row["id"] for row, _ in to_charge}
        rows_update(  # one new version of each row: every index of the table is written for each
            table=table,
            columns=[
                ("status", "text"),
                ("claimed_by", "text"),
                ("gateway_id", "bigint"),
                ("cost", "numeric"),
                ("charged_at+", "timestamptz"),  # charged below, in this transaction
            ],
            rows=[
                (
                    s.message_id,
                    MessageStatus.SUBMITTING.value,
                    token,
                    s.gateway_id,
                    s.cost_per_part(s.gateway_id) * s.parts,
                    now if s.message_id in charging else None,
                )
                for s in submissions
            ],
        )
        if deferred:
            Message.objects.filter(pk__in=deferred).update(not_before=now + timedelta(seconds=DEFER_S), updated_at=now)
        if closing:
            _close(closing, config=config, now=now)
        charged_now = {row["id"] for row, _ in to_charge}
        recovered = [s for s in submissions if s.message_id not in charged_now]
        if recovered:
            _accepted_parts_load(recovered)
        if to_charge:  # last: the account row stays locked from here to the commit only
            _charge(to_charge, config=config, now=now)
    return submissions


def _chain(row: dict, config: SmsConfig) -> list[tuple[int, Decimal]]:
    """The message's failover chain as (gateway id, cost per part), routed again if its routes are gone."""
    rules = [config.routes.by_id[r] for r in row["route_chain"] if r in config.routes.by_id]
    rules = [rule for rule in rules if rule.gateway_id in config.gateways]
    if not rules:
        client = config.clients.get(row["customer_id"])
        if client is not None:
            rules = [
                rule
                for rule in config.routes.chain(
                    client_id=client.client_id,
                    digits=row["destination"].lstrip("+"),
                    country=row["country"],
                    mobile_operator=row["mobile_operator"],
                )
                if rule.gateway_id in config.gateways
            ]
    chain: list[tuple[int, Decimal]] = []
    for rule in rules:
        if all(rule.gateway_id != g for g, _ in chain):
            chain.append((rule.gateway_id, rule.cost_per_part))
    return chain


def _charge(items: list[tuple[dict, Submission]], *, config: SmsConfig, now: datetime) -> None:
    usages = []
    for row, submission in items:
        client = config.clients.get(row["customer_id"])
        if client is None:
            raise RuntimeError(f"message {row['id']} belongs to customer {row['customer_id']}, not an SMS client")
        gateway = config.gateways.get(submission.gateway_id)
        usages.append(
            PreratedUsage(
                account_id=client.account_id,
                reservation_id=row["reservation_id"],
                source=CDR_SOURCE,
                source_id=str(row["id"]),
                service=Service.SMS,
                caller=row["sender"],
                callee=row["destination"].lstrip("+"),
                start=now,
                units=row["parts"],
                price=row["price"],
                cost=submission.cost_per_part(submission.gateway_id) * row["parts"],
                currency=row["currency"],
                idempotency_key=f"sms:charge:{row['id']}",
                description=f"SMS {row['id']} to {row['destination']}, {row['parts']} part(s)",
                destination=" ".join(filter(None, [row["country"], row["mobile_operator"]])),
                trunk=gateway.name if gateway else "",
                extra={"sms_message_id": row["id"], "prerated": True},
            )
        )
    usage_charge_many(usages)  # last: it locks the account row until the commit


def _accepted_parts_load(submissions: list[Submission]) -> None:
    by_id = {s.message_id: s for s in submissions}
    parts = MessagePart.objects.filter(message_id__in=list(by_id)).exclude(status=PartStatus.REJECTED)
    for message_id, index, smsc_id, gateway_id in parts.values_list(
        "message_id", "part_index", "smsc_message_id", "gateway_id"
    ):
        by_id[message_id].accepted.setdefault(index, (smsc_id, gateway_id))


def _close(items: list[_Closing], *, config: SmsConfig, now: datetime) -> None:
    """Final states the platform decides (expired, rejected): the credit goes back and the client is told."""
    settlements = []
    refunds = []
    for item in items:
        row = item.row
        client = config.clients.get(row["customer_id"])
        if row["charged_at"] is None:
            if row["reservation_id"] and row["price"] and client is not None:
                settlements.append(
                    Settlement(account_id=client.account_id, reservation_id=row["reservation_id"], release=row["price"])
                )
        elif client is not None:
            parts = row["parts"] if item.refund_parts is None else item.refund_parts
            if parts:
                refunds.append((client.account_id, row, parts))
    reservation_settle_many(settlements)
    ledger_entries_post(
        kind=EntryKind.REFUND,
        entries=[
            (
                account_id,
                row["price_per_part"] * parts,
                f"sms:refund:{row['id']}",
                f"SMS {row['id']} not sent: {parts} part(s) refunded",
                None,
            )
            for account_id, row, parts in refunds
            if row["price_per_part"] * parts > 0
        ],
    )
    for _, row, parts in refunds:
        kept = row["parts"] - parts
        Cdr.objects.filter(source=CDR_SOURCE, source_id=str(row["id"])).update(
            units=kept,
            price=row["price_per_part"] * kept,
            cost=F("cost") * kept / row["parts"] if row["parts"] else 0,
            extra={"sms_message_id": row["id"], "prerated": True, "refunded_parts": parts},
            updated_at=now,
        )
    rows_update(
        table=Message._meta.db_table,
        columns=[
            ("status", "text"),
            ("error_code", "text"),
            ("error_description", "text"),
            ("done_at", "timestamptz"),
            ("refunded_at+", "timestamptz"),
            ("claimed_by", "text"),
            ("updated_at", "timestamptz"),
        ],
        rows=[
            (
                item.row["id"],
                str(item.status),
                str(item.code),
                item.description[:200],
                now,
                now if item.row["charged_at"] is not None else None,
                "",
                now,
            )
            for item in items
        ],
    )
    events_record(
        events=[
            NewEvent(
                message_id=item.row["id"],
                customer_id=item.row["customer_id"],
                status=item.status,
                at=now,
                error_code=item.code,
                error_description=item.description,
                callback_url=item.row["callback_url"],
                client_reference=item.row["client_reference"],
                destination=item.row["destination"],
                sender=item.row["sender"],
                parts=item.row["parts"],
                price=item.row["price"],
                currency=item.row["currency"],
            )
            for item in items
        ],
        callback_urls=_callback_urls(config),
    )


def _callback_urls(config: SmsConfig) -> dict[int, str]:
    return {customer_id: client.callback_url for customer_id, client in config.clients.items() if client.callback_url}


# --- the SMSCs' answers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """The final answer of one gateway to one part's submit_sm."""

    message_id: int
    part_index: int
    gateway_id: int
    command_status: int
    smsc_message_id: str | None


@dataclass
class MessageOutcome:
    """Every part of a message has its final answer: it went out (``submitted``) or no gateway took all of it."""

    submission: Submission
    rejected_status: int | None = None  # the last refusal, when some part was refused everywhere


def submission_results_record(
    *,
    parts: list[PartOutcome],
    completed: list[MessageOutcome],
    unclaimed: Iterable[Submission] = (),
    now: datetime | None = None,
) -> None:
    """Store the SMSCs' answers: every submit_sm's, and the messages that are now fully submitted or refused.

    ``unclaimed`` messages go back to the queue (no gateway can take their remaining parts now).
    """
    now = now or timezone.now()
    config = sms_config_get()
    unclaimed = list(unclaimed)
    with transaction.atomic():
        if parts:
            rows_insert(
                table=MessagePart._meta.db_table,
                columns=PART_COLUMNS,
                rows=[
                    (
                        p.message_id,
                        p.part_index,
                        p.gateway_id,
                        normalise_message_id(p.smsc_message_id) if p.smsc_message_id else "",
                        p.command_status,
                        PartStatus.SUBMITTED.value if p.command_status == 0 else PartStatus.REJECTED.value,
                        "" if p.command_status == 0 else f"0x{p.command_status:08X}",
                        now,
                        now,
                    )
                    for p in parts
                ],
            )
        sent = [o for o in completed if o.rejected_status is None]
        refused = [o for o in completed if o.rejected_status is not None]
        if sent:
            _sent_record(sent, config=config, now=now)
        if refused:
            rows = {
                row["id"]: row
                for row in _message_rows(
                    "id = ANY(%s) AND status = %s",
                    [[o.submission.message_id for o in refused], MessageStatus.SUBMITTING.value],
                )
            }
            closing = []
            for outcome in refused:
                row = rows.get(outcome.submission.message_id)
                if row is None:
                    continue
                status = outcome.rejected_status
                closing.append(
                    _Closing(
                        row,
                        MessageStatus.REJECTED,
                        f"0x{status:08X}",
                        f"{smpp_error_description(status)} (every gateway refused it)",
                        refund_parts=row["parts"] - len(outcome.submission.accepted),
                    )
                )
            if closing:
                _close(closing, config=config, now=now)
        if unclaimed:
            rows_update(
                table=Message._meta.db_table,
                columns=[
                    ("status", "text"),
                    ("claimed_by", "text"),
                    ("not_before", "timestamptz"),
                    ("tried_gateways", "bigint[]"),
                    ("updated_at", "timestamptz"),
                ],
                rows=[
                    (
                        s.message_id,
                        MessageStatus.ACCEPTED.value,
                        "",
                        now + timedelta(seconds=DEFER_S),
                        sorted(s.tried),
                        now,
                    )
                    for s in unclaimed
                ],
                where=f"t.status = '{MessageStatus.SUBMITTING.value}'",
            )


def _sent_record(outcomes: list[MessageOutcome], *, config: SmsConfig, now: datetime) -> None:
    rows = []
    cost_changes = []
    for outcome in outcomes:
        s = outcome.submission
        ids = [s.accepted[index][0] for index in sorted(s.accepted)]
        last_gateway = s.accepted[max(s.accepted)][1] if s.accepted else s.gateway_id
        cost = sum((s.cost_per_part(gateway_id) for _, gateway_id in s.accepted.values()), Decimal(0))
        rows.append((s.message_id, MessageStatus.SUBMITTED.value, now, ids, last_gateway, cost, sorted(s.tried), now))
        if last_gateway != s.gateway_id:
            cost_changes.append((s.message_id, last_gateway, cost))
    updated = rows_update(
        table=Message._meta.db_table,
        columns=[
            ("status", "text"),
            ("submitted_at", "timestamptz"),
            ("smsc_message_ids", "varchar[]"),
            ("gateway_id", "bigint"),
            ("cost", "numeric"),
            ("tried_gateways", "bigint[]"),
            ("updated_at", "timestamptz"),
        ],
        rows=rows,
        where=f"t.status = '{MessageStatus.SUBMITTING.value}'",
        returning="t.id",
    )
    updated_ids = {row[0] for row in updated}
    for message_id, gateway_id, cost in cost_changes:
        gateway = config.gateways.get(gateway_id)
        Cdr.objects.filter(source=CDR_SOURCE, source_id=str(message_id)).update(
            cost=cost, trunk=gateway.name if gateway else "", updated_at=now
        )
    events_record(
        events=[
            o.submission.event(EventStatus.SUBMITTED, now) for o in outcomes if o.submission.message_id in updated_ids
        ],
        callback_urls=_callback_urls(config),
    )


# --- receipts -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceiptIn:
    smsc_message_id: str
    state: str  # DELIVRD, UNDELIV, ...
    error_code: str
    done_at: datetime | None


def receipts_record(*, gateway_id: int, receipts: list[ReceiptIn], now: datetime | None = None) -> list[ReceiptIn]:
    """Apply delivery receipts of one gateway to the parts and messages they report on.

    Returns the receipts no part matched (yet): the submitter offers them again for a while, since a receipt may
    overtake the record of its submit_sm_resp.
    """
    now = now or timezone.now()
    config = sms_config_get()
    wanted: dict[str, list[int]] = {}
    for index, receipt in enumerate(receipts):
        for variant in message_id_variants(receipt.smsc_message_id):
            wanted.setdefault(variant, []).append(index)
    with transaction.atomic():
        # Not locked when read: the UPDATE below applies a receipt only to a part still without a final status, so
        # of two transactions racing with one part's receipt (a duplicate on another bind) only one goes on with it.
        parts = list(
            MessagePart.objects.filter(gateway_id=gateway_id, smsc_message_id__in=list(wanted)).values(
                "id", "message_id", "part_index", "smsc_message_id", "status"
            )
        )
        part_of: dict[int, dict] = {}
        for part in parts:
            for index in wanted.get(part["smsc_message_id"], ()):
                part_of.setdefault(index, part)
        unmatched = [r for i, r in enumerate(receipts) if i not in part_of]
        part_rows = []
        for index, part in part_of.items():
            receipt = receipts[index]
            status = RECEIPT_STATES.get(receipt.state)
            if status is None or part["status"] in FINAL_PART_STATES:
                continue  # an intermediate notification, or a receipt seen before
            part["status"] = status
            part["error_code"] = receipt.error_code
            part["state"] = receipt.state
            part_rows.append((part["id"], status.value, receipt.error_code[:32], receipt.done_at or now, now))
        applied = {
            row[0]
            for row in rows_update(
                table=MessagePart._meta.db_table,
                columns=[
                    ("status", "text"),
                    ("error_code", "text"),
                    ("done_at", "timestamptz"),
                    ("updated_at", "timestamptz"),
                ],
                rows=part_rows,
                where=f"t.status NOT IN ({_FINAL_PART_STATES_SQL})",
                returning="t.id",
            )
        }
        received = [part for part in part_of.values() if part["id"] in applied]
        if received:
            touched = {part["message_id"] for part in received}
            _messages_finalise(touched, parts=received, config=config, now=now)
    return unmatched


def _messages_finalise(message_ids: set[int], *, parts: list[dict], config: SmsConfig, now: datetime) -> None:
    """Give messages whose parts all have a final receipt their final status."""
    messages = {
        row["id"]: row
        for row in _message_rows("id = ANY(%s) AND status = %s", [list(message_ids), MessageStatus.SUBMITTED.value])
    }
    multipart = [pk for pk, row in messages.items() if row["parts"] > 1]
    states: dict[int, dict[int, list[str]]] = {}
    if multipart:
        for message_id, index, status in MessagePart.objects.filter(message_id__in=multipart).values_list(
            "message_id", "part_index", "status"
        ):
            states.setdefault(message_id, {}).setdefault(index, []).append(status)
    latest: dict[int, dict] = {}
    for part in parts:
        latest[part["message_id"]] = part
    rows = []
    events = []
    for pk, row in messages.items():
        if row["parts"] > 1:
            per_index = states.get(pk, {})
            best = []
            for index in range(row["parts"]):
                seen = per_index.get(index, [])
                if PartStatus.DELIVERED in seen:
                    best.append(PartStatus.DELIVERED)
                else:
                    best.append(next((s for s in seen if s in FINAL_PART_STATES), None))
            if None in best:
                continue  # parts still without a final receipt
            failed = [s for s in best if s != PartStatus.DELIVERED]
            part_status = failed[0] if failed else PartStatus.DELIVERED
        else:
            part_status = latest[pk]["status"]
        status = PART_TO_MESSAGE[part_status]
        receipt = latest[pk]
        error_code = "" if status == MessageStatus.DELIVERED else (receipt.get("error_code") or "")
        description = (
            "" if status == MessageStatus.DELIVERED else network_error_description(receipt["state"], error_code)
        )
        rows.append((pk, status.value, error_code[:32], description[:200], now, now))
        events.append(
            NewEvent(
                message_id=pk,
                customer_id=row["customer_id"],
                status=status,
                at=now,
                error_code=error_code,
                error_description=description,
                callback_url=row["callback_url"],
                client_reference=row["client_reference"],
                destination=row["destination"],
                sender=row["sender"],
                parts=row["parts"],
                price=row["price"],
                currency=row["currency"],
            )
        )
    rows_update(
        table=Message._meta.db_table,
        columns=[
            ("status", "text"),
            ("error_code", "text"),
            ("error_description", "text"),
            ("done_at", "timestamptz"),
            ("updated_at", "timestamptz"),
        ],
        rows=rows,
        where=f"t.status = '{MessageStatus.SUBMITTED.value}'",
    )
    events_record(events=events, callback_urls=_callback_urls(config))


# --- incoming (MO) ---------------------------------------------------------------------------------------------------

STOP_WORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "opt-out", "baja"})


@dataclass(frozen=True, slots=True)
class IncomingIn:
    source: str
    destination: str
    text: str
    data_coding: int
    esm_class: int
    concat: tuple[int, int, int] | None = None  # a part of a long MO: (reference, total, sequence); see incoming.py
    body: bytes = b""


def _e164(address: str) -> str:
    digits = address.lstrip("+")
    return "+" + digits if digits.isdigit() and len(digits) >= 7 else address


def incoming_record(*, gateway_id: int | None, messages: list[IncomingIn]) -> list[IncomingMessage]:
    """Store MO messages. Each is attributed to the client owning the sender id it was sent to, else to the client
    that last texted the subscriber; a STOP (or UNSUBSCRIBE, CANCEL…) puts the subscriber on that client's
    opt-out list. Parts of a long MO are held until the message is whole (sms.services.incoming)."""
    messages, joined = incoming_parts_join(gateway_id=gateway_id, messages=messages)
    if not messages:
        return []
    config = sms_config_get()
    owners: dict[str, int] = {}
    for customer_id, client in config.clients.items():
        for sender in client.sender_ids:
            owners.setdefault(sender, customer_id)
            owners.setdefault(sender.lstrip("+"), customer_id)
    sources = {_e164(m.source) for m in messages}
    last_client: dict[str, int] = {}
    unknown = [m for m in messages if m.destination not in owners and m.destination.lstrip("+") not in owners]
    if unknown:
        for destination, customer_id in (
            Message.objects.filter(destination__in=sources)
            .exclude(status=MessageStatus.REJECTED)
            .order_by("destination", "-id")
            .distinct("destination")
            .values_list("destination", "customer_id")
        ):
            last_client[destination] = customer_id
    rows = []
    opt_outs = []
    for m in messages:
        source = _e164(m.source)
        customer_id = owners.get(m.destination) or owners.get(m.destination.lstrip("+")) or last_client.get(source)
        is_stop = m.text.strip().split(maxsplit=1)[0].casefold() in STOP_WORDS if m.text.strip() else False
        rows.append(
            IncomingMessage(
                customer_id=customer_id,
                gateway_id=gateway_id,
                source=source[:21],
                destination=m.destination[:21],
                text=m.text,
                data_coding=m.data_coding,
                esm_class=m.esm_class,
                is_stop=is_stop and customer_id is not None,
            )
        )
        client = config.clients.get(customer_id) if customer_id else None
        if is_stop and client is not None and source.startswith("+"):
            opt_outs.append(
                ListEntry(
                    kind="optout", number=source, client_id=client.client_id, note=f"STOP sent to {m.destination}"
                )
            )
    with transaction.atomic():
        IncomingMessage.objects.bulk_create(rows)
        if opt_outs:
            ListEntry.objects.bulk_create(opt_outs, ignore_conflicts=True)
        if joined:
            transaction.on_commit(lambda: incoming_parts_release(joined))
    return rows


# --- housekeeping ----------------------------------------------------------------------------------------------------


def messages_expire(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Messages still queued after their validity: expired, their credit back. Returns how many."""
    now = now or timezone.now()
    config = sms_config_get()
    with transaction.atomic():
        rows = list(
            Message.objects.expired_by(now)
            .order_by("valid_until")
            .select_for_update(skip_locked=True, of=("self",))
            .values(*_MESSAGE_FIELDS)[:limit]
        )
        if rows:
            _close(
                [
                    _Closing(row, MessageStatus.EXPIRED, RejectReason.VALIDITY, RejectReason.VALIDITY.label)
                    for row in rows
                ],
                config=config,
                now=now,
            )
    return len(rows)


def submissions_recover(*, alive: Callable[[str], bool], now: datetime | None = None) -> int:
    """Put back in the queue the messages a submitter that is gone had claimed. Returns how many."""
    now = now or timezone.now()
    tokens = set(
        Message.objects.filter(status=MessageStatus.SUBMITTING).values_list("claimed_by", flat=True).distinct()
    )
    dead = [token for token in tokens if not alive(token)]
    if not dead:
        return 0
    count = Message.objects.filter(status=MessageStatus.SUBMITTING, claimed_by__in=dead).update(
        status=MessageStatus.ACCEPTED, claimed_by="", not_before=now, updated_at=now
    )
    if count:
        log.warning("%s: %d message(s) of dead submitter(s) %s back in the queue", connection.schema_name, count, dead)
    return count
