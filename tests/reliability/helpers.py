"""What the reliability suites share: the agent and the emulator as real processes, configs, waiting.

The agent runs as `python -m agent run --config <toml>` exactly as an operator starts it; the emulator
runs in its own process (`tests.reliability.emulator_proc`) so it survives the agent being killed.
Both are stopped by their own process id, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from tests.waiting import wait_until as wait_until  # shared; re-exported for the reliability tests

ROOT = Path(__file__).resolve().parents[2]
KEY = "reliability_key_0123"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout importable, no stray agent settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DODO_OUTBOX_", "DODO_PAYMENTS_"))}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the agent binds it again after each restart)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write an agent config: `{"delivery": {"interval_seconds": 0.2}, "intake.http": {...}}`."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def base_sections(tmp: Path, url: str, port: int | None, **overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A config for a fast test agent: short intervals, backoffs, leases and timeouts."""
    sections: dict[str, dict[str, Any]] = {
        "dodo": {"base_url": url},
        "outbox": {"path": str(tmp / "outbox.db")},
        "delivery": {
            "batch_max_events": 100,
            "interval_seconds": 0.2,
            "max_in_flight": 2,
            "requests_per_minute": 0,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 1.0,
            "timeout_seconds": 1.0,
            "lease_seconds": 4,
            "auth_retry_seconds": 0.5,
        },
        "intake.http": {"enabled": port is not None, "listen": f"127.0.0.1:{port or 0}"},
        "intake.dropdir": {"enabled": False},
        "log": {"format": "json", "level": "info"},
        "meter_checks": {"enabled": False},
    }
    for name, values in overrides.items():
        sections.setdefault(name.replace("_", "."), {}).update(values)
    return sections


def pg_sections(
    tmp: Path, dodo_url: str, port: int | None, pg_url: str, schema: str, **overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """`base_sections` on a PostgreSQL outbox: `[outbox] url` + `schema` instead of `path` (both is a
    config error)."""
    sections = base_sections(tmp, dodo_url, port, **overrides)
    sections["outbox"].pop("path", None)
    sections["outbox"].update(url=pg_url, schema=schema)
    return sections


class EmulatorProcess:
    """A Dodo emulator in a child process; `url`, and the admin API as methods."""

    def __init__(self, **config: Any) -> None:
        self.config = {"keys": [KEY], **config}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._http = httpx.Client(timeout=10)

    def start(self, timeout: float = 20.0) -> EmulatorProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.emulator_proc", json.dumps(self.config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=child_env(),
            text=True,
        )
        line: list[str] = []
        stdout = self.proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        self.url = line[0].strip() if line else ""
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the emulator process did not start (printed {self.url!r})")
        return self

    def admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = self._http.request(method, f"{self.url}/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def set_faults(self, **plan: Any) -> None:
        self.admin("POST", "faults", plan)

    def clear_faults(self) -> None:
        self.admin("DELETE", "faults")

    def set_keys(self, keys: list[str]) -> None:
        self.admin("POST", "keys", {"keys": keys})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", "stats")
        return result

    def events(self) -> dict[str, dict[str, Any]]:
        return {e["event_id"]: e for e in self.admin("GET", "events")["items"]}

    def stop(self) -> None:
        self._http.close()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AgentProcess:
    """`python -m agent run --config CONFIG` in a child process, started again after each kill.

    Its stderr (the JSON log) is appended to `log_path` across restarts. `url` is the HTTP endpoint.
    """

    def __init__(
        self,
        config: Path,
        log_path: Path,
        port: int | None,
        env: Mapping[str, str],
        args: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.args = list(args)
        """More arguments of `run` (e.g. `--dry-run`)."""
        self.log_path = log_path
        self.port = port
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[int] = []
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> AgentProcess:
        """Start the agent; return once its endpoint answers /readyz (or, without one, it logged ready)."""
        assert self.proc is None or self.proc.poll() is not None, "the agent is already running"
        self._log = self.log_path.open("ab")
        mark = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=ROOT,
            # faulthandler: `dump_stacks` (SIGABRT) writes every thread's stack to the log.
            env=child_env(PYTHONFAULTHANDLER="1", **self.env),
        )
        self.starts += 1
        wait_until(lambda: self._ready(mark), timeout, "the agent to start (see its log)")
        return self

    def _ready(self, mark: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited with {self.proc.returncode} at start:\n{self.log_tail()}")
        if self.port is None:
            with self.log_path.open("rb") as log:
                log.seek(mark)
                return b'"agent_ready"' in log.read()
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def signal(self, signum: int, timeout: float = 30.0) -> int:
        """Send `signum` to the agent (by pid) and wait for it to exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
            raise AssertionError(f"the agent did not exit within {timeout:g} s of {signum}") from None
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        self.exits.append(code)
        return code

    def kill(self) -> int:
        return self.signal(signal.SIGKILL)

    def stop(self) -> int:
        return self.signal(signal.SIGTERM)

    def dump_stacks(self) -> str:
        """Abort a stuck agent so faulthandler writes every thread's stack to the log; return the stacks."""
        if not self.running():
            return ""
        mark = self.log_path.stat().st_size
        self.signal(signal.SIGABRT)
        with self.log_path.open("rb") as log:
            log.seek(mark)
            return log.read().decode(errors="replace")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_stopped(self) -> None:
        if self.running():
            self.kill()

    def log_lines(self) -> list[dict[str, Any]]:
        """The agent's JSON log lines (other lines are skipped)."""
        found: list[dict[str, Any]] = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                found.append(entry)
        return found

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def cli(config: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m agent ARGS --config CONFIG` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=timeout,
    )


def status_json(config: Path) -> dict[str, Any]:
    """`dodo-outbox status --json` of the config's outbox."""
    result = cli(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document
