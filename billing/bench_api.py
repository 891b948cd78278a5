"""Benchmark of single-CDR API ingestion, run by `make bench` (tests/bench.py gives it a database of its own).

On an empty database: ``prepare_platform``, one operator with a 50,000-prefix customer deck and a default supplier
cost deck of the same shape, 200 accounts on it, and a staff API key. Then the platform's real ASGI server (uvicorn
``config.asgi:application`` on 127.0.0.1, BENCH_API_WORKERS processes, default 2: one per core) takes
``POST /api/v1/billing/cdrs`` requests holding ONE CDR each, from BENCH_API_CLIENTS concurrent kept-alive
connections (default 256: many switches and partners posting at once) driven by an asyncio (uvloop) client in this
process. Every request goes the whole way: host → operator schema, API key, permission, throttle (the rate is raised
to 1,000,000/min for the bench key), validation, store, rate (price and cost), charge, answer.

* ``api_single_cdr_per_s``: CDRs acknowledged per second (each answered 200 with imported 1), median of 3 rounds of
  BENCH_API_REQUESTS requests (default 6,000) after a warm-up of 1,500;
* ``api_single_cdr_p50_ms`` / ``api_single_cdr_p99_ms``: request latency over the same rounds (client side, from
  the request's first byte sent to the response's last byte read), medians of the rounds' figures.

Afterwards the books are checked: every CDR stored once and charged once, and each account's balance equals the sum
of its ledger entries. Speed is measured here, never asserted by a test (see STYLE.md).
"""

import os
import sys

if os.environ.get("OPENCARRIER_BENCH") != "1":
    sys.exit("Run it through `make bench` (python -m tests.bench billing.bench_api): it needs the bench database.")

import django  # noqa: E402

django.setup()

import asyncio  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from decimal import Decimal  # noqa: E402
from pathlib import Path  # noqa: E402

import uvloop  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Sum  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from billing.models import Account, Cdr, LedgerEntry, Tariff  # noqa: E402
from billing.services import account_create, account_topup, rates_import  # noqa: E402
from core.services import api_key_create  # noqa: E402
from tenants.services import operator_provision  # noqa: E402

SLUG = "benchapi"
HOST = "benchapi.bench.localhost"
DECK_PREFIXES = 50_000
ACCOUNTS = 200
WORKERS = int(os.environ.get("BENCH_API_WORKERS", "2"))
CLIENTS = int(os.environ.get("BENCH_API_CLIENTS", "256"))
REQUESTS = int(os.environ.get("BENCH_API_REQUESTS", "6000"))
WARMUP = int(os.environ.get("BENCH_API_WARMUP", "1500"))
ROUNDS = 3
SEED = 1000
BASE_DIR = Path(__file__).resolve().parent.parent
PATH = "/api/v1/billing/cdrs"


def bench(name: str, value: float, unit: str) -> None:
    """Print one benchmark figure in the format ``make bench`` collects."""
    print("BENCH " + json.dumps({"name": name, "value": value, "unit": unit}), flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def deck_csv(rng: random.Random, scale: Decimal) -> tuple[str, list[str]]:
    """A 50,000-prefix A-Z deck as CSV (country codes refined into 3-8 digit prefixes), and its prefixes."""
    codes = sorted({str(rng.randint(1, 998)) for _ in range(300)})
    prefixes: set[str] = set()
    while len(prefixes) < DECK_PREFIXES:
        code = rng.choice(codes)
        prefixes.add(
            code + "".join(rng.choice("0123456789") for _ in range(rng.randint(max(3, len(code)), 8) - len(code)))
        )
    lines = ["prefix,destination,rate,connect_fee,increment,min_charge,effective_from"]
    for prefix in sorted(prefixes):
        rate = Decimal(rng.randint(1_000, 500_000)).scaleb(-6) * scale
        increment = rng.choice(["60/60", "30/6", "1/1", "6/6"])
        lines.append(f"{prefix},Destination {prefix[:3]},{rate.quantize(Decimal('0.000001'))},0,{increment},0,")
    return "\n".join(lines) + "\n", sorted(prefixes)


def operator_prepare() -> tuple[str, list[str], list[str]]:
    """The operator, its decks, accounts and a staff key; returns (raw key, account codes, deck prefixes)."""
    call_command("prepare_platform", verbosity=0)
    operator_provision(slug=SLUG, name="Bench API", domain=HOST, admin_email=f"admin@{HOST}", send_welcome=False)
    rng = random.Random(SEED)
    with schema_context(SLUG):
        price_csv, prefixes = deck_csv(rng, Decimal(1))
        cost_csv, _ = deck_csv(random.Random(SEED), Decimal("0.5"))
        retail = Tariff.objects.create(name="Retail", currency="EUR")
        result = rates_import(tariff=retail, source=price_csv)
        cost = Tariff.objects.create(name="Carrier cost", kind="cost", currency="EUR", is_default_cost=True)
        rates_import(tariff=cost, source=cost_csv)
        note(f"decks: {result.rates} customer rates, cost deck of the same shape")
        codes = []
        for number in range(ACCOUNTS):
            account = account_create(
                name=f"Customer {number}", code=f"c{number:04d}", currency="EUR", tariff=retail, kind="postpaid"
            )
            account_topup(account=account, amount=Decimal(1000), idempotency_key=f"bench:{number}")
            codes.append(account.code)
        admin = get_user_model().objects.get(username=f"admin@{HOST}")
        key = api_key_create(user=admin, name="bench").raw_key
    connection.close()
    return key, codes, prefixes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def asgi_server(workers: int):
    """The platform's ASGI server (uvicorn, `workers` processes sharing one socket) on 127.0.0.1; its port."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--no-access-log",
        "--log-level",
        "warning",
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]
    env = dict(os.environ, API_THROTTLE_RATE=os.environ.get("API_THROTTLE_RATE", "1000000/min"))
    server = subprocess.Popen(command, cwd=BASE_DIR, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {server.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Traffic:
    """Single-CDR request bodies: unique source ids, random accounts and callees under the deck's prefixes."""

    def __init__(self, key: str, codes: list[str], prefixes: list[str]):
        self.rng = random.Random(SEED + 1)
        self.codes, self.prefixes, self.sequence = codes, prefixes, 0
        self.head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Api-Key {key}\r\n"
            "Content-Type: application/json\r\n"
        )

    def request(self) -> bytes:
        self.sequence += 1
        rng = self.rng
        prefix = rng.choice(self.prefixes)
        billsec = rng.choice([0, 7, 45, 60, 61, 180, 600])
        record = {
            "source_id": f"bench-{self.sequence}",
            "account": rng.choice(self.codes),
            "caller": "34910000001",
            "callee": prefix + "".join(rng.choice("0123456789") for _ in range(11 - len(prefix))),
            "start": f"2026-03-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
            "duration": billsec + 5,
            "billsec": billsec,
        }
        body = json.dumps({"records": [record]}).encode()
        return self.head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


async def one_connection(port: int, requests: list[bytes], latencies: list[float], failures: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while requests:
            request = requests.pop()
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append((time.perf_counter() - began) * 1000)
            if not head.startswith(b"HTTP/1.1 200") or b'"imported":1' not in body.replace(b" ", b""):
                failures.append(head.split(b"\r\n", 1)[0].decode() + " " + body[:300].decode(errors="replace"))
    finally:
        writer.close()


async def drive(port: int, requests: list[bytes], clients: int) -> tuple[float, list[float], list[str]]:
    latencies: list[float] = []
    failures: list[str] = []
    began = time.perf_counter()
    await asyncio.gather(*(one_connection(port, requests, latencies, failures) for _ in range(clients)))
    return time.perf_counter() - began, latencies, failures


def books_check(sent: int) -> None:
    """Every CDR stored and charged once; balance = sum of entries for every account."""
    with schema_context(SLUG):
        stored = Cdr.objects.filter(source="api").count()
        charged = LedgerEntry.objects.filter(cdr__source="api").count()
        rated = Cdr.objects.filter(source="api", status="rated").exclude(price=0).count()
        sums = dict(LedgerEntry.objects.values_list("account").annotate(total=Sum("amount")))
        wrong = [a.code for a in Account.objects.all() if a.balance != sums.get(a.pk, Decimal(0))]
    note(
        f"books: {stored} CDRs stored for {sent} sent, {charged} charges for {rated} priced CDRs, "
        f"{len(wrong)} accounts off balance"
    )
    if stored != sent or charged != rated or wrong:
        raise SystemExit("the books do not add up")


def main() -> None:
    began = time.perf_counter()
    key, codes, prefixes = operator_prepare()
    note(f"set-up in {time.perf_counter() - began:.1f} s; {WORKERS} uvicorn workers, {CLIENTS} clients")
    traffic = Traffic(key, codes, prefixes)
    sent = 0
    rates, p50s, p99s = [], [], []
    with asgi_server(WORKERS) as port:
        warmup = [traffic.request() for _ in range(WARMUP)]
        elapsed, _, failures = uvloop.run(drive(port, warmup, CLIENTS))
        sent += WARMUP
        if failures:
            raise SystemExit(f"warm-up failed: {failures[:3]}")
        note(f"warm-up: {WARMUP / elapsed:.0f}/s")
        for round_number in range(ROUNDS):
            requests = [traffic.request() for _ in range(REQUESTS)]
            elapsed, latencies, failures = uvloop.run(drive(port, requests, CLIENTS))
            sent += REQUESTS
            if failures:
                raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[:3]}")
            rates.append(REQUESTS / elapsed)
            p50s.append(statistics.median(latencies))
            p99s.append(percentile(latencies, 99))
            note(
                f"round {round_number + 1}: {rates[-1]:.0f} CDR/s, p50 {p50s[-1]:.2f} ms, p99 {p99s[-1]:.2f} ms; "
                f"load average {os.getloadavg()[0]:.2f}"
            )
    books_check(sent)
    bench("api_single_cdr_per_s", round(statistics.median(rates), 1), "CDR/s")
    bench("api_single_cdr_p50_ms", round(statistics.median(p50s), 3), "ms")
    bench("api_single_cdr_p99_ms", round(statistics.median(p99s), 3), "ms")


if __name__ == "__main__":
    main()
