"""Benchmark of the upstream SMPP client: ``python -m sms.bench_gateway``.

Starts ``python manage.py smsc_simulator`` as a process of its own (as in production, the SMSC is not in the
worker's process; on a 2-core machine the two get a core each), binds one :class:`sms.gateway.SmppGateway`
(transceiver, window 100, no TPS limit to speak of), submits PARTS single-part messages with
``registered_delivery=1`` and waits until every part has its result. Receipts (0.2 s after each submit) flow
back on the same bind meanwhile, so the gateway reads, parses and acknowledges one deliver_sm per part while
it submits, as it does in service. Prints one ``BENCH {json}`` line per figure:

* ``gateway_submit_per_s``: final submit_sm results per second (first submit to last result), median of RUNS.
* ``gateway_receipts_per_s``: receipts handed to ``on_receipt`` per second over the same runs (median).

Speed is measured here, never asserted by a test (see STYLE.md). Nothing here touches the database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from sms.gateway import GatewayConfig, SmppGateway, SubmitPart

PARTS = 30_000
RUNS = int(os.environ.get("BENCH_GATEWAY_RUNS", "3"))
WINDOW = 100
BASE_DIR = Path(__file__).resolve().parent.parent


def bench(name: str, value: float, unit: str) -> None:
    """Print one benchmark figure in the format ``make bench`` collects."""
    print("BENCH " + json.dumps({"name": name, "value": value, "unit": unit}), flush=True)


def simulator_start() -> tuple[subprocess.Popen, int]:
    """``manage.py smsc_simulator`` on a free loopback port; returns the process and the port."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "smsc_simulator",
            "--port",
            "0",
            "--receipt-delay",
            "0.2",
            "--account",
            "bench:secret",
        ],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if match:
            return proc, int(match.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the SMSC simulator did not start")


def simulator_stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.strip().splitlines()[-1] if out.strip() else ""


def one_run(port: int) -> tuple[float, float]:
    received = {"results": 0, "receipts": 0, "rejected": 0}
    lock = threading.Lock()
    all_receipts = threading.Event()

    def on_result(results):
        with lock:
            received["results"] += len(results)
            received["rejected"] += sum(1 for r in results if r.command_status)

    def on_receipt(receipts):
        with lock:
            received["receipts"] += len(receipts)
            if received["receipts"] >= PARTS:
                all_receipts.set()

    gateway = SmppGateway(
        GatewayConfig(
            name="bench",
            host="127.0.0.1",
            port=port,
            system_id="bench",
            password="secret",
            tps=1_000_000,
            window=WINDOW,
        ),
        on_result=on_result,
        on_receipt=on_receipt,
        on_incoming=lambda messages: None,
    )
    parts = [
        SubmitPart(
            ref=index,
            source="OpenCarrier",
            destination=f"4477009{index % 100_000:05d}",
            short_message=f"Your verification code is {index:06d}".encode(),
            data_coding=0,
            esm_class=0,
        )
        for index in range(PARTS)
    ]
    gateway.start()
    try:
        deadline = time.monotonic() + 30
        while gateway.state != "bound":
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not bind")
            time.sleep(0.01)
        began = time.perf_counter()
        gateway.submit(parts)
        if not gateway.wait_idle(300):
            raise RuntimeError(f"parts left after 300 s: {gateway.stats()}")
        submit_elapsed = time.perf_counter() - began
        all_receipts.wait(60)
        receipts_elapsed = time.perf_counter() - began
        stats = gateway.stats()
    finally:
        gateway.stop(timeout=10)
    if received["results"] != PARTS or received["rejected"]:
        raise RuntimeError(f"expected {PARTS} accepted results, got {received}")
    print(f"# run: {stats}", file=sys.stderr)
    return PARTS / submit_elapsed, received["receipts"] / receipts_elapsed


def main() -> int:
    submit_rates, receipt_rates = [], []
    for _ in range(RUNS):
        proc, port = simulator_start()
        try:
            submit_rate, receipt_rate = one_run(port)
        finally:
            print(f"# simulator: {simulator_stop(proc)}", file=sys.stderr)
        print(f"# {submit_rate:.0f} submit_sm/s, {receipt_rate:.0f} receipts/s", file=sys.stderr)
        submit_rates.append(submit_rate)
        receipt_rates.append(receipt_rate)
    bench("gateway_submit_per_s", round(statistics.median(submit_rates)), "submit_sm/s")
    bench("gateway_receipts_per_s", round(statistics.median(receipt_rates)), "receipts/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
