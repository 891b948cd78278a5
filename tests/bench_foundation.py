"""Benchmark of the tenancy foundation, run by `make bench` (tests/bench.py gives it a database of its own).

On an empty database: ``prepare_platform``, then 200 operators provisioned one after the other, then:

* ``provision_operator_s`` / ``provision_operator_p90_s``: median and p90 of one
  ``operator_provision(send_welcome=False)`` (template clone path) over the 200 operators, each on a database
  connection of its own, as a console or API request has: on one long-lived connection every call is slower
  than the last, because django-tenants re-creates its ``clone_schema`` function on every clone and the
  PostgreSQL session keeps each compiled copy and its plans;
* ``api_me_{operator,platform}_{p50,p99}_ms``: latency of ``GET /api/v1/me`` with an API key, sequential on
  kept-alive connections to the real ASGI server (uvicorn in a subprocess, 127.0.0.1), on one operator's domain
  and on the platform domain, 2,000 requests each after 200 of warm-up, interleaved so machine noise hits both
  alike; ``tenancy_routing_overhead_p50_ms`` is the operator p50 minus the platform p50;
* ``migrate_schemas_200_noop_s``: wall time of ``manage.py migrate_schemas`` with nothing to apply, and
  ``migrate_schemas_200_noop_multiprocessing_s`` the same with ``--executor multiprocessing`` (django-tenants'
  pool of TENANT_MULTIPROCESSING_MAX_PROCESSES processes, 2 by default).

Speed is measured here, never asserted by a test (see STYLE.md).
"""

import os
import sys

if os.environ.get("OPENCARRIER_BENCH") != "1":
    sys.exit("Run it through `make bench`: it provisions 200 operators and needs the database the runner makes.")

import django  # noqa: E402

django.setup()

import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from core.services import api_key_create, user_create  # noqa: E402
from tenants.services import operator_provision  # noqa: E402

OPERATORS = 200
ROUTED_OPERATOR = "op150"
PLATFORM_HOST = "localhost"
WARMUP_REQUESTS = 200
MEASURED_REQUESTS = 2_000
BASE_DIR = Path(__file__).resolve().parent.parent


def bench(name: str, value: float, unit: str) -> None:
    """Print one benchmark figure in the format ``make bench`` collects."""
    print("BENCH " + json.dumps({"name": name, "value": value, "unit": unit}), flush=True)


def percentile(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def operator_host(slug: str) -> str:
    return f"{slug}.bench.localhost"


def operators_provision(count: int) -> list[float]:
    """Provision operators ``op000``, ``op001``... one after the other; the seconds each took."""
    durations = []
    for number in range(count):
        slug = f"op{number:03d}"
        began = time.perf_counter()
        operator_provision(
            slug=slug,
            name=f"Bench operator {number}",
            domain=operator_host(slug),
            admin_email=f"admin@{operator_host(slug)}",
            send_welcome=False,
        )
        durations.append(time.perf_counter() - began)
        connection.close()  # the next one connects anew (within its timing), as a request of its own does
    return durations


def api_keys_create() -> tuple[str, str]:
    """Raw API keys of the routed operator's first admin and of a platform staff user."""
    with schema_context(ROUTED_OPERATOR):
        admin = get_user_model().objects.get(username=f"admin@{operator_host(ROUTED_OPERATOR)}")
        operator_key = api_key_create(user=admin, name="bench").raw_key
    with schema_context("public"):
        staff = user_create(email="bench@platform.localhost", is_staff=True)
        platform_key = api_key_create(user=staff, name="bench").raw_key
    return operator_key, platform_key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def asgi_server(platform_key: str):
    """The platform's real ASGI server on 127.0.0.1 (same settings and bench database as this process); its port."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
               "--lifespan", "off", "--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=BASE_DIR)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {server.returncode}")
            try:
                api_me_ms(http.client.HTTPConnection("127.0.0.1", port, timeout=5), PLATFORM_HOST, platform_key)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def api_me_ms(client: http.client.HTTPConnection, host: str, key: str) -> float:
    """One GET /api/v1/me on a kept-alive connection, in milliseconds; it must answer 200."""
    began = time.perf_counter_ns()
    client.request("GET", "/api/v1/me", headers={"Host": host, "Authorization": f"Api-Key {key}"})
    response = client.getresponse()
    body = response.read()
    elapsed_ms = (time.perf_counter_ns() - began) / 1e6
    if response.status != 200:
        raise RuntimeError(f"GET /api/v1/me on {host}: {response.status} {body[:200]!r}")
    return elapsed_ms


def api_me_latencies(port: int, operator_key: str, platform_key: str) -> tuple[list[float], list[float]]:
    """Operator-domain and platform-domain latencies, measured in alternation after a warm-up."""
    sides = [
        (http.client.HTTPConnection("127.0.0.1", port, timeout=10), operator_host(ROUTED_OPERATOR), operator_key, []),
        (http.client.HTTPConnection("127.0.0.1", port, timeout=10), PLATFORM_HOST, platform_key, []),
    ]
    for number in range(WARMUP_REQUESTS + MEASURED_REQUESTS):
        # Swap which side goes first on every round, so neither always follows the other.
        for client, host, key, latencies in sides if number % 2 else reversed(sides):
            elapsed_ms = api_me_ms(client, host, key)
            if number >= WARMUP_REQUESTS:
                latencies.append(elapsed_ms)
    for client, *_ in sides:
        client.close()
    return sides[0][3], sides[1][3]


def migrate_schemas_s(*options: str) -> float:
    """Wall time of ``manage.py migrate_schemas`` in a fresh process (start-up included, as a deploy runs it)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "manage.py", "migrate_schemas", "--noinput", *options],
                   cwd=BASE_DIR, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    began = time.perf_counter()
    call_command("prepare_platform", verbosity=0)
    print(f"# prepare_platform on an empty database: {time.perf_counter() - began:.1f} s", flush=True)

    durations = operators_provision(OPERATORS)
    bench("provision_operator_s", round(statistics.median(durations), 4), "s")
    bench("provision_operator_p90_s", round(percentile(durations, 90), 4), "s")
    print(f"# {OPERATORS} operators provisioned in {sum(durations):.1f} s, slowest {max(durations):.3f} s; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    operator_key, platform_key = api_keys_create()
    with asgi_server(platform_key) as port:
        operator_ms, platform_ms = api_me_latencies(port, operator_key, platform_key)
    operator_p50, platform_p50 = statistics.median(operator_ms), statistics.median(platform_ms)
    bench("api_me_operator_p50_ms", round(operator_p50, 3), "ms")
    bench("api_me_operator_p99_ms", round(percentile(operator_ms, 99), 3), "ms")
    bench("api_me_platform_p50_ms", round(platform_p50, 3), "ms")
    bench("api_me_platform_p99_ms", round(percentile(platform_ms, 99), 3), "ms")
    bench("tenancy_routing_overhead_p50_ms", round(operator_p50 - platform_p50, 3), "ms")
    print(f"# load average {os.getloadavg()[0]:.2f}", flush=True)

    bench("migrate_schemas_200_noop_s", round(migrate_schemas_s(), 2), "s")
    parallel_s = migrate_schemas_s("--executor", "multiprocessing")
    bench("migrate_schemas_200_noop_multiprocessing_s", round(parallel_s, 2), "s")


if __name__ == "__main__":
    main()
