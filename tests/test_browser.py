"""A person's view: real headless Chromium logs into the demo client panel and sees the operator's brand."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import sync_playwright

from tests.celery_worker import worker_database_url

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def web_server(world, django_db_blocker):
    port = _free_port()
    with django_db_blocker.unblock():
        env = {**os.environ, "DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    server = subprocess.Popen(
        [
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
        ],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except urllib.error.HTTPError:
                break  # it answers (503 without a worker is fine here)
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("web server did not start") from None
                time.sleep(0.2)
            else:
                break
        yield port
    finally:
        server.terminate()
        server.wait(timeout=15)


def test_client_logs_into_the_branded_panel(world, web_server):
    base = f"http://acme.demo.localhost:{web_server}"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(base + "/")
            assert page.url == base + "/accounts/login/"
            assert page.get_by_test_id("brand-name").inner_text() == "DemoTel"
            assert page.title() == "Sign in · DemoTel"
            primary = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--primary').trim()")
            assert primary == "#6a1b9a"
            button_colour = page.evaluate("getComputedStyle(document.querySelector('.btn')).backgroundColor")
            assert button_colour == "rgb(106, 27, 154)"

            page.fill("#id_username", world.logins["client"]["email"])
            page.fill("#id_password", world.logins["client"]["password"])
            page.click("button[type=submit]")
            page.wait_for_url(base + "/dashboard/")
            assert page.get_by_test_id("dashboard-title").inner_text() == "Acme Corp"
            assert "DemoTel" in page.locator(".topbar .brand").inner_text()
        finally:
            browser.close()
