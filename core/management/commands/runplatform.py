"""`make run`: migrate, load the demo once, then web (ASGI), Celery worker and beat together until Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from config import embedded
from core.demo import demo_load


class Command(BaseCommand):
    help = "Run the whole platform (web, worker, beat) in the foreground; Ctrl-C stops it all."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--web-workers", type=int, default=1)

    def handle(self, *args, **options):
        started = time.monotonic()
        call_command("prepare_platform", verbosity=0)
        logins = demo_load()
        python = sys.executable
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        commands = {
            "web": [
                python,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                options["host"],
                "--port",
                str(options["port"]),
                "--workers",
                str(options["web_workers"]),
                "--no-access-log",
                "--lifespan",
                "off",
            ],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                ",".join(q for q in settings.CELERY_TASK_QUEUES_NAMES if q != "sms"),
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
                "-n",
                "worker@%h",
            ],
            # SMPP binds live in the sms worker's process (sms/runner.py): one process, one bind per gateway.
            "sms-worker": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                "sms",
                "--pool",
                "solo",
                "--loglevel",
                "WARNING",
                "-n",
                "sms@%h",
            ],
            # The demo's upstream SMSC (loopback only): receipts come back half a second after each submit.
            "smsc-simulator": [python, "manage.py", "smsc_simulator", "--port", "2775"],
            "beat": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "--loglevel",
                "WARNING",
                "-s",
                str(embedded.VAR_DIR / "celerybeat-schedule"),
            ],
        }
        children = {name: subprocess.Popen(cmd, env=env, start_new_session=True) for name, cmd in commands.items()}
        base = f"http://%s:{options['port']}"
        self.stdout.write(
            self.style.SUCCESS(f"\nOpenCarrier is up ({time.monotonic() - started:.1f} s). Ctrl-C stops it.\n")
        )
        self.stdout.write(
            f"  platform console  {base % 'localhost'}/admin/   {logins['platform']['email']} / "
            f"{logins['platform']['password']}"
        )
        self.stdout.write(
            f"  operator console  {base % 'demo.localhost'}/admin/   {logins['operator']['email']} / "
            f"{logins['operator']['password']}"
        )
        self.stdout.write(
            f"  client panel      {base % 'acme.demo.localhost'}/   {logins['client']['email']} / "
            f"{logins['client']['password']}"
        )
        self.stdout.write(
            f"  API docs          {base % 'demo.localhost'}/api/docs/  (platform: {base % 'localhost'}/api/docs/)"
        )
        self.stdout.write(f"  health            {base % 'localhost'}/healthz\n")
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, child in children.items():
                    if child.poll() is not None:
                        self.stderr.write(f"{name} exited with {child.returncode}; stopping everything")
                        stopping = True
                time.sleep(0.3)
        finally:
            for child in children.values():
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            for child in children.values():
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
            if not os.environ.get("DATABASE_URL") and not os.environ.get("REDIS_URL"):
                embedded.stop()
            self.stdout.write("stopped; data kept in ./var")
