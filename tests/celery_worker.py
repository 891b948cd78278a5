"""A real Celery worker for tests: a subprocess on the test database and the test broker."""

import os
import subprocess
import sys
import time
from contextlib import contextmanager

from django.db import connection


def worker_database_url() -> str:
    s = connection.settings_dict
    host = s["HOST"]
    if host.startswith("/"):
        return f"postgres://{s['USER']}:{s['PASSWORD']}@/{s['NAME']}?host={host}"
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


@contextmanager
def celery_worker(queues: str = "default,rating,sms,callcontrol,reports", timeout: float = 30):
    from config.celery_app import app

    env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    name = f"test-{os.getpid()}@%h"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queues,
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
            "-n",
            name,
        ],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not app.control.ping(timeout=0.5):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test Celery worker did not come up")
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
