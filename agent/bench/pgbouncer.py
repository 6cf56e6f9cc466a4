"""A throwaway PgBouncer in transaction pooling mode in front of a PostgreSQL server, for the tests.

`Bouncer(server_url)` writes a config into a temp dir, starts `pgbouncer` in the foreground (our own
child, stopped by its pid) on a free port of 127.0.0.1 (and a unix socket in the same dir), with
`auth_type = trust` and a userlist naming the server URL's user, `pool_mode = transaction`, and returns
once it hands out a working connection. `url` is the same database through the bouncer. As root it
runs as `nobody`, like the throwaway cluster (PgBouncer refuses to run as root).

Transaction pooling is the mode that matters: a server connection belongs to a client for one
transaction only, so session state (SET, LISTEN, session advisory locks, and the prepared statements
psycopg makes after `prepare_threshold` runs of a query: PgBouncer 1.18 does not track them) does not
follow the client. Raises :class:`Unavailable` (with the reason) when pgbouncer is not installed or
does not start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from agent.bench.pgcluster import Unavailable

PGBOUNCER_ENV = "DODO_OUTBOX_PGBOUNCER"
"""The pgbouncer binary to run, when it is not `pgbouncer` on PATH or /usr/sbin/pgbouncer."""


def find_pgbouncer() -> str:
    """The pgbouncer binary; raises Unavailable saying how to get one."""
    named = os.environ.get(PGBOUNCER_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise Unavailable(f"{PGBOUNCER_ENV}={named} is not an executable file")
        return named
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise Unavailable(
            "PgBouncer is not installed (no pgbouncer on PATH or in /usr/sbin; "
            f"apt-get install pgbouncer, or set {PGBOUNCER_ENV})"
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_address(server_url: str) -> tuple[str, int, str, str]:
    """(host or socket dir, port, user, dbname) of a postgresql:// URL (host may be in the query)."""
    parts = urlsplit(server_url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = query.get("host") or parts.hostname or "127.0.0.1"
    port = int(query.get("port") or parts.port or 5432)
    user = parts.username or query.get("user") or "postgres"
    dbname = parts.path.lstrip("/") or query.get("dbname") or user
    return host, port, user, dbname


class Bouncer:
    """PgBouncer (transaction pooling) in front of `server_url`; `url` connects through it."""

    def __init__(self, server_url: str, *, pool_size: int = 8, timeout: float = 30.0) -> None:
        self.binary = find_pgbouncer()
        host, server_port, self.user, self.dbname = _server_address(server_url)
        self.root = Path(tempfile.mkdtemp(prefix="dodo-pgbouncer-"))
        self.port = _free_port()
        self.log = self.root / "pgbouncer.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            os.chmod(self.root, 0o777)
        (self.root / "userlist.txt").write_text(f'"{self.user}" ""\n', encoding="utf-8")
        lines = [
            "[databases]",
            f"* = host={host} port={server_port} user={self.user}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            f"unix_socket_dir = {self.root}",
            "auth_type = trust",
            f"auth_file = {self.root / 'userlist.txt'}",
            "pool_mode = transaction",
            "max_client_conn = 500",
            f"default_pool_size = {pool_size}",
            f"logfile = {self.log}",
            f"pidfile = {self.root / 'pgbouncer.pid'}",
            f"admin_users = {self.user}",
            # JDBC-style clients send it; `options` stays refused, as a stock PgBouncer refuses it, so a
            # client that needs a startup option (e.g. search_path) fails here as it would in production.
            "ignore_startup_parameters = extra_float_digits",
            "",
        ]
        self.config = self.root / "pgbouncer.ini"
        self.config.write_text("\n".join(lines), encoding="utf-8")
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [*self.as_user, self.binary, str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise Unavailable(f"pgbouncer exited with {self.proc.returncode} at start: {self.log_tail()}")
            try:
                with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                last = " ".join(str(exc).split())
            time.sleep(0.1)
        raise Unavailable(
            f"pgbouncer did not accept connections within {timeout:g} s ({last}): {self.log_tail()}"
        )

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM (by our child's pid): PgBouncer's immediate shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Bouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
