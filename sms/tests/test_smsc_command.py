"""`python manage.py smsc_simulator` as a process of its own, driven by smpplib (an SMPP client we did not write)."""

import ast
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import smpplib.client
import smpplib.exceptions

from sms.receipts import parse_receipt

BASE_DIR = Path(__file__).resolve().parents[2]
WAIT = 30.0


def simulator(*args: str) -> tuple[subprocess.Popen, str, int]:
    """Start the command; return the process and the address it announced."""
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "smsc_simulator", "--port", "0", *args],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # the first line: "SMSC simulator listening on HOST:PORT"
    match = re.search(r"listening on ([\d.]+):(\d+)", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"no listening line, got {line!r}; stderr: {proc.stderr.read()}")
    return proc, match.group(1), int(match.group(2))


@pytest.fixture
def run_simulator():
    running: list[subprocess.Popen] = []

    def run(*args: str):
        proc, host, port = simulator(*args)
        running.append(proc)
        return proc, host, port

    yield run
    for proc in running:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT)


def stop(proc: subprocess.Popen, signum: int = signal.SIGTERM) -> tuple[int, dict]:
    """Signal the command; return its exit code and the counters it printed last."""
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=WAIT)
    return proc.returncode, ast.literal_eval(out.strip().splitlines()[-1])


def test_command_serves_binds_submits_and_receipts_on_loopback(run_simulator):
    proc, host, port = run_simulator("--receipt-delay", "0.05", "--account", "esme:secret")
    delivered = []
    client = smpplib.client.Client(host, port, timeout=5, allow_unknown_opt_params=True)
    client.set_message_received_handler(lambda pdu, **_: delivered.append(pdu))
    client.set_message_sent_handler(lambda pdu, **_: None)
    client.connect()
    client.bind_transceiver(system_id="esme", password="secret")

    client.send_message(
        source_addr_ton=5,
        source_addr="OpenCarrier",
        dest_addr_ton=1,
        destination_addr="447700900123",
        short_message=b"hello",
        registered_delivery=1,
    )
    deadline = time.monotonic() + WAIT
    while not delivered and time.monotonic() < deadline:
        client.read_once(auto_send_enquire_link=False)
    client.unbind()
    client.disconnect()
    code, counters = stop(proc)

    assert host == "127.0.0.1"
    receipt = parse_receipt(short_message=delivered[0].short_message, tlvs={})
    assert (receipt.state, receipt.text) == ("delivered", "hello")
    assert code == 0
    assert counters["binds"] == 1 and counters["submits"] == 1 and counters["receipts_sent"] == 1


def test_command_refuses_unknown_logins(run_simulator):
    proc, host, port = run_simulator("--account", "esme:secret")
    client = smpplib.client.Client(host, port, timeout=5, allow_unknown_opt_params=True)
    client.connect()

    with pytest.raises(smpplib.exceptions.PDUError) as refused:
        client.bind_transmitter(system_id="esme", password="guess")
    client.disconnect()

    assert refused.value.args[1] == 0x0D  # ESME_RBINDFAIL
    assert stop(proc, signal.SIGINT)[1]["bind_failures"] == 1


def test_command_applies_fault_ratios(run_simulator):
    proc, host, port = run_simulator("--throttle-ratio", "1")
    statuses = []
    client = smpplib.client.Client(host, port, timeout=5, allow_unknown_opt_params=True)
    client.set_message_sent_handler(lambda pdu, **_: statuses.append(pdu.status))
    client.set_error_pdu_handler(lambda pdu: None)
    client.connect()
    client.bind_transmitter(system_id="anyone", password="x")
    client.send_message(source_addr="A", destination_addr="447700900123", short_message=b"x")
    client.read_once(auto_send_enquire_link=False)
    client.disconnect()

    assert statuses == [0x58]  # ESME_RTHROTTLED
    assert stop(proc)[1]["throttled"] == 1


def test_command_reports_a_ratio_out_of_range():
    done = subprocess.run(
        [sys.executable, "manage.py", "smsc_simulator", "--port", "0", "--failure-ratio", "1.5"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )

    assert done.returncode == 1
    assert "failure_ratio must be between 0 and 1" in done.stderr


def test_command_reports_a_port_in_use(run_simulator):
    _, _, port = run_simulator()

    done = subprocess.run(
        [sys.executable, "manage.py", "smsc_simulator", "--port", str(port)],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )

    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
