"""`make bench`: run the benchmark modules; one ``BENCH {"name": ..., "value": ..., "unit": ...}`` line per figure.

A benchmark module is a script: ``python -m <module>`` prints its figures as ``BENCH {json}`` lines on stdout and
exits 0 (``billing.bench_rating`` and ``tests.bench_foundation`` are two). List it in BENCHES. The runner starts each
module in a process of its own, so every benchmark gets a fresh Django and cannot skew the next, with:

- ``DATABASE_URL`` naming the database ``bench_opencarrier`` (environment ``OC_BENCH_DB`` names another) on the
  same PostgreSQL server as the developer's (the embedded one under ./var unless DATABASE_URL is set): dropped and
  created empty at the start of each run, so runs are repeatable, and dropped at the end (the runner only uses the
  developer's own database to create and drop it, and holds an advisory lock named after the bench database there
  meanwhile, so a second ``make bench`` on the same database waits its turn);
- ``REDIS_URL`` naming Redis database 15 (``OC_BENCH_REDIS_DB`` names another) of the same Redis, also the Celery
  broker's, flushed before each benchmark (throttle counters of a previous run must not throttle this one);
- ``OPENCARRIER_BENCH=1``, which a benchmark that writes checks before it touches the database.

Each module has at most BENCH_TIMEOUT_S seconds (environment, default 600); past that its whole process group,
servers it started included, is killed and the run fails. Anything a module prints that is not a BENCH line goes
to stderr, so stdout carries figures only. ``python -m tests.bench MODULE ...`` runs only the modules named.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlparse

import psycopg2
import redis

BENCHES = [
    "tests.bench_foundation",
    "billing.bench_rating",
    "billing.bench_ingest",
    "sms.bench_gateway",
    "sms.bench_e2e",
    "billing.bench_api",
]
# OC_BENCH_DB / OC_BENCH_REDIS_DB let several engineers bench on the same embedded servers side by side (each its
# own database, Redis database and lock), as OC_TEST_DB / OC_TEST_REDIS_DB do for tests.
BENCH_DATABASE = os.environ.get("OC_BENCH_DB", "bench_opencarrier")
BENCH_REDIS_DB = int(os.environ.get("OC_BENCH_REDIS_DB", "15"))
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT_S", "600"))
LOCK_WAIT_S = 600
BASE_DIR = Path(__file__).resolve().parent.parent


def server_urls() -> tuple[str, str]:
    """The developer's DATABASE_URL and REDIS_URL, as the settings pick them (the embedded services when unset)."""
    from config import embedded

    database_url = os.environ.get("DATABASE_URL") or embedded.database_url()
    return database_url, os.environ.get("REDIS_URL") or embedded.redis_url()


def with_database(database_url: str, name: str) -> str:
    parts = urlparse(database_url)
    return f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")


def with_redis_db(redis_url: str, db: int) -> str:
    """The same Redis, database ``db`` (a ``?db=`` wins over a database in the path for redis-py)."""
    base, _, query = redis_url.partition("?")
    options = [option for option in query.split("&") if option and not option.startswith("db=")]
    return f"{base}?{'&'.join([*options, f'db={db}'])}"


@contextmanager
def bench_database(database_url: str):
    """The URL of the bench database, created empty on the developer's server and dropped on the way out.

    The run holds an advisory lock of that server meanwhile: two ``make bench`` at once would drop each other's
    database and skew each other's figures, so the second one waits for the first (at most LOCK_WAIT_S).
    """
    conn = psycopg2.connect(database_url)  # the developer's database, used only to run CREATE/DROP DATABASE
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [BENCH_DATABASE])
            if not cursor.fetchone()[0]:
                print("# another make bench is running on this PostgreSQL server; waiting for it", file=sys.stderr)
                cursor.execute(f"SET lock_timeout = '{LOCK_WAIT_S}s'")
                cursor.execute("SELECT pg_advisory_lock(hashtext(%s))", [BENCH_DATABASE])
            cursor.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
        yield with_database(database_url, BENCH_DATABASE)
    finally:
        try:
            with conn.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        finally:
            conn.close()  # and with it the lock


def emit(line: str) -> None:
    """Print a child's BENCH line again, checked and in the one exact format; anything else goes to stderr."""
    if not line.startswith("BENCH "):
        sys.stderr.write(line)
        return
    figure = json.loads(line.removeprefix("BENCH "))
    print("BENCH " + json.dumps({"name": figure["name"], "value": figure["value"], "unit": figure["unit"]}), flush=True)


def process_group_stop(proc: subprocess.Popen) -> None:
    """Stop whatever is left of a module's process group (itself, servers it started): TERM, then KILL after 5 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        proc.poll()  # reap the module itself, or the group never looks empty
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def module_run(module: str, env: dict) -> bool:
    """Run one benchmark module to the end or to the timeout; True if it finished cleanly."""
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", module], cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        process_group_stop(proc)

    timer = threading.Timer(TIMEOUT_S, on_timeout)
    timer.start()
    try:
        for line in proc.stdout:
            emit(line)
        proc.wait()
    finally:
        timer.cancel()
        process_group_stop(proc)
    elapsed = time.monotonic() - began
    if timed_out.is_set():
        print(f"# {module}: stopped after the {TIMEOUT_S:.0f} s limit", file=sys.stderr)
        return False
    print(f"# {module}: exit {proc.returncode} in {elapsed:.1f} s", file=sys.stderr)
    return proc.returncode == 0


def main(modules: list[str]) -> int:
    database_url, redis_url = server_urls()
    failed = []
    with bench_database(database_url) as bench_database_url:
        bench_redis_url = with_redis_db(redis_url, BENCH_REDIS_DB)
        env = dict(os.environ, DATABASE_URL=bench_database_url, REDIS_URL=bench_redis_url, OPENCARRIER_BENCH="1")
        env["OC_TEST_REDIS_DB"] = str(BENCH_REDIS_DB)  # the Celery broker too (the test settings' virtual_host)
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
        env.setdefault("LOG_LEVEL", "WARNING")
        env["PYTHONUNBUFFERED"] = "1"  # figures show up as they are measured
        for module in modules:
            # Nothing an earlier benchmark left behind (queued tasks, counters, flags) may work against this one.
            redis.Redis.from_url(bench_redis_url).flushdb()
            if not module_run(module, env):
                failed.append(module)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or BENCHES))
