"""What rich prints: user text is never read as markup, and `dlq list` fits 80 columns.

rich reads `[dodo]` as a markup tag and silently drops it; the agent's own messages name config keys that
way (`[dodo] api_key_file`), and paths, ids and reasons may hold brackets too.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from agent.cli import cli, common
from agent.ops import status as status_module
from agent.store import Store
from tests.ops_helpers import NOW, add_dead

REASON = "Dodo refused the API key (401): check [dodo] api_key_file"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def narrow(monkeypatch: pytest.MonkeyPatch, width: int = 80) -> io.StringIO:
    """Make the CLI print to an 80-column console (what a pipe or a small terminal gets)."""
    buffer = io.StringIO()
    monkeypatch.setattr(common, "out", Console(file=buffer, width=width, highlight=False, soft_wrap=True))
    return buffer


def test_status_prints_brackets_in_paths_and_reasons_literally(tmp_path: Path) -> None:
    folder = tmp_path / "[dodo]"
    folder.mkdir()
    db = folder / "outbox.db"
    with Store(db) as store:
        add_dead(store, ["x1"], now=NOW - 60, reason="[dodo] rejected")
        status_module.write_pause(store, REASON, time.time(), kind="auth")
    code, out = run("status", "--outbox", str(db))
    assert code == 0, out
    assert str(db) in out
    assert REASON in out
    assert "[dodo] rejected 1" in out
    code, out = run("status", "--outbox", str(db), "--check")
    assert code == 1 and f"CHECK FAILED: delivery is paused: {REASON}" in out


def test_dlq_list_keeps_the_http_status_visible_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "outbox.db"
    long_id = "req_01JH8ZK3Q6W2M8T4X9Y7B5N3C1_retry_attempt_2"
    with Store(db) as store:
        add_dead(store, [long_id, "b[dodo]"], reason="rejected", status=422)
    buffer = narrow(monkeypatch)
    code, _ = run("dlq", "list", "--outbox", str(db))
    assert code == 0
    lines = buffer.getvalue().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), lines
    header = lines[0].split()
    assert header[:6] == ["event_id", "event_name", "reason", "http", "attempts", "dead"]
    rows = [line for line in lines[1:] if "422" in line]
    assert len(rows) == 2, lines  # each event's row shows its HTTP status
    assert rows[1].split()[0] == "b[dodo]"  # an id with brackets, printed as it is
    # A long id folds onto the next line but is never cut.
    assert long_id in "".join(line.split()[0] for line in lines[1:3])


def test_enqueue_prints_each_meter_warning_once(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[outbox]\npath = "{tmp_path / "o.db"}"\n'
        '[[meters]]\nevent_name = "api.call"\naggregation = "count"\n'
    )
    event = '{"event_id":"r1","customer_id":"cus_1","event_name":"api.calls"}\n'
    env = {k: v for k, v in os.environ.items() if not k.startswith("DODO_")}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "enqueue", "--config", str(config), "--json"],
        input=event,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["warnings"] == 1  # stdout is the JSON and nothing else
    both = done.stdout + done.stderr
    assert both.count("no meter counts event_name 'api.calls'") == 1, both
    assert "event_not_billable" not in both
    assert done.stderr.startswith("warning: ")
