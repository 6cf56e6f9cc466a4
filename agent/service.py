"""The composition root: builds the agent's parts, starts them in order and stops them in reverse.

Nothing else knows all the parts. Start order: outbox → worker + scheduler → HTTP endpoint (the socket is
bound) → drop directory → READY=1. Stop order: refuse new events (503) → stop the drop directory →
stop scheduling and let the in-flight batch finish (bounded; leases make an overrun safe) → stop the HTTP
server → close the outbox → exit 0.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__, logs, systemd
from agent import config as config_module
from agent.config import Settings
from agent.delivery.client import DodoClient
from agent.delivery.scheduler import AgentScheduler
from agent.delivery.worker import Worker
from agent.errors import ConfigError, OutboxCorruptError
from agent.intake.dropdir import DropDir
from agent.intake.http import create_app
from agent.intake.readback import Readback
from agent.intake.server import HttpServer
from agent.lock import ProcessLock, dropdir_lock, outbox_lock
from agent.meters import build_checker
from agent.ops import metrics
from agent.ops import status as status_module
from agent.ops.retention import run_retention
from agent.ops.routes import ops_routes
from agent.outbox import Outbox
from agent.preflight import check_settings
from agent.store import OutboxStore, StoreOptions, open_store, quarantine, show_location

log = logs.get_logger(__name__)

DRY_RUN_KEY = "dry-run-key"
RETENTION_INTERVAL_SECONDS = 300.0


@dataclass
class Agent:
    """One running agent. `start()` then `wait()`; `stop()` from a signal handler or a test."""

    settings: Settings
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    stop_timeout: float = 20.0
    dry_run: bool = False
    store: OutboxStore | None = None
    outbox: Outbox | None = None
    worker: Worker | None = None
    scheduler: AgentScheduler | None = None
    http: HttpServer | None = None
    dropdir: DropDir | None = None
    shutting_down: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _locks: list[ProcessLock] = field(default_factory=list)

    def start(self) -> Agent:
        """Open the outbox and start every enabled part. Raises ConfigError / OutboxError on failure,
        AlreadyRunningError (a ConfigError) when another agent runs on the same outbox or drop directory."""
        settings = self.settings
        check_settings(settings)
        # Before the outbox is opened: a second agent must not even run the integrity check (and move
        # a "damaged" live file aside) under the first one. A PostgreSQL outbox takes no lock: any
        # number of agents drain it together (the claim keeps each row with one of them).
        if not settings.on_postgres:
            self._locks.append(outbox_lock(settings.outbox_path).acquire())
        if settings.intake_dropdir.enabled:
            self._locks.append(dropdir_lock(Path(settings.intake_dropdir.path)).acquire())
        self.store = self._open_store()
        self.outbox = Outbox(
            settings.outbox_location,
            store=self.store,
            max_events=settings.outbox.max_events,
            max_bytes=settings.outbox.max_bytes,
            source="library",
            max_event_age=settings.intake.max_event_age,
        )
        self.outbox.add_listener(metrics.record_enqueued)
        self.outbox.set_checker(build_checker(settings, self.store))
        client = DodoClient.from_settings(settings)
        self.worker = Worker(self.store, settings, client, environ=self.environ)
        self.scheduler = AgentScheduler(self.worker, settings)
        self.outbox.add_listener(
            lambda result: self.scheduler.wake() if result.new and self.scheduler else None
        )
        self.scheduler.add_interval_job(self._retention, RETENTION_INTERVAL_SECONDS, "retention")
        self.scheduler.start()
        if settings.intake_http.enabled:
            app = create_app(
                self.outbox,
                settings.intake_http,
                status=lambda: status_module.build(self._store(), settings=self.settings),
                readiness=self._readiness,
                extra_routes=ops_routes(self._store(), settings),
                shutting_down=self.shutting_down,
                readback=Readback(settings, self.environ),
                wedged=self.wedged,
            )
            self.http = HttpServer(app, settings.intake_http.listen, token=settings.intake_http.token).start()
        if settings.intake_dropdir.enabled:
            try:
                self.dropdir = DropDir(self.outbox, settings.intake_dropdir)
            except OSError as exc:
                raise ConfigError(
                    f"[intake.dropdir] path = {settings.intake_dropdir.path!r}: cannot create its folders "
                    f"({exc.strerror or exc}); fix the path, its owner or its mode"
                ) from None
            self._spawn(self.dropdir.watch, self.shutting_down, name="dodo-outbox-dropdir")
        self._start_watchdog()
        listen = self.http.url if self.http else "off"
        log.info(
            "agent_ready",
            version=__version__,
            listen=settings.intake_http.listen if self.http else "off",
            url=listen,
            outbox=self.store.location,
            dry_run=self.dry_run,
            target=settings.dodo.url,
            environment=settings.dodo.environment if not settings.dodo.base_url else "base_url",
            dropdir=settings.intake_dropdir.path if self.dropdir else "off",
        )
        systemd.ready(f"delivering to {settings.dodo.url}", self.environ)
        return self

    def _open_store(self) -> OutboxStore:
        """Open the outbox after PRAGMA quick_check. A damaged file is moved aside (with its WAL) to
        `<name>.corrupt-<time>` and a fresh outbox is started, so the agent keeps accepting events
        instead of failing at every restart; the error log says where the file went and how to
        salvage its rows (`dodo-outbox doctor`). Raises OutboxError when even a fresh file fails.
        A PostgreSQL outbox is opened (its schema created or migrated) as it is: the server owns its
        integrity."""
        outbox = self.settings.outbox
        if self.settings.on_postgres:
            return open_store(
                outbox.url,
                StoreOptions(schema=outbox.schema, prepared_statements=outbox.prepared_statements),
            )
        path = self.settings.outbox_path
        options = StoreOptions(
            synchronous=outbox.synchronous,
            check_integrity=True,
            prepared_statements=outbox.prepared_statements,
        )
        try:
            return open_store(path, options)
        except OutboxCorruptError as exc:
            try:
                moved = quarantine(path, time.time())
            except OSError as move_error:
                raise OutboxCorruptError(
                    f"{exc}. It could not be moved aside ({move_error}): move it away by hand and start again"
                ) from move_error
            log.error(
                "outbox_corrupt",
                outbox=str(path),
                moved_to=str(moved),
                error=str(exc),
                action=(
                    f"started with a new, empty outbox at {path}. Recover the old rows into it (the agent "
                    f"may keep running): dodo-outbox doctor --outbox {moved} --salvage {path}"
                ),
            )
            return open_store(path, options)

    def _store(self) -> OutboxStore:
        assert self.store is not None
        return self.store

    def _readiness(self) -> dict[str, Any]:
        paused = self.worker.paused if self.worker else None
        return {"delivery_paused": paused is not None, "paused_reason": paused}

    def _retention(self) -> None:
        run_retention(self._store(), self.settings, time.time())
        if self.dropdir is not None:
            self.dropdir.prune_done(time.time())

    def _spawn(self, target: Any, *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def wedged(self) -> str | None:
        """Why the agent is stuck, or None: its drain loop has not finished a tick for longer than a drain
        can legitimately take (a few request timeouts). systemd's watchdog and `/healthz` both use it, so a
        supervisor (systemd, a Kubernetes liveness probe) restarts an agent whose delivery hung."""
        worker = self.worker
        if worker is None:
            return None
        limit = max(3 * self.settings.delivery.interval_seconds, 3 * self.settings.delivery.timeout_seconds)
        idle = time.monotonic() - worker.last_tick
        if idle < limit:
            return None
        return f"the drain loop has not finished a tick for {idle:.0f} s (limit {limit:.0f} s)"

    def _start_watchdog(self) -> None:
        interval = systemd.watchdog_interval(self.environ)
        if interval is None:
            return

        def ping() -> None:
            while not self.stopped.wait(interval):
                stuck = self.wedged()
                if stuck is None:
                    systemd.watchdog(self.environ)
                else:
                    log.warning("watchdog_withheld", reason=stuck)

        self._spawn(ping, name="dodo-outbox-watchdog")

    def reload(self) -> None:
        """SIGHUP: re-read the API key and the log level, keeping every connection."""
        systemd.reloading(self.environ)
        try:
            fresh = config_module.load(self.settings.source if self.settings.source != "defaults" else None)
            logs.set_level(fresh.log.level)
        except Exception as exc:  # a bad edit must not take the agent down
            log.error("reload_failed", error=str(exc))
        if self.worker is not None:
            self.worker.reload_key()
        if self.scheduler is not None:
            self.scheduler.wake()
        log.info("agent_reloaded")
        systemd.notify("READY=1", self.environ)

    def stop(self) -> bool:
        """Stop in reverse order within `stop_timeout`. True when the in-flight batch finished in time."""
        if self.stopped.is_set():
            return True
        if self.store is None and not self._locks:  # refused before anything was opened
            self.stopped.set()
            return True
        systemd.stopping(self.environ)
        log.info("agent_stopping")
        self.shutting_down.set()  # the endpoint answers 503 + Retry-After from now on
        finished = True
        if self.scheduler is not None:
            finished = self.scheduler.shutdown(self.stop_timeout)
        if self.http is not None:
            self.http.stop(5.0)
        for thread in self._threads:
            thread.join(5.0)
        if self.worker is not None:
            self.worker.close()
        if self.outbox is not None:
            self.outbox.close()
        metrics.unwatch_store()
        for lock in self._locks:
            lock.release()
        self._locks.clear()
        self.stopped.set()
        log.info("agent_stopped", batch_finished=finished)
        return finished


def dry_run_outbox(path: Path) -> Path:
    """The outbox of a dry run, beside the configured one: `outbox.db` → `outbox.dry-run.db`.

    Never the configured file: the emulator's "delivered" would mark events that real Dodo never got,
    and test events left pending would later be sent to real Dodo.
    """
    path = path.absolute()
    return path.with_name(f"{path.stem}.dry-run{path.suffix}") if path.name else path / "dry-run.db"


def dry_run_schema(schema: str) -> str:
    """The PostgreSQL schema of a dry run, beside the configured one: `dodo_outbox` → `dodo_outbox_dry_run`
    (the same reasons as `dry_run_outbox`: no agent draining the configured schema ever sees its events)."""
    return f"{schema}_dry_run"


def dry_run_settings(settings: Settings, url: str) -> Settings:
    """The settings pointed at a local emulator, the dry-run outbox (file or schema) and, for the same
    reason, a drop directory of its own (`spool` → `spool.dry-run`): a dry run must not consume real
    producers' files, whose events would then reach only the emulator (for `run --dry-run`)."""
    spool = Path(settings.intake_dropdir.path).absolute()
    spool = spool.with_name(spool.name + ".dry-run") if spool.name else spool / "dry-run"
    if settings.on_postgres:
        outbox = dataclasses.replace(settings.outbox, schema=dry_run_schema(settings.outbox.schema))
    else:
        outbox = dataclasses.replace(settings.outbox, path=str(dry_run_outbox(settings.outbox_path)))
    return dataclasses.replace(
        settings,
        dodo=dataclasses.replace(settings.dodo, base_url=url, api_key_file=""),
        outbox=outbox,
        intake_dropdir=dataclasses.replace(settings.intake_dropdir, path=str(spool)),
    )


def run(settings: Settings, *, dry_run: bool = False, environ: Mapping[str, str] | None = None) -> int:
    """`dodo-outbox run`: start, wait for SIGTERM/SIGINT, stop cleanly. Returns the exit code.

    A second SIGTERM/SIGINT exits at once (leases make that safe). SIGHUP reloads key and log level.
    """
    environ = dict(os.environ if environ is None else environ)
    logs.configure(settings.log.format, settings.log.level)
    emulator = None
    if dry_run:
        from agent.emulator import EmulatorConfig, EmulatorServer

        emulator = EmulatorServer(EmulatorConfig(keys={DRY_RUN_KEY}, rate_limit=False)).start()
        settings = dry_run_settings(settings, emulator.url)
        environ["DODO_PAYMENTS_API_KEY"] = DRY_RUN_KEY
        log.info(
            "dry_run",
            emulator=emulator.url,
            outbox=show_location(settings.outbox_location),
            schema=settings.outbox.schema if settings.on_postgres else None,
            note="events go to a local Dodo emulator, not to Dodo, and into their own outbox",
        )
    agent = Agent(settings, environ=environ, dry_run=dry_run)
    stop_requested = threading.Event()
    signals = {"count": 0}

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("agent_exit_now", signal=signal.Signals(signum).name)
            os._exit(1)
        stop_requested.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=agent.reload, name="dodo-outbox-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        agent.start()
        while not stop_requested.wait(1.0):
            pass
    finally:
        agent.stop()
        if emulator is not None:
            emulator.stop()
    return 0
