"""Redis for the SMS hot paths: rate limits, fraud counters, queue depth, wake-ups of the submitters, runner liveness.

Keys are namespaced by the database name, so test runs on other databases and the developer's platform sharing
one Redis never see each other's counters, and by the operator's schema.
"""

from __future__ import annotations

import threading

import redis
from django.conf import settings
from django.db import connection

_local = threading.local()
_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def kv() -> redis.Redis:
    """The process's Redis client (a connection pool; safe to share between threads)."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return client


def key(*parts: object) -> str:
    """``oc:<database>:sms:<part>:<part>…``"""
    return ":".join(["oc", str(connection.settings_dict["NAME"]), "sms", *map(str, parts)])


# Generic cell rate algorithm: a theoretical arrival time (TAT) per client. A request of n messages costs n/rate
# seconds; it is admitted while the TAT is at most `burst` ahead of now. Answers 0 (admitted) or the milliseconds to
# wait. One round trip, atomic in Redis.
GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
if tat - now > burst then return math.ceil(tat - now - burst) end
local new_tat = tat + cost
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
"""


def script(name: str, source: str):
    """The Lua ``source`` registered on this thread's client (once per thread and client), by ``name``."""
    registered = getattr(_local, name, None)
    if registered is None or registered.registered_client is not kv():
        registered = kv().register_script(source)
        setattr(_local, name, registered)
    return registered


def gcra():
    return script("gcra", GCRA_SCRIPT)


def runner_alive(token: str) -> bool:
    """Whether the submitter process ``token`` wrote its heartbeat lately (sms.runner)."""
    return bool(kv().exists(key("runner", token)))
