"""End-to-end benchmark of the SMS aggregator: ``python -m sms.bench_e2e`` (run by `make bench`, which gives it its
own database, Redis database 15 and OPENCARRIER_BENCH=1; ``python -m tests.bench sms.bench_e2e`` runs it alone).

The whole path, each part in a process of its own as in production, on this machine:

    load generator (this process: CONNECTIONS kept-alive HTTP/1.1 connections, API key auth)
      → uvicorn ``config.asgi:application`` (``POST /api/v1/sms/messages``: validate, admit, filter, route, price,
        reserve, store)
      → Celery worker ``-Q sms --pool solo`` (sms.runner: claim + charge, SMPP submit_sm over one transceiver bind)
      → ``manage.py smsc_simulator`` (answers submit_sm, sends a receipt RECEIPT_DELAY_S later, FAILURE_RATIO of them
        UNDELIV)
      → the same worker (receipts → part and message status, events, callback batches)
      → Celery worker ``-Q default --pool solo`` (``sms.callbacks_send``: signed POSTs)
      → a callback endpoint (a small HTTP server in a process of its own: checks every HMAC signature, counts events)
    plus ``celery beat`` (``sms.maintain`` every 5 s: recovery of dead submitters, expiry).

Steps: set up an operator, a gateway to the simulator, a default route, one SMS client (credit for every message,
TPS limit CLIENT_TPS (0: none), queue bound MAX_QUEUED, callback URL) and an API key; warm up; then

1. steady load: RATE messages/s offered for DURATION_S, open loop (each request has its due time; a late generator
   is reported, and a request is never held back for a slow answer of another), in requests of BATCH recipients
   spread over CONNECTIONS connections; then wait (at most DRAIN_S) until every accepted message is final and every
   callback is posted;
2. overload: OVERLOAD_RATE messages/s for OVERLOAD_S (more than the platform carries), in requests of OVERLOAD_BATCH
   over OVERLOAD_CONNECTIONS connections (so that latency alone does not hold the offered load back); every answer is
   counted (201 / 429 and why), the queue depth (messages accepted and not yet claimed) sampled every 0.5 s; drained
   again.

Figures (``BENCH`` lines; steady step unless named ``overload``):

* ``sms_e2e_accepted_per_s``: messages answered 201 per second of the load window;
* ``sms_e2e_delivered_per_s``: messages given their final status by a receipt (delivered or undelivered) per second,
  within the load window (``done_at``);
* ``sms_e2e_accept_p50_ms`` / ``_p99_ms``: latency of each accepted (201) HTTP request (send → full answer read;
  the latency of every answer, 429s included, is on stderr);
* ``sms_e2e_callbacks_per_s``: status events received (signature checked) by the callback endpoint per second within
  the load window; ``sms_e2e_final_callback_p50_s`` / ``_p99_s``: from a message's 201 to its final status at the
  client's endpoint;
* ``sms_e2e_drain_s``: from the end of the load until the last message is final and its callback posted;
* ``sms_e2e_cpu_ms_per_message``: CPU time of every platform process (web, workers, beat, simulator, callback
  endpoint, PostgreSQL backends of the bench database, Redis) over the steady step per accepted message;
* end counts, over every message of both steps, after the drains: ``sms_e2e_lost`` (answered 201 but not in the
  database, or final without the client ever getting its final status), ``sms_e2e_stuck`` (not final after the
  drain timeout), ``sms_e2e_charged_twice`` (more than one charge entry or CDR, or more charged than its price, per
  message — SQL over the ledger), ``sms_e2e_sent_uncharged`` (a part accepted by the SMSC, no charge),
  ``sms_e2e_charged_unsent`` (charged, no part accepted by the SMSC, not refunded), ``sms_e2e_bad_signatures``,
  ``sms_e2e_reserved_left`` (credit still held for messages on the client's account: reserved less what its
  credit grants hold undrawn), ``sms_e2e_simulator_submits`` vs
  ``sms_e2e_parts_accepted`` (submission is at-least-once: more submits than parts means resubmissions);
* overload: ``sms_e2e_overload_429_ratio`` (share of requests refused), ``sms_e2e_overload_accepted_per_s`` and
  ``_delivered_per_s``,
  ``sms_e2e_overload_queue_max`` (largest sampled queue depth) and ``sms_e2e_overload_queue_bounded`` (1 when it
  stayed within MAX_QUEUED plus one second of intake: the queue-depth cache lives one second).

Options (command line, or the environment for `make bench`): ``--rate`` (SMS_E2E_RATE, 1200), ``--duration``
(SMS_E2E_DURATION_S, 60), ``--batch`` (SMS_E2E_BATCH, 10), ``--connections`` (SMS_E2E_CONNECTIONS, 4),
``--overload-rate`` (SMS_E2E_OVERLOAD_RATE, 4000), ``--overload-duration`` (SMS_E2E_OVERLOAD_S, 30; 0 skips it),
``--overload-batch`` (SMS_E2E_OVERLOAD_BATCH, 50), ``--overload-connections`` (SMS_E2E_OVERLOAD_CONNECTIONS, 16),
``--max-queued`` (SMS_E2E_MAX_QUEUED, 3000), ``--client-tps`` (SMS_E2E_CLIENT_TPS, 0), ``--web-workers``
(SMS_E2E_WEB_WORKERS, 1), ``--sms-workers`` (SMS_E2E_SMS_WORKERS, 1: Celery ``-Q sms`` processes, each with
its own bind), ``--web-app`` / ``--web-interface`` (what uvicorn serves, default
``config.asgi:application``), ``--web-conn-max-age`` (DB_CONN_MAX_AGE of the web process; default: the settings'),
``--receipt-delay`` (0.2), ``--failure-ratio`` (0.01), ``--gateway-window`` (100), ``--gateway-tps`` (10000),
``--drain`` (SMS_E2E_DRAIN_S, 120), ``--profile-dir DIR`` (SMS_E2E_PROFILE_DIR: py-spy records the web, sms-worker,
callback-worker and simulator processes for ``--profile-s`` seconds in the middle of the steady step, flame graphs
and collapsed stacks into DIR, and a summary of the hottest functions on stderr).

Diagnostics on stderr: the mix, a per-5-s timeline, CPU per process over the steady step (% of a core and ms per
accepted message; ``sms_e2e_cpu_ms_per_message`` sums them: the figure least disturbed by other load on the
machine), PostgreSQL sessions opened per request and commits per message, what the bench database's backends were
busy with (sampled ``pg_stat_activity``) and the most frequent lock waits with the statement holding the lock. Speed
is measured here, never asserted by a test (see STYLE.md).
"""

from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SCHEMA = "e2e"
HOST = "e2e.bench.localhost"
SYSTEM_ID, PASSWORD = "e2e", "secret"
SENDER = "BENCH"
CALLBACK_SECRET = hashlib.sha256(b"opencarrier sms e2e bench").hexdigest()
FINAL = ("delivered", "undelivered", "expired", "rejected")
SIGNATURE_HEADER = "X-OpenCarrier-Signature"


def bench(name: str, value: float, unit: str) -> None:
    """Print one benchmark figure in the format ``make bench`` collects."""
    print("BENCH " + json.dumps({"name": name, "value": value, "unit": unit}), flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# --- the client's callback endpoint (its own process; no Django) ------------------------------------------------------


def callback_server_main(argv: list[str]) -> int:
    """``python -m sms.bench_e2e callback-server SECRET``: count signed callback events; ``GET /stats`` reports.

    Checks each POST's ``X-OpenCarrier-Signature`` (``t=<unix>,v1=<HMAC-SHA256 of "<t>." + body>``) as a client
    would, counts posts and events per status, keeps when each message's final status arrived, and answers 200.
    """
    secret = argv[0].encode()
    lock = threading.Lock()
    state = {
        "posts": 0,
        "events": 0,
        "bad_signatures": 0,
        "by_status": collections.Counter(),
        "final_at": {},  # message id -> unix time its final status arrived (the first time)
        "duplicates": 0,  # final statuses that arrived again (at-least-once posting)
        "timeline": collections.Counter(),  # unix second -> events
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            arrived = time.time()
            valid = _signature_valid(secret, self.headers.get(SIGNATURE_HEADER, ""), body, arrived)
            events = json.loads(body)["events"] if valid else []
            with lock:
                state["posts"] += 1
                if not valid:
                    state["bad_signatures"] += 1
                state["events"] += len(events)
                state["timeline"][int(arrived)] += len(events)
                for event in events:
                    state["by_status"][event["status"]] += 1
                    if event["status"] in FINAL:
                        if event["message_id"] in state["final_at"]:
                            state["duplicates"] += 1
                        else:
                            state["final_at"][event["message_id"]] = arrived
            self._answer(200 if valid else 401, b"ok" if valid else b"bad signature")

        def do_GET(self):  # noqa: N802
            with lock:
                payload = {**state, "by_status": dict(state["by_status"]), "timeline": dict(state["timeline"])}
                body = json.dumps(payload).encode()
            self._answer(200, body)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"callback endpoint listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


def _signature_valid(secret: bytes, header: str, body: bytes, now: float) -> bool:
    try:
        fields = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > 300:
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


if __name__ == "__main__" and sys.argv[1:2] == ["callback-server"]:
    sys.exit(callback_server_main(sys.argv[2:]))

if os.environ.get("OPENCARRIER_BENCH") != "1":
    sys.exit("Run it through `make bench` (or `python -m tests.bench sms.bench_e2e`): it needs the bench database.")

# The Celery broker of the test settings is REDIS_URL's server with ``virtual_host=OC_TEST_REDIS_DB``: make it the
# bench's Redis database, for this process and the workers it starts.
_redis_db = re.search(r"[?&]db=(\d+)", os.environ.get("REDIS_URL", ""))
os.environ["OC_TEST_REDIS_DB"] = _redis_db.group(1) if _redis_db else "15"

import django  # noqa: E402

django.setup()

from decimal import Decimal  # noqa: E402

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from config.celery_app import app as celery_app  # noqa: E402
from core.services import api_key_create  # noqa: E402
from sms.models import Gateway, Route  # noqa: E402
from sms.services import sms_client_create  # noqa: E402
from tenants.services import operator_provision  # noqa: E402


def options_parse() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m sms.bench_e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=float(env("SMS_E2E_RATE", "1200")), help="messages/s offered")
    parser.add_argument("--duration", type=float, default=float(env("SMS_E2E_DURATION_S", "60")), help="seconds")
    parser.add_argument("--batch", type=int, default=int(env("SMS_E2E_BATCH", "10")), help="recipients per request")
    parser.add_argument("--connections", type=int, default=int(env("SMS_E2E_CONNECTIONS", "4")))
    parser.add_argument("--overload-rate", type=float, default=float(env("SMS_E2E_OVERLOAD_RATE", "4000")))
    parser.add_argument("--overload-duration", type=float, default=float(env("SMS_E2E_OVERLOAD_S", "30")))
    parser.add_argument("--overload-batch", type=int, default=int(env("SMS_E2E_OVERLOAD_BATCH", "50")))
    parser.add_argument("--overload-connections", type=int, default=int(env("SMS_E2E_OVERLOAD_CONNECTIONS", "16")))
    parser.add_argument("--max-queued", type=int, default=int(env("SMS_E2E_MAX_QUEUED", "3000")))
    parser.add_argument("--client-tps", type=int, default=int(env("SMS_E2E_CLIENT_TPS", "0")))
    parser.add_argument("--web-workers", type=int, default=int(env("SMS_E2E_WEB_WORKERS", "1")))
    parser.add_argument("--sms-workers", type=int, default=int(env("SMS_E2E_SMS_WORKERS", "1")))
    parser.add_argument("--web-app", default=env("SMS_E2E_WEB_APP", "config.asgi:application"), help="for uvicorn")
    parser.add_argument("--web-interface", default=env("SMS_E2E_WEB_INTERFACE", "auto"), help="uvicorn --interface")
    parser.add_argument(
        "--web-conn-max-age", default=env("SMS_E2E_WEB_CONN_MAX_AGE", ""), help="DB_CONN_MAX_AGE of the web process"
    )
    parser.add_argument("--receipt-delay", type=float, default=float(env("SMS_E2E_RECEIPT_DELAY_S", "0.2")))
    parser.add_argument("--failure-ratio", type=float, default=float(env("SMS_E2E_FAILURE_RATIO", "0.01")))
    parser.add_argument("--drain", type=float, default=float(env("SMS_E2E_DRAIN_S", "120")), help="drain timeout")
    parser.add_argument("--gateway-window", type=int, default=int(env("SMS_E2E_WINDOW", "100")))
    parser.add_argument("--gateway-tps", type=int, default=int(env("SMS_E2E_GATEWAY_TPS", "10000")))
    parser.add_argument("--profile-dir", default=env("SMS_E2E_PROFILE_DIR", ""))
    parser.add_argument("--profile-s", type=float, default=float(env("SMS_E2E_PROFILE_S", "20")))
    return parser.parse_args()


# --- set-up ---------------------------------------------------------------------------------------------------------


def world_create(*, callback_url: str, smsc_port: int, options: argparse.Namespace) -> str:
    """The operator, its gateway to the simulator, a default route and one SMS client; the client's API key."""
    began = time.perf_counter()
    call_command("prepare_platform", verbosity=0)
    operator_provision(slug=SCHEMA, name="SMS bench", domain=HOST, admin_email=f"admin@{HOST}", send_welcome=False)
    connection.set_schema_to_public()
    with schema_context(SCHEMA):
        gateway = Gateway.objects.create(
            name="simulator",
            host="127.0.0.1",
            port=smsc_port,
            system_id=SYSTEM_ID,
            password=PASSWORD,
            tps=options.gateway_tps,
            window=options.gateway_window,
        )
        Route.objects.create(
            name="default", gateway=gateway, price_per_part=Decimal("0.05"), cost_per_part=Decimal("0.02")
        )
        sms_client_create(
            name="Bench client",
            currency="EUR",
            admin_email="ops@bench-client.example",
            credit=Decimal("10000000"),
            sender_ids=[SENDER],
            duplicate_window_s=0,
            tps_limit=options.client_tps,
            max_queued=options.max_queued,
            callback_url=callback_url,
            callback_secret=CALLBACK_SECRET,
        )
        user = get_user_model().objects.get(username="ops@bench-client.example")
        key = api_key_create(user=user, name="bench").raw_key
    note(f"platform, operator and SMS client set up in {time.perf_counter() - began:.1f} s")
    return key


# --- processes --------------------------------------------------------------------------------------------------------


class Process:
    """A child process (same process group: the bench runner's clean-up reaches it) with a name and its output."""

    def __init__(self, name: str, command: list[str], *, capture: bool = False, env: dict | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            command,
            cwd=BASE_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PGAPPNAME": name[:60], **(env or {})},
            stdout=subprocess.PIPE if capture else sys.stderr,
            stderr=sys.stderr,
            text=True,
        )
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match:
        """Read stdout until a line matches; keep reading the rest in the background (into ``lines``)."""
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                threading.Thread(target=self._read_rest, daemon=True).start()
                return match
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"{self.name} did not start (exit {self.proc.poll()}): {''.join(self.lines)[-500:]}")

    def _read_rest(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            note(f"{self.name} did not stop in {timeout:.0f} s: killed")
            self.proc.kill()
            self.proc.wait()


@contextmanager
def started(process: Process, **stop_options):
    try:
        yield process
    finally:
        process.stop(**stop_options)


def simulator_start(options: argparse.Namespace) -> Process:
    simulator = Process(
        "smsc simulator",
        [
            sys.executable,
            "manage.py",
            "smsc_simulator",
            "--port",
            "0",
            "--receipt-delay",
            str(options.receipt_delay),
            "--failure-ratio",
            str(options.failure_ratio),
            "--account",
            f"{SYSTEM_ID}:{PASSWORD}",
            "--stats-interval",
            "1",
        ],
        capture=True,
    )
    simulator.port = int(simulator.wait_for_line(r"listening on [\d.]+:(\d+)").group(1))
    return simulator


def simulator_stats(simulator: Process) -> dict:
    """The simulator's last printed counters (it prints them every second and when it stops)."""
    for line in reversed(simulator.lines):
        if line.startswith("{"):
            return ast.literal_eval(line.strip())
    return {}


def callback_endpoint_start() -> Process:
    endpoint = Process(
        "callback endpoint", [sys.executable, "-m", "sms.bench_e2e", "callback-server", CALLBACK_SECRET], capture=True
    )
    endpoint.port = int(endpoint.wait_for_line(r"listening on [\d.]+:(\d+)").group(1))
    return endpoint


def callback_endpoint_stats(endpoint: Process) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=30)
    try:
        conn.request("GET", "/stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def web_start(options: argparse.Namespace, key: str) -> Process:
    port = _free_port()
    web = Process(
        "uvicorn",
        [
            sys.executable,
            "-m",
            "uvicorn",
            options.web_app,
            "--interface",
            options.web_interface,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(options.web_workers),
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env={"DB_CONN_MAX_AGE": options.web_conn_max_age} if options.web_conn_max_age else None,
    )
    web.port = port
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/sms/messages?page_size=1", headers=_headers(key))
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return web
            raise RuntimeError(f"GET /api/v1/sms/messages answered {status}")
        except OSError:
            if web.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start") from None
            time.sleep(0.2)


def workers_start(sms_workers: int) -> tuple[list[Process], Process, Process]:
    """The Celery processes as production runs them: sms workers (pool solo: each holds its own binds), one worker
    for the other queues (callbacks), and beat."""
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    sms = [
        Process(
            f"sms worker {n}",
            [*celery, "worker", "-Q", "sms", "--pool", "solo", "-n", f"e2e-sms{n}@%h", "--loglevel", "WARNING"],
        )  # fmt: skip
        for n in range(1, sms_workers + 1)
    ]
    default = Process("default worker", [*celery, "worker", "-Q", "default,rating,callcontrol,reports", "--pool",
                                         "solo", "-n", "e2e-default@%h", "--loglevel", "WARNING"])  # fmt: skip
    schedule = Path(tempfile.mkdtemp(prefix="sms-e2e-")) / "celerybeat-schedule"
    beat = Process("beat", [*celery, "beat", "--loglevel", "WARNING", "-s", str(schedule)])
    deadline = time.monotonic() + 60
    while len(celery_app.control.ping(timeout=0.5)) < sms_workers + 1:
        if time.monotonic() > deadline or any(w.proc.poll() is not None for w in [*sms, default]):
            raise RuntimeError("the Celery workers did not come up")
    return sms, default, beat


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- load -------------------------------------------------------------------------------------------------------------


def _headers(key: str) -> dict:
    return {"Host": HOST, "Authorization": f"Api-Key {key}", "Content-Type": "application/json"}


class Numbers:
    """Distinct valid Spanish mobile numbers, thread-safe."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> list[str]:
        with self._lock:
            start, self._next = self._next, self._next + count
        return [f"+3461{n % 10_000_000:07d}" for n in range(start, start + count)]


class LoadResult:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []  # of every answer
        self.accepted_ms: list[float] = []  # of the 201 answers: acceptance latency
        self.statuses: collections.Counter = collections.Counter()
        self.codes: collections.Counter = collections.Counter()  # error codes of refusals
        self.accepted: dict[int, float] = {}  # message id -> unix time of its 201
        self.accepted_timeline: collections.Counter = collections.Counter()  # unix second -> messages
        self.requests = 0
        self.offered = 0  # requests due within the window
        self.late_max_s = 0.0
        self.errors: list[str] = []
        self.started = self.ended = 0.0


def load_run(*, port: int, key: str, rate: float, duration: float, batch: int, connections: int, numbers: Numbers,
             text: str) -> LoadResult:  # fmt: skip
    """Offer ``rate`` messages/s for ``duration`` s in requests of ``batch`` numbers over ``connections``
    connections, open loop: request i is due at start + i × batch / rate, whoever sends it."""
    result = LoadResult()
    interval = batch / rate
    total = result.offered = int(duration / interval)
    start = time.monotonic() + 0.2
    result.started = time.time() + 0.2
    headers = _headers(key)

    end = start + duration

    def connection_run(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for number in range(index, total, connections):
            due = start + number * interval
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif time.monotonic() >= end:
                break  # the window is over: what the platform did not take in time is not offered late
            late = -wait
            body = json.dumps({"to": numbers.take(batch), "from": SENDER, "text": text}).encode()
            began = time.perf_counter()
            try:
                conn.request("POST", "/api/v1/sms/messages", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                with result.lock:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    result.statuses["error"] += 1
                continue
            elapsed_ms = (time.perf_counter() - began) * 1000
            answered = time.time()
            ids = []
            code = ""
            if response.status == 201:
                ids = [m["id"] for m in json.loads(payload)["messages"] if m["status"] == "accepted"]
            else:
                try:
                    code = json.loads(payload)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = payload[:80].decode(errors="replace")
            with result.lock:
                result.requests += 1
                result.late_max_s = max(result.late_max_s, late)
                result.latencies_ms.append(elapsed_ms)
                if response.status == 201:
                    result.accepted_ms.append(elapsed_ms)
                result.statuses[response.status] += 1
                if code:
                    result.codes[code] += 1
                for message_id in ids:
                    result.accepted[message_id] = answered
                result.accepted_timeline[int(answered)] += len(ids)
        conn.close()

    threads = [threading.Thread(target=connection_run, args=(i,), name=f"load-{i}") for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.ended = time.time()
    return result


def percentile(values: list[float], percent: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(percent / 100 * (len(ordered) - 1))))]


# --- the database's view ----------------------------------------------------------------------------------------------


def sql(query: str, params: list | None = None) -> list[tuple]:
    with schema_context(SCHEMA), connection.cursor() as cursor:
        cursor.execute(query, params or [])
        return cursor.fetchall()


def queue_depth() -> int:
    """Messages accepted and not yet claimed by a submitter (the partial index sms_msg_due counts them)."""
    return sql("SELECT count(*) FROM sms_message WHERE status = 'accepted'")[0][0]


def unfinished() -> int:
    return sql("SELECT count(*) FROM sms_message WHERE status IN ('accepted', 'submitting', 'submitted')")[0][0]


def callbacks_pending() -> int:
    return sql("SELECT count(*) FROM sms_callbackbatch WHERE state = 'pending'")[0][0]


class Sampler:
    """Samples the queue depth every ``every`` s in a thread of its own (its own database connection)."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self.waits: collections.Counter = collections.Counter()  # what the bench database's backends were doing
        self.blocked: collections.Counter = collections.Counter()  # (waiting statement, blocking statement)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every):
                self.samples.append((time.time(), queue_depth()))
                for state, wait, count in sql(
                    "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU'), count(*)"
                    " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND state <> 'idle' GROUP BY 1, 2"
                ):
                    self.waits[f"{state} / {wait}"] += count
                for waiter, blocker in sql(
                    "SELECT left(regexp_replace(w.query, '\\s+', ' ', 'g'), 70),"
                    " left(regexp_replace(b.query, '\\s+', ' ', 'g'), 70)"
                    " FROM pg_stat_activity w JOIN pg_stat_activity b ON b.pid = ANY(pg_blocking_pids(w.pid))"
                    " WHERE w.datname = current_database() AND w.wait_event_type = 'Lock'"
                ):
                    self.blocked[(waiter, blocker)] += 1
        finally:
            connection.close()

    def waits_note(self) -> None:
        """Busy backends per sample, by what they waited on (lock waits show who serialises whom)."""
        samples = max(1, len(self.samples))
        busy = ", ".join(f"{name} {count / samples:.2f}" for name, count in self.waits.most_common(8))
        note(f"PostgreSQL backends busy per sample (of {samples}): {busy or 'none'}")
        for (waiter, blocker), count in self.blocked.most_common(5):
            note(f"  lock wait x{count}: {waiter!r} blocked by {blocker!r}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def max(self) -> int:
        return max((depth for _, depth in self.samples), default=0)


def drain(*, timeout: float, endpoint: Process, expected_finals: int) -> float:
    """Wait until every message is final, every callback batch posted and the endpoint has every final status."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if unfinished() == 0 and callbacks_pending() == 0:
            if len(callback_endpoint_stats(endpoint)["final_at"]) >= expected_finals:
                break
        time.sleep(0.25)
    else:
        note(f"drain: still not done after {timeout:.0f} s")
    return time.monotonic() - began


def database_activity() -> tuple[int, int, int]:
    """PostgreSQL's counters for the bench database: sessions opened, transactions committed, rows fetched."""
    row = sql("SELECT sessions, xact_commit, tup_fetched FROM pg_stat_database WHERE datname = current_database()")
    return tuple(int(v) for v in row[0])


def receipts_in_window(start: float, end: float) -> int:
    return sql(
        "SELECT count(*) FROM sms_message WHERE status IN ('delivered', 'undelivered')"
        " AND done_at >= to_timestamp(%s) AND done_at < to_timestamp(%s)",
        [start, end],
    )[0][0]


def timeline_note(load: LoadResult, endpoint_stats: dict) -> None:
    """Accepted, finalised-by-receipt and callback events per 5 s of the load window."""
    start, end = int(load.started), int(load.ended) + 1
    finals = dict(
        sql(
            "SELECT floor(extract(epoch FROM done_at))::bigint, count(*) FROM sms_message"
            " WHERE status IN ('delivered', 'undelivered') AND done_at >= to_timestamp(%s)"
            " AND done_at < to_timestamp(%s) GROUP BY 1",
            [start, end],
        )
    )
    events = {int(k): v for k, v in endpoint_stats["timeline"].items()}
    for left in range(start, end, 5):
        seconds = range(left, min(left + 5, end))
        span = len(seconds)
        note(
            f"t+{left - start:3d}s  accepted {sum(load.accepted_timeline.get(s, 0) for s in seconds) / span:6.0f}/s"
            f"  final {sum(finals.get(s, 0) for s in seconds) / span:6.0f}/s"
            f"  callback events {sum(events.get(s, 0) for s in seconds) / span:6.0f}/s"
        )


def end_counts(accepted: dict[int, float], endpoint_stats: dict) -> dict[str, int]:
    """The integrity counts over every message, from SQL (and the callback endpoint's tally)."""
    ids = list(accepted)
    rows = dict(sql("SELECT id, status FROM sms_message WHERE id = ANY(%s)", [ids]))
    final_at = {int(k) for k in endpoint_stats["final_at"]}
    missing = [i for i in ids if i not in rows]
    stuck = [i for i, status in rows.items() if status not in FINAL]
    unreported = [i for i, status in rows.items() if status in FINAL and i not in final_at]
    charged_twice = sql(
        """
        WITH charges AS (
            SELECT c.source_id::bigint AS message_id, count(e.id) AS entries, -sum(e.amount) AS charged
            FROM billing_ledgerentry e JOIN billing_cdr c ON c.id = e.cdr_id
            WHERE c.source = 'sms' AND e.kind = 'charge' GROUP BY c.source_id
        ), cdrs AS (
            SELECT source_id::bigint AS message_id, count(*) AS n FROM billing_cdr WHERE source = 'sms' GROUP BY 1
        )
        SELECT count(*) FROM sms_message m
        LEFT JOIN charges ch ON ch.message_id = m.id LEFT JOIN cdrs ON cdrs.message_id = m.id
        WHERE ch.entries > 1 OR cdrs.n > 1 OR ch.charged > m.price
        """
    )[0][0]
    sent_uncharged = sql(
        """
        SELECT count(*) FROM sms_message m
        WHERE EXISTS (SELECT 1 FROM sms_messagepart p WHERE p.message_id = m.id AND p.status <> 'rejected')
          AND NOT EXISTS (SELECT 1 FROM billing_ledgerentry e WHERE e.idempotency_key = 'sms:charge:' || m.id)
        """
    )[0][0]
    charged_unsent = sql(
        """
        SELECT count(*) FROM sms_message m
        WHERE EXISTS (SELECT 1 FROM billing_ledgerentry e WHERE e.idempotency_key = 'sms:charge:' || m.id)
          AND NOT EXISTS (SELECT 1 FROM sms_messagepart p WHERE p.message_id = m.id AND p.status <> 'rejected')
          AND NOT EXISTS (SELECT 1 FROM billing_ledgerentry e WHERE e.idempotency_key = 'sms:refund:' || m.id)
        """
    )[0][0]
    parts_accepted = sql("SELECT coalesce(sum(parts), 0) FROM sms_message WHERE id = ANY(%s)", [ids])[0][0]
    reserved, balance, entries_sum = sql(
        """
        SELECT a.reserved - coalesce((SELECT sum(undrawn) FROM billing_reservation r
                                      WHERE r.account_id = a.id AND r.status = 'held'), 0),
               a.balance, (SELECT sum(amount) FROM billing_ledgerentry e WHERE e.account_id = a.id)
        FROM billing_account a JOIN sms_smsclient c ON c.account_id = a.id
        """
    )[0]
    statuses = dict(sql("SELECT status, count(*) FROM sms_message GROUP BY status"))
    note(f"messages by status: {statuses}; callback events by status: {endpoint_stats['by_status']}")
    note(f"account: balance {balance}, sum of its entries {entries_sum}, held for messages {reserved}")
    if missing or stuck or unreported:
        note(f"missing {missing[:5]}, stuck {stuck[:5]}, final without a final callback {unreported[:5]}")
    return {
        "lost": len(missing) + len(unreported),
        "stuck": len(stuck),
        "charged_twice": charged_twice,
        "sent_uncharged": sent_uncharged,
        "charged_unsent": charged_unsent,
        "parts_accepted": int(parts_accepted),
        "reserved_left": reserved,
        "balance_mismatch": int(balance != entries_sum),
    }


# --- CPU and profiles -------------------------------------------------------------------------------------------------


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """utime + stime per named group of processes (and every PostgreSQL backend of the bench database, Redis)."""
    ticks = os.sysconf("SC_CLK_TCK")
    groups = {name: list(group) for name, group in pids.items()}
    groups["postgres (bench db)"] = []
    groups["redis"] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("postgres:") and connection.settings_dict["NAME"] in cmdline:
            groups["postgres (bench db)"].append(int(entry))
        elif "redis-server" in cmdline and "redis.sock" in cmdline:
            groups["redis"].append(int(entry))
    totals = {}
    for name, group in groups.items():
        total = 0.0
        with_children = name == "uvicorn"  # its workers, when more than one
        for pid in set(group) | ({c for p in group for c in _children(p)} if with_children else set()):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
        totals[name] = total
    return totals


def _children(pid: int) -> list[int]:
    try:
        found = []
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        return found
    except OSError:
        return []


def profiles_record(directory: Path, targets: dict[str, int], seconds: float) -> list[subprocess.Popen]:
    """Start py-spy on each target (flame graph + collapsed stacks); returns the py-spy processes."""
    directory.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for name, pid in targets.items():
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            procs.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(int(seconds)),
                        "--rate",
                        "50",
                        "--subprocesses",
                        "--nonblocking",
                        "--gil",  # samples holding the GIL: Python's own CPU, not waits on sockets and locks
                        "--format",
                        fmt,
                        "-o",
                        str(directory / f"{name}.{suffix}"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
    return procs


def profile_summary(path: Path, top: int = 12) -> None:
    """The hottest functions of a collapsed-stacks file: share of samples where each is on the stack (inclusive),
    for this project's code, and where each is the leaf (self)."""
    if not path.exists():
        return
    inclusive: collections.Counter = collections.Counter()
    leaf: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        frames = [f for f in frames if not f.startswith("thread ")]
        total += samples
        if frames:
            leaf[_frame_name(frames[-1])] += samples
        for name in {_frame_name(f) for f in frames if "/work/" in f and "/.venv/" not in f or "(" not in f}:
            inclusive[name] += samples
    if not total:
        return
    note(f"profile {path.name}: {total} samples")
    for name, samples in inclusive.most_common(top):
        note(f"  incl {100 * samples / total:5.1f}%  {name}")
    for name, samples in leaf.most_common(top):
        note(f"  self {100 * samples / total:5.1f}%  {name}")


def _frame_name(frame: str) -> str:
    # py-spy's raw frames look like "function (path/to/file.py:123)"
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    function, path = match.groups()
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{function}"


# --- the run ----------------------------------------------------------------------------------------------------------


def main() -> None:
    options = options_parse()
    text = "Your OpenCarrier code is 482913. It expires in 10 minutes."  # 1 part, GSM 03.38
    numbers = Numbers()
    note(
        f"offered load: {options.rate:.0f} messages/s for {options.duration:.0f} s in requests of {options.batch} "
        f"recipients ({options.rate / options.batch:.0f} requests/s) over {options.connections} kept-alive "
        f"connections, one {len(text)}-character GSM part each; {options.web_workers} uvicorn worker(s), "
        f"{options.sms_workers} sms worker(s); gateway "
        f"window {options.gateway_window}; receipts after {options.receipt_delay} s, {options.failure_ratio:.0%} "
        f"UNDELIV; client TPS limit {options.client_tps or 'none'}, queue bound {options.max_queued}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    with ExitStack() as stack:
        simulator = stack.enter_context(started(simulator_start(options), sig=signal.SIGINT))
        endpoint = stack.enter_context(started(callback_endpoint_start()))
        key = world_create(
            callback_url=f"http://127.0.0.1:{endpoint.port}/dlr", smsc_port=simulator.port, options=options
        )
        sms_workers, default_worker, beat = workers_start(options.sms_workers)
        sms_worker = sms_workers[0]
        for process in (beat, default_worker, *sms_workers):  # stopped in reverse: the sms workers first
            stack.enter_context(started(process))
        web = stack.enter_context(started(web_start(options, key)))
        connection.close()  # the children opened theirs; this process reconnects when it needs to

        # Warm-up: the first drain binds the gateway; every process has imported and connected.
        warm = load_run(port=web.port, key=key, rate=200, duration=3, batch=options.batch,
                        connections=options.connections, numbers=numbers, text=text)  # fmt: skip
        drain(timeout=60, endpoint=endpoint, expected_finals=len(warm.accepted))
        accepted_all = dict(warm.accepted)
        note(f"warm-up: {len(warm.accepted)} messages accepted and final; answers {dict(warm.statuses)}")

        # 1. Steady load.
        pids = {
            "uvicorn": [web.pid],
            "sms worker(s)": [w.pid for w in sms_workers],
            "default worker": [default_worker.pid],
            "beat": [beat.pid],
            "simulator": [simulator.pid],
            "callback endpoint": [endpoint.pid],
            "load generator (this)": [os.getpid()],
        }
        cpu_before = cpu_seconds(pids)
        activity_before = database_activity()
        spies: list[subprocess.Popen] = []
        profile_dir = Path(options.profile_dir) if options.profile_dir else None
        if profile_dir:
            targets = {"uvicorn": web.pid, "sms_worker": sms_worker.pid, "default_worker": default_worker.pid,
                       "simulator": simulator.pid}  # fmt: skip
            delay = max(0.0, (options.duration - options.profile_s) / 2)
            timer = threading.Timer(
                delay, lambda: spies.extend(profiles_record(profile_dir, targets, options.profile_s))
            )
            timer.start()
        with Sampler() as sampler:
            steady = load_run(port=web.port, key=key, rate=options.rate, duration=options.duration,
                              batch=options.batch, connections=options.connections, numbers=numbers,
                              text=text)  # fmt: skip
        cpu_after = cpu_seconds(pids)
        activity_after = database_activity()
        window = steady.ended - steady.started
        finals_in_window = receipts_in_window(steady.started, steady.ended)
        accepted_all.update(steady.accepted)
        drain_s = drain(timeout=options.drain, endpoint=endpoint, expected_finals=len(accepted_all))
        for spy in spies:
            spy.wait(timeout=options.profile_s + 60)
        stats = callback_endpoint_stats(endpoint)
        events_in_window = sum(v for k, v in stats["timeline"].items() if steady.started <= int(k) < steady.ended)
        final_lags = [stats["final_at"][str(i)] - t for i, t in steady.accepted.items() if str(i) in stats["final_at"]]
        timeline_note(steady, stats)
        note(
            f"steady: {steady.requests} of {steady.offered} requests sent, answers {dict(steady.statuses)} "
            f"{dict(steady.codes)}; every answer p50 {percentile(steady.latencies_ms, 50):.1f} ms, p99 "
            f"{percentile(steady.latencies_ms, 99):.1f} ms; generator at most {steady.late_max_s * 1000:.0f} ms behind "
            "schedule; "
            f"queue depth max {sampler.max}; load average {os.getloadavg()[0]:.2f}"
        )
        if steady.errors:
            note(f"request errors: {steady.errors[:3]}")
        sampler.waits_note()
        sessions, commits, _ = (after - before for after, before in zip(activity_after, activity_before, strict=True))
        note(
            f"PostgreSQL over the steady step: {sessions} sessions opened ({sessions / max(1, steady.requests):.2f} "
            f"per request), {commits} commits ({commits / max(1, len(steady.accepted)):.2f} per message)"
        )
        used = {name: seconds - cpu_before.get(name, 0) for name, seconds in cpu_after.items()}
        platform_cpu = sum(v for k, v in used.items() if k != "load generator (this)")
        for name, seconds in used.items():
            note(
                f"CPU over the steady step: {name:22s} {100 * seconds / window:5.0f}% of a core, "
                f"{1000 * seconds / max(1, len(steady.accepted)):6.3f} ms per accepted message"
            )
        note("(PostgreSQL backends that exited during the step, e.g. one per request under ASGI, are not counted)")
        bench("sms_e2e_accepted_per_s", round(len(steady.accepted) / window, 1), "messages/s")
        bench("sms_e2e_delivered_per_s", round(finals_in_window / window, 1), "messages/s")
        bench("sms_e2e_accept_p50_ms", round(percentile(steady.accepted_ms, 50), 2), "ms")
        bench("sms_e2e_accept_p99_ms", round(percentile(steady.accepted_ms, 99), 2), "ms")
        bench("sms_e2e_callbacks_per_s", round(events_in_window / window, 1), "events/s")
        bench("sms_e2e_final_callback_p50_s", round(percentile(final_lags, 50), 3), "s")
        bench("sms_e2e_final_callback_p99_s", round(percentile(final_lags, 99), 3), "s")
        bench("sms_e2e_drain_s", round(drain_s, 2), "s")
        bench("sms_e2e_cpu_ms_per_message", round(1000 * platform_cpu / max(1, len(steady.accepted)), 3), "ms")
        if profile_dir:
            for name in ("uvicorn", "sms_worker", "default_worker", "simulator"):
                profile_summary(profile_dir / f"{name}.txt")

        # 2. Overload.
        if options.overload_duration > 0:
            with Sampler() as overload_sampler:
                overload = load_run(port=web.port, key=key, rate=options.overload_rate,
                                    duration=options.overload_duration, batch=options.overload_batch,
                                    connections=options.overload_connections, numbers=numbers,
                                    text=text)  # fmt: skip
            window = overload.ended - overload.started
            accepted_all.update(overload.accepted)
            overload_finals = receipts_in_window(overload.started, overload.ended)
            drain(timeout=options.drain, endpoint=endpoint, expected_finals=len(accepted_all))
            refused = overload.statuses.get(429, 0)
            bound = options.max_queued + options.overload_rate  # the depth is cached for one second
            note(
                f"overload: {overload.requests} of {overload.offered} requests sent at {options.overload_rate:.0f} "
                f"messages/s offered ({options.overload_batch} per request, {options.overload_connections} "
                f"connections), answers {dict(overload.statuses)} {dict(overload.codes)}; receipts applied "
                f"{overload_finals / window:.0f}/s; queue depth max {overload_sampler.max} (bound "
                f"{options.max_queued}); request p99 {percentile(overload.latencies_ms, 99):.1f} ms"
            )
            bench("sms_e2e_overload_429_ratio", round(refused / max(1, overload.requests), 3), "ratio")
            bench("sms_e2e_overload_accepted_per_s", round(len(overload.accepted) / window, 1), "messages/s")
            bench("sms_e2e_overload_delivered_per_s", round(overload_finals / window, 1), "messages/s")
            bench("sms_e2e_overload_queue_max", overload_sampler.max, "messages")
            bench("sms_e2e_overload_queue_bounded", int(overload_sampler.max <= bound), "bool")

        # 3. What became of every message.
        stats = callback_endpoint_stats(endpoint)
        counts = end_counts(accepted_all, stats)
        web.stop()
        for process in (*sms_workers, default_worker, beat):
            process.stop()
        simulator.stop(sig=signal.SIGINT)
        simulator_counters = simulator_stats(simulator)
        note(f"simulator: {simulator_counters}")
        bench("sms_e2e_lost", counts["lost"], "messages")
        bench("sms_e2e_stuck", counts["stuck"], "messages")
        bench("sms_e2e_charged_twice", counts["charged_twice"], "messages")
        bench("sms_e2e_sent_uncharged", counts["sent_uncharged"], "messages")
        bench("sms_e2e_charged_unsent", counts["charged_unsent"], "messages")
        bench("sms_e2e_bad_signatures", stats["bad_signatures"], "posts")
        bench("sms_e2e_reserved_left", float(counts["reserved_left"]), "EUR")
        bench("sms_e2e_balance_mismatch", counts["balance_mismatch"], "bool")
        bench("sms_e2e_messages_accepted", len(accepted_all), "messages")
        bench("sms_e2e_parts_accepted", counts["parts_accepted"], "parts")
        bench("sms_e2e_simulator_submits", simulator_counters.get("submits", -1), "submit_sm")
        connection.close()


if __name__ == "__main__":
    main()
