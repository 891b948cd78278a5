"""Wake-ups of the background work: one queued task at a time per operator and kind of work, however many requests.

Accepting a message does not enqueue a task per message: it sets a Redis flag and, if the flag was not set yet,
enqueues one drain task (`sms.submit_pending` on the `sms` queue, `sms.callbacks_send` on `default`). The drain takes
everything due from the database in chunks and clears the flag when it finds nothing more (then looks once more, so
a message committed meanwhile is not left behind). The flag expires on its own, so a drain lost with a killed worker
delays work by at most KICK_TTL_MS, and the periodic `sms.maintain` task kicks again anyway.

A submission drain queued for new work starts after a short linger (SMS_SUBMIT_LINGER_S), so that it claims a batch
rather than the one request that woke it: the submitter claims, charges and writes per batch. A drain that found more
work goes on at once. (The callback sender starts at once: with a 0.1 s linger its rounds stalled for seconds in
`make bench`, cause not found.)
"""

from django.conf import settings
from django_tenants.utils import schema_context

from ..kv import key, kv

KICK_TTL_MS = 10_000


def _kick_key(schema: str, what: str) -> str:
    return key(schema, "kick", what)


def submission_kick(*, schema: str, force: bool = False) -> bool:
    """Make sure a submission drain is queued for the operator; True if this call queued one."""
    from ..tasks import submit_pending

    if not kv().set(_kick_key(schema, "submit"), 1, nx=True, px=KICK_TTL_MS) and not force:
        return False
    with schema_context(schema):
        submit_pending.apply_async(queue="sms", countdown=None if force else settings.SMS_SUBMIT_LINGER_S or None)
    return True


def submission_drained(*, schema: str) -> None:
    kv().delete(_kick_key(schema, "submit"))


def callbacks_kick(*, schema: str, force: bool = False) -> bool:
    from ..tasks import callbacks_send

    if not kv().set(_kick_key(schema, "callbacks"), 1, nx=True, px=KICK_TTL_MS) and not force:
        return False
    with schema_context(schema):
        callbacks_send.apply_async(queue="default")
    return True


def callbacks_drained(*, schema: str) -> None:
    kv().delete(_kick_key(schema, "callbacks"))
