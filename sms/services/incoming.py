"""Long MO messages: the parts of a concatenated deliver_sm are held in Redis and stored as one message.

A part (``IncomingIn.concat`` = reference, total, sequence, from the UDH IE 0x00 / 0x08 or the sar_* TLVs, set by
``sms.gateway``) is kept in a Redis hash per (gateway, subscriber, number texted, reference, total) until all its
siblings are in; they may arrive in any order, a part seen twice counts once. The message is then decoded from the
parts' joined octets (so a UCS-2 character or a GSM escape split between two parts reads right) and handed to
`incoming_record` like any whole MO, so attribution and STOP detection see the whole text.

Exactly one message per set of parts
    The last part *claims* the set atomically (a Lua script); the hash is dropped only when the transaction that
    stored the message commits (`incoming_parts_release`), and a "done" marker then ignores late duplicates of
    its parts for DONE_KEEP_S. If storing fails, the parts stay: the SMSC sends the part again (its deliver_sm
    was answered "temporary error") or the sweep below stores them; a claim older than CLAIM_STALE_S is taken
    over.

Parts that never complete
    ``sms.maintain`` calls `incoming_parts_expire`: a set whose first part is older than
    ``settings.SMS_MO_REASSEMBLY_S`` (600 s) is stored as what arrived, ``[…]`` standing for each missing part and
    `` [incomplete: n of N parts]`` appended to the text.

No migration: the buffer lives in Redis (``sms.kv``), keyed by database and schema like every SMS counter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from ..encoding import UnsupportedDataCoding, decode
from ..kv import key, kv, script

log = logging.getLogger(__name__)

CLAIM_STALE_S = 60  # a claim not released by then (its transaction failed, its process died) can be taken over
DONE_KEEP_S = 60  # parts of a stored message arriving this late (SMSC redelivery) are dropped
MISSING = "[…]"

# KEYS: parts hash, pending index (sorted set), done marker. ARGV: seq, part, total, now, index member, stale_s,
# ttl_s. Answers {-1} (a late duplicate), {0} (waiting for more parts) or {1, field, value, ...} (claimed: the parts).
_ADD_PART = """
if redis.call('EXISTS', KEYS[3]) == 1 then return {-1} end
redis.call('HSETNX', KEYS[1], 'p' .. ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[5])
local count = redis.call('HLEN', KEYS[1])
local claimed = redis.call('HGET', KEYS[1], 'claimed')
if claimed then count = count - 1 end
if count < tonumber(ARGV[3]) then return {0} end
if claimed and tonumber(ARGV[4]) - tonumber(claimed) < tonumber(ARGV[6]) then return {0} end
redis.call('HSET', KEYS[1], 'claimed', ARGV[4])
local answer = redis.call('HGETALL', KEYS[1])
table.insert(answer, 1, 1)
return answer
"""


def _add_part_script():
    return script("sms_mo_add_part", _ADD_PART)


def reassembly_window_s() -> int:
    return settings.SMS_MO_REASSEMBLY_S


@dataclass(frozen=True)
class Joined:
    """A set of parts stored as one message: what to drop from Redis once that is committed."""

    schema: str
    member: str


def _keys(schema: str, member: str) -> tuple[str, str, str]:
    return key(schema, "mo-parts", member), key(schema, "mo-pending"), key(schema, "mo-done", member)


def _member(gateway_id: int | None, message, reference: int, total: int) -> str:
    return json.dumps([gateway_id, message.source, message.destination, reference, total], separators=(",", ":"))


def _part(message) -> str:
    return json.dumps(
        {
            "text": message.text,
            "body": message.body.hex(),
            "data_coding": message.data_coding,
            "esm_class": message.esm_class,
        }
    )


def incoming_parts_join(*, gateway_id: int | None, messages: list) -> tuple[list, list[Joined]]:
    """Whole MO messages pass through; parts are held until their message is whole, then it is returned joined.

    Returns (messages to store, sets to release when they are committed: `incoming_parts_release`).
    """
    if all(m.concat is None for m in messages):
        return messages, []
    schema = connection.schema_name
    window = reassembly_window_s()
    now = time.time()
    out = []
    joined: list[Joined] = []
    claimed_here: set[str] = set()
    for message in messages:
        if message.concat is None:
            out.append(message)
            continue
        reference, total, sequence = message.concat
        if not 1 <= sequence <= total:
            out.append(dataclasses.replace(message, concat=None, body=b""))  # unusable numbering: as it came
            continue
        member = _member(gateway_id, message, reference, total)
        parts_key, pending_key, done_key = _keys(schema, member)
        answer = _add_part_script()(
            keys=[parts_key, pending_key, done_key],
            args=[sequence, _part(message), total, now, member, CLAIM_STALE_S, window * 2 + 3600],
        )
        if answer[0] != 1 or member in claimed_here:
            continue
        claimed_here.add(member)
        fields = dict(zip(answer[1::2], answer[2::2], strict=True))
        out.append(_joined_message(message, _parts_of(fields), total))
        joined.append(Joined(schema, member))
    return out, joined


def incoming_parts_release(joined: Iterable[Joined]) -> None:
    """Drop the parts of messages now stored; ignore their late duplicates for a while."""
    pipe = kv().pipeline(transaction=False)
    for item in joined:
        parts_key, pending_key, done_key = _keys(item.schema, item.member)
        pipe.delete(parts_key)
        pipe.zrem(pending_key, item.member)
        pipe.set(done_key, 1, ex=DONE_KEEP_S)
    pipe.execute()


def incoming_parts_expire(*, now: float | None = None) -> int:
    """Store the long MO messages of this schema whose parts did not all arrive within the window, as what
    arrived (marked incomplete). Returns how many were stored."""
    from .submission import IncomingIn, incoming_record  # (submission imports this module)

    schema = connection.schema_name
    now = now or time.time()
    pending_key = key(schema, "mo-pending")
    stored = 0
    for raw_member, first_at in kv().zrangebyscore(pending_key, "-inf", now - reassembly_window_s(), withscores=True):
        member = raw_member.decode()
        parts_key, _, _ = _keys(schema, member)
        fields = kv().hgetall(parts_key)
        claimed = fields.pop(b"claimed", None)
        if claimed is not None and now - float(claimed) < CLAIM_STALE_S:
            continue  # being stored right now
        if not kv().zrem(pending_key, member):
            continue  # another sweeper took it
        parts = _parts_of(fields)
        if not parts:
            continue  # its hash expired (a sweep did not run for hours)
        gateway_id, source, destination, _, total = json.loads(member)
        first = IncomingIn(source, destination, "", 0, 0)
        message = _joined_message(first, parts, total)
        try:
            incoming_record(gateway_id=gateway_id, messages=[message])
        except Exception:
            kv().zadd(pending_key, {member: first_at})  # the next sweep tries again
            raise
        incoming_parts_release([Joined(schema, member)])
        stored += 1
    return stored


def _parts_of(fields: dict) -> dict[int, dict]:
    parts = {}
    for name, value in fields.items():
        name = name.decode() if isinstance(name, bytes) else name
        if name.startswith("p"):
            parts[int(name[1:])] = json.loads(value)
    return parts


def _joined_message(template, parts: dict[int, dict], total: int):
    """One message from its parts (by sequence number): the octets joined and decoded, gaps marked."""
    first = parts[min(parts)]
    data_coding = first["data_coding"]
    runs: list[str] = []
    run: list[bytes] = []
    texts: list[str] = []
    for sequence in range(1, total + 1):
        part = parts.get(sequence)
        if part is None:
            if run:
                runs.append(_decode(run, data_coding, texts))
                run, texts = [], []
            runs.append(MISSING)
            continue
        run.append(bytes.fromhex(part["body"]))
        texts.append(part["text"])
    if run:
        runs.append(_decode(run, data_coding, texts))
    text = "".join(runs)
    if len(parts) < total:
        text += f" [incomplete: {len(parts)} of {total} parts]"
    return dataclasses.replace(
        template,
        text=text,
        data_coding=data_coding,
        esm_class=first["esm_class"],
        concat=None,
        body=b"",
    )


def _decode(bodies: list[bytes], data_coding: int, texts: list[str]) -> str:
    try:
        return decode(b"".join(bodies), data_coding)
    except UnsupportedDataCoding:
        return "".join(texts)  # the gateway's own reading of each part
