"""Serve the intake app with uvicorn in a background thread, on TCP or a unix socket.

`[intake.http] listen` is `host:port`, `[v6addr]:port` or `unix:/path/to.sock`. We bind the socket
ourselves (port 0 works, the bound address is known when `start` returns, bind errors name the key)
and hand it to uvicorn. A listener reachable from other machines needs a token: anyone who can reach
it could otherwise enqueue billable events.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from agent.errors import ConfigError

KEY = "[intake.http] listen"
SOCKET_MODE = 0o660
"""A unix socket is for the agent's user and group (the sidecar's apps), nobody else."""


@dataclass(frozen=True, slots=True)
class Listen:
    """A parsed listen address: `host` and `port` for TCP, `path` for a unix socket."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    @property
    def loopback(self) -> bool:
        """Reachable from this machine only: 127.0.0.0/8, ::1, localhost, or a unix socket."""
        if self.is_unix or self.host.lower() == "localhost":
            return True
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return False  # a host name: it may resolve to anything
        mapped = getattr(address, "ipv4_mapped", None)
        return address.is_loopback or bool(mapped and mapped.is_loopback)


def parse_listen(listen: str) -> Listen:
    """Read `host:port`, `[::1]:port` or `unix:/path`. Raises ConfigError naming the key."""
    text = listen.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ConfigError(
                f"{KEY} = {listen!r}: a unix socket needs an absolute path, e.g. unix:/run/x.sock"
            )
        if len(os.fsencode(path)) > 107:
            raise ConfigError(f"{KEY} = {listen!r}: unix socket paths are limited to 107 bytes")
        return Listen(path=path)
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{KEY} = {listen!r}: write an IPv6 address in brackets, e.g. [::1]:8790")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            f"{KEY} = {listen!r}: expected host:port (127.0.0.1:8790), [::1]:8790 or unix:/path/to.sock"
        )
    return Listen(host=host, port=int(port_text))


def check_exposure(listen: Listen, token: str, raw: str) -> None:
    """Refuse a non-loopback listener without a token. Raises ConfigError."""
    if not listen.loopback and not token:
        raise ConfigError(
            f"{KEY} = {raw!r} is reachable from other machines and [intake.http] token is not set: anyone "
            "who can connect could enqueue billable events. Set [intake.http] token (apps then use it as "
            "their SDK's bearer key), or listen on 127.0.0.1, [::1] or unix:/path"
        )


def check_listen(listen: str, token: str) -> Listen:
    """`[intake.http] listen` parsed and checked for exposure, as the server does at start.

    Raises ConfigError naming the key (used by `config check` too, so it refuses what `run` refuses).
    """
    parsed = parse_listen(listen)
    check_exposure(parsed, token, listen)
    return parsed


def _bind_unix(path: str) -> tuple[socket.socket, int]:
    """Bind a unix socket at `path` with mode 0660; return it and its inode. Raises ConfigError."""
    target = Path(path)
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"{KEY} = 'unix:{path}': that path exists and is not a socket; not removing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            target.unlink(missing_ok=True)  # stale: left by a process that died
        else:
            raise ConfigError(f"{KEY} = 'unix:{path}': another process is listening on it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a temporary name and rename: the socket never exists at `path` with looser permissions.
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        staging.unlink(missing_ok=True)
        sock.bind(str(staging))
        os.chmod(staging, SOCKET_MODE)
        os.replace(staging, target)
        return sock, target.stat().st_ino
    except OSError as exc:
        sock.close()
        staging.unlink(missing_ok=True)
        raise ConfigError(f"{KEY} = 'unix:{path}': cannot bind: {exc.strerror or exc}") from None


def _bind_tcp(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"{KEY} = {host}:{port}: cannot resolve or open: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{KEY} = {host}:{port}: cannot listen: {exc.strerror or exc}") from None
    return sock


MAX_CONNECTIONS = 1024
"""Concurrent connections the endpoint serves; more get 503 (the SDK retries it)."""


class HttpServer:
    """The intake app on `listen`, served by uvicorn in a daemon thread.

    `start()` returns once the socket is bound and uvicorn accepts; `address`, `port` and `url` are
    known from then on. `stop(timeout)` stops accepting, lets requests in flight finish for up to
    `timeout` seconds, then cuts the rest. uvicorn's access log is off (the agent logs per batch);
    HTTP keep-alive is on (5 s idle).
    Raises ConfigError (from the constructor or `start`) on a bad or unsafe `listen`.
    """

    def __init__(
        self,
        app: ASGIApp,
        listen: str,
        *,
        token: str = "",
        start_timeout: float = 10.0,
        keep_alive_seconds: int = 5,
    ) -> None:
        self.app = app
        self.listen_text = listen
        self.listen = check_listen(listen, token)
        self._start_timeout = start_timeout
        self._keep_alive = keep_alive_seconds
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._address: tuple[str, int] | str | None = None

    @property
    def address(self) -> tuple[str, int] | str:
        """`(host, port)` for TCP or the socket path. Raises RuntimeError before `start`."""
        if self._address is None:
            raise RuntimeError("the HTTP server is not started")
        return self._address

    @property
    def port(self) -> int | None:
        """The bound TCP port (useful with port 0), None for a unix socket."""
        address = self.address
        return None if isinstance(address, str) else address[1]

    @property
    def url(self) -> str:
        """A base URL for clients: `http://127.0.0.1:8790`, `http://[::1]:8790`; `http://localhost` for
        a unix socket (connect with `httpx.HTTPTransport(uds=path)`)."""
        address = self.address
        if isinstance(address, str):
            return "http://localhost"
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"http://{host}:{address[1]}"

    def start(self) -> HttpServer:
        """Bind and serve in a background thread; return once accepting. Raises ConfigError, RuntimeError."""
        if self._thread is not None:
            raise RuntimeError("the HTTP server is already started")
        if self.listen.is_unix:
            sock, self._inode = _bind_unix(self.listen.path)
            self._address = self.listen.path
        else:
            sock = _bind_tcp(self.listen.host, self.listen.port)
            host, port = sock.getsockname()[:2]
            self._address = (host, port)
        self._sock = sock
        config = uvicorn.Config(
            self.app,
            log_config=None,  # agent.logs owns logging; uvicorn's loggers propagate to it
            log_level=None,
            access_log=False,
            # The app's lifespan starts and stops the intake's committer (stopping drains it).
            lifespan="on",
            # uvloop and httptools (uvicorn[standard]) when installed: a third of the stack's CPU per
            # request; the pure-Python asyncio and h11 otherwise.
            http="auto",
            loop="auto",
            timeout_keep_alive=self._keep_alive,
            # uvicorn has no deadline for request headers: a client that never finishes them holds
            # its connection. Past this many, new connections get 503 instead of exhausting fds.
            limit_concurrency=MAX_CONNECTIONS,
            server_header=False,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="dodo-outbox-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop(0)
                raise RuntimeError(f"the HTTP endpoint did not start on {self.listen_text}; see the log")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, give requests in flight `timeout` seconds, join the thread. Idempotent."""
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is not None and thread is not None:
            server.config.timeout_graceful_shutdown = max(0, math.ceil(timeout))
            server.should_exit = True
            thread.join(timeout + 2)
            if thread.is_alive():
                server.force_exit = True
                thread.join(5)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if self.listen.is_unix and self._inode is not None:
            # Remove the socket file only if it is still ours (a new agent may have replaced it).
            with contextlib.suppress(OSError):
                if os.stat(self.listen.path).st_ino == self._inode:
                    os.unlink(self.listen.path)
            self._inode = None

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
