"""A throwaway PostgreSQL cluster for the tests and the benchmark: `initdb` + `pg_ctl` on a free port, a
unix socket in a temp dir, stopped at the end. As root, the server runs as `nobody` (PostgreSQL refuses
to run as root). `DODO_OUTBOX_TEST_POSTGRES_URL` names an existing server instead."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

URL_ENV = "DODO_OUTBOX_TEST_POSTGRES_URL"
REQUIRE_ENV = "DODO_OUTBOX_REQUIRE_POSTGRES"


class Unavailable(Exception):
    """No PostgreSQL for the tests: the reason."""


def _bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(found.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    if initdb is None:  # Debian keeps it in /usr/lib/postgresql/<major>/bin; take the newest
        found_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        initdb = str(found_dirs[-1]) if found_dirs else None
    if initdb is None:
        raise Unavailable(
            "PostgreSQL is not installed (no pg_config --bindir with initdb, no initdb on PATH)"
        )
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="dodo-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            os.chmod(self.root, 0o777)
        self._run(
            ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        )
        self._opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
        )
        self.start()
        self.url = f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    def start(self) -> None:
        """Start the server (again), on the same port and socket; waits until it accepts connections."""
        self._run(
            ["pg_ctl", "-D", str(self.data), "-o", self._opts, "-l", str(self.root / "log"), "-w", "start"]
        )

    def restart(self, mode: str = "immediate") -> None:
        """`pg_ctl restart -m mode`: `immediate` is a crash (no checkpoint; recovery at start)."""
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-o",
                self._opts,
                "-l",
                str(self.root / "log"),
                "-m",
                mode,
                "-w",
                "restart",
            ]
        )

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`, keeping the data: the server dies as in a crash (no checkpoint);
        `start()` brings it back through crash recovery. For tests that hold the database down."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bindir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise Unavailable(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]} {tail}")

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)
