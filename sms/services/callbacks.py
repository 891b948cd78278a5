"""Delivery reports to clients: POST each callback batch to its URL, signed, and retry with back-off.

The request
    ``POST <callback URL>`` with ``Content-Type: application/json`` and the body
    ``{"events": [{"message_id", "status", "error_code", "error_description", "client_reference", "to", "from",
    "parts", "price", "currency", "at"}, …]}`` — one or more status changes of the client's messages (up to 100 per
    POST; events of one message may arrive in different POSTs, in any order: use ``at``).
    Header ``X-OpenCarrier-Signature: t=<unix time>,v1=<hex>`` where ``hex`` is HMAC-SHA256, keyed with the client's
    callback secret, of ``<unix time>.`` followed by the raw body bytes. Check it, and refuse a ``t`` far from your
    clock (replays). Any 2xx answer means delivered.

Retries
    Anything else (another status, a timeout, a refused connection) is retried after RETRY_BASE_S × 2^(n-1), at most
    RETRY_MAX_S, up to MAX_ATTEMPTS tries; then the batch is given up (``failed``). Every try is stored as a
    `CallbackAttempt` (status code or error, duration, next retry) and shown with the message in the API. A sender
    claims due batches by pushing their next try LEASE_S ahead before posting, so two senders never post the same
    batch at once; one killed mid-post leaves the batch to be posted again after the lease (at-least-once).

Where callbacks may go (SSRF guard)
    Only ``http``/``https`` URLs without credentials. Unless ``settings.SMS_CALLBACK_ALLOW_PRIVATE`` (off in
    production), a URL whose host is, or resolves to, a loopback, private, link-local, multicast, reserved,
    unspecified or shared address (IPv4 or IPv6, IPv4-mapped included: ``core.net.address_is_internal``) is refused:
    at input (`callback_url_problem`: the API answers 400 naming the field; literal addresses and ``localhost``
    names, with a DNS lookup for a client's own URL) and again before every new connection, after resolving the
    host. The connection then goes to the very addresses that were checked (no second lookup, so a DNS answer that
    changes between check and connect, "DNS rebinding", cannot redirect it); HTTPS still verifies the certificate
    for the host name. A refused batch is recorded as one failed attempt with the reason and given up at once.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.net import address_is_internal, parse_ip

from ..choices import CallbackState
from ..models import CallbackAttempt, CallbackBatch
from ..selectors import sms_config_get
from .bulk import rows_update

SIGNATURE_HEADER = "X-OpenCarrier-Signature"
USER_AGENT = "OpenCarrier-SMS-Callbacks/1"
LEASE_S = 120
TIMEOUT_S = 10.0
CLAIM_MAX = 64  # per round: 8 senders x 10 s timeout stays well within the lease
SENDERS = 8


def retry_base_s() -> float:
    return float(getattr(settings, "SMS_CALLBACK_RETRY_BASE_S", 15))


def retry_max_s() -> float:
    return float(getattr(settings, "SMS_CALLBACK_RETRY_MAX_S", 3600))


def max_attempts() -> int:
    return int(getattr(settings, "SMS_CALLBACK_MAX_ATTEMPTS", 12))


def callback_retry_delay(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed try."""
    return timedelta(seconds=min(retry_base_s() * 2 ** (attempts - 1), retry_max_s()))


def callback_sign(*, secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for a body sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def callback_signature_valid(*, secret: str, header: str, body: bytes, tolerance_s: int = 300, now=None) -> bool:
    """Check a signature header as a client would (used by the tests; clients may copy it)."""
    try:
        fields = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(callback_sign(secret=secret, timestamp=timestamp, body=body), header)


# --- HTTP, with kept-alive connections per thread and host ---

_connections = threading.local()


@dataclass(frozen=True)
class PostResult:
    status_code: int | None
    error: str
    duration_ms: int
    final: bool = False  # refused by the platform's own rules: trying again would not help

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# --- the SSRF guard ---

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class CallbackRefused(Exception):
    """A callback URL the platform will not post to (the message says why)."""


def allow_private() -> bool:
    return bool(getattr(settings, "SMS_CALLBACK_ALLOW_PRIVATE", False))


def _url_parts(url: str):
    """Scheme, host and port of a callback URL, or CallbackRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise CallbackRefused("credentials in the URL are not allowed (the signature header authenticates us)")
    if not parts.hostname:
        raise CallbackRefused("the URL has no host")
    return parts, port or (443 if parts.scheme == "https" else 80)


def _resolve(host: str, port: int, *, numeric_only: bool = False) -> list[tuple]:
    """``getaddrinfo`` answers (family, sockaddr) for a TCP connection to ``host``."""
    flags = socket.AI_NUMERICHOST if numeric_only else 0
    return [
        (family, sockaddr)
        for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    ]


def _internal(addresses: list[tuple]) -> str | None:
    for _, sockaddr in addresses:
        address = parse_ip(sockaddr[0].split("%", 1)[0])
        if address is None or address_is_internal(address):
            return sockaddr[0]
    return None


def callback_url_problem(url: str, *, resolve: bool = False) -> str | None:
    """Why ``url`` may not be a callback URL (a sentence for the API's 400), or None if it may.

    Without ``resolve`` no DNS lookup is made (the send path validates up to 10,000 messages at once): literal
    addresses in any form the resolver accepts (``127.1``, ``2130706433``, ``[::ffff:7f00:1]``) and ``localhost``
    names are checked; names are checked again, resolved, before every connection. ``resolve`` also looks the name
    up (a client's own callback URL); a name that does not resolve now is accepted.
    """
    try:
        parts, port = _url_parts(url)
    except CallbackRefused as exc:
        return f"Give an http or https URL: {exc}."
    if allow_private():
        return None
    host = parts.hostname.rstrip(".").lower()
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return "The callback URL must not point to the platform's own network (localhost)."
    try:
        addresses = _resolve(host, port, numeric_only=True)
    except (socket.gaierror, UnicodeError):
        addresses = []
        if resolve:
            try:
                addresses = _resolve(host, port)
            except (OSError, UnicodeError):
                addresses = []
    internal = _internal(addresses)
    if internal is not None:
        return f"The callback URL must not point to the platform's own network ({host} is {internal})."
    return None


# --- HTTP, with kept-alive connections per thread and host ---


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the addresses that were checked, never to a fresh DNS answer; Host stays the URL's name."""

    def __init__(self, host: str, port: int, *, addresses: list[tuple], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    def _open_socket(self) -> socket.socket:
        error: OSError | None = None
        for family, sockaddr in self.addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise error or OSError(f"no address for {self.host}")

    def connect(self) -> None:
        self.sock = self._open_socket()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the checked addresses; the certificate is still verified for the URL's host name (SNI too)."""

    def __init__(self, host: str, port: int, *, addresses: list[tuple], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    _open_socket = _PinnedHTTPConnection._open_socket

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(self._open_socket(), server_hostname=self.host)


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return (parts.scheme, parts.hostname, parts.port, allow_private())


def _connection_for(url: str) -> tuple[http.client.HTTPConnection, str]:
    """A kept-alive connection for the URL's origin, or a new one to its checked addresses (CallbackRefused)."""
    pool = getattr(_connections, "pool", None)
    if pool is None:
        pool = _connections.pool = {}
    origin = _origin(url)
    conn = pool.get(origin)
    parts, port = _url_parts(url)
    if conn is None:
        try:
            addresses = _resolve(parts.hostname, port)
        except UnicodeError as exc:
            raise CallbackRefused(f"the host name cannot be resolved ({exc})") from exc
        if not allow_private():
            internal = _internal(addresses)
            if internal is not None:
                raise CallbackRefused(
                    f"{parts.hostname} resolves to {internal}, an address of the platform's own network"
                )
        cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        conn = pool[origin] = cls(parts.hostname, port, addresses=addresses, timeout=TIMEOUT_S)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return conn, path


def _forget_connection(url: str) -> None:
    conn = getattr(_connections, "pool", {}).pop(_origin(url), None)
    if conn is not None:
        conn.close()


def callback_post(*, url: str, body: bytes, secret: str) -> PostResult:
    """POST one signed body; never raises."""
    started = time.monotonic()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: callback_sign(secret=secret, timestamp=int(time.time()), body=body),
    }
    for attempt in range(2):  # a kept-alive connection the server closed meanwhile gets one fresh retry
        try:
            try:
                conn, path = _connection_for(url)
            except CallbackRefused as exc:
                error = f"Refused by the platform: {exc}"[:300]
                return PostResult(None, error, int((time.monotonic() - started) * 1000), final=True)
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.will_close:
                _forget_connection(url)
            return PostResult(response.status, "", int((time.monotonic() - started) * 1000))
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            _forget_connection(url)
            if attempt == 1:
                return PostResult(None, f"{type(exc).__name__}: {exc}"[:300], int((time.monotonic() - started) * 1000))
        except Exception as exc:
            _forget_connection(url)
            return PostResult(None, f"{type(exc).__name__}: {exc}"[:300], int((time.monotonic() - started) * 1000))
    raise AssertionError("unreachable")


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="sms-callback")
    return _executor


# --- claiming and recording ---


def callbacks_send_due(*, now: datetime | None = None, limit: int = CLAIM_MAX) -> int:
    """POST the callback batches that are due; returns how many were tried."""
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            CallbackBatch.objects.filter(state=CallbackState.PENDING, next_attempt_at__lte=now)
            .order_by("next_attempt_at")
            .select_for_update(skip_locked=True)
            .values("id", "customer_id", "url", "body", "attempts")[:limit]
        )
        if not due:
            return 0
        CallbackBatch.objects.filter(pk__in=[b["id"] for b in due]).update(
            next_attempt_at=now + timedelta(seconds=LEASE_S)
        )
    clients = sms_config_get().clients
    futures = []
    for batch in due:
        client = clients.get(batch["customer_id"])
        secret = client.callback_secret if client else ""
        futures.append(_pool().submit(callback_post, url=batch["url"], body=batch["body"].encode(), secret=secret))
    results = [future.result() for future in futures]
    done_at = now  # retries count from when this round began
    attempts = []
    rows = []
    for batch, result in zip(due, results, strict=True):
        number = batch["attempts"] + 1
        if result.delivered:
            state, next_at = CallbackState.DELIVERED, None
        elif result.final or number >= max_attempts():
            state, next_at = CallbackState.FAILED, None
        else:
            state, next_at = CallbackState.PENDING, done_at + callback_retry_delay(number)
        attempts.append(
            CallbackAttempt(
                batch_id=batch["id"],
                number=number,
                url=batch["url"],
                status_code=result.status_code,
                error=result.error,
                duration_ms=result.duration_ms,
                next_retry_at=next_at,
                created_at=done_at,
            )
        )
        rows.append((batch["id"], state.value, number, next_at or done_at, result.status_code, done_at))
    with transaction.atomic():
        CallbackAttempt.objects.bulk_create(attempts)
        rows_update(
            table=CallbackBatch._meta.db_table,
            columns=[
                ("state", "text"),
                ("attempts", "smallint"),
                ("next_attempt_at", "timestamptz"),
                ("last_status_code", "smallint"),
                ("updated_at", "timestamptz"),
            ],
            rows=rows,
        )
    return len(due)
