"""node-smpp (npm ``smpp``, an SMPP implementation this project did not write) as an SMSC for the gateway tests.

:func:`node_smpp_install` installs the pinned package from the npm registry into ``./var/peers/node-smpp`` the
first time (a couple of seconds; nothing of it is committed), under a file lock so parallel test runs do not
race. :class:`NodeSmsc` runs ``node_smpp_smsc.js`` beside this file and collects the JSON events it prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

NODE_SMPP_VERSION = "0.5.1"
BASE_DIR = Path(__file__).resolve().parents[3]
INSTALL_DIR = BASE_DIR / "var" / "peers" / "node-smpp"
SERVER_SCRIPT = Path(__file__).with_name("node_smpp_smsc.js")


class PeerUnavailable(RuntimeError):
    """node or npm is missing, or the package could not be installed."""


def node_smpp_install(timeout: float = 180) -> Path:
    """The directory holding ``node_modules/smpp`` at NODE_SMPP_VERSION, installing it when missing."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise PeerUnavailable(f"{tool} is needed for the node-smpp interoperability tests (Debian: nodejs, npm)")
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    marker = INSTALL_DIR / "node_modules" / "smpp" / "package.json"
    with open(INSTALL_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and json.loads(marker.read_text()).get("version") == NODE_SMPP_VERSION:
            return INSTALL_DIR
        done = subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
                str(INSTALL_DIR),
                f"smpp@{NODE_SMPP_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0 or not marker.exists():
            raise PeerUnavailable(f"npm install smpp@{NODE_SMPP_VERSION} failed: {done.stderr[-2000:]}")
    return INSTALL_DIR


class NodeSmsc:
    """A running node-smpp SMSC: its port, the events it printed, and commands to send it."""

    def __init__(self, *args: str, accounts: dict[str, str]) -> None:
        install_dir = node_smpp_install()
        command = ["node", str(SERVER_SCRIPT), *args]
        for system_id, password in accounts.items():
            command += ["--account", f"{system_id}:{password}"]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_SMPP_DIR": str(install_dir)},
        )
        self.events: list[dict] = []
        self._lines: queue.Queue[dict] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        first = self._lines.get(timeout=20)
        if first.get("event") != "listening":
            raise PeerUnavailable(f"node-smpp SMSC did not start: {first}")
        self.port: int = first["port"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._lock:
                self.events.append(event)
            self._lines.put(event)

    def of(self, kind: str) -> list[dict]:
        with self._lock:
            return [event for event in self.events if event["event"] == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"node-smpp SMSC: {count} {kind} events expected, got {self.of(kind)}")
            time.sleep(0.01)
        return self.of(kind)

    def command(self, **command: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
