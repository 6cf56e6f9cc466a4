"""Run the fake Dodo: in a background thread for tests (:class:`EmulatorServer`), or in the foreground
for the CLI (:func:`serve`). Both use uvicorn with the pure-Python h11 protocol, whose connections
the emulator can drop on purpose (see ``app.ConnectionAccess``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import uvicorn

from agent.emulator.app import create_app
from agent.emulator.config import EmulatorConfig
from agent.emulator.state import EmulatorState


def load_meters_file(path: str | Path) -> list[dict[str, Any]]:
    """Read meters from a JSON file: a list of meters, or ``{"items": [...]}`` as ``GET /meters`` answers.

    Raises ValueError naming the file when it is unreadable or not that shape.
    """
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"meters file {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    if not isinstance(data, list):
        raise ValueError(f"meters file {path}: expected a JSON list of meters")
    return data


def build_state(
    config: EmulatorConfig,
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> EmulatorState:
    """The state for ``config``, with the meters of ``config.meters_file`` added. Raises ValueError."""
    extra = load_meters_file(config.meters_file) if config.meters_file else []
    return EmulatorState(config, clock=clock, monotonic=monotonic, extra_meters=extra)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one). Raises OSError naming the address.

    ``IPPROTO_TCP`` is explicit: asyncio sets TCP_NODELAY only on sockets whose proto is TCP, and without
    it Nagle's algorithm and delayed ACKs add ~40 ms to every response on a kept-alive connection.
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that calls ``on_ready`` once it serves (after its startup, not before)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_ready()


def serve(
    host: str,
    port: int,
    config: EmulatorConfig,
    *,
    faults: Mapping[str, Any] | None = None,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the fake Dodo in the foreground until interrupted (Ctrl-C / SIGTERM).

    The socket is bound first (port 0 picks a free one); ``on_ready(url)`` is called once the server
    accepts connections, so a banner printed there never announces a port that refuses them.
    ``faults`` is an initial fault plan (see ``faults.py``). Raises ValueError on a bad meters file or
    fault plan and OSError when the address cannot be bound, both before serving.
    """
    state = build_state(config)
    if faults:
        state.set_faults(**faults)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
    uvicorn_config = uvicorn.Config(
        create_app(state),
        log_level=log_level,
        http="h11",
        lifespan="off",
        # A request hung by a "timeout" fault must not hold Ctrl-C for its whole sleep.
        timeout_graceful_shutdown=1,
    )
    server = _AnnouncingServer(uvicorn_config, lambda: on_ready(url) if on_ready else None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class EmulatorServer:
    """A fake Dodo on 127.0.0.1 in a background thread, for tests.

    ``port=0`` picks a free port; :attr:`url` is known once :meth:`start` returns, and by then the server
    accepts connections. Use it as a context manager, or call :meth:`start` and :meth:`stop`. Poke the
    state from the test thread through :attr:`state` or the shortcuts below (all thread-safe).
    ``clock`` (wall seconds, for the timestamp window) and ``monotonic`` (rate limit, outages) can be
    injected to make time-dependent tests deterministic.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        start_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.state = build_state(self.config, clock=clock, monotonic=monotonic)
        self._requested_port = port
        self._port: int | None = None
        self._log_level = log_level
        self._start_timeout = start_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321``, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        """Bind, start serving in a daemon thread, and return once it accepts. Raises RuntimeError."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        self._closing.clear()
        # Bound here rather than in uvicorn so the port is known even when it is 0.
        sock = bind(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.state, self._closing),
            # No log_config: uvicorn's default one detaches its loggers from the root logger for the
            # whole process, and an in-process emulator (tests, `run --dry-run`) would then silence the
            # agent's own uvicorn messages. Its records go through whatever the process configured.
            log_config=None,
            log_level=self._log_level,
            access_log=False,
            http="h11",
            lifespan="off",
            # A request hung by a "timeout" fault must not hold stop() for its whole sleep.
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"fake-dodo-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"the emulator did not start on {self.host}:{self._port}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        self._closing.set()
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- shortcuts to the state --------------------------------------------------------------------

    @property
    def events(self) -> dict[str, dict[str, Any]]:
        """A copy of the stored events by ``event_id``."""
        return self.state.events

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def set_faults(self, **settings: Any) -> None:
        """Replace the fault plan (see ``agent.emulator.faults``). Raises ValueError."""
        self.state.set_faults(**settings)

    def clear_faults(self) -> None:
        self.state.clear_faults()

    def faults(self) -> dict[str, Any]:
        return self.state.faults()

    def set_keys(self, keys: Collection[str], read_only_keys: Collection[str] | None = None) -> None:
        self.state.set_keys(keys, read_only_keys)

    def set_clock_offset(self, seconds: float) -> None:
        self.state.set_clock_offset(seconds)

    def set_meters(self, meters: Collection[Mapping[str, Any]]) -> None:
        self.state.set_meters(meters)

    def ingest_log(self) -> list[dict[str, Any]]:
        return self.state.ingest_log()

    def reset(self) -> None:
        self.state.reset()
