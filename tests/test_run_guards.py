"""What `run` guards against at start, as real `python -m agent run` processes.

A dry run never touches the configured outbox; a second agent on the same outbox or drop directory is
refused naming the first, and the lock dies with its process (kill -9 leaves nothing stale);
`config check` refuses exactly what `run` refuses.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.emulator import EmulatorServer
from agent.store import Store
from tests.reliability.helpers import (
    KEY,
    ROOT,
    AgentProcess,
    base_sections,
    child_env,
    cli,
    free_port,
    wait_until,
    write_config,
)


def agent_run(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`run` that is expected to refuse to start (a timeout fails the test instead of hanging)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(**env),
        timeout=60,
    )


def ready_line(log: Path) -> dict[str, Any] | None:
    for raw in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "agent_ready":
            return entry
    return None


def test_a_dry_run_uses_its_own_outbox_and_leaves_the_configured_one_untouched(
    tmp_path: Path, fake_dodo: EmulatorServer
) -> None:
    port = free_port()
    configured = tmp_path / "state" / "outbox.db"
    config = write_config(
        tmp_path / "agent.toml",
        base_sections(
            tmp_path,
            fake_dodo.url,
            port,
            outbox={"path": str(configured)},
            intake_dropdir={"enabled": True, "path": str(tmp_path / "spool")},
        ),
    )
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--dry-run", "--config", str(config)],
            stdout=out,
            stderr=out,
            cwd=ROOT,
            env=child_env(),
        )
    try:
        wait_until(lambda: ready_line(log) is not None or proc.poll() is not None, 60, "agent_ready")
        ready = ready_line(log)
        assert ready is not None, log.read_text()
        dry = tmp_path / "state" / "outbox.dry-run.db"
        assert ready["outbox"] == str(dry) and ready["dry_run"] is True
        assert ready["dropdir"] == str(tmp_path / "spool.dry-run")
        body = {"events": [{"event_id": "req_1", "customer_id": "cus_1", "event_name": "api.call"}]}
        answer = httpx.post(f"http://127.0.0.1:{port}/events/ingest", json=body, timeout=30)
        assert answer.status_code == 200 and answer.json()["ingested_count"] == 1

        def delivered() -> bool:
            with Store(dry) as store:
                return store.counts()["delivered"] == 1

        wait_until(delivered, 60, "the event delivered to the dry run's emulator")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # Nothing of the dry run in the file a real run delivers from, and nothing at the real target.
    assert sorted(p.name for p in configured.parent.iterdir() if p.name.startswith("outbox.db")) == []
    assert fake_dodo.events == {}
    assert not (tmp_path / "spool").exists()  # real producers' files are never consumed by a dry run


def test_a_second_run_on_the_same_outbox_is_refused_until_the_first_dies(
    tmp_path: Path, fake_dodo_factory: Any
) -> None:
    fake_dodo = fake_dodo_factory(keys={KEY})
    config = write_config(tmp_path / "agent.toml", base_sections(tmp_path, fake_dodo.url, free_port()))
    first = AgentProcess(config, tmp_path / "first.log", None, {"DODO_PAYMENTS_API_KEY": KEY})
    try:
        first.start(timeout=60)
        second = agent_run(config, DODO_OUTBOX_INTAKE_HTTP_LISTEN=f"127.0.0.1:{free_port()}")
        assert second.returncode == 2, second.stderr
        assert f"another agent is already running on the outbox {tmp_path / 'outbox.db'}" in second.stderr
        assert f"pid {first.pid} on host " in second.stderr and "started 20" in second.stderr
        assert "Traceback" not in second.stderr and "agent_stopped" not in second.stderr
        # The CLI still works beside the running agent.
        line = json.dumps({"event_id": "cli-1", "customer_id": "cus_1", "event_name": "api.call"})
        enqueued = subprocess.run(
            [sys.executable, "-m", "agent", "enqueue", "--config", str(config)],
            input=line,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=child_env(),
            timeout=60,
        )
        assert enqueued.returncode == 0, enqueued.stderr
        drained = cli(config, "drain", "--once")
        assert drained.returncode in (0, 3), drained.stderr  # 3: paused, this process has no key
        wait_until(lambda: "cli-1" in fake_dodo.events, 60, "the running agent to deliver cli-1")
        # kill -9 leaves no stale lock: a new agent starts at once.
        first.kill()
        first.start(timeout=60)
        assert first.running()
    finally:
        first.ensure_stopped()


def test_a_second_run_on_the_same_drop_directory_is_refused(
    tmp_path: Path, fake_dodo: EmulatorServer
) -> None:
    spool = tmp_path / "spool"
    sections = base_sections(
        tmp_path, fake_dodo.url, None, intake_dropdir={"enabled": True, "path": str(spool)}
    )
    config = write_config(tmp_path / "agent.toml", sections)
    first = AgentProcess(config, tmp_path / "first.log", None, {})
    try:
        first.start(timeout=60)
        other_outbox = str(tmp_path / "other.db")
        second = agent_run(config, DODO_OUTBOX_OUTBOX_PATH=other_outbox)
        assert second.returncode == 2, second.stderr
        assert f"another agent is already running on the drop directory {spool}" in second.stderr
        assert f"pid {first.pid} on host " in second.stderr
    finally:
        first.ensure_stopped()


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"intake.http": {"listen": "0.0.0.0:{port}"}},
            "[intake.http] listen = '0.0.0.0:{port}' is reachable",
        ),
        ({"intake.http": {"listen": "localhost"}}, "[intake.http] listen = 'localhost': expected host:port"),
        ({"dodo": {"base_url": "127.0.0.1:18791"}}, "[dodo] base_url = '127.0.0.1:18791' is not an http://"),
        (
            {"intake.dropdir": {"enabled": True, "path": "{tmp}/a-file"}},
            "[intake.dropdir] path = '{tmp}/a-file' is not a directory",
        ),
        ({"outbox": {"path": "{tmp}"}}, "[outbox] path = '{tmp}' is not a file"),
    ],
)
def test_config_check_refuses_what_run_refuses(
    tmp_path: Path, fake_dodo: EmulatorServer, sections: dict[str, dict[str, Any]], message: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    port = free_port()
    fill = {"port": port, "tmp": tmp_path}
    bad = {
        name: {k: v.format(**fill) if isinstance(v, str) else v for k, v in values.items()}
        for name, values in sections.items()
    }
    merged = base_sections(tmp_path, fake_dodo.url, port)
    for name, values in bad.items():
        merged.setdefault(name, {}).update(values)
    config = write_config(tmp_path / "agent.toml", merged)
    expected = message.format(**fill)
    checked = cli(config, "config", "check")
    assert checked.returncode == 2, checked.stdout
    assert expected in checked.stderr
    started = agent_run(config)
    assert started.returncode == 2, started.stderr
    assert expected in started.stderr and "Traceback" not in started.stderr


def test_the_dry_run_outbox_sits_beside_the_configured_one() -> None:
    from agent.service import dry_run_outbox

    assert dry_run_outbox(Path("/var/lib/x/outbox.db")) == Path("/var/lib/x/outbox.dry-run.db")
    assert dry_run_outbox(Path("dodo-outbox.db")) == Path("dodo-outbox.dry-run.db").absolute()


def test_the_lock_is_exclusive_names_its_holder_and_is_free_again_once_released(tmp_path: Path) -> None:
    from agent.lock import AlreadyRunningError, outbox_lock

    first = outbox_lock(tmp_path / "o.db").acquire()
    with pytest.raises(AlreadyRunningError, match=r"pid \d+ on host .+, started 20"):
        outbox_lock(tmp_path / "o.db").acquire()  # a second open file description conflicts, even here
    first.release()
    first.release()  # twice is harmless
    again = outbox_lock(tmp_path / "o.db").acquire()
    assert again.held and (tmp_path / "o.db.lock").exists()
    again.release()
