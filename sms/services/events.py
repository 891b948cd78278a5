"""Status events: every change of a message's status is stored, and queued for the client's callback URL.

Events of one client bound for one URL are grouped into callback batches (at most CALLBACK_BATCH_MAX events per
POST) in the transaction that stores them, so the sender only reads ready bodies. `accepted` is stored but not
posted: the API's answer already says it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction

from ..choices import EventStatus
from ..models import CallbackBatch, MessageEvent
from .bulk import rows_insert

CALLBACK_BATCH_MAX = 100
EVENT_COLUMNS = (
    ("message_id", "bigint"),
    ("status", "text"),
    ("error_code", "text"),
    ("error_description", "text"),
    ("callback_batch_id", "bigint"),
    ("created_at", "timestamptz"),
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    message_id: int
    customer_id: int
    status: str
    at: datetime
    error_code: str = ""
    error_description: str = ""
    callback_url: str = ""  # the message's own, overriding the client's
    client_reference: str = ""
    destination: str = ""
    sender: str = ""
    parts: int = 0
    price: Decimal | None = None
    currency: str = ""

    def as_json(self) -> dict:
        return {
            "message_id": self.message_id,
            "status": self.status,
            "error_code": self.error_code,
            "error_description": self.error_description,
            "client_reference": self.client_reference,
            "to": self.destination,
            "from": self.sender,
            "parts": self.parts,
            "price": None if self.price is None else str(self.price),
            "currency": self.currency,
            "at": self.at.isoformat().replace("+00:00", "Z"),
        }


def callback_body(events: list[NewEvent]) -> str:
    return json.dumps({"events": [event.as_json() for event in events]}, separators=(",", ":"))


def events_record(*, events: list[NewEvent], callback_urls: dict[int, str]) -> int:
    """Store events and their callback batches; returns how many batches were queued.

    ``callback_urls`` maps customer id to the client's callback URL (the message's own URL wins).
    """
    if not events:
        return 0
    grouped: dict[tuple[int, str], list[NewEvent]] = defaultdict(list)
    for event in events:
        if event.status == EventStatus.ACCEPTED:
            continue
        url = event.callback_url or callback_urls.get(event.customer_id, "")
        if url:
            grouped[(event.customer_id, url)].append(event)

    batch_of: dict[int, CallbackBatch] = {}  # id(event) -> batch
    batches: list[CallbackBatch] = []
    now = events[0].at
    for (customer_id, url), group in grouped.items():
        for start in range(0, len(group), CALLBACK_BATCH_MAX):
            chunk = group[start : start + CALLBACK_BATCH_MAX]
            batch = CallbackBatch(
                customer_id=customer_id,
                url=url,
                body=callback_body(chunk),
                event_count=len(chunk),
                next_attempt_at=now,
            )
            batches.append(batch)
            for event in chunk:
                batch_of[id(event)] = batch
    with transaction.atomic():
        if batches:
            CallbackBatch.objects.bulk_create(batches)
        rows_insert(
            table=MessageEvent._meta.db_table,
            columns=EVENT_COLUMNS,
            rows=[
                (
                    event.message_id,
                    str(event.status),
                    event.error_code[:32],
                    event.error_description[:200],
                    batch.pk if (batch := batch_of.get(id(event))) is not None else None,
                    event.at,
                )
                for event in events
            ],
        )
        if batches:
            schema = connection.schema_name
            transaction.on_commit(lambda: _callbacks_kick(schema))
    return len(batches)


def _callbacks_kick(schema: str) -> None:
    from .wakeups import callbacks_kick

    callbacks_kick(schema=schema)
